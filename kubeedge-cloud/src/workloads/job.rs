//! Jobs: run pods from the template until `completions` of them succeed (any one, when
//! `completions` is unset and `parallelism` above one), at most `parallelism` at once; failures
//! (failed pods, and container restarts under `restartPolicy: OnFailure`) beyond `backoffLimit`
//! fail the Job (`BackoffLimitExceeded`), as does running past `activeDeadlineSeconds`
//! (`DeadlineExceeded`). The status has `startTime`, `active`, `ready`, `succeeded`, `failed`,
//! `completionTime` and the `Complete` or `Failed` condition (`kubectl get jobs` shows
//! COMPLETIONS and DURATION from them). A suspended Job runs no pods. A finished Job with
//! `ttlSecondsAfterFinished` is deleted, with its pods, once that time has passed. Pods are
//! labelled `batch.kubernetes.io/job-name` and `batch.kubernetes.io/controller-uid` (and the
//! older `job-name`, `controller-uid`), which is also the Job's selector unless it gives one.

use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::{self, Event};
use serde_json::{Value, json};

use super::replicaset::{pod_from_template, write_status};
use super::scheduler::set_condition;
use super::{
    Cache, Controller, Ctx, JOBS, Key, PODS, active, meta, owner_key, parse_time, random_suffix,
    ready, terminating,
};

/// The Job controller.
#[derive(Debug, Default)]
pub struct JobController;

