//! `fleet`: the scale harness. It starts a real `cloudcore` process (embedded control plane, on
//! loopback), then simulates N edge nodes in this process: each one a real mutual-TLS WebSocket
//! to cloudhub from its own 127.x.y.z source address, speaking the real sync protocol with an
//! in-memory store (acks at once). It runs the scenarios one after the other and prints a table
//! per scenario, with cloudcore's RSS and CPU read from `/proc`:
//!
//! 1. **connect**: every node connects and registers its Node (an uplink the cloud answers);
//!    per-node time to registered, and cloudcore's memory per connected node.
//! 2. **fan-out**: `--pods-per-node` pods per node created through the API; time until every edge
//!    holds every pod; per-object latency from the create request to the edge.
//! 3. **steady**: keepalives only for `--steady-secs`: cloudcore CPU and RSS.
//! 4. **reconnect storm**: every connection dropped at once, and one pod per node changed;
//!    every edge dials again with its inventory: time until all hold the changed pod, and how many
//!    objects (and message bytes) each node was sent again (inventory resync sends only what
//!    changed).
//!
//! `fleet --nodes 1000` (release build recommended: `cargo run --release -p fleet -- --nodes 1000`).
//! Exit codes: 0, 1 when a scenario does not complete in time, 64 bad usage.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::pki::Ca;
use kubeedge_core::sync::edge;
use kubeedge_core::transport::{driver, tls, ws};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "fleet", about = "kubeedge-rs scale harness")]
struct Cli {
    /// Simulated edge nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods per node in the fan-out scenario.
    #[arg(long, default_value_t = 10)]
    pods_per_node: usize,
    /// Length of the steady-state window, seconds.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// Concurrent dials and API requests.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The cloudcore binary. Default: next to this one.
    #[arg(long)]
    cloudcore: Option<PathBuf>,
    /// Limit for each scenario, seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// cloudcore as a child process, killed on drop.
struct CloudCore {
    child: Child,
    dir: PathBuf,
    kubeconfig: PathBuf,
    hub_port: u16,
}

impl Drop for CloudCore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl CloudCore {
    fn start(bin: &Path, nodes: usize) -> Result<CloudCore, Error> {
        let dir = std::env::temp_dir().join(format!(
            "kubeedge-fleet-{}-{}",
            std::process::id(),
            driver::random_seed()
        ));
        let mut child = std::process::Command::new(bin)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--api-port", "0", "--bind-address", "127.0.0.1"])
            .args(["--hub-port", "0", "--https-port", "0"])
            .args(["--node-limit", &(nodes + 16).to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("cloudcore ready") => break l,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    return Err("cloudcore ended before it was ready".into());
                }
            }
        };
        let kubeconfig = PathBuf::from(field(&line, "kubeconfig").ok_or("no kubeconfig")?);
        let hub_port = field(&line, "hub")
            .and_then(|h| h.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or("no hub address")?;
        Ok(CloudCore {
            child,
            dir,
            kubeconfig,
            hub_port,
        })
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User + system CPU time so far, seconds.
    fn cpu_secs(&self) -> f64 {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
                Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
            })
            .unwrap_or(0.0)
    }
}

enum Report {
    Registered {
        at: Instant,
    },
    Applied {
        node: usize,
        key: String,
        version: Option<u64>,
        bytes: usize,
        at: Instant,
    },
}

struct Edge {
    name: String,
    ip: IpAddr,
    tls: Arc<rustls::ClientConfig>,
    inventory: Mutex<BTreeMap<String, Option<u64>>>,
}

fn registration(name: &str) -> Message {
    Message::new(
        "",
        0,
        Route::new("edged", names::RESOURCE_GROUP, Operation::Insert, format!("null/node/{name}")),
    )
    .with_resource_version("1")
    .with_content(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}))
}

