//! edgesite (`bins/edgesite`): the control plane and an edge node in one process on one data
//! directory. A pod applied with the real kubectl runs on the site's own node (process runtime);
//! the site is killed with SIGKILL and started again on the same directory and ports: the pod is
//! still there, its process the same one, and the site works on (a new pod runs); a second
//! edgecore joins with a token from `keadm gettoken` and runs a pod of its own.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{TempDir, eventually, free_port, kill_all, kubectl, live_processes};
use crate::devices::Peer;

/// A binary built beside this test's edgecore.
pub(crate) fn sibling(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_edgecore")).with_file_name(name);
    assert!(bin.exists(), "build {name} first: {}", bin.display());
    bin
}

/// Starts `cmd` with stderr appended to `log` (`RUST_LOG=warn` unless it sets one); returns it
/// and its ready line once it printed one starting with `ready`.
pub(crate) fn start(mut cmd: Command, log: &Path, ready: &str) -> (Peer, String) {
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "warn");
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let peer = Peer(child);
    assert!(
        line.starts_with(ready),
        "{ready}: {line:?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (peer, line)
}

/// The site on `dir` (cloud under `cloud/`, where `kubectl()` finds the kubeconfig) with fixed
/// ports `[api, hub, https, metaserver]`, so a restart comes back where clients expect it.
fn edgesite(dir: &TempDir, ports: [u16; 4]) -> Peer {
    let mut cmd = Command::new(sibling("edgesite"));
    cmd.arg("--data-dir")
        .arg(&dir.0)
        .args(["--node-name", "site", "--runtime", "process"])
        .args(["--bind-address", "127.0.0.1"])
        .args(["--api-port", &ports[0].to_string()])
        .args(["--hub-port", &ports[1].to_string()])
        .args(["--https-port", &ports[2].to_string()])
        .args(["--metaserver-port", &ports[3].to_string()])
        .args(["--mqtt-internal", "127.0.0.1:0"]);
    start(cmd, &dir.0.join("edgesite.log"), "edgesite ready node=site").0
}

/// `phase nodeName containerID restartCount` of pod `name`, or "" while it has no status.
fn pod_state(dir: &TempDir, name: &str) -> String {
    kubectl(
        dir,
        &[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.phase} {.spec.nodeName} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}",
        ],
    )
}

/// A pod running `sleep` (a program in PATH: the process runtime runs the image as the program),
/// on `node` when given, else where the scheduler puts it.
pub(crate) fn sleeper(dir: &TempDir, name: &str, node: Option<&str>) {
    let node = node.map_or_else(String::new, |n| format!("  nodeName: {n}\n"));
    let file = dir.0.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{node}  containers:\n  - name: main\n    image: sleep\n    args: [\"3600\"]\n"
        ),
    )
    .unwrap();
    kubectl(dir, &["apply", "-f", file.to_str().unwrap()]);
}

async fn wait_running(dir: &TempDir, name: &str, node: &str) -> String {
    let mut state = String::new();
    eventually(60, &format!("pod {name} Running on {node}"), async || {
        state = pod_state(dir, name);
        state.starts_with(&format!("Running {node} "))
    })
    .await;
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgesite_runs_pods_survives_kill_9_and_takes_further_edges() {
    let dir = TempDir::new("edgesite");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let pods = dir.0.join("edge/process");
    let mut site = edgesite(&dir, ports);
    let nodes = kubectl(&dir, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "node/site");

    sleeper(&dir, "keeper", None);
    let before = wait_running(&dir, "keeper", "site").await;
    let processes = live_processes(&pods);
    assert_eq!(processes.len(), 1, "{processes:?}");

    // kill -9, then the same directory and ports again
    site.0.kill().unwrap();
    site.0.wait().unwrap();
    assert_eq!(
        live_processes(&pods),
        processes,
        "the pod's process outlives the site"
    );
    site = edgesite(&dir, ports);
    eventually(30, "node site Ready again", async || {
        kubectl(
            &dir,
            &[
                "get",
                "node",
                "site",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) == "True"
    })
    .await;
    let after = wait_running(&dir, "keeper", "site").await;
    assert_eq!(after, before, "the same container, not restarted");
    assert_eq!(
        live_processes(&pods),
        processes,
        "the same process, adopted"
    );
    sleeper(&dir, "newcomer", None);
    wait_running(&dir, "newcomer", "site").await;

    // a second edge joins with a token
    let token = Command::new(sibling("keadm"))
        .arg("gettoken")
        .arg("--data-dir")
        .arg(dir.0.join("cloud"))
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap();
    let mut cmd = Command::new(sibling("edgecore"));
    cmd.arg("--data-dir")
        .arg(dir.0.join("e2"))
        .args(["--node-name", "e2", "--runtime", "process"])
        .args(["--cloud", &format!("wss://127.0.0.1:{}", ports[1])])
        .args(["--https", &format!("https://127.0.0.1:{}", ports[2])])
        .args(["--token", token.trim()])
        .args(["--metaserver-port", "0", "--mqtt-internal", "127.0.0.1:0"]);
    let (e2, _) = start(cmd, &dir.0.join("e2.log"), "edgecore ready node=e2");
    sleeper(&dir, "on-e2", Some("e2"));
    wait_running(&dir, "on-e2", "e2").await;

    for pod in ["keeper", "newcomer", "on-e2"] {
        kubectl(&dir, &["delete", "pod", pod, "--wait=false"]);
    }
    eventually(60, "the pods' processes gone", async || {
        live_processes(&pods).is_empty() && live_processes(&dir.0.join("e2/process")).is_empty()
    })
    .await;
    drop(e2);
    drop(site);
    // a failed run leaves no process behind
    kill_all(&pods);
    kill_all(&dir.0.join("e2/process"));
}
