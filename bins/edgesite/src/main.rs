//! `edgesite`: a cloud-less site in one process, upstream KubeEdge's EdgeSite built from our parts.
//!
//! `edgesite --data-dir D` runs, on one persistent data directory:
//! * the embedded control plane (a Kubernetes-compatible API on `--api-address`:`--api-port`,
//!   default 127.0.0.1:6443, with `D/cloud/admin.kubeconfig` for kubectl) and its controllers
//!   (scheduler, Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs, garbage collection,
//!   EndpointSlices, node lifecycle);
//! * cloudhub (`--hub-port`, default 10000, and its certificate server `--https-port`, default
//!   10002, on `--bind-address`, default 0.0.0.0), which further edges join with a token from
//!   `keadm gettoken --data-dir D/cloud`;
//! * the site's own edge node `--node-name` (default: the host name), joined to that cloudhub over
//!   loopback with the same mTLS as any edge, running pods on `--runtime` (`cri` at
//!   `--cri-endpoint`, default containerd; `process`; `none`), its metastore and metaserver
//!   (`--metaserver-port`, default 10550), and its device module (DMI `D/edge/dmi.sock`, the
//!   event bus broker on `--mqtt-internal`, default 127.0.0.1:1884; `--no-devices` leaves it out).
//!
//! Killed and started again on the same directory it comes back as it was: the API's objects, the
//! CA and every certificate, the node's store; pods of the process runtime and containers keep
//! running through the restart and are adopted. Only the first start issues the site node's
//! certificate.
//!
//! Once serving, it prints one line to stdout:
//! `edgesite ready node=<N> api=<url> kubeconfig=<path> hub=<addr> https=<addr> metaserver=<addr>
//! dmi=<socket|off> mqtt=<url|off>`. Logs go to stderr (`RUST_LOG`, default `info`).
//!
//! Exit codes: 0 after a signal, 1 when it cannot start, 64 bad usage.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_cloud::CloudCore;
use kubeedge_device::broker::Broker;
use kubeedge_device::devicetwin::{self, DeviceTwinModule};
use kubeedge_edge::{EdgeCore, PodRuntime};

#[derive(Parser)]
#[command(
    name = "edgesite",
    version,
    about = "kubeedge-rs edgesite: control plane and edge node in one process"
)]
struct Cli {
    /// Data directory (`cloud/`: CA, certificates, the API's store; `edge/`: the site node's
    /// certificate, store and pods).
    #[arg(long)]
    data_dir: PathBuf,
    /// The site's own node. Default: the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// The API server's address.
    #[arg(long, default_value = "127.0.0.1")]
    api_address: IpAddr,
    /// The API server's port.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Address cloudhub listens on for further edges (WebSocket and HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// cloudhub's WebSocket port.
    #[arg(long, default_value_t = 10000)]
    hub_port: u16,
    /// cloudhub's HTTPS port (CA and node certificate signing).
    #[arg(long, default_value_t = 10002)]
    https_port: u16,
    /// Addresses further edges dial (IP SANs of cloudhub's certificate).
    #[arg(long = "advertise-address")]
    advertise: Vec<IpAddr>,
    /// DNS names further edges dial (DNS SANs).
    #[arg(long)]
    dns: Vec<String>,
    /// Where the site node's pods run: `cri` (containerd or another CRI runtime at
    /// --cri-endpoint), `process` (host processes) or `none`.
    #[arg(long, default_value = "cri", value_parser = ["cri", "process", "none"])]
    runtime: String,
    /// The CRI runtime's socket.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    cri_endpoint: String,
    /// The site node's metaserver port (on 127.0.0.1).
    #[arg(long, default_value_t = 10550)]
    metaserver_port: u16,
    /// The address the site node reports.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Where the device event bus's MQTT broker listens.
    #[arg(long, default_value = "127.0.0.1:1884")]
    mqtt_internal: SocketAddr,
    /// Leave out the device module (DMI socket and MQTT broker).
    #[arg(long)]
    no_devices: bool,
}

/// The host name, for the node's default name.
fn hostname() -> String {
    daemon::cli::hostname()
        .map(|h| h.to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgesite".to_owned())
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let node = cli.node_name.unwrap_or_else(hostname);
    let mut config = kubeedge_cloud::Config::new(cli.data_dir.join("cloud"));
    config.api_addr = SocketAddr::new(cli.api_address, cli.api_port);
    config.hub_addr = SocketAddr::new(cli.bind_address, cli.hub_port);
    config.https_addr = SocketAddr::new(cli.bind_address, cli.https_port);
    config.advertise = cli.advertise;
    config.dns = cli.dns;
    let cloud = CloudCore::start(config).await?;
    let (api, kubeconfig) = match cloud.control_plane() {
        Some(cp) => (format!("https://{}", cp.addr()), cp.kubeconfig().to_owned()),
        None => return Err("edgesite needs the embedded control plane".into()),
    };

    let edge_dir = cli.data_dir.join("edge");
    // Dialled over loopback when cloudhub listens on every address.
    let mut config = kubeedge_edge::Config::join(&edge_dir, &node, &cloud.address());
    if !config.cert_files().exist() {
        // The first start: the site's node joins like any edge, with a short-lived token.
        config.token = Some(
            cloud
                .ca()
                .token(Duration::from_secs(600), SystemTime::now()),
        );
    }
    config.metaserver_addr = SocketAddr::from(([127, 0, 0, 1], cli.metaserver_port));
    config.node_address = cli.node_ip;
    config.runtime = match cli.runtime.as_str() {
        "cri" => PodRuntime::Cri(cli.cri_endpoint),
        "process" => PodRuntime::Process,
        _ => PodRuntime::None,
    };
    let edge = match EdgeCore::start(config).await {
        Ok(edge) => edge,
        Err(e) => {
            cloud.stop().await;
            return Err(e.into());
        }
    };
    let devices = if cli.no_devices {
        None
    } else {
        let broker = Broker::start(cli.mqtt_internal).await?;
        let mut config = devicetwin::Config::new(&node, &edge_dir);
        config.mqtt_url = Some(broker.url());
        let twin = DeviceTwinModule::start(config, edge.store().clone(), edge.reports()).await?;
        Some((twin, broker))
    };
    if !edge.wait_connected(Duration::from_secs(10)).await {
        tracing::warn!(%node, "the site's node is not connected to its own cloudhub yet");
    }
    let (dmi, mqtt) = devices.as_ref().map_or_else(
        || ("off".to_owned(), "off".to_owned()),
        |(twin, broker)| (twin.socket().display().to_string(), broker.url()),
    );
    println!(
        "edgesite ready node={node} api={api} kubeconfig={} hub={} https={} metaserver={} dmi={dmi} mqtt={mqtt}",
        kubeconfig.display(),
        cloud.hub_addr(),
        cloud.https_addr(),
        edge.metaserver_addr(),
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    if let Some((twin, broker)) = devices {
        twin.stop().await;
        broker.stop().await;
    }
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    match daemon::cli::parse::<Cli>() {
        Ok(cli) => daemon::run("edgesite", "info", run(cli)),
        Err(code) => code,
    }
}
