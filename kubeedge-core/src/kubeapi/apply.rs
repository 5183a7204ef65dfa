//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which fields its manager set: an update (create, PUT, PATCH) takes the
//! fields it changed from whoever had them; an apply (`PATCH` with
//! `application/apply-patch+yaml`) claims exactly the fields of its configuration. An apply that
//! would change a field another manager owns is refused with a 409 `Conflict` naming the field and
//! the owner, unless `force=true` takes the field over. Fields the applier owned before and no
//! longer applies are removed, unless another manager still owns them.
//!
//! Field sets are kept in the apiserver's `FieldsV1` form: `f:<field>` for fields, `k:{...}` for
//! items of lists keyed by merge keys (containers by `name`, ports by number and protocol, ...),
//! `v:<value>` for items of sets (`finalizers`), and `.` for a keyed item itself. Lists without
//! merge keys are owned as a whole.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{Api, ApiError, Target, json_response, name, ns, render_one, store_error, views};

/// One field path: `f:`/`k:`/`v:` tokens from the object's root.
type Path = Vec<String>;
/// A manager's fields.
type FieldSet = BTreeSet<Path>;

/// Metadata the server owns: never part of a field set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// An apply body: JSON (what kubectl, kube-rs and client-go send; JSON is YAML too).
pub(crate) fn parse(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration must be a JSON object (YAML beyond JSON is not accepted): {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "an apply configuration must be an object",
        ));
    }
    Ok(v)
}

/// The manager of a write that names none: the client's program, from its `User-Agent`.
pub(crate) fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

/// The merge keys of the list under `field`, given its items; `None` for atomic lists.
fn list_keys(field: &str, items: &[Value]) -> Option<&'static [&'static str]> {
    let first = items.first()?.as_object()?;
    let keys: &'static [&'static str] = match field {
        "ports" if first.contains_key("containerPort") => &["containerPort", "protocol"],
        "ports" if first.contains_key("port") => &["port", "protocol"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "hostAliases" => &["ip"],
        "conditions" => &["type"],
        "tolerations" | "args" | "command" => return None,
        _ if first.contains_key("name") => &["name"],
        _ => return None,
    };
    Some(keys)
}

fn is_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn key_token(keys: &[&str], item: &Value) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(*k) {
            m.insert((*k).to_owned(), v.clone());
        }
    }
    format!("k:{}", Value::Object(m))
}

/// The fields set in `v` (an object's root when `root`).
fn fields_of(v: &Value, root: bool, subresource: Option<&str>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = v.as_object() else {
        return out;
    };
    for (k, child) in map {
        match (root, k.as_str()) {
            (true, "apiVersion" | "kind") => continue,
            (true, "status") if subresource != Some("status") => continue,
            (true, f) if subresource == Some("status") && f != "status" && f != "metadata" => {
                continue;
            }
            _ => {}
        }
        let mut path = vec![format!("f:{k}")];
        if root && k == "metadata" {
            if let Some(meta) = child.as_object() {
                for (mk, mv) in meta {
                    if SERVER_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    path.push(format!("f:{mk}"));
                    collect(mk, mv, &mut path, &mut out);
                    path.pop();
                }
            }
            continue;
        }
        collect(k, child, &mut path, &mut out);
    }
    out
}

