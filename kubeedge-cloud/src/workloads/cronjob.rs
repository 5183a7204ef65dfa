//! CronJobs: a Job from `jobTemplate` at every time `schedule` names (five fields: minute, hour,
//! day of month, month, day of week, with `*`, lists, ranges, steps and month and day names; or
//! `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`), in UTC.
//! Each Job is named `<cronjob>-<minutes since the epoch>` (as upstream), so a time is run at most
//! once. `concurrencyPolicy` `Allow`, `Forbid` (skip while one runs) or `Replace` (delete the
//! running ones); a run missed by more than `startingDeadlineSeconds` is skipped; `suspend`
//! stops new runs. Finished Jobs beyond `successfulJobsHistoryLimit` and
//! `failedJobsHistoryLimit` are deleted, oldest first. The status has `active`,
//! `lastScheduleTime` and `lastSuccessfulTime`.

use std::time::{Duration, SystemTime};

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::{self, Event};
use serde_json::{Value, json};

use kubeedge_core::kubeapi::cron::Schedule;

use super::replicaset::write_status;
use super::{
    CRONJOBS, Cache, Controller, Ctx, JOBS, Key, meta, owner_key, owner_ref, parse_time,
    terminating,
};

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn job_finished(job: &Value) -> Option<&str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")?["type"]
        .as_str()
}

/// The CronJob controller.
#[derive(Debug, Default)]
pub struct CronJobController;

