//! edgecore's own footprint: a real edgecore process (process runtime) joined to a real
//! cloudcore; RSS and CPU idle, then with `pods` pods running; binary sizes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use super::cloud::CloudCore;
use super::proc::{self, Daemon};
use super::{Error, mib, table};

/// RSS and CPU of edgecore over a window.
pub struct Sample {
    /// Pods running.
    pub pods: usize,
    /// Mean RSS, KiB.
    pub rss_mean: u64,
    /// Highest RSS, KiB.
    pub rss_max: u64,
    /// CPU, % of one core.
    pub cpu_pct: f64,
    /// Of the RSS at the end: anonymous (heap, stacks) and file-backed (the binary's code) KiB.
    pub anon_file: (u64, u64),
}

/// The scenario's results.
pub struct Report {
    /// Idle, then with pods.
    pub samples: Vec<Sample>,
    /// Time from the first create until every pod was Running (as the API reports it).
    pub pods_running_in: Duration,
    /// edgecore's peak RSS over the whole run, KiB.
    pub peak_rss: u64,
    /// (binary, size, stripped size).
    pub binaries: Vec<(String, u64, Option<u64>)>,
    /// Sampling window.
    pub window: Duration,
}

const NODE: &str = "footprint-edge";
const SCENARIO: &str = "edgecore footprint";

async fn sample(pid: u32, pods: usize, window: Duration) -> Sample {
    let cpu0 = proc::cpu_secs(pid);
    let start = Instant::now();
    let (mut sum, mut count, mut max) = (0u64, 0u64, 0u64);
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = proc::rss_kib(pid);
        sum += rss;
        count += 1;
        max = max.max(rss);
    }
    Sample {
        pods,
        rss_mean: sum / count.max(1),
        rss_max: max,
        cpu_pct: 100.0 * (proc::cpu_secs(pid) - cpu0) / start.elapsed().as_secs_f64(),
        anon_file: (proc::rss_anon_kib(pid), proc::rss_file_kib(pid)),
    }
}