fn collect(field: &str, v: &Value, path: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                path.push(format!("f:{k}"));
                collect(k, child, path, out);
                path.pop();
            }
        }
        Value::Array(items) if is_set(field) && items.iter().all(|i| !i.is_object()) => {
            for item in items {
                path.push(format!("v:{item}"));
                out.insert(path.clone());
                path.pop();
            }
        }
        Value::Array(items) => match list_keys(field, items) {
            Some(keys) => {
                for item in items {
                    path.push(key_token(keys, item));
                    out.insert(path.clone());
                    if let Some(m) = item.as_object() {
                        for (k, child) in m {
                            path.push(format!("f:{k}"));
                            collect(k, child, path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// Whether `set` holds a path below `path` (sorted: descendants follow their ancestor).
fn has_descendant(set: &FieldSet, path: &Path) -> bool {
    use std::ops::Bound::{Excluded, Unbounded};
    set.range::<Path, _>((Excluded(path), Unbounded))
        .next()
        .is_some_and(|next| next.len() > path.len() && next.starts_with(path))
}

/// Whether `set` holds `path` or a path above it.
fn has_ancestor(set: &FieldSet, path: &Path) -> bool {
    (1..=path.len()).any(|n| set.contains(&path[..n].to_vec()))
}

/// A field set as `FieldsV1` JSON.
fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for (i, token) in path.iter().enumerate() {
            let slot = node
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            let Value::Object(child) = slot else {
                break;
            };
            if i + 1 == path.len() && has_descendant(set, path) {
                child.insert(".".into(), json!({}));
            }
            node = child;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(map) = v.as_object() else {
            return;
        };
        if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in map {
            if k == "." {
                continue;
            }
            path.push(k.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry, read.
struct Entry {
    manager: String,
    operation: String,
    subresource: Option<String>,
    api_version: String,
    time: Value,
    fields: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                    subresource: e["subresource"].as_str().map(str::to_owned),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                    time: e["time"].clone(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let list: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation,
                               "apiVersion": e.api_version, "time": e.time,
                               "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> Value {
    json!(crate::store::rfc3339(std::time::SystemTime::now()))
}

/// The value at `path` in `v`, if there.
fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for token in path {
        cur = if let Some(f) = token.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = token.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?
                .iter()
                .find(|item| keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?
        } else if let Some(x) = token.strip_prefix("v:") {
            let want: Value = serde_json::from_str(x).ok()?;
            cur.as_array()?.iter().find(|item| **item == want)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes what `path` names from `v`.
fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for token in parents {
        let next = if let Some(f) = token.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = token.strip_prefix("k:") {
            let Ok(keys) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        let Some(next) = next else {
            return;
        };
        cur = next;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(keys), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(x) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(x), cur.as_array_mut())
    {
        a.retain(|item| *item != want);
    }
}

/// Records an update by `manager` (`operation` "Update"): the fields that differ between
/// `before` and `after` become the manager's and leave everyone else's; fields gone from the
/// object leave every set. `after`'s `managedFields` are rebuilt from `before`'s.
pub(crate) fn record_update(
    before: &Value,
    after: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    operation: &str,
) {
    let old_fields = fields_of(before, true, subresource);
    let new_fields = fields_of(after, true, subresource);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| value_at(before, p) != value_at(after, p) || !old_fields.contains(*p))
        .cloned()
        .collect();
    let all_after = fields_of(after, true, None)
        .union(&fields_of(after, true, Some("status")))
        .cloned()
        .collect::<FieldSet>();
    let api_version = after["apiVersion"].as_str().unwrap_or_default().to_owned();
    let mut list = entries(before);
    for e in &mut list {
        e.fields
            .retain(|p| all_after.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        let sub = subresource.filter(|s| !s.is_empty()).map(str::to_owned);
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == operation && e.subresource == sub)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now();
                e.api_version = api_version;
            }
            None => list.push(Entry {
                manager: manager.to_owned(),
                operation: operation.to_owned(),
                subresource: sub,
                api_version,
                time: now(),
                fields: changed,
            }),
        }
    }
    store_entries(after, list);
}

/// Merges an apply configuration into `live`: maps recursively, keyed lists item by item,
/// everything else replaced.
fn merge_applied(live: &mut Value, applied: &Value, field: &str) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                match l.get_mut(k) {
                    Some(slot) if !v.is_null() => merge_applied(slot, v, k),
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if is_set(field) => {
            for item in a {
                if !l.contains(item) {
                    l.push(item.clone());
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_keys(field, a) {
            Some(keys) => {
                let mut at: std::collections::HashMap<String, usize> = l
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (key_token(keys, x), i))
                    .collect();
                for item in a {
                    let token = key_token(keys, item);
                    match at.get(&token) {
                        Some(&i) => merge_applied(&mut l[i], item, ""),
                        None => {
                            at.insert(token, l.len());
                            l.push(item.clone());
                        }
                    }
                }
            }
            None => *l = a.clone(),
        },
        (slot, v) => *slot = v.clone(),
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|t| match t.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{}]", t.split_once(':').map_or(t.as_str(), |(_, r)| r)),
        })
        .collect()
}

/// Server-side apply of `config` by `manager` to `t`'s object (created when missing).
pub(crate) fn apply(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    mut config: Value,
    manager: &str,
    force: bool,
) -> Result<Response, ApiError> {
    if manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH with application/apply-patch+yaml requires a fieldManager",
        ));
    }
    super::check_name(t, &config)?;
    if config.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if config.pointer("/metadata/managedFields").is_some() {
        return Err(ApiError::bad_request(
            "metadata.managedFields must be empty in an apply configuration",
        ));
    }
    let sub = t.sub.as_deref();
    let applied = fields_of(&config, true, sub);
    let api_version = t.resource.api_version();
    let store_name = t.resource.store_name();
    for _ in 0..5 {
        let current = match api.store.get(&store_name, ns(t), name(t)) {
            Ok(c) => views::outward(&t.resource, c),
            Err(crate::store::Error::NotFound { .. }) if sub.is_none() => {
                // An apply that creates is a create, and needs that permission.
                let (group, plural) = (t.resource.group.as_str(), t.resource.plural.as_str());
                if !t.may(
                    "create",
                    group,
                    plural,
                    ns(t).unwrap_or_default(),
                    name(t),
                    api,
                ) {
                    return Err(ApiError::with(
                        403,
                        "Forbidden",
                        format!(
                            "{plural} {:?} is forbidden: the apply would create it, which is not allowed",
                            name(t)
                        ),
                    ));
                }
                config["metadata"]["name"] = json!(name(t));
                let mut obj = config.clone();
                store_entries(
                    &mut obj,
                    vec![Entry {
                        manager: manager.to_owned(),
                        operation: "Apply".into(),
                        subresource: None,
                        api_version: api_version.clone(),
                        time: now(),
                        fields: applied.clone(),
                    }],
                );
                let created = super::create_object(api, t, obj)?;
                return Ok(json_response(
                    StatusCode::CREATED,
                    &render_one(t, headers, created),
                ));
            }
            Err(e) => return Err(store_error(&t.resource, e)),
        };
        let mut list = entries(&current);
        // Conflicts: fields another manager owns that this apply would change.
        let mut conflicts = Vec::new();
        for e in list.iter_mut().filter(|e| e.manager != manager) {
            let theirs: Vec<Path> = applied
                .iter()
                .filter(|p| e.fields.contains(*p))
                // A keyed item or set member is the same item when it exists on both sides;
                // its fields are compared on their own paths.
                .filter(|p| {
                    let item = p
                        .last()
                        .is_some_and(|t| t.starts_with("k:") || t.starts_with("v:"));
                    if item {
                        value_at(&current, p).is_none()
                    } else {
                        value_at(&config, p) != value_at(&current, p)
                    }
                })
                .cloned()
                .collect();
            if theirs.is_empty() {
                continue;
            }
            if force {
                for p in &theirs {
                    e.fields.remove(p);
                }
            } else {
                for p in theirs {
                    conflicts.push(format!("conflict with {:?}: {}", e.manager, dotted(&p)));
                }
            }
        }
        if !conflicts.is_empty() {
            let n = conflicts.len();
            return Err(ApiError::with(
                409,
                "Conflict",
                format!(
                    "the apply conflicts with {n} field{} owned by other managers: {}",
                    if n == 1 { "" } else { "s" },
                    conflicts.join("\n")
                ),
            ));
        }
        let mine_before: FieldSet = list
            .iter()
            .filter(|e| e.manager == manager && e.operation == "Apply")
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        let others: FieldSet = list
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        let mut next = current.clone();
        // What this manager applied before and no longer does, and nobody else owns, goes.
        for p in mine_before.difference(&applied) {
            let shared = has_descendant(&others, p) || has_ancestor(&others, p);
            if !shared && !has_descendant(&applied, p) {
                remove_at(&mut next, p);
            }
        }
        let precondition = config.pointer("/metadata/resourceVersion").cloned();
        let mut body = config.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        if sub.is_none()
            && let Some(o) = body.as_object_mut()
        {
            o.remove("status");
        }
        merge_applied(&mut next, &body, "");
        list.retain(|e| {
            !(e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == sub)
        });
        list.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".into(),
            subresource: sub.map(str::to_owned),
            api_version: api_version.clone(),
            time: now(),
            fields: applied.clone(),
        });
        store_entries(&mut next, list);
        next["metadata"]["resourceVersion"] = precondition
            .clone()
            .unwrap_or_else(|| current["metadata"]["resourceVersion"].clone());
        match super::write(api, t, next, super::Ownership::Recorded) {
            Err(ApiError {
                code: 409,
                reason: "Conflict",
                ..
            }) if precondition.is_none() => continue,
            other => {
                return other.map(|v| json_response(StatusCode::OK, &render_one(t, headers, v)));
            }
        }
    }
    Err(ApiError::with(
        409,
        "Conflict",
        "too many concurrent writes; try again",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["1"]}]}});
        let set = fields_of(&obj, true, None);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"x\"": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:args": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let before = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let mut created = before.clone();
        record_update(&json!({}), &mut created, "alice", None, "Update");
        let mut after = created.clone();
        after["data"]["b"] = json!("2");
        record_update(&created, &mut after, "bob", None, "Update");
        let list = entries(&after);
        assert_eq!(list.len(), 2);
        assert!(
            list[0]
                .fields
                .contains(&vec!["f:data".to_owned(), "f:a".to_owned()])
        );
        assert_eq!(
            list[1].fields,
            FieldSet::from([vec!["f:data".to_owned(), "f:b".to_owned()]])
        );
    }
}
