//! cloudcore replicas: two real cloudcore processes (`--replica`) over one Kubernetes API (a third
//! cloudcore's embedded control plane standing in for the cluster), three real edgecores listing
//! both. The replicas share one CA (Secret `kubeedge/casecret`), the edges spread over them by
//! name, a pod created through the API reaches an edge connected to either; the leader of Lease
//! `kubeedge/cloudcore` is killed with SIGKILL: its edges reconnect to the other replica within
//! 30 s, a pod created meanwhile arrives, the lease moves to the survivor, every node stays Ready.
//! A third replica that brings a CA of its own is refused with the reason.

use std::path::{Path, PathBuf};
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

/// A cloudcore replica: its id (and lease identity), the process, cloudhub's and its HTTPS URL,
/// its data directory.
struct Replica {
    id: &'static str,
    peer: Option<Peer>,
    hub: String,
    https: String,
    data: PathBuf,
}

fn replica(id: &'static str, data: PathBuf, log: &Path, extra: &[&str]) -> Replica {
    let mut args = vec!["--replica-id", id];
    args.extend_from_slice(extra);
    let (peer, line) = cloudcore(&data, log, &args);
    Replica {
        id,
        peer: Some(peer),
        hub: format!("wss://{}", field(&line, "hub")),
        https: format!("https://{}", field(&line, "https")),
        data,
    }
}

/// Three node names spread over the replicas by their own order: at least one on each.
fn spread(urls: &[String]) -> Vec<String> {
    let first = |node: &str| replica_order(node, urls)[0].clone();
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
    nodes
}

