//! The `datastore` scenario: the embedded control plane's API write path on its two datastores
//! side by side, in one run: a cloudcore on redb (the default, a file in its data directory) and
//! one on a real one-member etcd (Debian's etcd-server, `--datastore etcd://`), each taking
//! `--datastore-writes` ConfigMap creates through its API (kube-rs over HTTPS, as any client) at
//! each of `--datastore-concurrency` requests in flight: writes per second and the latency of each
//! create (request to answer: on etcd, the transaction and its return through the watch).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use super::cloud::CloudCore;
use super::fleet::percentile;
use super::{Error, ms, proc, table};

/// One datastore at one concurrency.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which datastore.
    pub store: &'static str,
    /// Creates in flight.
    pub concurrency: usize,
    /// Creates made.
    pub writes: usize,
    /// Creates per second.
    pub per_sec: f64,
    /// Latency p50, p99, max.
    pub latency: (Duration, Duration, Duration),
}

/// Runs the scenario.
pub async fn run(
    bin: &Path,
    writes: usize,
    concurrency: &[usize],
    limit: Duration,
) -> Result<Vec<Row>, Error> {
    let dir = proc::scratch("etcd");
    let etcd = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || kubeedge_core::test_util::EtcdServer::start(&dir))
            .await??
    };
    let url = format!("etcd://{}", etcd.endpoint());
    let mut rows = Vec::new();
    for (store, extra) in [
        ("redb", Vec::new()),
        ("etcd, 1 member", vec!["--datastore".to_owned(), url]),
    ] {
        let cloud = CloudCore::start_with(bin, 16, 32, &extra)?;
        let api: Api<ConfigMap> = Api::namespaced(cloud.client().await?, "default");
        for (round, &c) in concurrency.iter().enumerate() {
            let c = c.max(1);
            let started = Instant::now();
            let api = &api;
            let creates = futures_util::stream::iter(0..writes)
                .map(|i| async move {
                    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("ds-{round}-{i:06}")},
                        "data": {"value": format!("{i:064}")},
                    }))?;
                    let t = Instant::now();
                    api.create(&PostParams::default(), &cm).await?;
                    Ok::<_, Error>(t.elapsed())
                })
                .buffer_unordered(c)
                .collect::<Vec<_>>();
            let results = tokio::time::timeout(limit, creates).await.map_err(|_| {
                format!("{store}: {writes} creates at {c} in flight took over {limit:?}")
            })?;
            let elapsed = started.elapsed();
            let mut latencies = results.into_iter().collect::<Result<Vec<_>, _>>()?;
            latencies.sort_unstable();
            rows.push(Row {
                store,
                concurrency: c,
                writes,
                per_sec: writes as f64 / elapsed.as_secs_f64(),
                latency: (
                    percentile(&latencies, 0.5),
                    percentile(&latencies, 0.99),
                    latencies.last().copied().unwrap_or_default(),
                ),
            });
        }
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Prints the table.
pub fn print(rows: &[Row]) {
    table(
        Some("datastore: API creates on redb and on etcd"),
        &[
            "datastore",
            "in flight",
            "creates",
            "creates/s",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        1,
        rows.iter().map(|r| {
            vec![
                r.store.to_owned(),
                r.concurrency.to_string(),
                r.writes.to_string(),
                format!("{:.0}", r.per_sec),
                ms(r.latency.0),
                ms(r.latency.1),
                ms(r.latency.2),
            ]
        }),
    );
}
