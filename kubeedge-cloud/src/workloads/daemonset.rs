//! DaemonSets: one pod on every node the template may run on (its `nodeSelector` and required
//! node affinity match, its tolerations cover the node's NoSchedule and NoExecute taints), bound
//! to the node directly; a node that joins later gets its pod, a node that stops matching loses
//! it. Daemon pods tolerate the node conditions' taints (not-ready, unreachable, pressure,
//! unschedulable), so an offline edge keeps them. A changed template rolls node by node
//! (`RollingUpdate`, at most `maxUnavailable` pods down at once; `OnDelete` waits for the user to
//! delete them); pods carry the template's hash as `controller-revision-hash`. The status has the
//! counts `kubectl get ds` and `kubectl rollout status ds` read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::Event;
use serde_json::{Value, json};

use super::replicaset::{pod_from_template, until_available, write_status};
use super::scheduler::{node_matches, untolerated};
use super::{
    Cache, Controller, Ctx, DAEMONSETS, Key, NODES, PODS, active, available, int_or_percent,
    key_of, meta, owner_key, random_suffix, ready, template_hash, terminating,
};

/// The label with the hash of the template a daemon pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// The tolerations every daemon pod gets (kube-controller-manager adds the same).
fn daemon_tolerations() -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
    ];
    for key in [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/network-unavailable",
    ] {
        t.push(json!({"key": key, "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The DaemonSet controller.
#[derive(Debug, Default)]
pub struct DaemonSetController;

impl Controller for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn kind(&self) -> Kind<'static> {
        DAEMONSETS
    }

    fn affected(&mut self, cache: &Cache, ev: &Event) -> Vec<Key> {
        match ev.resource.as_str() {
            "pods" => owner_key(ev, "pods", "DaemonSet"),
            // A node's labels, taints or readiness may change where daemons run.
            "nodes" => cache
                .list(DAEMONSETS, None)
                .iter()
                .map(|d| key_of(d))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(ds) = ctx.cache.get(DAEMONSETS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&ds) {
            return Ok(None);
        }
        let mut template = ds["spec"]["template"].clone();
        let hash = template_hash(&template);
        let mut tolerations = template["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        tolerations.extend(daemon_tolerations());
        template["spec"]["tolerations"] = Value::Array(tolerations);
        let min_ready = Duration::from_secs(ds["spec"]["minReadySeconds"].as_u64().unwrap_or(0));
        let probe =
            json!({"spec": template["spec"].clone(), "metadata": template["metadata"].clone()});
        let nodes = ctx.cache.list(NODES, None);
        let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for p in ctx.cache.controlled_pods(meta(&ds, "uid")) {
            if active(&p) {
                let node = p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                by_node.entry(node).or_default().push(p);
            }
        }
        let generation = ds["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            .to_string();
        let (mut desired, mut scheduled, mut misscheduled, mut updated) = (0, 0, 0, 0);
        let mut running: Vec<Arc<Value>> = Vec::new();
        let mut outdated: Vec<Arc<Value>> = Vec::new();
        for node in &nodes {
            let name = meta(node, "name");
            let should_run = node_matches(&probe, node)
                && untolerated(&probe, node, &["NoSchedule", "NoExecute"]).is_empty();
            let mut pods = by_node.remove(name).unwrap_or_default();
            if should_run {
                desired += 1;
                if pods.is_empty() {
                    let pod_name = format!("{}-{}", key.1, random_suffix(5));
                    let mut pod = pod_from_template(
                        &ds,
                        &template,
                        &pod_name,
                        &[
                            (HASH_LABEL, hash.as_str()),
                            ("pod-template-generation", generation.as_str()),
                        ],
                    );
                    pod["spec"]["nodeName"] = json!(name);
                    let made = ctx.create(PODS, &key.0, pod)?;
                    pods.push(Arc::new(made));
                }
                // One pod per node: the oldest stays.
                pods.sort_by_key(|p| meta(p, "creationTimestamp").to_owned());
                for extra in pods.drain(1..) {
                    ctx.delete(PODS, &key.0, meta(&extra, "name"), &json!({}))?;
                }
                scheduled += 1;
                if pods[0]["metadata"]["labels"][HASH_LABEL] == hash.as_str() {
                    updated += 1;
                } else {
                    outdated.push(pods[0].clone());
                }
                running.push(pods[0].clone());
            } else if !pods.is_empty() {
                misscheduled += 1;
                for p in pods {
                    ctx.delete(PODS, &key.0, meta(&p, "name"), &json!({}))?;
                }
            }
        }
        // Pods on nodes that are gone.
        for pods in by_node.into_values() {
            for p in pods {
                ctx.delete(PODS, &key.0, meta(&p, "name"), &json!({}))?;
            }
        }
        let ready_count = running.iter().filter(|p| ready(p)).count();
        let available_count = running
            .iter()
            .filter(|p| available(p, min_ready, ctx.now))
            .count();
        // Rolling update: outdated pods go while few enough are down.
        if ds["spec"]["updateStrategy"]["type"] != "OnDelete" && !outdated.is_empty() {
            let max_unavailable = int_or_percent(
                &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
                desired,
                true,
            )
            .max(1);
            let mut down = (desired - available_count as i64).max(0);
            outdated.sort_by_key(|p| available(p, min_ready, ctx.now));
            for p in outdated {
                let counts = available(&p, min_ready, ctx.now);
                if counts && down >= max_unavailable {
                    break;
                }
                ctx.delete(PODS, &key.0, meta(&p, "name"), &json!({}))?;
                if counts {
                    down += 1;
                }
            }
        }
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": misscheduled,
            "numberReady": ready_count,
            "numberAvailable": available_count,
            "numberUnavailable": (desired - available_count as i64).max(0),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"]["generation"],
        });
        write_status(ctx, DAEMONSETS, &ds, status)?;
        Ok(until_available(&running, min_ready, ctx.now))
    }
}