/// The scenario both setups share: three real edgecores listing both replicas connect each to
/// its first choice and turn Ready; a pod created through the API (kubectl on `dir/cloud`'s
/// kubeconfig) reaches each; the lease's leader is killed with SIGKILL: its edges reconnect to
/// the survivor within 30 s and a pod created meanwhile arrives; the lease moves to the
/// survivor; every node stays Ready. `survive` is called once the leader is gone (to point
/// kubectl at the survivor when the API was the killed replica's). With `streams` (the API is a
/// replica's own), pod streams through the survivor's API then reach every node, the ones whose
/// sync session was always elsewhere included: each edge keeps a stream tunnel to every replica.
async fn fleet_survives_a_killed_leader(
    dir: &TempDir,
    replicas: &mut [Replica],
    streams: bool,
    survive: impl Fn(&Replica),
) {
    let urls: Vec<String> = replicas.iter().map(|r| r.hub.clone()).collect();
    let https: Vec<String> = replicas.iter().map(|r| r.https.clone()).collect();
    let first = |node: &str| replica_order(node, &urls)[0].clone();
    let nodes = spread(&urls);
    let token = Command::new(sibling("keadm"))
        .arg("gettoken")
        .arg("--data-dir")
        .arg(&replicas[0].data)
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
            .args(["--https", &https.join(",")])
            .args(["--token", token.trim()])
            .args(["--metaserver-port", "0", "--mqtt-internal", "127.0.0.1:0"])
            .env(
                "RUST_LOG",
                "warn,kubeedge_edge::edgehub=info,kubeedge_edge::streams=info",
            );
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
    eventually(60, "every node Ready", async || all_ready(dir)).await;
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
        sleeper(dir, &format!("p-{node}"), Some(node));
        eventually(30, &format!("the pod at {node}"), async || {
            kubectl_server(dir, server, &["get", "pods", "-o", "name"])
                .contains(&format!("pod/p-{node}"))
        })
        .await;
    }

    // The leader, killed.
    let mut leader = String::new();
    eventually(30, "a leader", async || {
        leader = lease_holder(dir);
        !leader.is_empty()
    })
    .await;
    let gone = replicas
        .iter()
        .position(|r| r.id == leader)
        .unwrap_or_else(|| panic!("the lease is held by {leader:?}, not a replica"));
    let survivor = 1 - gone;
    let moved: Vec<usize> = (0..3)
        .filter(|&i| first(&edges[i].0) == urls[gone])
        .collect();
    assert!(!moved.is_empty());
    let mut killed = replicas[gone].peer.take().unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let t0 = Instant::now();
    survive(&replicas[survivor]);
    for &i in &moved {
        let (node, _, server, log) = &edges[i];
        sleeper(dir, &format!("meanwhile-{node}"), Some(node));
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
                kubectl_server(dir, server, &["get", "pods", "-o", "name"])
                    .contains(&format!("pod/meanwhile-{node}"))
            },
        )
        .await;
    }
    let reconnected = t0.elapsed();
    assert!(reconnected < Duration::from_secs(30), "{reconnected:?}");
    eventually(40, "the lease at the survivor", async || {
        lease_holder(dir) == replicas[survivor].id
    })
    .await;
    eprintln!(
        "leader {leader} killed; {:?} reconnected to {} and got the new pod within {reconnected:?}; lease at {} after {:?}",
        moved.iter().map(|&i| &edges[i].0).collect::<Vec<_>>(),
        replicas[survivor].id,
        replicas[survivor].id,
        t0.elapsed()
    );
    assert!(all_ready(dir), "every node still Ready");
    if !streams {
        return;
    }
    for node in &nodes {
        let out = Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(dir.0.join("cloud/admin.kubeconfig"))
            .args(["logs", &format!("p-{node}"), "--request-timeout=20s"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // These edges run no pods: the answer is the edge's own (no log there yet), not the
        // cloud's "not connected".
        assert!(
            text.contains(&format!("pod \"p-{node}\" on this node"))
                && !text.contains("not connected"),
            "kubectl logs p-{node} through the survivor: {text}"
        );
    }
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
    let mut replicas: Vec<Replica> = ["a", "b"]
        .into_iter()
        .map(|id| {
            replica(
                id,
                dir.0.join(id),
                &dir.0.join(format!("{id}.log")),
                &["--kubeconfig", kubeconfig, "--replica"],
            )
        })
        .collect();
    let ca = |id: &str| std::fs::read(dir.0.join(id).join("ca/rootCA.crt")).unwrap();
    assert_eq!(ca("a"), ca("b"), "the replicas share one CA");
    fleet_survives_a_killed_leader(&dir, &mut replicas, false, |_| {}).await;

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

/// Two replicas whose embedded control planes keep their objects in one real etcd (Debian's
/// etcd-server, one member): each serves the same API; a pod created through replica A's API
/// reaches edges on B; the fleet survives the leader's SIGKILL as above, the survivor's API still
/// holding everything (what the leader had acknowledged included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_etcd_serve_one_api_and_take_over_from_a_killed_leader() {
    let dir = TempDir::new("replicas-etcd");
    let etcd_dir = dir.0.join("etcd");
    let etcd =
        tokio::task::spawn_blocking(move || kubeedge_core::test_util::EtcdServer::start(&etcd_dir))
            .await
            .unwrap()
            .expect("etcd starts (Debian's etcd-server)");
    let datastore = format!("etcd://{}", etcd.endpoint());
    // A keeps its files under `cloud/`, where kubectl() finds the admin kubeconfig.
    let mut replicas = vec![
        replica(
            "a",
            dir.0.join("cloud"),
            &dir.0.join("a.log"),
            &["--datastore", &datastore],
        ),
        replica(
            "b",
            dir.0.join("b"),
            &dir.0.join("b.log"),
            &["--datastore", &datastore],
        ),
    ];
    let ca = |r: &Replica| std::fs::read(r.data.join("ca/rootCA.crt")).unwrap();
    assert_eq!(ca(&replicas[0]), ca(&replicas[1]), "one CA, through etcd");
    // One API: what is written through A is read through B, at the same resourceVersion.
    kubectl(
        &dir,
        &["create", "configmap", "shared", "--from-literal=k=v"],
    );
    let version = |kubeconfig: &Path| {
        let out = Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "get",
                "configmap",
                "shared",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let through_a = version(&dir.0.join("cloud/admin.kubeconfig"));
    assert!(!through_a.is_empty());
    eventually(10, "the ConfigMap through B", async || {
        version(&dir.0.join("b/admin.kubeconfig")) == through_a
    })
    .await;
    let cloud = dir.0.join("cloud/admin.kubeconfig");
    fleet_survives_a_killed_leader(&dir, &mut replicas, true, |survivor| {
        // kubectl() goes to the survivor's API from now on.
        if survivor.id != "a" {
            std::fs::copy(survivor.data.join("admin.kubeconfig"), &cloud).unwrap();
        }
    })
    .await;
    // Everything the API acknowledged is still there.
    let names = kubectl(&dir, &["get", "pods", "-o", "name"]);
    for pod in ["p-r", "meanwhile-r"] {
        assert!(names.contains(&format!("pod/{pod}")), "{names}");
    }
    assert!(kubectl(&dir, &["get", "configmap", "shared", "-o", "name"]).contains("shared"));
    drop(etcd);
}
