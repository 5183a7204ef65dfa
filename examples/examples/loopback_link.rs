//! A cloud and an edge on one machine: mutual-TLS WebSocket on 127.0.0.1, the sync sessions driven
//! over it, pods sent with persist-then-ack, a pod status sent back.
//!
//! Run: `cargo run -p kubeedge-examples --example loopback_link`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::sync::{cloud, edge};
use kubeedge_core::test_util::TestPki;
use kubeedge_core::transport::{driver, ws};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PODS: usize = 5;

fn pod(i: usize, rv: u64) -> Message {
    Message::new(
        "",
        0,
        Route::new(names::EDGECONTROLLER, names::RESOURCE_GROUP, Operation::Insert, format!("default/pod/web-{i}")),
    )
    .with_resource_version(rv.to_string())
    .with_content(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("web-{i}"), "namespace": "default", "resourceVersion": rv.to_string()},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "web", "image": "busybox"}]},
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let pki = TestPki::new()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    println!("cloudhub listening on wss://127.0.0.1:{port} (mutual TLS)");

    // --- cloud: one session for node edge-1 ---
    let server_cfg = pki.server_config()?;
    let (done_tx, mut done_rx) = mpsc::channel::<String>(16);
    let cloud = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let conn = ws::accept(tcp, &server_cfg).await?;
        println!(
            "cloud: node {:?} connected, extensions negotiated: {}",
            conn.peer().node_id,
            conn.peer().negotiated
        );
        let mut session = cloud::Session::new(
            "edge-1",
            cloud::Config::default(),
            driver::random_seed(),
            driver::wall_clock(),
            driver::now(),
        );
        let (handle, mut pump) = driver::channel::<cloud::Session>(64);
        let (events_tx, mut events) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    cloud::Event::ResyncNeeded => {
                        // The desired set: what a controller would compute for this node.
                        let desired: Vec<(String, Option<u64>)> = (0..PODS)
                            .map(|i| (format!("default/pod/web-{i}"), Some(100 + i as u64)))
                            .collect();
                        let _ = handle
                            .exec(move |s, _| {
                                let plan = s.resync(desired);
                                for key in plan.send {
                                    let i: usize = key
                                        .rsplit('-')
                                        .next()
                                        .and_then(|n| n.parse().ok())
                                        .unwrap_or(0);
                                    let _ = s.enqueue(pod(i, 100 + i as u64));
                                }
                            })
                            .await;
                    }
                    cloud::Event::Acked { key, version, .. } => {
                        let _ = done_tx
                            .send(format!("cloud: edge persisted {key} at {version:?}"))
                            .await;
                    }
                    cloud::Event::Uplink { token, message } => {
                        let _ = done_tx
                            .send(format!(
                                "cloud: status for {} received",
                                message.route.resource
                            ))
                            .await;
                        if let Some(token) = token {
                            let _ = handle
                                .exec(move |s, now| {
                                    s.complete_uplink(now, token, Some(serde_json::json!("OK")))
                                })
                                .await;
                        }
                    }
                    other => println!("cloud: {other:?}"),
                }
            }
        });
        let end = pump.drive(conn, &mut session, &events_tx).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(format!("{end:?}"))
    });

    // --- edge: persists what arrives (a map standing in for the metastore), then acks ---
    let conn = ws::connect(&pki.client_config("edge-1", port)?).await?;
    let mut session = edge::Session::new(
        edge::Config::default(),
        Vec::new(),
        driver::random_seed(),
        driver::wall_clock(),
        driver::now(),
    );
    let (handle, mut pump) = driver::channel::<edge::Session>(64);
    let (events_tx, mut events) = mpsc::channel(256);
    let edge_app = tokio::spawn(async move {
        let mut store = BTreeMap::new();
        while let Some(ev) = events.recv().await {
            match ev {
                edge::Event::Apply {
                    token,
                    key,
                    version,
                    ..
                } => {
                    store.insert(key.clone(), version);
                    let _ = handle.exec(move |s, now| s.persisted(now, [token])).await;
                    if store.len() == PODS {
                        let status = Message::new(
                            "",
                            0,
                            Route::new(
                                names::EDGEHUB_MODULE,
                                names::RESOURCE_GROUP,
                                Operation::Patch,
                                "default/podpatch/web-0",
                            ),
                        )
                        .with_resource_version("1")
                        .with_content(serde_json::json!("{\"status\":{\"phase\":\"Running\"}}"));
                        let _ = handle
                            .exec(move |s, _| {
                                let _ = s.enqueue_uplink(status);
                            })
                            .await;
                    }
                }
                edge::Event::UplinkAcked { key, .. } => {
                    println!("edge: cloud handled status {key}")
                }
                other => println!("edge: {other:?}"),
            }
        }
        store
    });
    let edge_drive = tokio::spawn(async move { pump.drive(conn, &mut session, &events_tx).await });

    let mut lines = 0;
    while lines < PODS + 1 {
        match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await? {
            Some(line) => {
                println!("{line}");
                lines += 1;
            }
            None => break,
        }
    }
    edge_drive.abort();
    let store = edge_app.await?;
    let _ = cloud.await;
    println!(
        "edge store: {} pods; done in {:?}",
        store.len(),
        started.elapsed()
    );
    if store.len() != PODS {
        return Err("not every pod reached the edge".into());
    }
    Ok(())
}
