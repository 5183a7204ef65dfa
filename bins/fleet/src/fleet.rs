//! The fleet scenarios for one fleet size: connect and register, fan-out, steady state,
//! reconnect storm.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Semaphore;

use super::cloud::Cloud;
use super::sim::{self, Behaviour, Report};
use super::worker::{self, Workers};
use super::{Error, mib, ms, table};

/// A pod bound to `node` (the simulated edges run nothing: the image is never pulled).
pub fn pod_on(name: &str, node: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}))
}

/// Creates `pod` in a task of `creates` once one of the API `slots` is free.
pub fn spawn_create(
    creates: &mut tokio::task::JoinSet<Result<(), kube::Error>>,
    pods: &Api<Pod>,
    slots: &Arc<Semaphore>,
    pod: Pod,
) {
    let (pods, slots) = (pods.clone(), slots.clone());
    creates.spawn(async move {
        let _permit = slots.acquire().await;
        pods.create(&PostParams::default(), &pod).await.map(|_| ())
    });
}

/// Settings of one run.
pub struct Settings {
    /// Simulated nodes.
    pub nodes: usize,
    /// Pods per node in the fan-out.
    pub pods_per_node: usize,
    /// Length of the steady-state window.
    pub steady: Duration,
    /// Dials at once.
    pub concurrency: usize,
    /// Limit for each scenario.
    pub limit: Duration,
    /// Open-loop create rates (pods/s), one window each after registration; none: skipped.
    pub open_loop_rates: Vec<u32>,
    /// Length of each open-loop window.
    pub open_loop: Duration,
    /// cloudcore replicas holding the edges over one API cloudcore (0: one cloudcore holds
    /// them and serves the API); with two or more, one is killed with SIGKILL at the end.
    pub replicas: usize,
    /// Nodes preferring the first replica (the one killed); 0: spread evenly.
    pub primary_first: usize,
    /// Processes the simulated edges run in (0: in this one).
    pub sim_procs: usize,
    /// This harness's binary (the workers run it).
    pub harness: PathBuf,
    /// Seconds a node may be silent before the cloud marks it (cloudcore's default).
    pub grace: Duration,
}

/// The kill of one replica: its nodes reconnect to the others and resync.
#[derive(Debug, Clone, Default)]
pub struct Kill {
    /// Nodes the killed replica held.
    pub nodes: usize,
    /// Time until every one was connected to another replica.
    pub reconnected: Duration,
    /// Time until every one held the pod changed after the kill.
    pub resynced: Duration,
    /// Per-node time to resynced.
    pub resync: Spread,
    /// Nodes of the whole fleet seen not Ready (by a watch on Nodes) from the kill until the
    /// grace had passed after it.
    pub not_ready: usize,
    /// Of those, nodes the killed replica held.
    pub not_ready_moved: usize,
    /// The longest a node stayed not Ready (until seen Ready again, or until the watch ended).
    pub longest_not_ready: Duration,
    /// Objects sent again per moved node: median, max.
    pub resent: (usize, usize),
}

/// p50, p99 and the largest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

