//! Deployments: one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`, with
//! the `deployment.kubernetes.io/revision` annotation `kubectl rollout history|undo` read), rolled
//! from the old ones to the new one by the strategy: `RollingUpdate` within `maxSurge` and
//! `maxUnavailable` (25% each by default), or `Recreate` (old pods gone before new ones start).
//! The status is what `kubectl get` and `kubectl rollout status` read: `replicas`,
//! `updatedReplicas`, `readyReplicas`, `availableReplicas`, `unavailableReplicas`,
//! `observedGeneration` and the `Available` and `Progressing` conditions (reason
//! `NewReplicaSetAvailable` once rolled). Old ReplicaSets scaled to zero are kept up to
//! `revisionHistoryLimit`. A paused Deployment is scaled but not rolled.

use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::Event;
use serde_json::{Value, json};

use super::replicaset::write_status;
use super::scheduler::set_condition;
use super::{
    Cache, Controller, Ctx, DEPLOYMENTS, Key, REPLICASETS, controller_uid, int_or_percent, meta,
    owner_key, owner_ref, template_hash, terminating,
};

/// The annotation that numbers a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const HASH_LABEL: &str = "pod-template-hash";

/// The Deployment controller.
#[derive(Debug, Default)]
pub struct DeploymentController;

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_count(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

/// A ReplicaSet's template without the hash label: what is compared with the Deployment's.
fn bare_template(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    if let Some(m) = t["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
    }
    t
}

fn template_of(d: &Value) -> Value {
    let mut t = d["spec"]["template"].clone();
    if let Some(m) = t["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
    }
    t
}

impl DeploymentController {
    fn new_replica_set(
        &self,
        ctx: &mut Ctx<'_>,
        d: &Value,
        template: &Value,
        revision: i64,
        replicas: i64,
    ) -> Result<Value, ApiError> {
        let hash = template_hash(template);
        let mut template = template.clone();
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut labels = template["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let mut annotations = json!({
            REVISION: revision.to_string(),
            "deployment.kubernetes.io/desired-replicas": spec_replicas(d).to_string(),
        });
        if let Some(cause) = d["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str() {
            annotations["kubernetes.io/change-cause"] = json!(cause);
        }
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{}-{hash}", meta(d, "name")), "namespace": meta(d, "namespace"),
                         "labels": labels, "annotations": annotations, "ownerReferences": [owner_ref(d)]},
            "spec": {"replicas": replicas, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                     "selector": selector, "template": template},
        });
        ctx.create(REPLICASETS, meta(d, "namespace"), rs)
    }

    fn scale(
        &self,
        ctx: &mut Ctx<'_>,
        rs: &Value,
        replicas: i64,
        d: &Value,
    ) -> Result<Value, ApiError> {
        if spec_replicas(rs) == replicas {
            return Ok(rs.clone());
        }
        let mut next = rs.clone();
        next["spec"]["replicas"] = json!(replicas);
        next["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
            json!(spec_replicas(d).to_string());
        ctx.update(REPLICASETS, next, false)
    }
}

