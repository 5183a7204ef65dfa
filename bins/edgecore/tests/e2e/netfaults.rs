//! The sync link through a network namespace of its own: a real edgecore process in the namespace
//! dials the cloud across a veth pair whose edge end loses 10 % of its packets both ways behind a
//! 1 Mbit/s token bucket (iptables' random drop and tc's `tbf`), through a proxy that delays every
//! chunk by 100 ms ± 50 ms each way (this kernel has no `netem`; packet reordering is not
//! emulated: TCP hides it from the program, which sees only the delay it costs), then the link is
//! cut for longer than the grace period and healed. Everything still reaches the edge, the node turns Unknown while cut and
//! Ready after, and the edge converges to the cloud's last versions and deletions.
//!
//! Needs root (network namespaces); without it the test says so and passes nothing off as done:
//! it fails, as a missing peer does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kubeedge_cloud::CloudCore;
use serde_json::json;

use crate::common::{TempDir, cloud_config, eventually, ready_status};

/// A network namespace joined to the host by a veth pair: the host end `10.213.<n>.1`, the
/// namespace end `10.213.<n>.2`. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    assert!(
        out.status.success(),
        "{program} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let n = (std::process::id() % 250) + 1;
        let name = format!("ke-edge-{}", std::process::id());
        let host_if = format!("ke-h{}", std::process::id());
        let peer_if = format!("ke-e{}", std::process::id());
        let host_ip = format!("10.213.{n}.1");
        let edge_ip = format!("10.213.{n}.2");
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_if,
            host_ip,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        in_ns(
            &ns.name,
            "ip",
            &["addr", "add", &format!("{edge_ip}/24"), "dev", &peer_if],
        );
        in_ns(&ns.name, "ip", &["link", "set", &peer_if, "up"]);
        in_ns(&ns.name, "ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Drops `percent` % of the namespace's packets on the veth, both ways (0 removes the rule);
    /// loopback inside the namespace (the metaserver, the broker) is left alone.
    fn loss(&self, percent: u32) {
        in_ns(&self.name, "iptables", &["-F"]);
        if percent == 0 {
            return;
        }
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let mut rule = vec!["-A", chain, "!", dir, "lo"];
            if percent < 100 {
                rule.extend(["-m", "statistic", "--mode", "random", "--probability", &p]);
            }
            rule.extend(["-j", "DROP"]);
            in_ns(&self.name, "iptables", &rule);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Copies `from` to `to`, each chunk delivered `delay` ± `jitter` after it was read, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    jitter: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        let spread = jitter.as_millis() as u64;
        let offset = kubeedge_core::transport::driver::random_seed() % (2 * spread + 1);
        let due = (tokio::time::Instant::now() + delay + Duration::from_millis(offset) - jitter)
            .max(last);
        last = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A proxy on `listen` to `upstream` that delays both directions.
async fn delay_proxy(
    listen: &str,
    upstream: std::net::SocketAddr,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut links = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((down, _)) = accepted else { continue };
                    links.spawn(async move {
                        let Ok(up) = tokio::net::TcpStream::connect(upstream).await else { return };
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        let (d, j) = (Duration::from_millis(100), Duration::from_millis(50));
                        tokio::join!(delayed(dr, uw, d, j), delayed(ur, dw, d, j));
                    });
                }
                Some(_) = links.join_next(), if !links.is_empty() => {}
            }
        }
    });
    (port, task)
}