impl Controller for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn kind(&self) -> Kind<'static> {
        CRONJOBS
    }

    fn affected(&mut self, _cache: &Cache, ev: &Event) -> Vec<Key> {
        owner_key(ev, "jobs.batch", "CronJob")
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(cj) = ctx.cache.get(CRONJOBS, &key.0, &key.1) else {
            return Ok(None);
        };
        if terminating(&cj) {
            return Ok(None);
        }
        let schedule = match Schedule::parse(cj["spec"]["schedule"].as_str().unwrap_or_default()) {
            Ok(s) => s,
            Err(why) => {
                ctx.event(
                    &cj,
                    "Warning",
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {why}"),
                    "cronjob-controller",
                );
                return Ok(None);
            }
        };
        let uid = meta(&cj, "uid").to_owned();
        let mut jobs: Vec<_> = ctx
            .cache
            .list(JOBS, Some(&key.0))
            .into_iter()
            .filter(|j| super::controller_uid(j) == Some(uid.as_str()) && !terminating(j))
            .collect();
        jobs.sort_by_key(|j| meta(j, "creationTimestamp").to_owned());
        let now = secs(ctx.now);
        let last = cj["status"]["lastScheduleTime"]
            .as_str()
            .or_else(|| cj["metadata"]["creationTimestamp"].as_str())
            .and_then(parse_time)
            .map_or(now, secs);
        let mut status_last = cj["status"]["lastScheduleTime"].clone();
        let active: Vec<_> = jobs
            .iter()
            .filter(|j| job_finished(j).is_none())
            .cloned()
            .collect();
        if cj["spec"]["suspend"] != true
            && let Some(due) = schedule.last_between(last, now)
        {
            let late = now - due;
            let too_late = cj["spec"]["startingDeadlineSeconds"]
                .as_u64()
                .is_some_and(|d| late > d);
            let policy = cj["spec"]["concurrencyPolicy"].as_str().unwrap_or("Allow");
            if too_late {
                ctx.event(
                    &cj,
                    "Warning",
                    "MissSchedule",
                    "Missed scheduled time to start a job: past the starting deadline",
                    "cronjob-controller",
                );
                status_last = json!(store::rfc3339(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(due)
                ));
            } else if policy == "Forbid" && !active.is_empty() {
                // Skipped; tried again when the running one finishes, if still within deadline.
            } else {
                if policy == "Replace" {
                    for j in &active {
                        ctx.delete(
                            JOBS,
                            &key.0,
                            meta(j, "name"),
                            &json!({"propagationPolicy": "Background"}),
                        )?;
                    }
                }
                let template = &cj["spec"]["jobTemplate"];
                let name = format!("{}-{}", key.1, due / 60);
                let mut metadata = template["metadata"].clone();
                if !metadata.is_object() {
                    metadata = json!({});
                }
                metadata["name"] = json!(name);
                metadata["namespace"] = json!(key.0);
                metadata["ownerReferences"] = json!([owner_ref(&cj)]);
                metadata["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(
                    store::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(due))
                );
                let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                                 "spec": template["spec"].clone()});
                match ctx.create(JOBS, &key.0, job) {
                    Ok(made) => {
                        ctx.event(
                            &cj,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created job {name}"),
                            "cronjob-controller",
                        );
                        jobs.push(std::sync::Arc::new(made));
                    }
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
                status_last = json!(store::rfc3339(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(due)
                ));
            }
        }
        // History: finished Jobs beyond the limits go, oldest first.
        for (kind, limit) in [
            (
                "Complete",
                cj["spec"]["successfulJobsHistoryLimit"]
                    .as_u64()
                    .unwrap_or(3),
            ),
            (
                "Failed",
                cj["spec"]["failedJobsHistoryLimit"].as_u64().unwrap_or(1),
            ),
        ] {
            let done: Vec<_> = jobs
                .iter()
                .filter(|j| job_finished(j) == Some(kind))
                .collect();
            for j in done.iter().take(done.len().saturating_sub(limit as usize)) {
                ctx.delete(
                    JOBS,
                    &key.0,
                    meta(j, "name"),
                    &json!({"propagationPolicy": "Background"}),
                )?;
            }
        }
        let active_refs: Vec<Value> = jobs
            .iter()
            .filter(|j| job_finished(j).is_none())
            .map(|j| {
                json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta(j, "name"),
                            "namespace": key.0, "uid": meta(j, "uid")})
            })
            .collect();
        let last_success = jobs
            .iter()
            .filter(|j| job_finished(j) == Some("Complete"))
            .filter_map(|j| j["status"]["completionTime"].as_str())
            .max()
            .map(|t| json!(t))
            .unwrap_or_else(|| cj["status"]["lastSuccessfulTime"].clone());
        let mut status = json!({});
        if !active_refs.is_empty() {
            status["active"] = json!(active_refs);
        }
        if !status_last.is_null() {
            status["lastScheduleTime"] = status_last;
        }
        if !last_success.is_null() {
            status["lastSuccessfulTime"] = last_success;
        }
        write_status(ctx, CRONJOBS, &cj, status)?;
        // Wake for the next time (a resync every 30 s catches anything later).
        Ok(schedule
            .next_after(now)
            .map(|t| Duration::from_secs(t.saturating_sub(now)) + Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_match() {
        let at = |s: &str| secs(parse_time(s).unwrap());
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert!(every5.matches(at("2026-11-30T10:05:00Z")));
        assert!(!every5.matches(at("2026-11-30T10:06:00Z")));
        assert_eq!(
            every5.next_after(at("2026-11-30T10:06:30Z")),
            Some(at("2026-11-30T10:10:00Z"))
        );
        assert_eq!(
            every5.last_between(0, at("2026-11-30T10:09:59Z")),
            Some(at("2026-11-30T10:05:00Z"))
        );
        // Monday 2026-11-30; weekdays at 09:30.
        let weekdays = Schedule::parse("30 9 * * MON-FRI").unwrap();
        assert!(weekdays.matches(at("2026-11-30T09:30:00Z")));
        assert!(!weekdays.matches(at("2026-11-29T09:30:00Z")));
        let monthly = Schedule::parse("@monthly").unwrap();
        assert_eq!(
            monthly.next_after(at("2026-11-30T09:30:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        let leap = Schedule::parse("0 0 29 FEB *").unwrap();
        assert_eq!(
            leap.next_after(at("2027-03-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        // Day of month or day of week, when both are given.
        let either = Schedule::parse("0 0 1 * SUN").unwrap();
        assert!(either.matches(at("2026-11-29T00:00:00Z")));
        assert!(either.matches(at("2026-12-01T00:00:00Z")));
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "* * * FOO *",
            "TZ=UTC * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
