//! The `scale` subresource (built-in workloads and CRDs that declare it) and pod eviction
//! (`pods/<name>/eviction`, guarded by PodDisruptionBudgets).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::registry::ScalePaths;
use super::{
    Api, ApiError, Target, delete_object, json_response, name, ns, parse_body, patch, store_error,
    write,
};
use crate::store::{FieldSelector, LabelSelector, selector_text};

/// `.spec.replicas` as a JSON pointer.
fn pointer(path: &str) -> String {
    format!("/{}", path.trim_start_matches('.').replace('.', "/"))
}

fn scale_of(paths: &ScalePaths, obj: &Value) -> Value {
    let spec = obj
        .pointer(&pointer(&paths.spec_replicas))
        .cloned()
        .unwrap_or(json!(0));
    let status = obj
        .pointer(&pointer(&paths.status_replicas))
        .cloned()
        .unwrap_or(json!(0));
    let meta = &obj["metadata"];
    let mut scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": spec}, "status": {"replicas": status}});
    if let Some(sel) = paths
        .label_selector
        .as_deref()
        .and_then(|p| obj.pointer(&pointer(p)))
    {
        scale["status"]["selector"] = json!(selector_text(sel));
    }
    if scale["metadata"]["namespace"].is_null()
        && let Some(m) = scale["metadata"].as_object_mut()
    {
        m.remove("namespace");
    }
    scale
}

/// GET, PUT and PATCH on `<resource>/<name>/scale`.
pub(crate) fn scale(
    api: &Api,
    t: &Target,
    method: &Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(paths) = t.resource.scale.clone() else {
        return Err(ApiError::not_found("subresource", "scale"));
    };
    // A write between read and update is retried, as for any patch, unless the client pinned a
    // version.
    for _ in 0..5 {
        match scale_once(api, t, &paths, method, headers, &body) {
            Err((e, pinned)) if e.code == 409 && !pinned => continue,
            other => return other.map_err(|(e, _)| e),
        }
    }
    Err(ApiError::with(
        409,
        "Conflict",
        "too many concurrent writes; try again",
    ))
}

/// One read-and-write of `/scale`; the error says whether the client pinned the version.
fn scale_once(
    api: &Api,
    t: &Target,
    paths: &ScalePaths,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, (ApiError, bool)> {
    let unpinned = |e: ApiError| (e, false);
    let current = api
        .store
        .get(&t.resource.store_name(), ns(t), name(t))
        .map_err(|e| unpinned(store_error(&t.resource, e)))?;
    let scale = scale_of(paths, &current);
    // Whether a patch names a version itself (the Scale read here carries the current one).
    let mut client_rv = false;
    let wanted = match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
        Method::PUT => parse_body(body).map_err(unpinned)?,
        Method::PATCH => {
            let doc: Value = serde_json::from_slice(body)
                .map_err(|e| unpinned(ApiError::bad_request(format!("invalid patch: {e}"))))?;
            client_rv = doc.pointer("/metadata/resourceVersion").is_some();
            let kind = super::patch_type(headers);
            let mut next = scale.clone();
            match kind.as_str() {
                "application/json-patch+json" => patch::json_patch(&mut next, &doc)
                    .map_err(|e| unpinned(ApiError::with(422, "Invalid", e.to_string())))?,
                "application/merge-patch+json" => patch::merge(&mut next, &doc),
                _ => patch::strategic(&mut next, &doc)
                    .map_err(|e| unpinned(ApiError::with(400, "BadRequest", e.to_string())))?,
            }
            next
        }
        _ => {
            return Err(unpinned(ApiError::with(
                405,
                "MethodNotAllowed",
                format!("{method} is not allowed on scale"),
            )));
        }
    };
    let replicas = wanted
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(0..=i64::from(i32::MAX)).contains(&replicas) {
        return Err(unpinned(ApiError::with(
            422,
            "Invalid",
            format!(
                "Scale {:?} is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0",
                name(t)
            ),
        )));
    }
    let mut next = current.clone();
    let target = pointer(&paths.spec_replicas);
    set_pointer(&mut next, &target, json!(replicas));
    // The Scale's resourceVersion, when given, is a precondition on the object.
    let pinned = match wanted
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) if !rv.is_empty() && (*method == Method::PUT || client_rv) => {
            next["metadata"]["resourceVersion"] = json!(rv);
            true
        }
        _ => {
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            false
        }
    };
    let main = Target {
        resource: t.resource.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
        dry_run: t.dry_run,
        manager: t.manager.clone(),
        field_validation: super::FieldValidation::Ignore,
        warnings: Default::default(),
        user: t.user.clone(),
    };
    let written = write(api, &main, next, super::Ownership::Update(Some("scale")))
        .map_err(|e| (e, pinned))?;
    Ok(json_response(StatusCode::OK, &scale_of(paths, &written)))
}

fn set_pointer(v: &mut Value, pointer: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*p).to_owned(), value);
            return;
        }
        cur = map.entry((*p).to_owned()).or_insert_with(|| json!({}));
    }
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        && pod.pointer("/metadata/deletionTimestamp").is_none()
}

/// An `int` or `"N%"` of `total` (percentages round up, as the disruption controller does).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.parse().ok()?;
            let p = p.clamp(0, 100);
            Some((p * total).saturating_add(99) / 100)
        }
        _ => None,
    }
}

/// POST `pods/<name>/eviction`: deletes the pod unless a PodDisruptionBudget selecting it has no
/// disruption to spare (429), counting the budget's healthy pods now.
pub(crate) fn evict(api: &Api, t: &Target, body: Bytes) -> Result<Response, ApiError> {
    let eviction = if body.is_empty() {
        json!({})
    } else {
        parse_body(&body)?
    };
    if eviction["kind"].as_str().is_some_and(|k| k != "Eviction") {
        return Err(ApiError::bad_request("the body must be an Eviction"));
    }
    let pod = api
        .store
        .get("pods", ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    let budgets = api
        .store
        .list_all("poddisruptionbudgets.policy", ns(t))
        .map_err(|e| store_error(&t.resource, e))?;
    if ready(&pod) {
        for pdb in &budgets {
            let text = selector_text(&pdb["spec"]["selector"]);
            let Ok(selector) = LabelSelector::parse(&text) else {
                continue;
            };
            if pdb["spec"]["selector"].is_null() || !selector.matches(&pod) {
                continue;
            }
            let (pods, _) = api
                .store
                .list("pods", ns(t), &selector, &FieldSelector::default())
                .map_err(|e| store_error(&t.resource, e))?;
            let expected = pods.len() as i64;
            let healthy = pods.iter().filter(|p| ready(p)).count() as i64;
            let desired = if let Some(min) = pdb["spec"].get("minAvailable") {
                scaled(min, expected).unwrap_or(0)
            } else if let Some(max) = pdb["spec"].get("maxUnavailable") {
                expected.saturating_sub(scaled(max, expected).unwrap_or(0))
            } else {
                0
            };
            if healthy.saturating_sub(desired) <= 0 {
                let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or_default();
                return Err(ApiError::with(
                    429,
                    "TooManyRequests",
                    format!(
                        "evicting this pod would break PodDisruptionBudget {pdb_name}: it needs {desired} healthy pods and {healthy} are healthy now"
                    ),
                ));
            }
        }
    }
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    delete_object(api, t, pod, &options)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
