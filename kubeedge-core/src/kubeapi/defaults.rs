//! Defaulting: the values a Kubernetes API server fills in on create and update, so that objects
//! read back (and `dryRun` answers) look as they would from any cluster.
//!
//! Covered: Secrets (`type`, `stringData` folded into `data`), Services (`type`, `sessionAffinity`,
//! port `protocol` and `targetPort`), pod specs wherever they appear (pods and workload templates:
//! restart and DNS policy, scheduler, grace period, container pull policy, termination message,
//! port protocol), workloads (replicas, strategies, history limits, selectors' defaults), Jobs,
//! Namespaces (the `kubernetes` finalizer and `Active` phase) and ServiceAccount-less pods.

use base64::Engine as _;
use serde_json::{Value, json};

use super::registry::Resource;

/// The object at `path` under `v`, if every step is an object that has it.
fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(v, |v, k| v.get_mut(*k))
        .filter(|v| v.is_object())
}

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(o) = obj.as_object_mut() {
        let slot = o.entry(key.to_owned()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = v;
        }
    }
}

/// Fills in what `r`'s objects get by default.
pub fn apply(r: &Resource, obj: &mut Value) {
    match (r.group.as_str(), r.plural.as_str()) {
        ("", "secrets") => secret(obj),
        ("", "services") => service(obj),
        ("", "namespaces") => {
            set_default(obj, "spec", json!({}));
            if let Some(v) = at(obj, &["spec"]) {
                set_default(v, "finalizers", json!(["kubernetes"]));
            }
            set_default(obj, "status", json!({}));
            if let Some(v) = at(obj, &["status"]) {
                set_default(v, "phase", json!("Active"));
            }
        }
        ("", "pods") => pod_spec(at(obj, &["spec"])),
        ("", "podtemplates") => pod_spec(at(obj, &["template", "spec"])),
        ("", "replicationcontrollers") => {
            if let Some(v) = at(obj, &["spec"]) {
                set_default(v, "replicas", json!(1));
            }
            pod_spec(at(obj, &["spec", "template", "spec"]));
        }
        ("apps", "deployments") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            pod_spec(at(spec, &["template", "spec"]));
        }
        ("apps", "replicasets") => {
            if let Some(v) = at(obj, &["spec"]) {
                set_default(v, "replicas", json!(1));
            }
            pod_spec(at(obj, &["spec", "template", "spec"]));
        }
        ("apps", "statefulsets") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            pod_spec(at(spec, &["template", "spec"]));
        }
        ("apps", "daemonsets") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            pod_spec(at(spec, &["template", "spec"]));
        }
        ("batch", "jobs") => job_spec(at(obj, &["spec"])),
        ("batch", "cronjobs") => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(at(spec, &["jobTemplate", "spec"]));
        }
        _ => {}
    }
}

fn secret(obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    set_default(obj, "type", json!("Opaque"));
    // stringData is write-only: its entries become data (and win over data's).
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        set_default(obj, "data", json!({}));
        if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
            for (k, v) in string_data {
                if let Some(s) = v.as_str() {
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
    }
}

fn service(obj: &mut Value) {
    let Some(spec) = at(obj, &["spec"]) else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter(|p| p.is_object()) {
            set_default(p, "protocol", json!("TCP"));
            let port = p["port"].clone();
            if p["targetPort"].is_null() || p["targetPort"] == 0 {
                p["targetPort"] = port;
            }
        }
    }
}

fn job_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec else {
        return;
    };
    set_default(spec, "parallelism", json!(1));
    if spec.get("completions").is_none_or(Value::is_null) && spec["parallelism"] == 1 {
        spec["completions"] = json!(1);
    }
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    if let Some(pod) = at(spec, &["template", "spec"]) {
        set_default(pod, "restartPolicy", json!("Never"));
        pod_spec(Some(pod));
    }
}

fn pod_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec else {
        return;
    };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            volume(v);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                container(c);
            }
        }
    }
}

/// Go's 0644, the mode of files projected from ConfigMaps, Secrets and the downward API.
const FILE_MODE: i64 = 0o644;

