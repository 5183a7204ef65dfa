//! Crash safety: `kill -9` of a real edgecore process during a burst of 1000 object updates. On
//! restart the metastore opens, and every object whose ack the cloud saw is there at least at the
//! acked version; then the edge converges to the cloud.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubeedge_cloud::CloudCore;
use kubeedge_edge::MetaStore;
use serde_json::json;

use crate::common::{TempDir, cloud, eventually};

const SERVICES: usize = 250;
const ROUNDS: usize = 4; // 250 creates + 3 × 250 updates = 1000 writes

/// Starts the edgecore binary; returns it and its metaserver address.
fn edgecore(dir: &TempDir, cloud: &CloudCore, token: Option<&str>) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgecore"));
    cmd.arg("--data-dir")
        .arg(dir.0.join("edge"))
        .args([
            "--node-name",
            "e1",
            "--runtime",
            "none",
            "--mqtt-internal",
            "127.0.0.1:0",
            "--metaserver-port",
            "0",
        ])
        .arg("--cloud")
        .arg(format!("wss://{}", cloud.hub_addr()))
        .arg("--https")
        .arg(format!("https://{}", cloud.https_addr()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("edgecore ready"), "{line:?}");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metaserver="))
        .unwrap()
        .to_owned();
    (child, addr)
}

fn service(i: usize) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": format!("svc-{i}"), "labels": {"test": "burst"}},
        "spec": {"ports": [{"port": 80}]}}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing_acked() {
    let dir = TempDir::new("crash");
    let cloud = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let token = cloud
        .ca()
        .token(Duration::from_secs(600), SystemTime::now());
    let (mut child, _) = edgecore(&dir, &cloud, Some(&token));
    eventually(30, "e1 connected", async || cloud.hub().is_connected("e1")).await;

    let services: Api<Service> = Api::namespaced(cloud.client().clone(), "default");
    let writer = {
        let services = services.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                for i in 0..SERVICES {
                    if round == 0 {
                        services
                            .create(&PostParams::default(), &service(i))
                            .await
                            .unwrap();
                    } else {
                        let patch = json!({"metadata": {"labels": {"round": round.to_string()}}});
                        services
                            .patch(
                                &format!("svc-{i}"),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await
                            .unwrap();
                    }
                }
            }
        })
    };
    // kill -9 in the middle of it, once the edge has acked a good part
    eventually(60, "some acks", async || {
        cloud.hub().acked("e1").len() >= 150
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // acks already on the wire are still read; give them a moment, then take the cloud's view
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = cloud.hub().acked("e1");
    assert!(acked.len() >= 150);

    let store = MetaStore::open(&dir.0.join("edge/edge.redb")).unwrap();
    let inventory: std::collections::HashMap<String, Option<u64>> =
        store.inventory().unwrap().into_iter().collect();
    for (key, version) in &acked {
        let held = inventory.get(key);
        assert!(
            held.is_some_and(|h| h >= version),
            "{key} acked at {version:?}, the metastore holds {held:?}"
        );
        if let Some(name) = key.strip_prefix("default/service/") {
            assert!(store.store().get("services", Some("default"), name).is_ok());
        }
    }
    drop(store);
    writer.await.unwrap();

    // restarted, the edge converges to the cloud
    let (mut child, metaserver) = edgecore(&dir, &cloud, None);
    let local: Api<Service> = Api::namespaced(
        kube::Client::try_from(kube::Config::new(
            format!("http://{metaserver}").parse().unwrap(),
        ))
        .unwrap(),
        "default",
    );
    let last_round = (ROUNDS - 1).to_string();
    eventually(
        60,
        "every service at its last version on the edge",
        async || {
            local
                .list(&ListParams::default().labels("test=burst"))
                .await
                .is_ok_and(|l| {
                    l.items.len() == SERVICES
                        && l.items.iter().all(|s| {
                            s.metadata.labels.as_ref().and_then(|l| l.get("round"))
                                == Some(&last_round)
                        })
                })
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    cloud.stop().await;
}

/// The cloudcore binary (built beside this test's edgecore), on `data` with the given ports
/// (0 for free ones); returns it and its ready line.
fn cloudcore(data: &std::path::Path, api: u16, hub: u16, https: u16) -> (Child, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_edgecore")).with_file_name("cloudcore");
    assert!(bin.exists(), "build cloudcore first: {}", bin.display());
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(["--bind-address", "127.0.0.1"])
        .args(["--api-port", &api.to_string()])
        .args(["--hub-port", &hub.to_string()])
        .args(["--https-port", &https.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("cloudcore ready"), "{line:?}");
    (child, line)
}

fn port_of(line: &str, field: &str) -> u16 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line:?}"))
}

async fn admin_client(data: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(data.join("admin.kubeconfig")).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_cloudcore_under_writes_loses_nothing_it_answered() {
    let dir = TempDir::new("cloudcrash");
    let data = dir.0.join("cloud");
    let (mut child, line) = cloudcore(&data, 0, 0, 0);
    let (api, hub, https) = (
        port_of(&line, "api"),
        port_of(&line, "hub"),
        port_of(&line, "https"),
    );
    let client = admin_client(&data).await;
    let services: Api<Service> = Api::namespaced(client, "default");
    // Writers create services until the process dies under them; what was answered 201 counts.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let services = services.clone();
        let answered = answered.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = w * 100_000 + i;
                match services
                    .create(&PostParams::default(), &service(name))
                    .await
                {
                    Ok(_) => answered.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // A random point: somewhere between 50 and 250 answered writes.
    let at = 50 + (kubeedge_core::transport::driver::random_seed() % 200) as usize;
    eventually(60, "writes answered", async || {
        answered.lock().unwrap().len() >= at
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();

    // Restarted on the same data and ports: every answered write is there.
    let (mut child, _) = cloudcore(&data, api, hub, https);
    let services: Api<Service> = Api::namespaced(admin_client(&data).await, "default");
    let stored: std::collections::HashSet<String> = services
        .list(&ListParams::default().labels("test=burst"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    for name in &answered {
        assert!(
            stored.contains(&format!("svc-{name}")),
            "svc-{name} was answered 201 but is gone after kill -9 ({} answered, {} stored)",
            answered.len(),
            stored.len()
        );
    }
    // ... and it still takes writes.
    services
        .create(&PostParams::default(), &service(999_999))
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
