//! Node condition taints and NoExecute eviction, made for the edge.
//!
//! A node whose `Ready` condition is `Unknown` (silent past its grace period, see
//! [`crate::lifecycle`]) is tainted `node.kubernetes.io/unreachable`, one that reports
//! `Ready=False` `node.kubernetes.io/not-ready`, each with effects NoSchedule and NoExecute and the
//! time they were added; the taints go when the node is Ready again.
//!
//! Eviction keeps edge autonomy: a pod with no toleration for these two taints stays bound and
//! keeps running on its offline edge (the apiserver adds no default 300 s tolerations here). A pod
//! that tolerates the taint for `tolerationSeconds` is evicted (deleted, and replaced elsewhere by
//! its controller) once that time has passed since the taint was added. Any other NoExecute taint
//! evicts the pods that do not tolerate it at once, and those that do after their
//! `tolerationSeconds`, as in Kubernetes.

use std::time::{Duration, SystemTime};

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::{self, Event};
use serde_json::{Value, json};

use super::scheduler::tolerates;
use super::{Cache, Controller, Ctx, Key, NODES, PODS, active, meta, parse_time};

/// The taint of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports it is not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The taint manager (see the module docs).
#[derive(Debug, Default)]
pub struct TaintEviction;

fn ready_status(node: &Value) -> &str {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
}

/// The condition taints the node should carry now (`key`s), by its Ready condition.
fn condition_taint(node: &Value) -> Option<&'static str> {
    // A node that never reported has no conditions yet: not tainted until it has.
    if node["status"]["conditions"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        return None;
    }
    match ready_status(node) {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

impl Controller for TaintEviction {
    fn name(&self) -> &'static str {
        "taint-eviction"
    }

    fn kind(&self) -> Kind<'static> {
        NODES
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        // A pod newly bound to a node with NoExecute taints.
        if ev.resource == "pods"
            && let Some(node) = ev.object["spec"]["nodeName"].as_str()
        {
            return vec![(String::new(), node.to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(node) = ctx.cache.get(NODES, "", &key.1) else {
            return Ok(None);
        };
        // Keep the condition taints in step with the Ready condition.
        let want = condition_taint(&node);
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut next_taints: Vec<Value> = taints
            .iter()
            .filter(|t| {
                let k = t["key"].as_str().unwrap_or_default();
                !(k == UNREACHABLE || k == NOT_READY) || Some(k) == want
            })
            .cloned()
            .collect();
        if let Some(k) = want {
            let now = store::rfc3339(ctx.now);
            for effect in ["NoSchedule", "NoExecute"] {
                if !next_taints
                    .iter()
                    .any(|t| t["key"] == k && t["effect"] == effect)
                {
                    let mut t = json!({"key": k, "effect": effect});
                    if effect == "NoExecute" {
                        t["timeAdded"] = json!(now);
                    }
                    next_taints.push(t);
                }
            }
        }
        let node = if next_taints != taints {
            let mut next = (*node).clone();
            if next_taints.is_empty() {
                if let Some(spec) = next["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            } else {
                next["spec"]["taints"] = json!(next_taints);
            }
            std::sync::Arc::new(ctx.update(NODES, next, false)?)
        } else {
            node
        };
        let no_execute: Vec<&Value> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == "NoExecute")
            .collect();
        if no_execute.is_empty() {
            return Ok(None);
        }
        let mut soonest: Option<Duration> = None;
        let pods: Vec<_> = ctx
            .cache
            .list(PODS, None)
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == key.1.as_str() && active(p))
            .collect();
        for pod in pods {
            let tolerations = pod["spec"]["tolerations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut evict_at: Option<SystemTime> = None;
            for taint in &no_execute {
                let added = taint["timeAdded"]
                    .as_str()
                    .and_then(parse_time)
                    .unwrap_or(ctx.now);
                let matching: Vec<&Value> =
                    tolerations.iter().filter(|t| tolerates(t, taint)).collect();
                let condition = taint["key"] == UNREACHABLE || taint["key"] == NOT_READY;
                if matching.is_empty() {
                    if condition {
                        // Edge autonomy: no toleration, no eviction.
                        continue;
                    }
                    evict_at = Some(ctx.now);
                    break;
                }
                // Tolerated forever unless every matching toleration is limited.
                let limit = matching
                    .iter()
                    .map(|t| t["tolerationSeconds"].as_i64())
                    .try_fold(0i64, |m, s| s.map(|s| m.max(s)));
                if let Some(secs) = limit {
                    let at = added + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
                    evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
                }
            }
            let Some(at) = evict_at else { continue };
            match at.duration_since(ctx.now) {
                Ok(left) if !left.is_zero() => {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                }
                _ => {
                    tracing::info!(
                        pod = meta(&pod, "name"),
                        namespace = meta(&pod, "namespace"),
                        node = key.1,
                        "evicting a pod whose toleration of a NoExecute taint ran out"
                    );
                    ctx.event(
                        &pod,
                        "Normal",
                        "TaintManagerEviction",
                        &format!(
                            "Marking for deletion Pod {}/{}",
                            meta(&pod, "namespace"),
                            meta(&pod, "name")
                        ),
                        "taint-eviction-controller",
                    );
                    ctx.delete(
                        PODS,
                        meta(&pod, "namespace"),
                        meta(&pod, "name"),
                        &json!({}),
                    )?;
                }
            }
        }
        Ok(soonest.map(|d| d + Duration::from_millis(50)))
    }
}