impl Spread {
    fn of(mut v: Vec<Duration>) -> Spread {
        v.sort();
        Spread {
            p50: percentile(&v, 0.5),
            p99: percentile(&v, 0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

/// One open-loop window: pods created at a fixed rate, each timed from the moment its create was
/// due (so a create that waited counts its wait) until its edge held it.
#[derive(Debug, Clone, Default)]
pub struct OpenLoop {
    /// Creates per second asked for.
    pub rate: u32,
    /// Pods created.
    pub pods: usize,
    /// Creates per second achieved (pods / time until the last create was answered).
    pub achieved: f64,
    /// Due → at the edge.
    pub latency: Spread,
    /// cloudcore CPU in the window, % of one core.
    pub cpu_pct: f64,
}

/// The `p` quantile of `sorted` (nearest rank).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The results of one fleet size.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Nodes.
    pub nodes: usize,
    /// cloudcore RSS before any node, KiB.
    pub idle_rss: u64,
    /// Time until all registered.
    pub connect_time: Duration,
    /// Per-node registration time.
    pub connect: Spread,
    /// cloudcore RSS with all connected, KiB.
    pub connected_rss: u64,
    /// cloudcore CPU seconds during connect.
    pub connect_cpu: f64,
    /// Pods created.
    pub pods: usize,
    /// The open-loop windows.
    pub open_loop: Vec<OpenLoop>,
    /// Time until every pod was at its edge.
    pub fanout_time: Duration,
    /// Per-pod latency, create request to edge.
    pub fanout: Spread,
    /// cloudcore RSS after the fan-out, KiB.
    pub fanout_rss: u64,
    /// cloudcore CPU seconds during the fan-out.
    pub fanout_cpu: f64,
    /// Steady window length, seconds.
    pub steady_secs: f64,
    /// cloudcore CPU in the steady window, % of one core.
    pub steady_cpu_pct: f64,
    /// Highest cloudcore RSS in the steady window, KiB.
    pub steady_rss: u64,
    /// Time until every node held its changed pod again after the storm.
    pub storm_time: Duration,
    /// Per-node resync time.
    pub storm: Spread,
    /// Objects sent again per node: median, max.
    pub resent: (usize, usize),
    /// Message bytes sent again per node, mean.
    pub resent_bytes: f64,
    /// cloudcore CPU seconds during the storm.
    pub storm_cpu: f64,
    /// Replicas (0: one cloudcore).
    pub replicas: usize,
    /// The kill of a replica (with two or more).
    pub kill: Option<Kill>,
}

impl Row {
    /// RSS per node, KiB, against the idle process.
    pub fn per_node(&self, rss: u64) -> f64 {
        rss.saturating_sub(self.idle_rss) as f64 / self.nodes.max(1) as f64
    }
}

/// The simulated edges: tasks of this process, or worker processes.
enum Sims {
    Local {
        tasks: tokio::task::JoinSet<()>,
        storm: tokio::sync::watch::Sender<u64>,
    },
    Workers(Workers),
}

impl Sims {
    /// Drops every connection.
    async fn storm(&mut self, n: u64) -> Result<(), Error> {
        match self {
            Sims::Local { storm, .. } => Ok(storm.send(n)?),
            Sims::Workers(w) => w.storm(n).await,
        }
    }
}

/// Runs the four scenarios (five with replicas) against a fresh cloud.
pub async fn run(bin: &Path, s: &Settings) -> Result<Row, Error> {
    let n = s.nodes;
    let mut cloud = Cloud::start(bin, n, s.replicas)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut row = Row {
        nodes: n,
        idle_rss: cloud.rss_kib(),
        pods: n * s.pods_per_node,
        replicas: s.replicas,
        ..Row::default()
    };
    let pids: Vec<String> = cloud.processes().map(|c| c.pid().to_string()).collect();
    eprintln!("fleet {n}: cloudcore pids {} idle", pids.join(","));
    let t = Instant::now();
    let names: Vec<String> = (0..n).map(worker::node_name).collect();
    let urls = cloud.hub_urls();
    let template = worker::Assignment {
        first: 0,
        count: n,
        ca_dir: cloud.api.dir().join("ca"),
        urls: urls.clone(),
        primary_first: s.primary_first,
        dials: s.concurrency / s.sim_procs.max(1),
    };
    let (mut sims, mut reports) = if s.sim_procs == 0 {
        let edges = sim::edges(Arc::new(cloud.api.ca()?), names.clone()).await?;
        let (mut behaviour, reports, storm) =
            Behaviour::new(String::new(), s.concurrency, Duration::ZERO);
        behaviour.urls = Arc::from(urls);
        behaviour.primary_first = s.primary_first;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, e) in edges.into_iter().enumerate() {
            tasks.spawn(sim::run_edge(i, e, behaviour.clone()));
        }
        (Sims::Local { tasks, storm }, reports)
    } else {
        let (w, reports) = Workers::start(&s.harness, s.sim_procs, n, &template).await?;
        eprintln!(
            "fleet {n}: {} sim workers, pids {:?}",
            s.sim_procs,
            w.pids()
        );
        (Sims::Workers(w), reports)
    };
    eprintln!(
        "fleet {n}: {n} node certificates issued in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pods: Api<Pod> = Api::namespaced(cloud.api.client().await?, "default");

    // --- 1. connect and register ---
    let cpu0 = cloud.cpu_secs();
    let start = Instant::now();
    if let Sims::Workers(w) = &mut sims {
        w.go().await?;
    }
    let mut registered = Vec::with_capacity(n);
    let mut applied: HashMap<String, Option<u64>> = HashMap::new();
    // Which replica holds each node.
    let mut held_by = vec![usize::MAX; n];
    let deadline = start + s.limit;
    let mut last_said = Instant::now();
    while registered.len() < n {
        if last_said.elapsed() > Duration::from_secs(10) {
            last_said = Instant::now();
            eprintln!(
                "fleet {n}: {} registered after {:.0} s",
                registered.len(),
                start.elapsed().as_secs_f64()
            );
        }
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Registered { at })) => {
                registered.push(at.saturating_duration_since(start))
            }
            Ok(Some(Report::Applied { key, version, .. })) => {
                applied.insert(key, version);
            }
            Ok(Some(Report::Connected { node, replica, .. })) => held_by[node] = replica,
            _ => {
                return Err(
                    format!("only {} of {n} nodes registered in time", registered.len()).into(),
                );
            }
        }
    }
    row.connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.connected_rss = cloud.rss_kib();
    row.connect_cpu = cloud.cpu_secs() - cpu0;
    row.connect = Spread::of(registered);
    eprintln!(
        "fleet {n}: all registered in {:.1} s; cloudcore RSS {} MiB{}",
        row.connect_time.as_secs_f64(),
        mib(row.connected_rss),
        match &sims {
            Sims::Workers(w) => format!(
                ", sim workers RSS {} MiB",
                mib(w.pids().into_iter().map(super::proc::rss_kib).sum())
            ),
            Sims::Local { .. } => String::new(),
        }
    );