/// A child process killed (and reaped) when dropped, also when a test fails half-way.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The edgecore binary inside `ns`, dialling `cloud`'s hub on `hub_port` of the host's address.
fn edgecore_in(ns: &Netns, dir: &TempDir, cloud: &CloudCore, hub_port: u16) -> Killed {
    let token = cloud
        .ca()
        .token(Duration::from_secs(600), SystemTime::now());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_edgecore")])
        .arg("--data-dir")
        .arg(dir.0.join("edge"))
        .args(["--node-name", "e1", "--runtime", "none"])
        .args(["--mqtt-internal", "127.0.0.1:0", "--metaserver-port", "0"])
        .arg("--cloud")
        .arg(format!("wss://{}:{hub_port}", ns.host_ip))
        .arg("--https")
        .arg(format!(
            "https://{}:{}",
            ns.host_ip,
            cloud.https_addr().port()
        ))
        .arg("--token")
        .arg(token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = Killed(child);
    assert!(line.starts_with("edgecore ready"), "{line:?}");
    child
}

/// Whether the edge acked every labelled Service (every node holds every one) at its current
/// version, and nothing deleted.
async fn converged(cloud: &CloudCore, cms: &Api<Service>) -> bool {
    let Ok(list) = cms.list(&ListParams::default().labels("test=netns")).await else {
        return false;
    };
    let acked = cloud.hub().acked("e1");
    let want: HashMap<String, Option<u64>> = list
        .items
        .iter()
        .map(|c| {
            (
                format!(
                    "default/service/{}",
                    c.metadata.name.as_deref().unwrap_or("")
                ),
                c.metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok()),
            )
        })
        .collect();
    let held = acked
        .iter()
        .filter(|(k, _)| k.starts_with("default/service/netns-"))
        .count();
    held == want.len() && want.iter().all(|(k, v)| acked.get(k) == Some(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_link_and_a_healed_partition_lose_nothing() {
    let ns = Netns::new();
    let dir = TempDir::new("netns");
    let mut config = cloud_config(
        &dir,
        &format!("{}:0", ns.host_ip),
        &format!("{}:0", ns.host_ip),
    );
    config.advertise = vec![ns.host_ip.parse().unwrap()];
    let cloud = CloudCore::start(config).await.unwrap();
    let (hub_port, proxy) = delay_proxy(&format!("{}:0", ns.host_ip), cloud.hub_addr()).await;
    let edge = edgecore_in(&ns, &dir, &cloud, hub_port);
    eventually(30, "e1 connected", async || cloud.hub().is_connected("e1")).await;

    // A weak link: 10 % loss both ways behind a 1 Mbit/s bucket.
    ns.loss(10);
    in_ns(
        &ns.name,
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &format!("ke-e{}", std::process::id()),
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            "32kbit",
            "latency",
            "400ms",
        ],
    );
    let cms: Api<Service> = Api::namespaced(cloud.client().clone(), "default");
    for i in 0..60 {
        let cm: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("netns-{i:02}"), "labels": {"test": "netns"},
                         "annotations": {"v": "0", "pad": "x".repeat(2048)}},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    for i in 0..60 {
        let patch = json!({"metadata": {"annotations": {"v": "1"}}});
        cms.patch(
            &format!("netns-{i:02}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    eventually(240, "every change acked over the lossy link", async || {
        converged(&cloud, &cms).await
    })
    .await;

    // Cut: nothing passes for longer than the grace period, while the cloud changes things.
    ns.loss(100);
    for i in 0..20 {
        let patch = json!({"metadata": {"annotations": {"v": "2"}}});
        cms.patch(
            &format!("netns-{i:02}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    for i in 50..60 {
        cms.delete(&format!("netns-{i:02}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let nodes: Api<Node> = Api::all(cloud.client().clone());
    eventually(60, "e1 Unknown while cut off", async || {
        ready_status(&nodes, "e1").await.as_deref() == Some("Unknown")
    })
    .await;

    // Healed (the loss rule stays): the edge reconnects, catches up and turns Ready.
    ns.loss(10);
    eventually(240, "the edge converged after the partition", async || {
        converged(&cloud, &cms).await
    })
    .await;
    eventually(60, "e1 Ready again", async || {
        ready_status(&nodes, "e1").await.as_deref() == Some("True")
    })
    .await;
    drop(edge);
    proxy.abort();
    cloud.stop().await;
}
