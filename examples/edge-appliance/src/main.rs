//! An edge-only appliance: a vendor's binary that embeds the edge of kubeedge-rs, joins an
//! existing cloud (cloudcore or edgesite), runs its pods as host processes and reads the twins of
//! its devices through Rust calls. It is built without the CRI client and the `edgecore.yaml`
//! reader (`kubeedge-edge` with `default-features = false, features = ["process"]`) and without the
//! Modbus driver (`kubeedge-device` with `default-features = false`); BENCHMARKS.md has its crate
//! count and stripped size beside edgecore's.
//!
//! ```text
//! edge-appliance DATA_DIR NODE HOST:HUB_PORT HOST:HTTPS_PORT [TOKEN] [--once]
//! ```
//!
//! The token is needed on the first start only (the node's certificate is kept in `DATA_DIR`).
//! It prints every twin change of the node's devices until Ctrl-C; with `--once` it exits 0 as soon
//! as the node is connected to the cloud (after stopping everything).

use std::time::Duration;

use kubeedge_device::devicetwin::{self, DeviceTwinModule};
use kubeedge_edge::{Config, EdgeCore, PodRuntime};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    args.retain(|a| a != "--once");
    let [dir, node, hub, https, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: edge-appliance DATA_DIR NODE HOST:HUB_PORT HOST:HTTPS_PORT [TOKEN] [--once]"
                .into(),
        );
    };

    let mut config = Config::new(dir, node, format!("wss://{hub}"));
    config.https_url = Some(format!("https://{https}"));
    config.token = rest.first().cloned();
    config.runtime = PodRuntime::Process;
    config.metaserver_addr = "127.0.0.1:0".parse()?;
    let edge = EdgeCore::start(config).await?;
    // The device twin beside it: DMI for mappers in `DATA_DIR/dmi.sock`, no MQTT broker.
    let devices = DeviceTwinModule::start(
        devicetwin::Config::new(node, dir),
        edge.store().clone(),
        edge.reports(),
    )
    .await?;
    if !edge.wait_connected(Duration::from_secs(30)).await {
        return Err(format!("node {node} did not connect to wss://{hub} within 30 s").into());
    }
    println!(
        "node {node} connected; its API: http://{}",
        edge.metaserver_addr()
    );

    if !once {
        let mut changes = devices.twins().subscribe();
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) => {
                        for (property, doc) in &change.document {
                            let now = doc.current.as_ref();
                            println!(
                                "{}/{} {property}: desired {:?}, reported {:?}",
                                change.namespace,
                                change.name,
                                now.and_then(|t| t.expected_value()),
                                now.and_then(|t| t.actual_value()),
                            );
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("({n} twin changes missed)");
                    }
                    Err(_) => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    devices.stop().await;
    edge.stop().await;
    Ok(())
}
