//! One stored object seen through two APIs: `events.k8s.io/v1` Events are core `v1` Events with
//! other field names (`note` is `message`, `regarding` is `involvedObject`, ...), so that an event
//! recorded through either API is listed by both (`kubectl describe` reads core Events; kube-rs's
//! `Recorder` writes `events.k8s.io`).

use serde_json::{Map, Value};

use super::registry::Resource;

/// `events.k8s.io/v1` name, core `v1` name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn is_events_view(r: &Resource) -> bool {
    r.group == "events.k8s.io" && r.plural == "events"
}

fn rename(
    obj: Value,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
    api_version: &str,
) -> Value {
    let Value::Object(mut fields) = obj else {
        return obj;
    };
    let mut out = Map::with_capacity(fields.len());
    for (from, to) in pairs {
        if let Some(v) = fields.remove(from) {
            out.insert(to.to_owned(), v);
        }
    }
    out.extend(fields);
    out.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    Value::Object(out)
}

/// The stored form of `obj`, written through `r`.
pub(crate) fn inward(r: &Resource, obj: Value) -> Value {
    if !is_events_view(r) {
        return obj;
    }
    let mut core = rename(obj, EVENT_FIELDS.iter().copied(), "v1");
    // Core readers show where an event came from by its source.
    if core.pointer("/source/component").is_none()
        && core
            .get("source")
            .is_none_or(|s| s.is_object() || s.is_null())
        && let Some(c) = core.get("reportingComponent").cloned()
    {
        core["source"]["component"] = c;
    }
    core
}

/// Whether `r` is a custom resource (defined by a CRD, whatever its group).
fn is_custom(r: &Resource) -> bool {
    !super::registry::is_builtin(&r.group, &r.plural)
}

/// `obj` (stored form) as `r` shows it. A custom resource served in several versions is stored
/// in the version it was written in and shown in the one asked for: the `None` conversion of
/// CRDs, which changes `apiVersion` only.
pub(crate) fn outward(r: &Resource, mut obj: Value) -> Value {
    if is_custom(r) {
        let wanted = format!("{}/{}", r.group, r.version);
        let same_group = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.rsplit_once('/'))
            .is_some_and(|(g, _)| g == r.group);
        if same_group && obj["apiVersion"] != wanted.as_str() {
            obj["apiVersion"] = Value::String(wanted);
        }
        return obj;
    }
    if !is_events_view(r) {
        return obj;
    }
    rename(
        obj,
        EVENT_FIELDS.iter().map(|(view, core)| (*core, *view)),
        "events.k8s.io/v1",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::registry::builtins;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_the_two_apis() {
        let view = builtins()
            .into_iter()
            .find(|r| r.group == "events.k8s.io")
            .unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "note": "pulled", "reason": "Pulled",
            "regarding": {"kind": "Pod", "name": "p"}, "reportingController": "kubelet",
            "eventTime": "2024-01-01T00:00:00.000000Z"});
        let core = inward(&view, ev.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["source"]["component"], "kubelet");
        let back = outward(&view, core);
        assert_eq!(back["note"], "pulled");
        assert_eq!(back["regarding"], ev["regarding"]);
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