fn condition_true(job: &Value, kind: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn restarts(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum()
}

impl JobController {
    /// A finished Job: deleted once its TTL has run out.
    fn expire(
        &self,
        ctx: &mut Ctx<'_>,
        job: &Value,
        key: &Key,
    ) -> Result<Option<Duration>, ApiError> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() else {
            return Ok(None);
        };
        let finished = job["status"]["completionTime"]
            .as_str()
            .or_else(|| {
                job["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["status"] == "True")?["lastTransitionTime"]
                    .as_str()
            })
            .and_then(parse_time)
            .unwrap_or(ctx.now);
        let at = finished + Duration::from_secs(ttl);
        match at.duration_since(ctx.now) {
            Ok(left) if !left.is_zero() => Ok(Some(left + Duration::from_millis(50))),
            _ => {
                ctx.delete(
                    JOBS,
                    &key.0,
                    &key.1,
                    &json!({"propagationPolicy": "Background"}),
                )?;
                Ok(None)
            }
        }
    }
}

impl Controller for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    fn kind(&self) -> Kind<'static> {
        JOBS
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        owner_key(ev, "pods", "Job")
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(job) = ctx.cache.get(JOBS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&job) {
            return Ok(None);
        }
        if condition_true(&job, "Complete") || condition_true(&job, "Failed") {
            return self.expire(ctx, &job, key);
        }
        let uid = meta(&job, "uid").to_owned();
        let name = meta(&job, "name").to_owned();
        // The selector and labels the apiserver gives a Job without one.
        if job["spec"]["selector"].is_null() {
            let mut next = (*job).clone();
            next["spec"]["selector"] =
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", uid.as_str()),
                ("batch.kubernetes.io/job-name", name.as_str()),
                ("controller-uid", uid.as_str()),
                ("job-name", name.as_str()),
            ] {
                next["spec"]["template"]["metadata"]["labels"][k] = json!(v);
            }
            ctx.update(JOBS, next, false)?;
            return Ok(None);
        }
        let spec = &job["spec"];
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let completions = spec["completions"].as_i64();
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let pods = ctx.cache.controlled_pods(&uid);
        let running: Vec<_> = pods.iter().filter(|p| active(p)).cloned().collect();
        let succeeded_now = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed_now = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        // Pods may be removed by users; what the status already counted stays counted.
        let succeeded = succeeded_now.max(job["status"]["succeeded"].as_i64().unwrap_or(0));
        let failed = failed_now.max(job["status"]["failed"].as_i64().unwrap_or(0));
        let restarted: i64 = running.iter().map(|p| restarts(p)).sum();
        let start = job["status"]["startTime"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| store::rfc3339(ctx.now));
        let mut next = (*job).clone();
        let mut finished = None;
        let deadline = spec["activeDeadlineSeconds"]
            .as_u64()
            .and_then(|d| Some(parse_time(&start)? + Duration::from_secs(d)));
        let done = match completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && running.is_empty(),
        };
        if done {
            finished = Some(("Complete", "", ""));
        } else if failed + restarted > backoff_limit {
            finished = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if deadline.is_some_and(|d| d <= ctx.now) {
            finished = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        }
        let mut active_count = running.len() as i64;
        match finished {
            Some((kind, reason, message)) => {
                for p in &running {
                    ctx.delete(PODS, &key.0, meta(p, "name"), &json!({}))?;
                }
                active_count = 0;
                if kind == "Complete" {
                    set_condition(
                        &mut next,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                        ctx,
                    );
                    set_condition(
                        &mut next,
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                        ctx,
                    );
                    next["status"]["completionTime"] = json!(store::rfc3339(ctx.now));
                } else {
                    set_condition(&mut next, "FailureTarget", "True", reason, message, ctx);
                    set_condition(&mut next, "Failed", "True", reason, message, ctx);
                }
                let name = if kind == "Complete" {
                    "Completed"
                } else {
                    reason
                };
                ctx.event(
                    &job,
                    if kind == "Complete" {
                        "Normal"
                    } else {
                        "Warning"
                    },
                    name,
                    if kind == "Complete" {
                        "Job completed"
                    } else {
                        message
                    },
                    "job-controller",
                );
            }
            None if spec["suspend"] == true => {
                for p in &running {
                    ctx.delete(PODS, &key.0, meta(p, "name"), &json!({}))?;
                }
                active_count = 0;
                set_condition(
                    &mut next,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    ctx,
                );
            }
            None => {
                let want = match completions {
                    Some(c) => parallelism.min(c - succeeded),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                };
                let mut missing = want - active_count;
                while missing > 0 {
                    let pod_name = format!("{}-{}", key.1, random_suffix(5));
                    let pod = pod_from_template(
                        &job,
                        &job["spec"]["template"],
                        &pod_name,
                        &[
                            ("batch.kubernetes.io/controller-uid", uid.as_str()),
                            ("batch.kubernetes.io/job-name", name.as_str()),
                            ("controller-uid", uid.as_str()),
                            ("job-name", name.as_str()),
                        ],
                    );
                    ctx.create(PODS, &key.0, pod)?;
                    active_count += 1;
                    missing -= 1;
                }
                // Too many at once (parallelism lowered): the newest go.
                if active_count > want {
                    let mut extra = running.clone();
                    extra.sort_by_key(|p| {
                        std::cmp::Reverse(meta(p, "creationTimestamp").to_owned())
                    });
                    for p in extra.iter().take((active_count - want) as usize) {
                        ctx.delete(PODS, &key.0, meta(p, "name"), &json!({}))?;
                    }
                    active_count = want;
                }
            }
        }
        let mut status = json!({
            "startTime": start,
            "active": active_count,
            "ready": running.iter().filter(|p| ready(p)).count(),
            "succeeded": succeeded,
            "failed": failed,
            "conditions": next["status"]["conditions"].clone(),
        });
        if let Some(t) = next["status"]["completionTime"].as_str() {
            status["completionTime"] = json!(t);
        }
        write_status(ctx, JOBS, &job, status)?;
        if finished.is_some() {
            return Ok(job["spec"]["ttlSecondsAfterFinished"]
                .as_u64()
                .map(|t| Duration::from_secs(t) + Duration::from_millis(50)));
        }
        Ok(deadline.and_then(|d| d.duration_since(ctx.now).ok()))
    }
}
