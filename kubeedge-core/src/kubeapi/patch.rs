//! The patch formats kubectl and client libraries send: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), and Kubernetes' strategic merge patch, driven by each field's patch strategy and
//! merge key as the API declares them (`patch_strategies.txt`, generated from upstream's
//! `generated.proto` markers by `patch_strategies.py`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::protobuf;

/// A patch that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `<proto message>.<field>` → (strategy, merge key) of every field that declares one.
fn strategies() -> &'static HashMap<&'static str, (&'static str, Option<&'static str>)> {
    static TABLE: OnceLock<HashMap<&'static str, (&'static str, Option<&'static str>)>> =
        OnceLock::new();
    TABLE.get_or_init(|| {
        include_str!("patch_strategies.txt")
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let field = words.next()?;
                let strategy = words.next()?;
                let key = words.next().filter(|k| *k != "-");
                Some((field, (strategy, key)))
            })
            .collect()
    })
}

/// Whether objects of this `apiVersion`/`kind` take a strategic merge patch: built-in kinds do,
/// custom resources do not (the API answers 415, as kube-apiserver does).
pub fn strategic_supported(obj: &Value) -> bool {
    schema_of(obj).is_some()
}

fn schema_of(obj: &Value) -> Option<&'static str> {
    protobuf::message_for(obj.get("apiVersion")?.as_str()?, obj.get("kind")?.as_str()?)
}