    // At most half of what the API server admits from one address at once (64).
    let api_slots = Arc::new(Semaphore::new(s.concurrency.min(32)));

    // --- 1b. open loop: creates at fixed rates ---
    for &rate in &s.open_loop_rates {
        let window = open_loop(
            &cloud,
            &pods,
            &names,
            &api_slots,
            &mut reports,
            &mut applied,
            &mut held_by,
            rate,
            s,
        )
        .await?;
        eprintln!(
            "fleet {n}: open loop at {rate} pods/s: p50 {} ms, p99 {} ms, max {} ms",
            ms(window.latency.p50),
            ms(window.latency.p99),
            ms(window.latency.max)
        );
        row.open_loop.push(window);
    }

    // --- 2. fan-out ---
    let total = row.pods;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let cpu1 = cloud.cpu_secs();
    let start = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for (i, node) in names.iter().enumerate() {
        for j in 0..s.pods_per_node {
            let name = format!("p-{i:06}-{j:03}");
            let pod = pod_on(&name, node)?;
            let (pods, created, slots) = (pods.clone(), created.clone(), api_slots.clone());
            creates.spawn(async move {
                let _permit = slots.acquire().await;
                if let Ok(mut c) = created.lock() {
                    c.insert(format!("default/pod/{name}"), Instant::now());
                }
                pods.create(&PostParams::default(), &pod).await.map(|_| ())
            });
        }
    }
    let mut arrived = 0usize;
    let mut latencies = Vec::with_capacity(total);
    let deadline = start + s.limit;
    while arrived < total {
        while let Some(done) = creates.try_join_next() {
            done??;
        }
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Applied {
                key, version, at, ..
            })) => {
                if key.starts_with("default/pod/p-") && !applied.contains_key(&key) {
                    arrived += 1;
                    if let Some(t0) = created.lock().ok().and_then(|c| c.get(&key).copied()) {
                        latencies.push(at.saturating_duration_since(t0));
                    }
                }
                applied.insert(key, version);
            }
            Ok(Some(Report::Connected { node, replica, .. })) => held_by[node] = replica,
            Ok(Some(_)) => {}
            _ => {
                return Err(
                    format!("only {arrived} of {total} pods reached their edges in time").into(),
                );
            }
        }
    }
    while let Some(done) = creates.join_next().await {
        done??;
    }
    row.fanout_time = start.elapsed();
    row.fanout_cpu = cloud.cpu_secs() - cpu1;
    row.fanout_rss = cloud.rss_kib();
    row.fanout = Spread::of(latencies);
    eprintln!(
        "fleet {n}: {total} pods at their edges in {:.1} s; cloudcore RSS {} MiB ({})",
        row.fanout_time.as_secs_f64(),
        mib(row.fanout_rss),
        cloud
            .processes()
            .map(|c| mib(c.rss_kib()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // --- 3. steady state ---
    let cpu2 = cloud.cpu_secs();
    let start = Instant::now();
    while start.elapsed() < s.steady {
        tokio::time::sleep(Duration::from_millis(500)).await;
        row.steady_rss = row.steady_rss.max(cloud.rss_kib());
        while let Ok(r) = reports.try_recv() {
            if let Report::Connected { node, replica, .. } = r {
                held_by[node] = replica;
            }
        }
    }
    row.steady_secs = start.elapsed().as_secs_f64();
    row.steady_cpu_pct = 100.0 * (cloud.cpu_secs() - cpu2) / row.steady_secs;

    // --- 4. reconnect storm ---
    let cpu3 = cloud.cpu_secs();
    let start = Instant::now();
    sims.storm(1).await?;
    let mut patches = tokio::task::JoinSet::new();
    for i in 0..n {
        let name = format!("p-{i:06}-000");
        let (pods, slots) = (pods.clone(), api_slots.clone());
        patches.spawn(async move {
            let _permit = slots.acquire().await;
            pods.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"storm": "1"}}})),
            )
            .await
            .map(|_| ())
        });
    }
    let mut resent = vec![0usize; n];
    let mut resent_bytes = vec![0usize; n];
    let mut got_change = vec![false; n];
    let mut remaining = n;
    let mut resync_times = Vec::with_capacity(n);
    let deadline = start + s.limit;
    while remaining > 0 {
        while let Some(done) = patches.try_join_next() {
            done??;
        }
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Applied {
                node,
                key,
                version,
                bytes,
                at,
            })) => {
                resent[node] += 1;
                resent_bytes[node] += bytes;
                let before = applied.get(&key).copied().flatten();
                if key == format!("default/pod/p-{node:06}-000")
                    && version > before
                    && !got_change[node]
                {
                    got_change[node] = true;
                    remaining -= 1;
                    resync_times.push(at - start);
                }
            }
            Ok(Some(Report::Connected { node, replica, .. })) => held_by[node] = replica,
            Ok(Some(_)) => {}
            _ => return Err(format!("{remaining} of {n} nodes did not resync in time").into()),
        }
    }
    row.storm_time = start.elapsed();
    row.storm_cpu = cloud.cpu_secs() - cpu3;
    row.storm = Spread::of(resync_times);
    resent.sort_unstable();
    row.resent = (resent[n / 2], resent[n - 1]);
    row.resent_bytes = resent_bytes.iter().sum::<usize>() as f64 / n as f64;
    eprintln!(
        "fleet {n}: storm resynced in {:.1} s",
        row.storm_time.as_secs_f64()
    );

    // --- 5. kill -9 of a replica ---
    if s.replicas >= 2 {
        let kill = kill_replica(
            &mut cloud,
            &pods,
            &api_slots,
            &mut reports,
            &mut held_by,
            &applied,
            s,
        )
        .await?;
        eprintln!(
            "fleet {n}: the {} nodes of a killed replica resynced in {:.1} s",
            kill.nodes,
            kill.resynced.as_secs_f64()
        );
        row.kill = Some(kill);
    }
    if let Sims::Local { tasks, .. } = &mut sims {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    drop(sims);
    drop(cloud);
    Ok(row)
}

