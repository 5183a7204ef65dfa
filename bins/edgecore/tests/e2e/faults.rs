//! Faults of the link and of the node: a half-open link (a proxy that stops passing bytes without
//! closing anything) turns the node Unknown within the grace period after its last frame and Ready
//! again as soon as the link is back; a connected edge contradicts a mark of Unknown it did not
//! earn; an offline reboot shows the restarted pods on the metaserver at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kubeedge_edge::{EdgeCore, PodRuntime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{self, TempDir, eventually, kubectl};

/// A TCP proxy that can black-hole its link: while closed it reads and writes nothing and dials
/// nothing (bytes wait in the kernels' buffers, nobody sees a FIN or a reset), as a dead route does.
struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_open(open: &mut watch::Receiver<bool>) -> bool {
    open.wait_for(|o| *o).await.is_ok()
}

/// Copies `from` to `to` while the link is open; holds what it read while it is not.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_open(&mut open).await {
            return;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n.unwrap_or(0),
            _ = open.changed() => continue,
        };
        if !wait_open(&mut open).await {
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((down, _)) = accepted else { continue };
                        let mut open = rx.clone();
                        links.spawn(async move {
                            if !wait_open(&mut open).await {
                                return;
                            }
                            let Ok(up) = TcpStream::connect(upstream).await else { return };
                            let (down_rd, down_wr) = down.into_split();
                            let (up_rd, up_wr) = up.into_split();
                            tokio::join!(
                                pump(down_rd, up_wr, open.clone()),
                                pump(up_rd, down_wr, open),
                            );
                        });
                    }
                    Some(_) = links.join_next(), if !links.is_empty() => {}
                }
            }
        });
        Proxy { addr, open, task }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_turns_the_node_unknown_and_its_return_ready() {
    let dir = TempDir::new("halfopen");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let proxy = Proxy::start(cloud.hub_addr()).await;
    let mut ec = common::edge_config(&dir, &cloud);
    ec.cloud_url = format!("wss://{}", proxy.addr);
    let edge = EdgeCore::start(ec).await.unwrap();
    let nodes: Api<Node> = Api::all(cloud.client().clone());
    let status = async || common::ready_status(&nodes, "e1").await;
    eventually(30, "e1 Ready", async || {
        status().await.as_deref() == Some("True")
    })
    .await;

    // The link goes dead without a word: the last frame was before this instant, and the cloud's
    // grace period is 40 s.
    proxy.set_open(false);
    eventually(45, "e1 Unknown within 45 s of its last frame", async || {
        status().await.as_deref() == Some("Unknown")
    })
    .await;
    proxy.set_open(true);
    eventually(
        15,
        "e1 Ready within 15 s of the link's return",
        async || status().await.as_deref() == Some("True"),
    )
    .await;
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_edge_contradicts_a_mark_of_unknown_at_its_next_renewal() {
    // A leader that missed a node (its replica's record late through a busy API) marks it
    // Unknown while it is connected: the edge sees its Node so marked and reports Ready at its
    // next lease renewal (10 s), as a kubelet compares with the API's copy, instead of at its
    // five-minute report.
    let dir = TempDir::new("contradict");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let edge = EdgeCore::start(common::edge_config(&dir, &cloud))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(cloud.client().clone());
    let status = async || common::ready_status(&nodes, "e1").await;
    eventually(30, "e1 Ready", async || {
        status().await.as_deref() == Some("True")
    })
    .await;
    let mark = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown",
        "reason": "NodeStatusUnknown", "message": "marked by a leader that missed it"}]}});
    nodes
        .patch_status(
            "e1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&mark),
        )
        .await
        .unwrap();
    assert_eq!(status().await.as_deref(), Some("Unknown"));
    eventually(
        25,
        "e1 Ready again within 25 s of the mark, the link up all along",
        async || status().await.as_deref() == Some("True"),
    )
    .await;
    edge.stop().await;
    cloud.stop().await;
}

