//! `quickstart`: cloudcore (embedded control plane) and one edgecore on loopback, in one process.
//!
//! ```text
//! cargo run -p quickstart                 # runs until Ctrl-C
//! cargo run -p quickstart -- --check      # waits for the edge node to be Ready, then exits 0
//! ```
//!
//! The edge joins the way a real one does: a join token from the cloud's CA, the CA fetched and
//! checked against it, a CSR signed by the cloud's certificate server, then the mTLS WebSocket.
//! Beside the edge run its device module (DMI socket for mappers) and the embedded MQTT broker of
//! its event bus.
//! Everything lives under `--data-dir` (default: a fresh directory under the system temp dir);
//! ports are picked by the OS unless given. Once the node is Ready it prints how to use kubectl
//! against the control plane and against the edge's metaserver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

// quickstart keeps clap's own usage handling and stops on Ctrl-C only.
#[allow(dead_code)]
#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kubeedge_device::broker::Broker;
use kubeedge_device::devicetwin::{self, DeviceTwinModule};

#[derive(Parser)]
#[command(
    name = "quickstart",
    version,
    about = "kubeedge-rs on loopback: cloud and edge"
)]
struct Cli {
    /// Where the cloud and the edge keep their data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The edge node's name.
    #[arg(long, default_value = "edge-1")]
    node_name: String,
    /// The embedded API server's port (0: any free port).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
    /// The edge metaserver's port (0: any free port).
    #[arg(long, default_value_t = 0)]
    metaserver_port: u16,
    /// The embedded MQTT broker's port (0: any free port).
    #[arg(long, default_value_t = 0)]
    mqtt_port: u16,
    /// Exit once the edge node is Ready (a self-check).
    #[arg(long)]
    check: bool,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let fresh = cli.data_dir.is_none();
    let dir = cli.data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kubeedge-quickstart-{}", std::process::id()))
    });
    let mut cloud = kubeedge_cloud::Config::new(dir.join("cloud"));
    cloud.api_addr = ([127, 0, 0, 1], cli.api_port).into();
    cloud.hub_addr = ([127, 0, 0, 1], 0).into();
    cloud.https_addr = ([127, 0, 0, 1], 0).into();
    let cloud = kubeedge_cloud::CloudCore::start(cloud).await?;

    let mut edge = kubeedge_edge::Config::join(dir.join("edge"), &cli.node_name, &cloud.address());
    edge.token = Some(
        cloud
            .ca()
            .token(Duration::from_secs(3600), SystemTime::now()),
    );
    edge.metaserver_addr = ([127, 0, 0, 1], cli.metaserver_port).into();
    let edge = kubeedge_edge::EdgeCore::start(edge).await?;
    let broker = Broker::start(([127, 0, 0, 1], cli.mqtt_port).into()).await?;
    let mut devices = devicetwin::Config::new(&cli.node_name, dir.join("edge"));
    devices.mqtt_url = Some(broker.url());
    let devices = DeviceTwinModule::start(devices, edge.store().clone(), edge.reports()).await?;

    let nodes: Api<Node> = Api::all(cloud.client().clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes
            .get_opt(&cli.node_name)
            .await?
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("node {} did not become Ready within 60 s", cli.node_name).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kubeconfig = cloud
        .control_plane()
        .map(|cp| cp.kubeconfig().display().to_string())
        .unwrap_or_default();
    println!("kubeedge-rs is up: node {} is Ready.", cli.node_name);
    println!("  cloud API:   kubectl --kubeconfig {kubeconfig} get nodes");
    println!(
        "  edge API:    kubectl --server http://{} get pods -A   (served by the edge, also offline)",
        edge.metaserver_addr()
    );
    println!(
        "  devices:     cargo run -p mapper -- --protocol modbus --edgecore-socket {} --socket {}",
        devices.socket().display(),
        dir.join("edge/modbus.sock").display()
    );
    println!(
        "  event bus:   mosquitto_sub -h 127.0.0.1 -p {} -t '$hw/events/#' -v",
        broker.addr().port()
    );
    println!(
        "  join token:  cargo run -p keadm -- gettoken --data-dir {}",
        dir.join("cloud").display()
    );
    let stop_devices = async move {
        devices.stop().await;
        broker.stop().await;
    };
    if cli.check {
        stop_devices.await;
        edge.stop().await;
        cloud.stop().await;
        if fresh {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Ok(());
    }
    println!("Ctrl-C stops both.");
    tokio::signal::ctrl_c().await?;
    stop_devices.await;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon::run("quickstart", "warn", run(cli))
}