/// Creates pods at `rate` per second for `s.open_loop` (open loop: each create is due at its
/// time whether or not earlier ones were answered), round robin over the nodes, and times each
/// from when it was due until its edge applied it.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    cloud: &Cloud,
    pods: &Api<Pod>,
    names: &[String],
    slots: &Arc<Semaphore>,
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<Report>,
    applied: &mut HashMap<String, Option<u64>>,
    held_by: &mut [usize],
    rate: u32,
    s: &Settings,
) -> Result<OpenLoop, Error> {
    let total = (f64::from(rate) * s.open_loop.as_secs_f64()).round() as usize;
    let every = Duration::from_secs(1) / rate.max(1);
    let due: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let cpu0 = cloud.cpu_secs();
    let start = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    let issuer = {
        let (pods, due, slots) = (pods.clone(), due.clone(), slots.clone());
        let nodes = names.to_vec();
        tokio::spawn(async move {
            for k in 0..total {
                let at = start + every * u32::try_from(k).unwrap_or(u32::MAX);
                tokio::time::sleep_until(at.into()).await;
                let name = format!("o{rate}-{k:07}");
                if let Ok(mut d) = due.lock() {
                    d.insert(format!("default/pod/{name}"), at);
                }
                spawn_create(
                    &mut creates,
                    &pods,
                    &slots,
                    pod_on(&name, &nodes[k % nodes.len()])?,
                );
            }
            while let Some(done) = creates.join_next().await {
                done??;
            }
            Ok::<Instant, Error>(Instant::now())
        })
    };
    let mut latencies = Vec::with_capacity(total);
    let deadline = start + s.open_loop + s.limit;
    let prefix = format!("default/pod/o{rate}-");
    while latencies.len() < total {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Applied {
                key, version, at, ..
            })) => {
                if key.starts_with(&prefix)
                    && !applied.contains_key(&key)
                    && let Some(t0) = due.lock().ok().and_then(|d| d.get(&key).copied())
                {
                    latencies.push(at.saturating_duration_since(t0));
                }
                applied.insert(key, version);
            }
            Ok(Some(Report::Connected { node, replica, .. })) => held_by[node] = replica,
            Ok(Some(_)) => {}
            _ => {
                issuer.abort();
                return Err(format!(
                    "open loop at {rate}/s: only {} of {total} pods reached their edges in time",
                    latencies.len()
                )
                .into());
            }
        }
    }
    let answered = issuer.await??;
    let secs = start.elapsed().as_secs_f64();
    Ok(OpenLoop {
        rate,
        pods: total,
        achieved: total as f64 / answered.duration_since(start).as_secs_f64(),
        latency: Spread::of(latencies),
        cpu_pct: 100.0 * (cloud.cpu_secs() - cpu0) / secs,
    })
}