/// (restartCount, running, containerID) of a pod's first container.
fn first_container(pod: &Pod) -> Option<(i32, bool, String)> {
    let c = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .clone();
    let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
    Some((c.restart_count, running, c.container_id.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_reboot_shows_the_restarted_pods_at_once() {
    let dir = TempDir::new("reboot");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let mut ec = common::edge_config(&dir, &cloud);
    ec.runtime = PodRuntime::Process;
    // Crash-loop backoff long enough that only an immediate restart passes this test.
    ec.restart_backoff = Duration::from_secs(60);
    let edge = EdgeCore::start(ec.clone()).await.unwrap();
    let file = dir.0.join("pod.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: v1
kind: Pod
metadata:
  name: app
spec:
  nodeName: e1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["/bin/sh", "-c", "exec sleep 3600"]
"#,
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    let local = || -> Api<Pod> { Api::namespaced(common::metaserver_client(&edge), "default") };
    let mut before = None;
    eventually(60, "app Running on the metaserver", async || {
        before = local()
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .and_then(|p| first_container(&p));
        before
            .as_ref()
            .is_some_and(|(n, running, _)| *n == 0 && *running)
    })
    .await;
    let (_, _, old_id) = before.unwrap();

    // The cloud goes away, then the node "reboots": edgecore stops and its processes die.
    cloud.stop().await;
    edge.stop().await;
    assert_eq!(common::kill_all(&dir.0.join("edge/process")), 1);
    let edge = EdgeCore::start(ec).await.unwrap();
    let local: Api<Pod> = Api::namespaced(common::metaserver_client(&edge), "default");
    eventually(
        15,
        "the metaserver shows app restarted, offline",
        async || {
            local
                .get_opt("app")
                .await
                .ok()
                .flatten()
                .and_then(|p| first_container(&p))
                .is_some_and(|(n, running, id)| n == 1 && running && id != old_id)
        },
    )
    .await;
    let pod = local.get("app").await.unwrap();
    let last = pod.status.unwrap().container_statuses.unwrap()[0]
        .last_state
        .clone()
        .and_then(|s| s.terminated)
        .expect("the lost run is reported as terminated");
    assert_eq!(last.exit_code, 137);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reconnects_at_once_through_a_thousand_idle_connections() {
    let dir = TempDir::new("flood");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let edge = EdgeCore::start(common::edge_config(&dir, &cloud))
        .await
        .unwrap();
    eventually(30, "e1 connected", async || cloud.hub().is_connected("e1")).await;

    // 1,000 connections that never say a word, from the edge's own address.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(cloud.hub_addr()).await.unwrap());
    }
    let mut connections = edge.hub().connections();
    let before = *connections.borrow_and_update();
    edge.hub().redial();
    tokio::time::timeout(
        Duration::from_secs(2),
        connections.wait_for(|n| *n > before),
    )
    .await
    .expect("the edge reconnects within 2 s while idle connections flood cloudhub")
    .unwrap();
    eventually(5, "e1 connected again", async || {
        cloud.hub().is_connected("e1")
    })
    .await;

    // The refusals are counted where Prometheus scrapes them.
    let metrics = kubectl(&dir, &["get", "--raw", "/metrics"]);
    let evicted = metrics
        .lines()
        .find(|l| {
            l.starts_with("kubeedge_connections_refused_total{server=\"cloudhub\",reason=\"source_waiting_limit\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(evicted >= 900, "{metrics}");
    drop(idle);
    edge.stop().await;
    cloud.stop().await;
}

/// A tmpfs of `mib` MiB mounted at `path` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs (root is needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path.to_owned())
    }

    /// Fills what is left with `filler` until the file system says it is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).and_then(|()| f.sync_data()).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_edge_loses_nothing_acked_and_recovers() {
    let dir = TempDir::new("fulldisk");
    let disk = SmallDisk::mount(&dir.0.join("edge"), 24);
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let edge = EdgeCore::start(common::edge_config(&dir, &cloud))
        .await
        .unwrap();
    eventually(30, "e1 connected", async || cloud.hub().is_connected("e1")).await;
    let cms: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(cloud.client().clone(), "default");
    let create = async |i: usize| {
        let cm = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("disk-{i:03}"), "labels": {"test": "disk"},
                         "annotations": {"pad": "x".repeat(16 * 1024)}},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
        cms.create(&kube::api::PostParams::default(), &cm)
            .await
            .unwrap();
    };
    create(0).await;
    eventually(30, "the first one acked", async || {
        cloud
            .hub()
            .acked("e1")
            .contains_key("default/service/disk-000")
    })
    .await;

    // The disk fills up: what arrives cannot be stored, and must not be acked.
    let filler = disk.fill();
    for i in 1..40 {
        create(i).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = (0..40)
        .filter(|i| {
            cloud
                .hub()
                .acked("e1")
                .contains_key(&format!("default/service/disk-{i:03}"))
        })
        .count();
    assert!(held < 40, "the disk was full, yet all 40 were acked");
    let store_path = dir.0.join("edge/edge.redb");
    let local = Api::<k8s_openapi::api::core::v1::Service>::namespaced(
        common::metaserver_client(&edge),
        "default",
    );
    // The metaserver still answers reads.
    local.list(&Default::default()).await.unwrap();

    // Space comes back: the edge stores and acks everything, without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually(90, "all 40 acked after space returned", async || {
        let acked = cloud.hub().acked("e1");
        (0..40).all(|i| acked.contains_key(&format!("default/service/disk-{i:03}")))
    })
    .await;
    edge.stop().await;
    let acked = cloud.hub().acked("e1");
    let store = kubeedge_edge::MetaStore::open(&store_path).unwrap();
    for i in 0..40 {
        let name = format!("disk-{i:03}");
        assert!(acked.contains_key(&format!("default/service/{name}")));
        assert!(
            store
                .store()
                .get("services", Some("default"), &name)
                .is_ok(),
            "{name} acked but not stored"
        );
    }
    drop(store);
    cloud.stop().await;
    drop(disk);
}
