//! cloudcore replicas: two real cloudcore processes (`--replica`) over one Kubernetes API (a third
//! cloudcore's embedded control plane standing in for the cluster), three real edgecores listing
//! both. The replicas share one CA (Secret `kubeedge/casecret`), the edges spread over them by
//! name, a pod created through the API reaches an edge connected to either; the leader of Lease
//! `kubeedge/cloudcore` is killed with SIGKILL: its edges reconnect to the other replica within
//! 30 s, a pod created meanwhile arrives, the lease moves to the survivor, every node stays Ready.
//! A third replica that brings a CA of its own is refused with the reason.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kubeedge_edge::edgehub::replica_order;

use crate::common::{TempDir, eventually, kubectl, kubectl_server};
use crate::devices::Peer;
use crate::edgesite::{sibling, sleeper, start};

/// `field=value` of a ready line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// A cloudcore on loopback with free ports: the ready line tells them.
fn cloudcore(data: &Path, log: &Path, extra: &[&str]) -> (Peer, String) {
    let mut cmd = Command::new(sibling("cloudcore"));
    cmd.arg("--data-dir").arg(data).args([
        "--bind-address",
        "127.0.0.1",
        "--api-port",
        "0",
        "--hub-port",
        "0",
        "--https-port",
        "0",
        "--stream-port",
        "0",
    ]);
    cmd.args(extra);
    start(cmd, log, "cloudcore ready")
}