/// Kills what the process runtime under `data` recorded as still running (cleanup after the run,
/// whatever state edgecore was left in).
pub fn kill_recorded(data: &Path) {
    let Ok(sandboxes) = std::fs::read_dir(data.join("process")) else {
        return;
    };
    for sandbox in sandboxes.flatten() {
        let Ok(containers) = std::fs::read_dir(sandbox.path().join("containers")) else {
            continue;
        };
        for c in containers.flatten() {
            let record = std::fs::read(c.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            // A container with a recorded exit is gone; its PID may be another process's now.
            let pid = record
                .filter(|v| v["exit"].is_null())
                .and_then(|v| v["pid"].as_i64())
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Checks `check` every 500 ms until it holds; an error naming `scenario` and `what` after
/// `limit`.
pub async fn wait_for<F, Fut>(
    scenario: &str,
    limit: Duration,
    what: &str,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            return Err(format!("{scenario}: {what} did not happen in time").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Waits until node `node` reports Ready.
pub async fn node_ready(
    client: &kube::Client,
    node: &str,
    scenario: &str,
    limit: Duration,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(scenario, limit, "the node turning Ready", || async {
        nodes.get_opt(node).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await
}

/// Where `edge`'s metaserver listens (from its ready line).
pub fn metaserver_addr(edge: &Daemon) -> Result<&str, Error> {
    Ok(edge
        .ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metaserver="))
        .ok_or("edgecore did not say where its metaserver is")?)
}

/// A client of `edge`'s metaserver.
pub fn metaserver_client(edge: &Daemon) -> Result<kube::Client, Error> {
    let url = format!("http://{}", metaserver_addr(edge)?);
    Ok(kube::Client::try_from(kube::Config::new(url.parse()?))?)
}

/// A real edgecore (process runtime) on `dir` as node `node`, joined to `cloud` with a fresh
/// token, its metaserver and broker on free ports.
pub fn start_joined(
    edgecore: &Path,
    cloud: &CloudCore,
    node: &str,
    dir: &Path,
) -> Result<Daemon, Error> {
    let token = cloud
        .ca()?
        .token(Duration::from_secs(3600), SystemTime::now());
    let mut command = Command::new(edgecore);
    command
        .arg("--data-dir")
        .arg(dir)
        .args(["--node-name", node, "--runtime", "process"])
        .args(["--cloud", &cloud.hub_url()])
        .args([
            "--https",
            &format!("https://127.0.0.1:{}", cloud.https_port),
        ])
        .args(["--token", &token])
        .args(["--metaserver-port", "0", "--mqtt-internal", "127.0.0.1:0"]);
    Daemon::start(command, dir.to_owned(), "edgecore ready")
}

/// Runs the scenario.
pub async fn run(
    cloudcore: &Path,
    edgecore: &Path,
    pods: usize,
    window: Duration,
    limit: Duration,
) -> Result<Report, Error> {
    let cloud = CloudCore::start(cloudcore, 4, 32)?;
    let dir: PathBuf = proc::scratch("edge");
    let mut edge = start_joined(edgecore, &cloud, NODE, &dir)?;
    let result = measure(&cloud, &edge, pods, window, limit).await;
    // Pods outlive edgecore by design: stop it, then what it left running.
    edge.kill();
    kill_recorded(&dir);
    drop(edge);
    let mut report = result?;
    for (name, bin) in [("edgecore", edgecore), ("cloudcore", cloudcore)] {
        let (size, stripped) = proc::binary_sizes(bin)?;
        report.binaries.push((name.to_owned(), size, stripped));
    }
    Ok(report)
}

async fn measure(
    cloud: &CloudCore,
    edge: &Daemon,
    count: usize,
    window: Duration,
    limit: Duration,
) -> Result<Report, Error> {
    let client = cloud.client().await?;
    node_ready(&client, NODE, SCENARIO, limit).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = edge.pid();
    eprintln!("edgecore footprint: node Ready, sampling idle");
    let idle = sample(pid, 0, window).await;

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let start = Instant::now();
    for j in 0..count {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("fp-{j:03}")},
            "spec": {"nodeName": NODE, "restartPolicy": "Always",
                "containers": [{"name": "c", "image": "sleep", "command": ["sleep"], "args": ["3600"]}]}}))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    wait_for(SCENARIO, limit, "every pod Running", || async {
        pods.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count()
                == count
        })
    })
    .await?;
    let pods_running_in = start.elapsed();
    eprintln!(
        "edgecore footprint: {count} pods Running in {:.1} s, sampling",
        pods_running_in.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy = sample(pid, count, window).await;
    let peak_rss = proc::peak_rss_kib(pid);
    for j in 0..count {
        pods.delete(&format!("fp-{j:03}"), &DeleteParams::default())
            .await?;
    }
    Ok(Report {
        samples: vec![idle, busy],
        pods_running_in,
        peak_rss,
        binaries: Vec::new(),
        window,
    })
}

/// The tables.
pub fn print(r: &Report) {
    table(
        Some(&format!(
            "6. edgecore footprint (process runtime, {} s windows)",
            r.window.as_secs()
        )),
        &[
            "pods running",
            "RSS mean (MiB)",
            "RSS max (MiB)",
            "of it anonymous / file-backed (MiB)",
            "CPU (% of one core)",
        ],
        0,
        r.samples.iter().map(|s| {
            vec![
                s.pods.to_string(),
                mib(s.rss_mean),
                mib(s.rss_max),
                format!("{} / {}", mib(s.anon_file.0), mib(s.anon_file.1)),
                format!("{:.2}", s.cpu_pct),
            ]
        }),
    );
    println!();
    println!(
        "All pods Running (API) {:.1} s after the first create; edgecore peak RSS {} MiB.",
        r.pods_running_in.as_secs_f64(),
        mib(r.peak_rss)
    );
    table(
        None,
        &["binary", "size (MiB)", "stripped (MiB)"],
        1,
        r.binaries.iter().map(|(name, size, stripped)| {
            vec![
                name.clone(),
                mib(size / 1024),
                stripped.map_or("-".to_owned(), |b| mib(b / 1024)),
            ]
        }),
    );
}