/// Kills the first replica with SIGKILL, changes one pod of each of its nodes, and waits until
/// each of them is connected to another replica and holds its changed pod; meanwhile a watch on
/// Nodes counts any node not Ready, until the grace has passed after the kill.
#[allow(clippy::too_many_arguments)]
async fn kill_replica(
    cloud: &mut Cloud,
    pods: &Api<Pod>,
    slots: &Arc<Semaphore>,
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<Report>,
    held_by: &mut [usize],
    applied: &HashMap<String, Option<u64>>,
    s: &Settings,
) -> Result<Kill, Error> {
    let victims: Vec<usize> = (0..held_by.len()).filter(|&i| held_by[i] == 0).collect();
    let mut kill = Kill {
        nodes: victims.len(),
        ..Kill::default()
    };
    // Watch Nodes from now on for any that turns not Ready.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(pods.clone().into_client());
    let from = nodes
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let not_ready: Arc<Mutex<HashMap<String, NotReady>>> = Arc::default();
    let watching = Instant::now();
    let watch = {
        let not_ready = not_ready.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut from = from;
            loop {
                let Ok(stream) = nodes
                    .watch(&kube::api::WatchParams::default().timeout(290), &from)
                    .await
                else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(Ok(event)) = stream.next().await {
                    let node = match event {
                        kube::api::WatchEvent::Added(n) | kube::api::WatchEvent::Modified(n) => n,
                        kube::api::WatchEvent::Bookmark(b) => {
                            from = b.metadata.resource_version;
                            continue;
                        }
                        _ => continue,
                    };
                    if let Some(v) = &node.metadata.resource_version {
                        from = v.clone();
                    }
                    let conditions = node.status.and_then(|st| st.conditions).unwrap_or_default();
                    let ready = conditions.iter().find(|c| c.type_ == "Ready");
                    let is_ready = ready.is_some_and(|c| c.status == "True");
                    let (Some(name), Ok(mut seen)) = (node.metadata.name, not_ready.lock()) else {
                        continue;
                    };
                    let at = watching.elapsed();
                    let marked_at = || {
                        ready
                            .and_then(|c| c.last_transition_time.as_ref())
                            .map(|t| t.0.to_string())
                            .unwrap_or_default()
                    };
                    if !is_ready {
                        let entry = seen.entry(name).or_insert_with(|| NotReady {
                            from: at,
                            until: None,
                            longest: Duration::ZERO,
                            marked_at: marked_at(),
                        });
                        // Not Ready again after being Ready again: a new stretch from here.
                        if entry.until.is_some() {
                            entry.from = at;
                            entry.until = None;
                            entry.marked_at = marked_at();
                        }
                    } else if let Some(entry) = seen.get_mut(&name)
                        && entry.until.is_none()
                    {
                        entry.until = Some(at);
                        entry.longest = entry.longest.max(at.saturating_sub(entry.from));
                    }
                }
            }
        })
    };
    let start = Instant::now();
    cloud.kill_replica(0);
    let mut patches = tokio::task::JoinSet::new();
    for &i in &victims {
        let name = format!("p-{i:06}-000");
        let (pods, slots) = (pods.clone(), slots.clone());
        patches.spawn(async move {
            let _permit = slots.acquire().await;
            pods.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"killed": "1"}}})),
            )
            .await
            .map(|_| ())
        });
    }
    let mut moved: HashSet<usize> = HashSet::new();
    let mut resynced: HashSet<usize> = HashSet::new();
    let mut resent: HashMap<usize, usize> = HashMap::new();
    let mut times = Vec::with_capacity(victims.len());
    let victim_set: HashSet<usize> = victims.iter().copied().collect();
    let deadline = start + s.limit;
    while resynced.len() < victims.len() || moved.len() < victims.len() {
        while let Some(done) = patches.try_join_next() {
            done??;
        }
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Connected { node, replica, at })) => {
                held_by[node] = replica;
                if victim_set.contains(&node)
                    && replica != 0
                    && moved.insert(node)
                    && moved.len() == victims.len()
                {
                    kill.reconnected = at.saturating_duration_since(start);
                }
            }
            Ok(Some(Report::Applied {
                node,
                key,
                version,
                at,
                ..
            })) => {
                if !victim_set.contains(&node) {
                    continue;
                }
                *resent.entry(node).or_default() += 1;
                let before = applied.get(&key).copied().flatten();
                if key == format!("default/pod/p-{node:06}-000")
                    && version > before
                    && resynced.insert(node)
                {
                    times.push(at.saturating_duration_since(start));
                }
            }
            Ok(Some(_)) => {}
            _ => {
                watch.abort();
                return Err(format!(
                    "after the kill: {} of {} nodes reconnected, {} resynced in time",
                    moved.len(),
                    victims.len(),
                    resynced.len()
                )
                .into());
            }
        }
    }
    while let Some(done) = patches.join_next().await {
        done??;
    }
    kill.resynced = start.elapsed();
    kill.resync = Spread::of(times);
    let mut counts: Vec<usize> = victims
        .iter()
        .map(|v| resent.get(v).copied().unwrap_or(0))
        .collect();
    counts.sort_unstable();
    kill.resent = (
        counts.get(counts.len() / 2).copied().unwrap_or(0),
        counts.last().copied().unwrap_or(0),
    );
    // Past the grace (and the replicas' next records) after the kill: a node the leader thought
    // silent would have been marked by now.
    // A node seen not Ready by then is given as long again to turn Ready (a real edge, and the
    // simulated one, reports its status on every reconnect), so that how long it stayed so is
    // measured, not only that it happened.
    let settle = start + s.grace + Duration::from_secs(12);
    let last_chance = settle + s.grace + Duration::from_secs(12);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        while reports.try_recv().is_ok() {}
        let now = Instant::now();
        let all_back = not_ready
            .lock()
            .map(|m| m.values().all(|n| n.until.is_some()))
            .unwrap_or(true);
        if now >= last_chance || (now >= settle && all_back) {
            break;
        }
    }
    watch.abort();
    let end = watching.elapsed();
    let seen = not_ready.lock().map(|m| m.clone()).unwrap_or_default();
    kill.not_ready = seen.len();
    let victim_names: HashSet<String> = victims.iter().map(|&i| worker::node_name(i)).collect();
    kill.not_ready_moved = seen.keys().filter(|n| victim_names.contains(*n)).count();
    let stretch = |n: &NotReady| n.longest.max(n.until.unwrap_or(end).saturating_sub(n.from));
    kill.longest_not_ready = seen.values().map(stretch).max().unwrap_or_default();
    // What a look into the cause needs: when each turned and came back, and when the cloud
    // says it marked it (a few, longest first).
    let mut worst: Vec<(&String, &NotReady)> = seen.iter().collect();
    worst.sort_by_key(|(_, n)| std::cmp::Reverse(stretch(n)));
    let kill_at = start.saturating_duration_since(watching);
    for (name, n) in worst.iter().take(10) {
        eprintln!(
            "after the kill: {name} ({}) seen not Ready at {:.1} s, Ready again {}, marked at {}",
            if victim_names.contains(*name) {
                "moved"
            } else {
                "stayed"
            },
            n.from.saturating_sub(kill_at).as_secs_f64(),
            n.until
                .map(|u| format!("at {:.1} s", u.saturating_sub(kill_at).as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            n.marked_at,
        );
    }
    Ok(kill)
}

/// A node seen not Ready after the kill: when its last stretch began (since the watch began),
/// when it was seen Ready again, its longest stretch before that, and the Ready condition's
/// transition time (when the cloud marked it).
#[derive(Debug, Clone)]
struct NotReady {
    from: Duration,
    until: Option<Duration>,
    longest: Duration,
    marked_at: String,
}

/// The four tables, one row per fleet size.
pub fn print(rows: &[Row], pods_per_node: usize) {
    let Some(first) = rows.first() else {
        return;
    };
    println!("cloudcore idle, no nodes: RSS {} MiB", mib(first.idle_rss));
    table(
        Some("1. connect and register"),
        &[
            "nodes",
            "all registered (s)",
            "per node p50 (ms)",
            "p99 (ms)",
            "cloudcore RSS (MiB)",
            "RSS per node (KiB)",
            "cloudcore CPU (s)",
        ],
        0,
        rows.iter().map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.2}", r.connect_time.as_secs_f64()),
                ms(r.connect.p50),
                ms(r.connect.p99),
                mib(r.connected_rss),
                format!("{:.1}", r.per_node(r.connected_rss)),
                format!("{:.2}", r.connect_cpu),
            ]
        }),
    );
    let windows: Vec<(usize, &OpenLoop)> = rows
        .iter()
        .flat_map(|r| r.open_loop.iter().map(move |w| (r.nodes, w)))
        .collect();
    if !windows.is_empty() {
        table(
            Some("1b. open loop: pods created at a fixed rate, due → at the edge"),
            &[
                "nodes",
                "rate (pods/s)",
                "pods",
                "achieved (pods/s)",
                "p50 (ms)",
                "p99 (ms)",
                "max (ms)",
                "cloudcore CPU (% of one core)",
            ],
            0,
            windows.iter().map(|(nodes, w)| {
                vec![
                    nodes.to_string(),
                    w.rate.to_string(),
                    w.pods.to_string(),
                    format!("{:.0}", w.achieved),
                    ms(w.latency.p50),
                    ms(w.latency.p99),
                    ms(w.latency.max),
                    format!("{:.0}", w.cpu_pct),
                ]
            }),
        );
    }
    table(
        Some(&format!(
            "2. fan-out: {pods_per_node} pods per node through the API"
        )),
        &[
            "nodes",
            "pods",
            "all at their edges (s)",
            "pods/s",
            "latency p50 (ms)",
            "p99 (ms)",
            "cloudcore RSS (MiB)",
            "cloudcore CPU (s)",
        ],
        0,
        rows.iter().map(|r| {
            vec![
                r.nodes.to_string(),
                r.pods.to_string(),
                format!("{:.2}", r.fanout_time.as_secs_f64()),
                format!("{:.0}", r.pods as f64 / r.fanout_time.as_secs_f64()),
                ms(r.fanout.p50),
                ms(r.fanout.p99),
                mib(r.fanout_rss),
                format!("{:.2}", r.fanout_cpu),
            ]
        }),
    );
    table(
        Some("3. steady state: keepalives only"),
        &[
            "nodes",
            "window (s)",
            "cloudcore CPU (% of one core)",
            "RSS (MiB)",
            "RSS per node (KiB)",
        ],
        0,
        rows.iter().map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.0}", r.steady_secs),
                format!("{:.2}", r.steady_cpu_pct),
                mib(r.steady_rss),
                format!("{:.1}", r.per_node(r.steady_rss)),
            ]
        }),
    );
    table(
        Some("4. reconnect storm: every connection dropped at once, one pod per node changed"),
        &[
            "nodes",
            "all resynced (s)",
            "per node p50 (ms)",
            "p99 (ms)",
            "objects sent again per node (median / max)",
            "message bytes per node (mean)",
            "cloudcore CPU (s)",
        ],
        0,
        rows.iter().map(|r| {
            vec![
                r.nodes.to_string(),
                format!("{:.2}", r.storm_time.as_secs_f64()),
                ms(r.storm.p50),
                ms(r.storm.p99),
                format!("{} / {}", r.resent.0, r.resent.1),
                format!("{:.0}", r.resent_bytes),
                format!("{:.2}", r.storm_cpu),
            ]
        }),
    );
    let kills: Vec<&Row> = rows.iter().filter(|r| r.kill.is_some()).collect();
    if !kills.is_empty() {
        table(
            Some(
                "5. kill -9 of one replica: its nodes reconnect to the others, one pod each changed meanwhile",
            ),
            &[
                "nodes",
                "replicas",
                "nodes on the killed replica",
                "all reconnected (s)",
                "all resynced (s)",
                "per node p50 (ms)",
                "p99 (ms)",
                "objects sent again per node (median / max)",
                "nodes seen not Ready (of them moved)",
                "longest not Ready (s)",
            ],
            0,
            kills.iter().filter_map(|r| {
                let k = r.kill.as_ref()?;
                Some(vec![
                    r.nodes.to_string(),
                    r.replicas.to_string(),
                    k.nodes.to_string(),
                    format!("{:.2}", k.reconnected.as_secs_f64()),
                    format!("{:.2}", k.resynced.as_secs_f64()),
                    ms(k.resync.p50),
                    ms(k.resync.p99),
                    format!("{} / {}", k.resent.0, k.resent.1),
                    format!("{} ({})", k.not_ready, k.not_ready_moved),
                    format!("{:.1}", k.longest_not_ready.as_secs_f64()),
                ])
            }),
        );
    }
}