impl Controller for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn kind(&self) -> Kind<'static> {
        DEPLOYMENTS
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        owner_key(ev, "replicasets.apps", "Deployment")
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(d) = ctx.cache.get(DEPLOYMENTS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&d) {
            return Ok(None);
        }
        let uid = meta(&d, "uid").to_owned();
        let mut sets: Vec<Value> = ctx
            .cache
            .list(REPLICASETS, Some(&key.0))
            .into_iter()
            .filter(|rs| controller_uid(rs) == Some(uid.as_str()) && !terminating(rs))
            .map(|rs| (*rs).clone())
            .collect();
        sets.sort_by_key(|rs| (revision(rs), meta(rs, "creationTimestamp").to_owned()));
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let template = template_of(&d);
        let paused = d["spec"]["paused"] == true;
        let max_revision = sets.iter().map(revision).max().unwrap_or(0);
        let current = sets.iter().position(|rs| bare_template(rs) == template);
        let mut created = false;
        let mut new = match current {
            Some(i) => {
                let mut rs = sets.remove(i);
                if revision(&rs) < max_revision && !paused {
                    // Rolled back to an older template: it becomes the newest revision.
                    rs["metadata"]["annotations"][REVISION] = json!((max_revision + 1).to_string());
                    rs = ctx.update(REPLICASETS, rs, false)?;
                }
                Some(rs)
            }
            None if paused => None,
            None => {
                let start = if d["spec"]["strategy"]["type"] == "Recreate" || !sets.is_empty() {
                    0
                } else {
                    replicas
                };
                created = true;
                Some(self.new_replica_set(ctx, &d, &template, max_revision + 1, start)?)
            }
        };
        let mut old = sets;
        if let Some(rs) = &new {
            let others: i64 = old.iter().map(spec_replicas).sum();
            if d["spec"]["strategy"]["type"] == "Recreate" {
                let mut old_running = false;
                for rs in &mut old {
                    if spec_replicas(rs) > 0 {
                        *rs = self.scale(ctx, rs, 0, &d)?;
                    }
                    old_running |= status_count(rs, "replicas") > 0;
                }
                if !old_running && !paused {
                    new = Some(self.scale(ctx, rs, replicas, &d)?);
                }
            } else if paused || others == 0 {
                // Nothing to roll: the new set simply follows the count.
                new = Some(self.scale(ctx, rs, replicas, &d)?);
            } else {
                let rolling = &d["spec"]["strategy"]["rollingUpdate"];
                let surge = int_or_percent(&rolling["maxSurge"], replicas, true).max(0);
                let mut unavailable =
                    int_or_percent(&rolling["maxUnavailable"], replicas, false).max(0);
                if surge == 0 && unavailable == 0 {
                    unavailable = 1;
                }
                // Up: the new set grows while all sets together stay within replicas + maxSurge.
                let new_replicas = spec_replicas(rs);
                let total = new_replicas + others;
                let target = if new_replicas > replicas {
                    replicas
                } else {
                    (new_replicas + (replicas + surge - total).max(0)).min(replicas)
                };
                let rs = self.scale(ctx, rs, target, &d)?;
                // Down: old sets shrink while enough pods stay available.
                let min_available = replicas - unavailable;
                let new_unavailable =
                    (spec_replicas(&rs) - status_count(&rs, "availableReplicas")).max(0);
                let all: i64 = spec_replicas(&rs) + others;
                let mut budget = all - min_available - new_unavailable;
                // Unhealthy old pods go first, as they count for nothing.
                for o in &mut old {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy =
                        (spec_replicas(o) - status_count(o, "availableReplicas")).max(0);
                    let cut = unhealthy.min(budget);
                    if cut > 0 {
                        *o = self.scale(ctx, o, spec_replicas(o) - cut, &d)?;
                        budget -= cut;
                    }
                }
                let available: i64 = status_count(&rs, "availableReplicas")
                    + old
                        .iter()
                        .map(|o| status_count(o, "availableReplicas").min(spec_replicas(o)))
                        .sum::<i64>();
                let mut down = (available - min_available).max(0).min(budget.max(0));
                for o in &mut old {
                    if down <= 0 {
                        break;
                    }
                    let cut = spec_replicas(o).min(down);
                    if cut > 0 {
                        *o = self.scale(ctx, o, spec_replicas(o) - cut, &d)?;
                        down -= cut;
                    }
                }
                new = Some(rs);
            }
        }
        // Old sets scaled to nothing beyond the history limit go.
        let limit = d["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let idle: Vec<&Value> = old
            .iter()
            .filter(|o| spec_replicas(o) == 0 && status_count(o, "replicas") == 0)
            .collect();
        if idle.len() > limit {
            for o in idle.iter().take(idle.len() - limit) {
                ctx.delete(REPLICASETS, &key.0, meta(o, "name"), &json!({}))?;
            }
        }
        // Status, from the sets' own statuses.
        let all: Vec<&Value> = new.iter().chain(old.iter()).collect();
        let sum = |f: &str| all.iter().map(|rs| status_count(rs, f)).sum::<i64>();
        let updated = new.as_ref().map_or(0, |rs| status_count(rs, "replicas"));
        let available = sum("availableReplicas");
        let rolling = &d["spec"]["strategy"]["rollingUpdate"];
        let max_unavailable = if d["spec"]["strategy"]["type"] == "Recreate" {
            0
        } else {
            int_or_percent(&rolling["maxUnavailable"], replicas, false).max(0)
        };
        let mut next = (*d).clone();
        let (status, reason, message) = if available >= replicas - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(&mut next, "Available", status, reason, message, ctx);
        let new_name = new
            .as_ref()
            .map(|rs| meta(rs, "name").to_owned())
            .unwrap_or_default();
        let complete = new.as_ref().is_some_and(|rs| {
            status_count(rs, "replicas") == replicas
                && status_count(rs, "availableReplicas") == replicas
                && spec_replicas(rs) == replicas
        }) && old.iter().all(|o| status_count(o, "replicas") == 0);
        let (reason, message) = if complete {
            (
                "NewReplicaSetAvailable",
                format!("ReplicaSet {new_name:?} has successfully progressed."),
            )
        } else if created {
            (
                "NewReplicaSetCreated",
                format!("Created new replica set {new_name:?}"),
            )
        } else {
            (
                "ReplicaSetUpdated",
                format!("ReplicaSet {new_name:?} is progressing."),
            )
        };
        if !paused {
            set_condition(&mut next, "Progressing", "True", reason, &message, ctx);
        }
        let status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": sum("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0),
            "conditions": next["status"]["conditions"].clone(),
        });
        // The Deployment carries its newest revision, as the ReplicaSet does.
        if let Some(rs) = &new {
            let rev = revision(rs).to_string();
            if d["metadata"]["annotations"][REVISION].as_str() != Some(rev.as_str()) {
                let mut annotated = (*d).clone();
                annotated["metadata"]["annotations"][REVISION] = json!(rev);
                let written = ctx.update(DEPLOYMENTS, annotated, false)?;
                return write_status(ctx, DEPLOYMENTS, &written, status).map(|()| None);
            }
        }
        write_status(ctx, DEPLOYMENTS, &d, status)?;
        Ok(None)
    }
}
