//! The patch formats kubectl and client libraries send: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), and strategic merge patch for the common cases (lists of named objects merged by
//! `name`, `$patch` directives, other `$` directives ignored).

use serde_json::{Map, Value};

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

/// Strategic merge, as far as kubectl needs it for the built-in kinds: like [`merge`], except that
/// lists of objects carrying `name` (containers, volumes, env, ...) merge element by element, an
/// element `{"name": x, "$patch": "delete"}` removes `x`, `{"$patch": "replace"}` replaces the
/// enclosing map, and other `$` directives are ignored.
pub fn strategic(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = p.clone();
                clean.remove("$patch");
                *target = Value::Object(clean);
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if k.starts_with('$') {
                        continue;
                    }
                    if v.is_null() {
                        t.remove(k);
                        continue;
                    }
                    let slot = t.entry(k.clone()).or_insert(Value::Null);
                    match (slot.as_array().is_some(), v.as_array()) {
                        (true, Some(items)) if named(items) => merge_named(slot, items),
                        _ => strategic(slot, v),
                    }
                }
            }
        }
        Value::Array(items) => {
            *target = Value::Array(
                items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect(),
            );
        }
        other => *target = other.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

fn merge_named(target: &mut Value, items: &[Value]) {
    let Value::Array(existing) = target else {
        return;
    };
    if !named(existing) && !existing.is_empty() {
        *target = Value::Array(items.to_vec());
        return;
    }
    for item in items {
        let name = item.get("name").cloned();
        let pos = existing.iter().position(|e| e.get("name") == name.as_ref());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut existing[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
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
    fn strategic_merges_named_lists() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}});
        strategic(
            &mut t,
            &json!({"$setElementOrder/containers": [{"name": "a"}], "spec": {"containers": [
                {"name": "a", "image": "2"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "3"}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "c", "image": "3"}]}})
        );
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