/// One simulated edge, forever: dial, sync, ack at once; a storm signal drops the connection and
/// it dials again with its inventory.
async fn run_edge(
    idx: usize,
    edge: Arc<Edge>,
    url: String,
    reports: mpsc::UnboundedSender<Report>,
    mut storms: watch::Receiver<u64>,
    dials: Arc<Semaphore>,
) {
    let mut registered = false;
    loop {
        let mut config = ws::ClientConfig::new(url.clone(), edge.name.clone(), edge.tls.clone());
        config.local_ip = Some(edge.ip);
        let conn = {
            let _permit = dials.acquire().await;
            ws::connect(&config).await
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {}", edge.name, kubeedge_core::error_chain(&e));
                tokio::time::sleep(Duration::from_millis(500 + (idx % 500) as u64)).await;
                continue;
            }
        };
        let inventory: Vec<(String, Option<u64>)> = edge
            .inventory
            .lock()
            .map(|i| i.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut session = edge::Session::new(
            edge::Config::default(),
            inventory,
            driver::random_seed(),
            driver::wall_clock(),
            driver::now(),
        );
        let (handle, mut pump) = driver::channel::<edge::Session>(64);
        let (events_tx, mut events) = mpsc::channel(256);
        let app_edge = edge.clone();
        let app_reports = reports.clone();
        let register = !registered;
        let app = tokio::spawn(async move {
            if register {
                let m = registration(&app_edge.name);
                let _ = handle
                    .exec(move |s, _| {
                        let _ = s.enqueue_uplink(m);
                    })
                    .await;
            }
            let mut was_registered = false;
            while let Some(ev) = events.recv().await {
                match ev {
                    edge::Event::Apply {
                        token,
                        key,
                        version,
                        deleted,
                        message,
                    } => {
                        let bytes = message.to_json().len();
                        if let Ok(mut inv) = app_edge.inventory.lock() {
                            if deleted {
                                inv.remove(&key);
                            } else {
                                inv.insert(key.clone(), version);
                            }
                        }
                        let _ = app_reports.send(Report::Applied {
                            node: idx,
                            key,
                            version,
                            bytes,
                            at: Instant::now(),
                        });
                        let _ = handle.exec(move |s, now| s.persisted(now, [token])).await;
                    }
                    edge::Event::UplinkAcked { key, .. }
                        if key.contains("/node/") && !was_registered =>
                    {
                        was_registered = true;
                        let _ = app_reports.send(Report::Registered { at: Instant::now() });
                    }
                    _ => {}
                }
            }
            was_registered
        });
        let dropped = tokio::select! {
            _ = pump.drive(conn, &mut session, &events_tx) => false,
            _ = storms.changed() => true,
        };
        drop(events_tx);
        drop(pump);
        if let Ok(r) = app.await {
            registered |= r;
        }
        if !dropped {
            tokio::time::sleep(Duration::from_millis(200 + (idx % 300) as u64)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The source address of node `i`: 127.x.y.z, avoiding .0 and .255 in the last octet.
fn source_ip(i: usize) -> IpAddr {
    let n = i as u32;
    let z = (n % 250) + 2;
    let y = (n / 250) % 250 + 1;
    let x = (n / 62_500) % 250 + 1;
    IpAddr::V4(Ipv4Addr::new(127, x as u8, y as u8, z as u8))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let n = cli.nodes;
    let limit = Duration::from_secs(cli.timeout_secs);
    let bin = match cli.cloudcore {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory")?
            .join("cloudcore"),
    };
    let cloud = CloudCore::start(&bin, n)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_rss = cloud.rss_kib();
    println!(
        "# fleet: {n} simulated edge nodes against cloudcore pid {}",
        cloud.child.id()
    );
    println!();
    println!("cloudcore idle, no nodes: RSS {} MiB", mib(base_rss));

    // Node identities, signed with cloudcore's CA (as keadm join would get them).
    let ca = Arc::new(Ca::load_or_create(
        &cloud.dir.join("ca"),
        SystemTime::now(),
    )?);
    let t = Instant::now();
    let mut edges = Vec::with_capacity(n);
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(256)
        .map(|c| c.to_vec())
        .collect();
    for chunk in chunks {
        let ca = ca.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<Vec<Edge>, String> {
            chunk
                .into_iter()
                .map(|i| {
                    let name = format!("sim-{i:06}");
                    let id = ca
                        .issue_node(&name, Duration::from_secs(86_400), SystemTime::now())
                        .map_err(|e| e.to_string())?;
                    let tls = tls::client_config(&ca.cert(), id.chain(), id.private_key())
                        .map_err(|e| e.to_string())?;
                    Ok(Edge {
                        name,
                        ip: source_ip(i),
                        tls,
                        inventory: Mutex::default(),
                    })
                })
                .collect()
        })
        .await??;
        edges.extend(made.into_iter().map(Arc::new));
    }
    println!(
        "{n} node certificates issued in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let kc = kube::config::Kubeconfig::read_from(&cloud.kubeconfig)?;
    let kconfig =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(kconfig)?;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // --- 1. connect and register ---
    let url = format!("wss://127.0.0.1:{}", cloud.hub_port);
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (storm_tx, storm_rx) = watch::channel(0u64);
    let dials = Arc::new(Semaphore::new(cli.concurrency));
    let cpu0 = cloud.cpu_secs();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, e) in edges.iter().enumerate() {
        tasks.spawn(run_edge(
            i,
            e.clone(),
            url.clone(),
            reports_tx.clone(),
            storm_rx.clone(),
            dials.clone(),
        ));
    }
    let mut registered = Vec::with_capacity(n);
    let mut applied: HashMap<String, (usize, Option<u64>, Instant)> = HashMap::new();
    let deadline = start + limit;
    while registered.len() < n {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Registered { at })) => registered.push(at - start),
            Ok(Some(Report::Applied {
                node,
                key,
                version,
                at,
                ..
            })) => {
                applied.insert(key, (node, version, at));
            }
            _ => {
                return Err(
                    format!("only {} of {n} nodes registered in time", registered.len()).into(),
                );
            }
        }
    }
    let connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = cloud.rss_kib();
    let cpu_connect = cloud.cpu_secs() - cpu0;
    registered.sort();
    println!();
    println!("## 1. connect and register");
    println!();
    println!(
        "| nodes | all registered (s) | per node p50 (ms) | p99 (ms) | cloudcore RSS (MiB) | RSS per node (KiB) | cloudcore CPU (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.2} | {} | {} | {} | {:.1} | {:.2} |",
        connect_time.as_secs_f64(),
        ms(percentile(&registered, 0.5)),
        ms(percentile(&registered, 0.99)),
        mib(rss_connected),
        rss_connected.saturating_sub(base_rss) as f64 / n as f64,
        cpu_connect
    );

    // --- 2. fan-out ---
    let p = cli.pods_per_node;
    let total = n * p;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api_slots = Arc::new(Semaphore::new(cli.concurrency.min(64)));
    let cpu1 = cloud.cpu_secs();
    let start = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for (i, e) in edges.iter().enumerate() {
        for j in 0..p {
            let name = format!("p-{i:06}-{j:03}");
            let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"nodeName": e.name, "containers": [{"name": "c", "image": "busybox"}]}}))?;
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
    let deadline = start + limit;
    let is_fanout = |k: &str| k.starts_with("default/pod/p-");
    while arrived < total {
        while let Some(done) = creates.try_join_next() {
            done??;
        }
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Report::Applied {
                node,
                key,
                version,
                at,
                ..
            })) => {
                if is_fanout(&key) && !applied.contains_key(&key) {
                    arrived += 1;
                    if let Some(t0) = created.lock().ok().and_then(|c| c.get(&key).copied()) {
                        latencies.push(at.saturating_duration_since(t0));
                    }
                }
                applied.insert(key, (node, version, at));
            }
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
    let fanout_time = start.elapsed();
    let cpu_fanout = cloud.cpu_secs() - cpu1;
    latencies.sort();
    println!();
    println!("## 2. fan-out: {p} pods per node through the API");
    println!();
    println!(
        "| nodes | pods | all at their edges (s) | pods/s | latency p50 (ms) | p99 (ms) | cloudcore RSS (MiB) | cloudcore CPU (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {total} | {:.2} | {:.0} | {} | {} | {} | {:.2} |",
        fanout_time.as_secs_f64(),
        total as f64 / fanout_time.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        mib(cloud.rss_kib()),
        cpu_fanout
    );

    // --- 3. steady state ---
    let cpu2 = cloud.cpu_secs();
    let window = Duration::from_secs(cli.steady_secs);
    let start = Instant::now();
    let mut max_rss = 0;
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        max_rss = max_rss.max(cloud.rss_kib());
        while reports.try_recv().is_ok() {}
    }
    let cpu_steady = cloud.cpu_secs() - cpu2;
    println!();
    println!("## 3. steady state: keepalives only, {} s", cli.steady_secs);
    println!();
    println!("| nodes | cloudcore CPU (% of one core) | RSS (MiB) | RSS per node (KiB) |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.2} | {} | {:.1} |",
        100.0 * cpu_steady / start.elapsed().as_secs_f64(),
        mib(max_rss),
        max_rss.saturating_sub(base_rss) as f64 / n as f64
    );

    // --- 4. reconnect storm ---
    let cpu3 = cloud.cpu_secs();
    let start = Instant::now();
    storm_tx.send(1)?;
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
    let deadline = start + limit;
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
                let before = applied.get(&key).and_then(|(_, v, _)| *v);
                if key == format!("default/pod/p-{node:06}-000")
                    && version > before
                    && !got_change[node]
                {
                    got_change[node] = true;
                    remaining -= 1;
                    resync_times.push(at - start);
                }
            }
            Ok(Some(_)) => {}
            _ => return Err(format!("{remaining} of {n} nodes did not resync in time").into()),
        }
    }
    let storm_time = start.elapsed();
    let cpu_storm = cloud.cpu_secs() - cpu3;
    resync_times.sort();
    let mut per_node = resent.clone();
    per_node.sort_unstable();
    let bytes_total: usize = resent_bytes.iter().sum();
    println!();
    println!(
        "## 4. reconnect storm: all {n} connections dropped at once, one pod per node changed"
    );
    println!();
    println!(
        "| nodes | all resynced (s) | per node p50 (ms) | p99 (ms) | objects sent again per node (median / max) | message bytes per node (mean) | cloudcore CPU (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.2} | {} | {} | {} / {} | {:.0} | {:.2} |",
        storm_time.as_secs_f64(),
        ms(percentile(&resync_times, 0.5)),
        ms(percentile(&resync_times, 0.99)),
        per_node[per_node.len() / 2],
        per_node[per_node.len() - 1],
        bytes_total as f64 / n as f64,
        cpu_storm
    );
    tasks.abort_all();
    drop(cloud);
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {}", kubeedge_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
