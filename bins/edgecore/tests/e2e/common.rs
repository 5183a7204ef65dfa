//! What every end-to-end test needs: a temporary directory, polling, a cloudcore and an edge
//! configuration on loopback, and a containerd with both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use kubeedge_cloud::CloudCore;
use kubeedge_edge::EdgeCore;
use kubeedge_edge::test_util::Containerd;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "kubeedge-e2e-{tag}-{}-{}",
            std::process::id(),
            kubeedge_core::transport::driver::random_seed()
        ));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        kill_processes_in(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills every process working in `dir` (its process group with it, but never this test's own):
/// pods of the process runtime outlive their edgecore, as containers do, so a test's pods stop
/// with its directory.
fn kill_processes_in(dir: &Path) {
    let pgid = |stat: &str| -> Option<i32> {
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| pgid(&s));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if !std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            continue;
        }
        let group = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| pgid(&s));
        let target = match group {
            Some(g) if g > 1 && Some(g) != own => format!("-{g}"),
            _ => pid.to_string(),
        };
        let _ = Command::new("kill").args(["-KILL", "--", &target]).status();
    }
}

/// A port free on 127.0.0.1 now (the OS picks it; a test that must know a port before starting
/// a server, e.g. to restart it where clients expect it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// cloudcore settings under `dir/cloud`: the API on a free port, cloudhub on `hub` and `https`
/// (`127.0.0.1:0` for free ports; the same addresses again to restart it where edges expect it).
pub fn cloud_config(dir: &TempDir, hub: &str, https: &str) -> kubeedge_cloud::Config {
    let mut c = kubeedge_cloud::Config::new(dir.0.join("cloud"));
    c.api_addr = "127.0.0.1:0".parse().unwrap();
    c.hub_addr = hub.parse().unwrap();
    c.https_addr = https.parse().unwrap();
    c.stream_addr = "127.0.0.1:0".parse().unwrap();
    c
}

pub async fn cloud(dir: &TempDir, hub: &str, https: &str) -> CloudCore {
    CloudCore::start(cloud_config(dir, hub, https))
        .await
        .unwrap()
}

/// Node `e1` under `dir/edge`, joining `cloud` with a fresh token, the metaserver on a free port,
/// reconnecting within a second.
pub fn edge_config(dir: &TempDir, cloud: &CloudCore) -> kubeedge_edge::Config {
    node_config(&dir.0.join("edge"), "e1", cloud)
}

/// Node `node` with its data under `data`, otherwise as [`edge_config`].
pub fn node_config(data: &Path, node: &str, cloud: &CloudCore) -> kubeedge_edge::Config {
    let mut c = kubeedge_edge::Config::new(
        data.to_owned(),
        node,
        format!("wss://127.0.0.1:{}", cloud.hub_addr().port()),
    );
    c.https_url = Some(format!("https://127.0.0.1:{}", cloud.https_addr().port()));
    c.token = Some(
        cloud
            .ca()
            .token(Duration::from_secs(3600), SystemTime::now()),
    );
    c.metaserver_addr = "127.0.0.1:0".parse().unwrap();
    c.backoff_max = Duration::from_secs(1);
    c
}

/// A containerd, a cloudcore and the settings of an edge running its pods there (restarts after
/// one second).
pub async fn on_containerd(tag: &str) -> (Containerd, TempDir, CloudCore, kubeedge_edge::Config) {
    let ctrd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap()
        .unwrap();
    let dir = TempDir::new(tag);
    let cloud = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let mut ec = edge_config(&dir, &cloud);
    ec.runtime = kubeedge_edge::PodRuntime::Cri(ctrd.endpoint());
    ec.restart_backoff = Duration::from_secs(1);
    (ctrd, dir, cloud, ec)
}

pub fn metaserver_client(edge: &EdgeCore) -> kube::Client {
    let url = format!("http://{}", edge.metaserver_addr());
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

/// The real kubectl against the cloud, with the admin kubeconfig; panics unless it succeeds.
pub fn kubectl(dir: &TempDir, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.0.join("home"))
        .arg("--kubeconfig")
        .arg(dir.0.join("cloud/admin.kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.0.join("kcache"))
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?}: {text}");
    text
}

/// The real kubectl against `server` (an edge's metaserver); panics unless it succeeds.
pub fn kubectl_server(dir: &TempDir, server: &str, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.0.join("home"))
        .arg("--server")
        .arg(server)
        .arg("--cache-dir")
        .arg(dir.0.join("kcache-edge"))
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The status of `node`'s Ready condition (`True`, `False`, `Unknown`), if it has one.
pub fn ready_condition(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Whether `node` reports condition Ready=True.
pub fn node_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    ready_condition(node).as_deref() == Some("True")
}

/// The status of node `name`'s Ready condition as the cloud's API has it now.
pub async fn ready_status(
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    name: &str,
) -> Option<String> {
    nodes
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|n| ready_condition(&n))
}

/// The live processes the process runtime recorded under `root`: (pid, record file).
pub fn live_processes(root: &Path) -> Vec<(i32, PathBuf)> {
    let mut out = Vec::new();
    for sandbox in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = sandbox.path().join("containers");
        for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(f.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let pid = v["pid"].as_i64().unwrap_or(0) as i32;
            let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if v["exit"].is_null() && running {
                out.push((pid, f.path()));
            }
        }
    }
    out
}

/// Kills every live process the process runtime recorded under `root`; returns how many.
pub fn kill_all(root: &Path) -> usize {
    live_processes(root)
        .into_iter()
        .filter_map(|(pid, _)| rustix::process::Pid::from_raw(pid))
        .filter(|pid| rustix::process::kill_process(*pid, rustix::process::Signal::KILL).is_ok())
        .count()
}
