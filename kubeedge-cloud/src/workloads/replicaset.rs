//! ReplicaSets: keeps `spec.replicas` pods from the template running, each with the ReplicaSet as
//! its controlling owner, and reports `replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//! `availableReplicas` (Ready for `minReadySeconds`) and `observedGeneration`. Surplus pods go in
//! kube-controller-manager's order: unscheduled, then not Ready, then the newest.

use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::Event;
use serde_json::{Value, json};

use super::{
    Cache, Controller, Ctx, Key, PODS, REPLICASETS, active, available, meta, owner_key, owner_ref,
    random_suffix, ready, ready_since, terminating,
};

/// Pods a ReplicaSet creates in one pass at most (the rest in the next).
pub const BURST: usize = 500;

/// The ReplicaSet controller.
#[derive(Debug, Default)]
pub struct ReplicaSetController;

/// A new pod from `owner`'s template (`spec.template`), named `<owner>-<suffix>`, controlled by
/// it; `extra_labels` are added to the template's.
pub fn pod_from_template(
    owner: &Value,
    template: &Value,
    name: &str,
    extra_labels: &[(&str, &str)],
) -> Value {
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(meta(owner, "namespace"));
    for (k, v) in extra_labels {
        metadata["labels"][*k] = json!(v);
    }
    if let Some(m) = metadata.as_object_mut() {
        m.remove("creationTimestamp");
        m.remove("generateName");
    }
    metadata["ownerReferences"] = json!([owner_ref(owner)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"].clone()})
}

/// How long a Ready pod still has to wait to count as available, if it is not yet.
pub fn until_available(
    pods: &[std::sync::Arc<Value>],
    min_ready: Duration,
    now: std::time::SystemTime,
) -> Option<Duration> {
    pods.iter()
        .filter_map(|p| ready_since(p))
        .filter_map(|since| (since + min_ready).duration_since(now).ok())
        .filter(|d| !d.is_zero())
        .min()
        .map(|d| d + Duration::from_millis(50))
}

/// The pod deletion order when scaling down: unscheduled first, then not Ready, then the newest.
fn deletion_rank(pod: &Value) -> (u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    (
        u8::from(scheduled),
        u8::from(ready(pod)),
        std::cmp::Reverse(meta(pod, "creationTimestamp").to_owned()),
    )
}

impl Controller for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn kind(&self) -> Kind<'static> {
        REPLICASETS
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        owner_key(ev, "pods", "ReplicaSet")
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(rs) = ctx.cache.get(REPLICASETS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&rs) {
            return Ok(None);
        }
        let uid = meta(&rs, "uid").to_owned();
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let mut pods: Vec<_> = ctx
            .cache
            .controlled_pods(&uid)
            .into_iter()
            .filter(|p| active(p))
            .collect();
        let mut more = false;
        if pods.len() < want {
            // At most BURST at a time, so that the scheduler and the others take turns.
            let missing = want - pods.len();
            more = missing > BURST;
            for _ in 0..missing.min(BURST) {
                let name = format!("{}-{}", key.1, random_suffix(5));
                let pod = pod_from_template(&rs, &rs["spec"]["template"], &name, &[]);
                match ctx.create(PODS, &key.0, pod) {
                    Ok(made) => pods.push(std::sync::Arc::new(made)),
                    Err(e) if e.code == 409 => return Err(e),
                    Err(e) => {
                        ctx.event(
                            &rs,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {}", e.message),
                            "replicaset-controller",
                        );
                        return Err(e);
                    }
                }
            }
        } else if pods.len() > want {
            pods.sort_by_key(|p| deletion_rank(p));
            let surplus: Vec<_> = pods.drain(..pods.len() - want).collect();
            for p in surplus {
                ctx.delete(PODS, &key.0, meta(&p, "name"), &json!({}))?;
            }
        }
        let min_ready = Duration::from_secs(rs["spec"]["minReadySeconds"].as_u64().unwrap_or(0));
        let status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": pods.len(),
            "readyReplicas": pods.iter().filter(|p| ready(p)).count(),
            "availableReplicas": pods.iter().filter(|p| available(p, min_ready, ctx.now)).count(),
            "observedGeneration": rs["metadata"]["generation"],
        });
        write_status(ctx, REPLICASETS, &rs, status)?;
        if more {
            return Ok(Some(Duration::ZERO));
        }
        Ok(until_available(&pods, min_ready, ctx.now))
    }
}

/// Writes `status` (its counts; the conditions already there are kept unless `status` has its
/// own) if it differs from the object's.
pub fn write_status(
    ctx: &mut Ctx<'_>,
    kind: Kind<'_>,
    obj: &Value,
    mut status: Value,
) -> Result<(), ApiError> {
    if let Some(m) = status.as_object_mut() {
        m.retain(|_, v| !v.is_null());
        if !m.contains_key("conditions")
            && let Some(c) = obj.pointer("/status/conditions")
        {
            m.insert("conditions".into(), c.clone());
        }
    }
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut next = obj.clone();
    next["status"] = status;
    ctx.update(kind, next, true)?;
    Ok(())
}