/// A volume as kube-apiserver defaults it (upstream kubelets refuse a configMap volume without
/// `defaultMode`): no source means an emptyDir; file modes; the downward API's field version;
/// projected tokens' lifetime.
fn volume(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if !SOURCES
        .iter()
        .any(|k| obj.get(*k).is_some_and(|s| !s.is_null()))
    {
        obj.insert("emptyDir".into(), json!({}));
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(s) = obj.get_mut(source).filter(|s| s.is_object()) {
            set_default(s, "defaultMode", json!(FILE_MODE));
        }
    }
    if let Some(h) = obj.get_mut("hostPath").filter(|s| s.is_object()) {
        set_default(h, "type", json!(""));
    }
    if let Some(items) = obj
        .get_mut("downwardAPI")
        .and_then(|d| d.get_mut("items"))
        .and_then(Value::as_array_mut)
    {
        items.iter_mut().for_each(field_ref_version);
    }
    if let Some(sources) = obj
        .get_mut("projected")
        .and_then(|p| p.get_mut("sources"))
        .and_then(Value::as_array_mut)
    {
        for s in sources {
            if let Some(t) = s.get_mut("serviceAccountToken").filter(|t| t.is_object()) {
                set_default(t, "expirationSeconds", json!(3600));
            }
            if let Some(items) = s
                .get_mut("downwardAPI")
                .and_then(|d| d.get_mut("items"))
                .and_then(Value::as_array_mut)
            {
                items.iter_mut().for_each(field_ref_version);
            }
        }
    }
}

/// `fieldRef.apiVersion` defaults to `v1`.
fn field_ref_version(item: &mut Value) {
    if let Some(f) = item.get_mut("fieldRef").filter(|f| f.is_object()) {
        set_default(f, "apiVersion", json!("v1"));
    }
}

/// A probe's timings and an HTTP probe's scheme.
fn probe(p: &mut Value) {
    if !p.is_object() {
        return;
    }
    set_default(p, "timeoutSeconds", json!(1));
    set_default(p, "periodSeconds", json!(10));
    set_default(p, "successThreshold", json!(1));
    set_default(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
        set_default(h, "scheme", json!("HTTP"));
    }
}

fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(kind) {
            probe(p);
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env {
            if let Some(from) = e.get_mut("valueFrom") {
                field_ref_version(from);
            }
        }
    }
    // Requests default to the limits where only limits are given.
    if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
        let resources = &mut c["resources"];
        if !resources["requests"].is_object() {
            resources["requests"] = json!({});
        }
        for (k, q) in limits {
            if resources["requests"].get(&k).is_none() {
                resources["requests"][k] = q;
            }
        }
    }
    let image = c["image"].as_str().unwrap_or_default();
    // `:latest` (or no tag) is pulled every time; a pinned tag or digest when missing.
    let last = image.rsplit('/').next().unwrap_or(image);
    let pull =
        if image.contains('@') || last.split_once(':').is_some_and(|(_, tag)| tag != "latest") {
            "IfNotPresent"
        } else {
            "Always"
        };
    set_default(c, "imagePullPolicy", json!(pull));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::registry::builtins;

    fn resource(plural: &str) -> Resource {
        builtins().into_iter().find(|r| r.plural == plural).unwrap()
    }

    #[test]
    fn secrets_fold_string_data_into_data() {
        let mut s =
            json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        apply(&resource("secrets"), &mut s);
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn pods_and_deployments_get_the_usual_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox:1.36", "ports": [{"containerPort": 80}]}]}}}});
        apply(&resource("deployments"), &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][1]["ports"][0]["protocol"], "TCP");
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "x",
            "resources": {"limits": {"cpu": "1"}}, "readinessProbe": {"httpGet": {"port": 80}}}],
            "volumes": [{"name": "c", "configMap": {"name": "c"}}, {"name": "e"},
                        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}});
        apply(&resource("pods"), &mut p);
        let spec = &p["spec"];
        assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][1]["emptyDir"], json!({}));
        assert_eq!(
            spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
        assert_eq!(spec["containers"][0]["resources"]["requests"]["cpu"], "1");
        assert_eq!(spec["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(
            spec["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
            "HTTP"
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply(&resource("services"), &mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }
}
