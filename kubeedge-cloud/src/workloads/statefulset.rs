//! StatefulSets: pods with stable ordinal names (`<set>-0` … `<set>-<n-1>`), each with its
//! `hostname` and the Service's `subdomain`, labelled `statefulset.kubernetes.io/pod-name`,
//! `apps.kubernetes.io/pod-index` and `controller-revision-hash`. `OrderedReady` (the default)
//! makes them one at a time in order, each once the ones before are Running and Ready, and
//! removes them from the highest ordinal down; `Parallel` makes and removes them all at once. A
//! changed template rolls from the highest ordinal down, one pod at a time and only while all are
//! Ready, sparing ordinals below `partition`. The status has the counts and the current and
//! update revisions `kubectl rollout status sts` reads. A pod made again takes the newest
//! template, below the partition too (Kubernetes would remake it from its old revision).
//! `volumeClaimTemplates` are not made: edge storage is the node's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::Event;
use serde_json::{Value, json};

use super::replicaset::{pod_from_template, until_available, write_status};
use super::{
    Cache, Controller, Ctx, Key, PODS, STATEFULSETS, available, finished, meta, owner_key, ready,
    template_hash, terminating,
};

/// The label with the revision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The StatefulSet controller.
#[derive(Debug, Default)]
pub struct StatefulSetController;

fn ordinal(set: &str, pod: &str) -> Option<usize> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

impl Controller for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn kind(&self) -> Kind<'static> {
        STATEFULSETS
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        owner_key(ev, "pods", "StatefulSet")
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(set) = ctx.cache.get(STATEFULSETS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&set) {
            return Ok(None);
        }
        let name = key.1.as_str();
        let replicas = set["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let parallel = set["spec"]["podManagementPolicy"] == "Parallel";
        let on_delete = set["spec"]["updateStrategy"]["type"] == "OnDelete";
        let partition = set["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_u64()
            .unwrap_or(0) as usize;
        let min_ready = Duration::from_secs(set["spec"]["minReadySeconds"].as_u64().unwrap_or(0));
        let revision = format!("{name}-{}", template_hash(&set["spec"]["template"]));
        // Pods by ordinal (those being deleted still hold their name).
        let mut pods: BTreeMap<usize, Arc<Value>> = BTreeMap::new();
        for p in ctx.cache.controlled_pods(meta(&set, "uid")) {
            if let Some(i) = ordinal(name, meta(&p, "name")) {
                pods.insert(i, p);
            }
        }
        // A finished pod of a set is replaced, as the kubelet never restarts it.
        for (_, p) in pods.iter().filter(|(_, p)| finished(p) && !terminating(p)) {
            ctx.delete(PODS, &key.0, meta(p, "name"), &json!({}))?;
        }
        let healthy = |p: &Value| ready(p) && !terminating(p) && !finished(p);
        // Make the missing ones, in order unless Parallel.
        for i in 0..replicas {
            if pods.contains_key(&i) {
                if !parallel && !healthy(&pods[&i]) {
                    break;
                }
                continue;
            }
            let pod_name = format!("{name}-{i}");
            let index = i.to_string();
            let mut pod = pod_from_template(
                &set,
                &set["spec"]["template"],
                &pod_name,
                &[
                    ("statefulset.kubernetes.io/pod-name", pod_name.as_str()),
                    ("apps.kubernetes.io/pod-index", index.as_str()),
                    (REVISION_LABEL, revision.as_str()),
                ],
            );
            pod["spec"]["hostname"] = json!(pod_name);
            if let Some(svc) = set["spec"]["serviceName"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                pod["spec"]["subdomain"] = json!(svc);
            }
            let made = ctx.create(PODS, &key.0, pod)?;
            pods.insert(i, Arc::new(made));
            if !parallel {
                break;
            }
        }
        // Remove the ones past the count, from the highest down.
        let surplus: Vec<usize> = pods.range(replicas..).map(|(i, _)| *i).rev().collect();
        for i in surplus {
            let p = pods[&i].clone();
            if !terminating(&p) {
                let all_ready = pods.range(..i).all(|(_, q)| healthy(q));
                if parallel || all_ready {
                    ctx.delete(PODS, &key.0, meta(&p, "name"), &json!({}))?;
                }
            }
            if !parallel {
                break;
            }
        }
        // Roll: the highest outdated pod at or above the partition goes, once all are Ready.
        let in_range: Vec<(usize, Arc<Value>)> = pods
            .range(..replicas)
            .map(|(i, p)| (*i, p.clone()))
            .collect();
        let all_healthy = in_range.len() == replicas && in_range.iter().all(|(_, p)| healthy(p));
        if !on_delete
            && all_healthy
            && let Some((_, p)) = in_range.iter().rev().find(|(i, p)| {
                *i >= partition && p["metadata"]["labels"][REVISION_LABEL] != revision.as_str()
            })
        {
            ctx.delete(PODS, &key.0, meta(p, "name"), &json!({}))?;
        }
        let live: Vec<Arc<Value>> = in_range
            .iter()
            .map(|(_, p)| p.clone())
            .filter(|p| !terminating(p))
            .collect();
        let updated = live
            .iter()
            .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
            .count();
        let ready_count = live.iter().filter(|p| ready(p)).count();
        let current_revision = set["status"]["currentRevision"]
            .as_str()
            .filter(|_| updated < replicas || ready_count < replicas)
            .unwrap_or(revision.as_str())
            .to_owned();
        let current = live
            .iter()
            .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == current_revision.as_str())
            .count();
        let status = json!({
            "observedGeneration": set["metadata"]["generation"],
            "replicas": live.len(),
            "readyReplicas": ready_count,
            "availableReplicas": live.iter().filter(|p| available(p, min_ready, ctx.now)).count(),
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": 0,
        });
        write_status(ctx, STATEFULSETS, &set, status)?;
        Ok(until_available(&live, min_ready, ctx.now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_set_name() {
        assert_eq!(ordinal("db", "db-0"), Some(0));
        assert_eq!(ordinal("db", "db-12"), Some(12));
        assert_eq!(ordinal("db", "db-x"), None);
        assert_eq!(ordinal("db", "dbx-1"), None);
        assert_eq!(ordinal("db-1", "db-1-3"), Some(3));
    }
}