/// Kubernetes' strategic merge patch. Like [`merge`], except that each list follows its field's
/// declared strategy: lists with `patchStrategy=merge` merge item by item on their merge key
/// (`containers` by `name`, `conditions` by `type`, ...) or, for lists of scalars, as a set;
/// other lists are replaced (`containerStatuses`). Directives: `$patch` (`replace`, `delete`,
/// `merge`) on maps and list items, `$retainKeys`, `$setElementOrder/<list>` and
/// `$deleteFromPrimitiveList/<list>`. The schema comes from `target`'s `apiVersion`/`kind`;
/// without one (custom resources) this is a JSON merge patch that drops directives.
pub fn strategic(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let schema = schema_of(target);
    merge_map(target, patch, schema)
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// A patch value with its directives applied to nothing: what it adds where nothing was.
fn fresh(v: &Value, schema: Option<&'static str>) -> Result<Value, Error> {
    let mut out = Value::Null;
    match v {
        Value::Object(_) => merge_map(&mut out, v, schema)?,
        Value::Array(items) => {
            out = Value::Array(
                items
                    .iter()
                    .filter(|i| directive(i).is_none())
                    .map(|i| fresh(i, schema))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => out = other.clone(),
    }
    Ok(out)
}

fn merge_map(target: &mut Value, patch: &Value, schema: Option<&'static str>) -> Result<(), Error> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match directive(patch) {
        None | Some("merge") => {}
        Some("replace") => {
            let mut clean = patch.clone();
            if let Value::Object(c) = &mut clean {
                c.remove("$patch");
            }
            *target = Value::Null;
            return merge_map(target, &clean, schema);
        }
        Some(other) => {
            return Err(Error(format!(
                "unknown patch directive {other:?} for a map (replace, merge or delete)"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v
                .as_array()
                .ok_or_else(|| Error(format!("{k} must be a list of the values to delete")))?;
            if let Some(Value::Array(items)) = t.get_mut(list) {
                items.retain(|i| !gone.contains(i));
            }
        }
    }
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() || (v.is_object() && directive(v) == Some("delete")) {
            t.remove(k);
            continue;
        }
        let info = schema.and_then(|m| protobuf::field_info(m, k));
        let declared = info.and_then(|i| {
            strategies()
                .get(format!("{}.{k}", i.declared_in).as_str())
                .copied()
        });
        let inner = info.and_then(|i| i.message);
        match v {
            Value::Array(items)
                if info.is_some_and(|i| i.list)
                    && declared.is_some_and(|(s, _)| s.split(',').any(|s| s == "merge")) =>
            {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_list(slot, items, declared.and_then(|(_, key)| key), inner, k)?;
            }
            Value::Array(_) => {
                t.insert(k.clone(), fresh(v, inner)?);
            }
            Value::Object(_) => merge_map(t.entry(k.clone()).or_insert(Value::Null), v, inner)?,
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(items)), Some(order)) = (t.get_mut(list), v.as_array())
        {
            reorder(items, order);
        }
    }
    if let Some(keep) = p.get("$retainKeys") {
        let keep = keep
            .as_array()
            .ok_or_else(|| Error("$retainKeys must be a list of field names".into()))?;
        t.retain(|k, _| keep.iter().any(|name| name.as_str() == Some(k)));
    }
    Ok(())
}

/// A list whose strategy is `merge`: items merge on `key`, or as a set for lists of scalars.
fn merge_list(
    slot: &mut Value,
    items: &[Value],
    key: Option<&str>,
    schema: Option<&'static str>,
    field: &str,
) -> Result<(), Error> {
    if items.iter().any(|i| directive(i) == Some("replace")) {
        *slot = fresh(&Value::Array(items.to_vec()), schema)?;
        return Ok(());
    }
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(existing) = slot else {
        return Ok(());
    };
    let Some(key) = key else {
        for item in items {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
        }
        return Ok(());
    };
    for item in items {
        let id = item.get(key).ok_or_else(|| {
            Error(format!(
                "an item of {field} does not contain its declared merge key {key:?}"
            ))
        })?;
        let pos = existing.iter().position(|e| e.get(key) == Some(id));
        match (pos, directive(item) == Some("delete")) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_map(&mut existing[i], item, schema)?,
            (None, false) => existing.push(fresh(item, schema)?),
        }
    }
    Ok(())
}

/// `$setElementOrder`: the listed items first, in that order; the others after, as they were.
fn reorder(items: &mut Vec<Value>, order: &[Value]) {
    let matches = |item: &Value, wanted: &Value| match wanted {
        Value::Object(keys) => keys.iter().all(|(k, v)| item.get(k) == Some(v)),
        scalar => item == scalar,
    };
    let mut rest = std::mem::take(items);
    for wanted in order {
        if let Some(i) = rest.iter().position(|item| matches(item, wanted)) {
            items.push(rest.remove(i));
        }
    }
    items.append(&mut rest);
}

/// Most operations in one JSON patch (kube-apiserver's limit).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// Most bytes a JSON patch's `copy` operations may copy in all (kube-apiserver's limit, its
/// largest request body): without it, a few hundred bytes of copies of the whole document into
/// itself double it each time.
pub const MAX_COPIED_BYTES: usize = 3 * 1024 * 1024;

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy`, `test`, applied in order; all or nothing.
/// At most [`MAX_JSON_PATCH_OPERATIONS`] operations and [`MAX_COPIED_BYTES`] copied.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), Error> {
    let ops = ops
        .as_array()
        .ok_or_else(|| Error("a JSON patch is an array".into()))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(Error(format!(
            "the JSON patch has {} operations; at most {MAX_JSON_PATCH_OPERATIONS} are allowed",
            ops.len()
        )));
    }
    let mut copied = 0usize;
    let mut work = target.clone();
    for op in ops {
        let kind = op["op"]
            .as_str()
            .ok_or_else(|| Error("operation without \"op\"".into()))?;
        let path = op["path"]
            .as_str()
            .ok_or_else(|| Error("operation without \"path\"".into()))?;
        match kind {
            "add" => add(
                &mut work,
                path,
                op.get("value").cloned().unwrap_or(Value::Null),
            )?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(
                    &mut work,
                    path,
                    op.get("value").cloned().unwrap_or(Value::Null),
                )?;
            }
            "move" | "copy" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| Error(format!("{kind} without \"from\"")))?;
                let v = if kind == "move" {
                    remove(&mut work, from)?
                } else {
                    let v = work
                        .pointer(from)
                        .ok_or_else(|| Error(format!("no value at {from}")))?;
                    copied = copied.saturating_add(encoded_len(v, MAX_COPIED_BYTES - copied));
                    if copied >= MAX_COPIED_BYTES {
                        return Err(Error(format!(
                            "the JSON patch copies more than {MAX_COPIED_BYTES} bytes"
                        )));
                    }
                    v.clone()
                };
                add(&mut work, path, v)?;
            }
            "test" => {
                if work.pointer(path) != op.get("value") {
                    return Err(Error(format!("test failed at {path}")));
                }
            }
            other => return Err(Error(format!("unknown operation {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}

/// The length of `v` encoded as JSON, counted up to `limit` (then `limit`).
fn encoded_len(v: &Value, limit: usize) -> usize {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n >= self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, limit };
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.n,
        Err(_) => limit,
    }
}

fn split(path: &str) -> Result<(String, String), Error> {
    let i = path
        .rfind('/')
        .ok_or_else(|| Error(format!("bad path {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_owned(), last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), Error> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| Error(format!("bad index {last:?}")))?;
            if i > a.len() {
                return Err(Error(format!("index {i} out of range")));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(Error(format!("no container at {parent:?}"))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, Error> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| Error(format!("no value at {path}"))),
        Some(Value::Array(a)) => {
            let i: usize = last
                .parse()
                .map_err(|_| Error(format!("bad index {last:?}")))?;
            if i >= a.len() {
                return Err(Error(format!("index {i} out of range")));
            }
            Ok(a.remove(i))
        }
        _ => Err(Error(format!("no container at {parent:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn copies_of_the_whole_document_into_itself_are_bounded() {
        // Each copy doubles the document: 60 of them would need 2^60 times its size.
        let ops: Vec<Value> = (0..60)
            .map(|_| json!({"op": "copy", "from": "", "path": "/a/-"}))
            .collect();
        let mut doc = json!({"a": [1, 2, 3], "pad": "x".repeat(100)});
        let before = doc.clone();
        let e = json_patch(&mut doc, &Value::Array(ops)).unwrap_err();
        assert!(e.0.contains("copies more than"), "{e}");
        assert_eq!(doc, before, "all or nothing");
        // A few copies are fine.
        let ops = json!([{"op": "copy", "from": "/a/0", "path": "/b"}]);
        json_patch(&mut doc, &ops).unwrap();
        assert_eq!(doc["b"], 1);
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/b", "value": 1});
            10_001
        ]);
        assert!(json_patch(&mut doc, &many).is_err());
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn strategic_merges_by_declared_keys() {
        let mut t = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}});
        strategic(
            &mut t,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}], "containers": [
                {"name": "a", "image": "2"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "3"}]}}),
        )
        .unwrap();
        assert_eq!(
            t["spec"],
            json!({"containers": [{"name": "c", "image": "3"}, {"name": "a", "image": "2"}]})
        );
    }

    #[test]
    fn strategic_status_patch_as_the_kubelet_sends_it() {
        // Conditions merge by type; containerStatuses (no strategy) are replaced.
        let mut t = json!({"apiVersion": "v1", "kind": "Pod", "status": {
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        strategic(
            &mut t,
            &json!({"status": {"$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}, {"type": "PodScheduled"}],
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}),
        )
        .unwrap();
        assert_eq!(
            t["status"]["conditions"],
            json!([{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
        );
        assert_eq!(
            t["status"]["containerStatuses"],
            json!([{"name": "c", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}])
        );
    }

    #[test]
    fn strategic_sets_retain_keys_and_primitive_lists() {
        let mut t = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"finalizers": ["a", "b"]},
            "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
        strategic(
            &mut t,
            &json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]},
                "spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}}),
        )
        .unwrap();
        assert_eq!(t["metadata"]["finalizers"], json!(["a", "c"]));
        assert_eq!(
            t["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/x"}}])
        );
        let err =
            strategic(&mut t, &json!({"spec": {"containers": [{"image": "x"}]}})).unwrap_err();
        assert!(err.0.contains("merge key \"name\""), "{err}");
        // Without a schema (a custom resource), lists are replaced.
        let mut cr =
            json!({"apiVersion": "x.io/v1", "kind": "X", "spec": {"items": [{"name": "a"}]}});
        strategic(&mut cr, &json!({"spec": {"items": [{"name": "b"}]}})).unwrap();
        assert_eq!(cr["spec"]["items"], json!([{"name": "b"}]));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut t = json!({"a": [1, 2], "b": "x"});
        json_patch(&mut t, &json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/b", "value": "y"}])).unwrap();
        assert_eq!(t, json!({"a": [1, 2, 3], "b": "y"}));
        let before = t.clone();
        assert!(
            json_patch(
                &mut t,
                &json!([{"op": "remove", "path": "/b"}, {"op": "test", "path": "/a/0", "value": 9}])
            )
            .is_err()
        );
        assert_eq!(t, before);
    }
}
