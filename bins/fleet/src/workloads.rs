//! The `workloads` scenario: the embedded control plane's scheduler and workload controllers at
//! scale. `--workload-nodes` simulated edges (each reporting the pods it receives Running, as a
//! kubelet would) join a real cloudcore; one Deployment of `--workload-pods` replicas is created;
//! a watch on pods times when each pod is bound to a node (scheduler decisions per second, from
//! the first binding to the last) and when the Deployment reports every replica available.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::Error;
use super::cloud::CloudCore;
use super::sim::{self, Behaviour};

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Simulated nodes.
    pub nodes: usize,
    /// Replicas.
    pub pods: usize,
    /// From the create request to the first pod bound.
    pub first_bound: Duration,
    /// From the create request to the last pod bound.
    pub all_bound: Duration,
    /// From the create request to every replica available (the Deployment's status).
    pub all_running: Duration,
    /// Bindings per second, first to last.
    pub decisions_per_sec: f64,
    /// Most and fewest pods on one node.
    pub spread: (usize, usize),
    /// cloudcore's RSS at the end, KiB.
    pub rss: u64,
    /// cloudcore's CPU seconds over the rollout.
    pub cpu: f64,
}

/// Runs the scenario.
pub async fn run(
    bin: &Path,
    nodes: usize,
    pods: usize,
    limit: Duration,
) -> Result<Measured, Error> {
    let cloud = CloudCore::start(bin, nodes, 32)?;
    let names: Vec<String> = (0..nodes).map(|i| format!("wl-{i:05}")).collect();
    let edges = sim::edges(Arc::new(cloud.ca()?), names).await?;
    let (mut behaviour, mut reports, _storm) = Behaviour::new(cloud.hub_url(), 256, Duration::ZERO);
    behaviour.run_pods = true;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in edges.iter().enumerate() {
        tasks.spawn(sim::run_edge(i, e.clone(), behaviour.clone()));
    }
    drop(behaviour);
    // Reports are not needed here: drain them.
    tasks.spawn(async move { while reports.recv().await.is_some() {} });
    let client = cloud.client().await?;
    let node_api: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let ready = node_api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == nodes {
            break;
        }
        if start.elapsed() > limit {
            return Err(format!("only {ready} of {nodes} nodes Ready in time").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "workloads: {nodes} nodes Ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Bindings, as a watch sees them.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bound: Arc<std::sync::Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    let seen = bound.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(pod_api, watcher::Config::default().labels("app=scale")).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                continue;
            };
            if let (Some(name), Some(node)) = (p.metadata.name, p.spec.and_then(|s| s.node_name))
                && let Ok(mut b) = seen.lock()
            {
                b.entry(name).or_insert((Instant::now(), node));
            }
        }
    });
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "scale"},
        "spec": {"replicas": pods, "selector": {"matchLabels": {"app": "scale"}},
                 "template": {"metadata": {"labels": {"app": "scale"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))?;
    let cpu0 = cloud.cpu_secs();
    let start = Instant::now();
    deployments.create(&PostParams::default(), &d).await?;
    let mut last_print = Instant::now();
    loop {
        let status = deployments.get("scale").await?.status.unwrap_or_default();
        let available = status.available_replicas.unwrap_or(0) as usize;
        if available == pods {
            break;
        }
        if start.elapsed() > limit {
            return Err(format!("only {available} of {pods} replicas available in time").into());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            let b = bound.lock().map(|b| b.len()).unwrap_or(0);
            eprintln!(
                "workloads: {b} bound, {available} available after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running = start.elapsed();
    let cpu = cloud.cpu_secs() - cpu0;
    // The watch may trail the status by a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bound.lock().map(|b| b.len()).unwrap_or(0) < pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let bound = bound.lock().map(|b| b.clone()).unwrap_or_default();
    let first = bound.values().map(|(t, _)| *t).min().unwrap_or(start);
    let last = bound.values().map(|(t, _)| *t).max().unwrap_or(start);
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for (_, node) in bound.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    let span = (last - first).as_secs_f64().max(1e-3);
    let report = Measured {
        nodes,
        pods,
        first_bound: first - start,
        all_bound: last - start,
        all_running,
        decisions_per_sec: (bound.len().saturating_sub(1)) as f64 / span,
        spread: (
            per_node.values().copied().max().unwrap_or(0),
            per_node.values().copied().min().unwrap_or(0),
        ),
        rss: cloud.rss_kib(),
        cpu,
    };
    tasks.abort_all();
    Ok(report)
}

/// Prints the report as a table.
pub fn print(r: &Measured) {
    super::table(
        Some(&format!(
            "workloads: one Deployment of {} replicas over {} simulated edge nodes",
            r.pods, r.nodes
        )),
        &[
            "first bound s",
            "all bound s",
            "scheduler decisions/s",
            "all Running s",
            "pods per node (max/min)",
            "cloudcore CPU s",
            "cloudcore RSS MiB",
        ],
        0,
        [vec![
            format!("{:.2}", r.first_bound.as_secs_f64()),
            format!("{:.1}", r.all_bound.as_secs_f64()),
            format!("{:.0}", r.decisions_per_sec),
            format!("{:.1}", r.all_running.as_secs_f64()),
            format!("{}/{}", r.spread.0, r.spread.1),
            format!("{:.1}", r.cpu),
            super::mib(r.rss),
        ]],
    );
}