/// `path`'s text without terminal colour codes (the daemons' logs colour field names).
fn log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn lease_holder(dir: &TempDir) -> String {
    kubectl(
        dir,
        &[
            "get",
            "lease",
            "cloudcore",
            "-n",
            "kubeedge",
            "-o",
            "jsonpath={.spec.holderIdentity}",
            "--ignore-not-found",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_fleet_and_take_over_from_a_killed_leader() {
    let dir = TempDir::new("replicas");
    // The shared API: a cloudcore's embedded control plane under `cloud/` (where kubectl() looks).
    // (Not a replica itself, it would mark the nodes it never hears: a grace longer than the test.)
    let (_api, _) = cloudcore(
        &dir.0.join("cloud"),
        &dir.0.join("api.log"),
        &["--node-grace-seconds", "3600"],
    );
    let kubeconfig = dir.0.join("cloud/admin.kubeconfig");
    let kubeconfig = kubeconfig.to_str().unwrap();
    let mut replicas = Vec::new();
    for id in ["a", "b"] {
        let (peer, line) = cloudcore(
            &dir.0.join(id),
            &dir.0.join(format!("{id}.log")),
            &["--kubeconfig", kubeconfig, "--replica", "--replica-id", id],
        );
        let hub = format!("wss://{}", field(&line, "hub"));
        let https = format!("https://{}", field(&line, "https"));
        replicas.push((id, Some(peer), hub, https));
    }
    let ca = |id: &str| std::fs::read(dir.0.join(id).join("ca/rootCA.crt")).unwrap();
    assert_eq!(ca("a"), ca("b"), "the replicas share one CA");

    // Three nodes, spread over both replicas by their names' own order.
    let urls: Vec<String> = replicas.iter().map(|r| r.2.clone()).collect();
    let first = |node: &str| replica_order(node, &urls)[0].clone();
    let mut nodes: Vec<String> = Vec::new();
    for n in 0..64 {
        let node = format!("r{n}");
        let on_a = nodes.iter().filter(|n| first(n) == urls[0]).count();
        let on_b = nodes.len() - on_a;
        let prefers_a = first(&node) == urls[0];
        if (prefers_a && on_a < 2 && (on_a == 0 || on_b > 0))
            || (!prefers_a && on_b < 2 && (on_b == 0 || on_a > 0))
        {
            nodes.push(node);
        }
        if nodes.len() == 3 {
            break;
        }
    }
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let token = Command::new(sibling("keadm"))
        .arg("gettoken")
        .arg("--data-dir")
        .arg(dir.0.join("a"))
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap();
    let mut edges = Vec::new();
    for node in &nodes {
        let mut cmd = Command::new(sibling("edgecore"));
        cmd.arg("--data-dir")
            .arg(dir.0.join(node))
            .args(["--node-name", node, "--runtime", "none"])
            .args(["--cloud", &urls.join(",")])
            .args(["--https", &replicas[0].3])
            .args(["--token", token.trim()])
            .args(["--metaserver-port", "0", "--mqtt-internal", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,kubeedge_edge::edgehub=info");
        let log = dir.0.join(format!("{node}.log"));
        let (peer, line) = start(cmd, &log, &format!("edgecore ready node={node}"));
        let server = format!("http://{}", field(&line, "metaserver"));
        edges.push((node.clone(), peer, server, log));
    }
    let all_ready = |dir: &TempDir| {
        let out = kubectl(
            dir,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
        );
        nodes.iter().all(|n| out.contains(&format!("{n}=True")))
    };
    eventually(60, "every node Ready", async || all_ready(&dir)).await;
    for (node, _, _, log) in &edges {
        let text = log_text(log);
        let expected = first(node);
        assert!(
            text.contains(&format!("edgehub: connected cloud={expected}")),
            "{node} connects to its first choice {expected} first:\n{text}"
        );
    }

    // A pod created through the API reaches each edge, whichever replica it is on.
    for (node, _, server, _) in &edges {
        sleeper(&dir, &format!("p-{node}"), Some(node));
        eventually(30, &format!("the pod at {node}"), async || {
            kubectl_server(&dir, server, &["get", "pods", "-o", "name"])
                .contains(&format!("pod/p-{node}"))
        })
        .await;
    }

    // The leader, killed.
    let mut leader = String::new();
    eventually(30, "a leader", async || {
        leader = lease_holder(&dir);
        !leader.is_empty()
    })
    .await;
    let (gone, survivor) = if leader == "a" { (0, 1) } else { (1, 0) };
    assert_eq!(replicas[gone].0, leader);
    let moved: Vec<usize> = (0..3)
        .filter(|&i| first(&edges[i].0) == urls[gone])
        .collect();
    assert!(!moved.is_empty());
    let mut killed = replicas[gone].1.take().unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let t0 = Instant::now();
    for &i in &moved {
        let (node, _, server, log) = &edges[i];
        sleeper(&dir, &format!("meanwhile-{node}"), Some(node));
        eventually(
            30,
            &format!("{node} on the surviving replica"),
            async || {
                log_text(log).contains(&format!("edgehub: connected cloud={}", urls[survivor]))
            },
        )
        .await;
        eventually(
            30,
            &format!("the pod made meanwhile at {node}"),
            async || {
                kubectl_server(&dir, server, &["get", "pods", "-o", "name"])
                    .contains(&format!("pod/meanwhile-{node}"))
            },
        )
        .await;
    }
    let reconnected = t0.elapsed();
    assert!(reconnected < Duration::from_secs(30), "{reconnected:?}");
    eventually(40, "the lease at the survivor", async || {
        lease_holder(&dir) == replicas[survivor].0
    })
    .await;
    eprintln!(
        "leader {leader} killed; {:?} reconnected to {} and got the new pod within {reconnected:?}; lease at {} after {:?}",
        moved.iter().map(|&i| &edges[i].0).collect::<Vec<_>>(),
        replicas[survivor].0,
        replicas[survivor].0,
        t0.elapsed()
    );
    assert!(all_ready(&dir), "every node still Ready");

    // A replica that already had a CA of its own is refused, not switched.
    let other = dir.0.join("c");
    let pki = Command::new(sibling("keadm"))
        .arg("init-pki")
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    assert!(pki.status.success(), "{pki:?}");
    let refused = Command::new(sibling("cloudcore"))
        .arg("--data-dir")
        .arg(&other)
        .args(["--kubeconfig", kubeconfig, "--replica", "--replica-id", "c"])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--hub-port",
            "0",
            "--https-port",
            "0",
        ])
        .args(["--stream-port", "0"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("is not the replicas' shared CA"), "{err}");
}
