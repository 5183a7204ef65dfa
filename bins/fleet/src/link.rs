//! One connection's throughput cloud → edge with acks: a node that was away comes back to
//! `objects` pods; time until its edge acked them all, for each window.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::sync::Semaphore;

use super::cloud::CloudCore;
use super::fleet::{pod_on, spawn_create};
use super::sim::{self, Behaviour, Report};
use super::{Error, table};

/// The result for one window.
pub struct Row {
    /// Messages in flight at once.
    pub window: usize,
    /// Objects synced.
    pub objects: usize,
    /// Time from the dial until the last object was at the edge (its ack follows within one
    /// commit, and the window only refills on acks).
    pub time: Duration,
    /// cloudcore CPU seconds meanwhile.
    pub cpu: f64,
}

/// Runs the scenario once with `window`.
pub async fn run(
    bin: &Path,
    window: usize,
    objects: usize,
    commit: Duration,
    limit: Duration,
) -> Result<Row, Error> {
    let cloud = CloudCore::start(bin, 1, window)?;
    let node = "link-edge".to_owned();
    let edges = sim::edges(Arc::new(cloud.ca()?), vec![node.clone()]).await?;
    let pods: Api<Pod> = Api::namespaced(cloud.client().await?, "default");
    // The pods are made while the node is away, so that they all go out in one burst.
    // Half of what the API server admits from one address at once (64 connections waiting for
    // their first bytes or handshaking), so that a loaded machine cannot push it over.
    let slots = Arc::new(Semaphore::new(32));
    let mut creates = tokio::task::JoinSet::new();
    for j in 0..objects {
        spawn_create(
            &mut creates,
            &pods,
            &slots,
            pod_on(&format!("l-{j:06}"), &node)?,
        );
    }
    while let Some(done) = creates.join_next().await {
        done??;
    }
    // Let the cloud's watch catch up with the API.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (behaviour, mut reports, _storm) = Behaviour::new(cloud.hub_url(), 1, commit);
    let cpu0 = cloud.cpu_secs();
    let start = Instant::now();
    let edge = tokio::spawn(sim::run_edge(0, edges[0].clone(), behaviour));
    let mut seen = std::collections::HashSet::new();
    let deadline = start + limit;
    while seen.len() < objects {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Applied { key, .. })) => {
                if key.starts_with("default/pod/l-") {
                    seen.insert(key);
                }
            }
            Ok(Some(_)) => {}
            _ => {
                edge.abort();
                return Err(format!(
                    "window {window}: only {} of {objects} objects arrived in time",
                    seen.len()
                )
                .into());
            }
        }
    }
    let row = Row {
        window,
        objects,
        time: start.elapsed(),
        cpu: cloud.cpu_secs() - cpu0,
    };
    edge.abort();
    eprintln!(
        "link: window {window}: {objects} objects in {:.2} s",
        row.time.as_secs_f64()
    );
    Ok(row)
}

/// The table.
pub fn print(rows: &[Row], commit: Duration) {
    let Some(base) = rows.iter().find(|r| r.window == 1).or(rows.first()) else {
        return;
    };
    let rate = |r: &Row| r.objects as f64 / r.time.as_secs_f64();
    let vs = format!("vs window {}", base.window);
    table(
        Some(&format!(
            "5. one connection, cloud → edge with acks (edge commit {} ms, acks grouped per commit)",
            commit.as_millis()
        )),
        &[
            "window",
            "objects",
            "all at the edge (s)",
            "objects/s",
            &vs,
            "cloudcore CPU (s)",
        ],
        0,
        rows.iter().map(|r| {
            vec![
                r.window.to_string(),
                r.objects.to_string(),
                format!("{:.2}", r.time.as_secs_f64()),
                format!("{:.0}", rate(r)),
                format!("{:.1}×", rate(r) / rate(base)),
                format!("{:.2}", r.cpu),
            ]
        }),
    );
}
