//! `edgecore`: the edge side of kubeedge-rs.
//!
//! `edgecore --data-dir D --node-name N --cloud wss://HOST:PORT --https https://HOST:PORT --token T`
//! bootstraps the node's certificate on the first start (the token is needed only then), keeps
//! every object the cloud sends in `D/edge.redb`, serves them on the metaserver
//! (`127.0.0.1:--metaserver-port`, default 10550; plain HTTP on loopback, like upstream's), and
//! runs the node's pods on a CRI runtime (`--runtime cri --cri-endpoint unix://PATH`, containerd by
//! default; `--runtime none` runs no pods), and reports node and pod status and the node's lease,
//! until SIGINT or SIGTERM. With the cloud unreachable it keeps
//! serving what it holds and queues status for later.
//!
//! `edgecore --config F` takes its settings from a file in upstream's `edgecore.yaml` shape (see
//! `kubeedge_edge::config_file`), as `keadm join` writes it; flags given beside it win.
//!
//! Devices: the device module serves DMI on `--dmi-dir`/`dmi.sock` (file:
//! `modules.deviceTwin.dmiSockPath`; default `dmi.sock` in the data directory) for mappers, and
//! speaks upstream's `$hw/events/...` topics on the event bus: the embedded MQTT broker on
//! `--mqtt-internal` (file: `modules.eventBus.mqttServerInternal`; default `127.0.0.1:1884`,
//! upstream's internal address), or with `--mqtt-broker tcp://HOST:PORT` (file: `mqttMode: 2`
//! and `mqttServerExternal`) an external one such as mosquitto.
//!
//! Once serving, it prints one line to stdout:
//! `edgecore ready node=<N> metaserver=<addr> dmi=<socket> mqtt=<url>`. Logs go
//! to stderr (`RUST_LOG`, default `info`).
//!
//! Exit codes: 0 after a signal, 1 when it cannot start, 64 bad usage.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_device::broker::Broker;
use kubeedge_device::devicetwin::{self, DeviceTwinModule};
use kubeedge_edge::config_file::{EdgeCoreFile, EventBusMode};
use kubeedge_edge::{Config, EdgeCore};

#[derive(Parser)]
#[command(name = "edgecore", version, about = "kubeedge-rs edgecore")]
struct Cli {
    /// Configuration file (upstream's edgecore.yaml shape, as `keadm join` writes it); flags
    /// override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (certificates and the metastore).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This node's name.
    #[arg(long)]
    node_name: Option<String>,
    /// cloudhub's WebSocket URL, wss://HOST:PORT; several cloudcore replicas comma-separated
    /// (the node picks its own first choice and fails over to the others).
    #[arg(long)]
    cloud: Option<String>,
    /// cloudhub's certificate server, https://HOST:PORT (needed on the first start); with
    /// replicas, each one's, comma-separated (the first signs; every one gets a stream tunnel,
    /// so that logs and exec work through any replica's API).
    #[arg(long)]
    https: Option<String>,
    /// Join token from `keadm gettoken` (needed on the first start).
    #[arg(long)]
    token: Option<String>,
    /// The metaserver's port on --metaserver-address. Default 10550.
    #[arg(long)]
    metaserver_port: Option<u16>,
    /// The metaserver's address. Default 127.0.0.1.
    #[arg(long)]
    metaserver_address: Option<IpAddr>,
    /// The address this node reports. Default 127.0.0.1.
    #[arg(long)]
    node_ip: Option<String>,
    /// Where pods run: `cri` (a CRI runtime such as containerd, at --cri-endpoint), `process`
    /// (containers as host processes, for appliances without a container runtime) or `none` (the
    /// node syncs and serves its objects but runs no pods). Default cri.
    #[arg(long, value_parser = ["cri", "process", "none"])]
    runtime: Option<String>,
    /// The CRI runtime's socket. Default unix:///run/containerd/containerd.sock.
    #[arg(long)]
    cri_endpoint: Option<String>,
    /// An external MQTT broker for the device event bus (`tcp://127.0.0.1:1883`; upstream's
    /// `eventBus.mqttServerExternal`). Without it, edgecore runs its own on --mqtt-internal.
    #[arg(long)]
    mqtt_broker: Option<String>,
    /// Where the embedded MQTT broker listens when no --mqtt-broker is given (upstream's
    /// `eventBus.mqttServerInternal`). Default 127.0.0.1:1884.
    #[arg(long)]
    mqtt_internal: Option<SocketAddr>,
    /// Directory of the DMI socket `dmi.sock` mappers register on (upstream `/etc/kubeedge/`).
    /// Default: the data directory.
    #[arg(long)]
    dmi_dir: Option<PathBuf>,
    /// Run the mesh agent in this process (what `edgemesh` runs on its own): DNS on
    /// 169.254.96.16:53, ClusterIP traffic redirected to the service proxy with iptables, the
    /// tunnel to other edges on port 20006 with this node's certificate. Needs CAP_NET_ADMIN.
    #[cfg(feature = "mesh")]
    #[arg(long)]
    mesh: bool,
    /// A relay for the mesh tunnel, `NAME@IP[:PORT]` (repeatable).
    #[cfg(feature = "mesh")]
    #[arg(long = "mesh-relay")]
    mesh_relays: Vec<kubeedge_mesh::tunnel::RelayAddr>,
}

/// The mesh agent's settings (`--mesh`).
#[cfg(feature = "mesh")]
struct Mesh {
    relays: Vec<kubeedge_mesh::tunnel::RelayAddr>,
}

/// Starts the mesh agent against this edge's metaserver, with its node certificate.
#[cfg(feature = "mesh")]
async fn start_mesh(
    edge: &EdgeCore,
    node: &str,
    data_dir: &std::path::Path,
    mesh: Mesh,
) -> Result<kubeedge_mesh::agent::Agent, Box<dyn std::error::Error>> {
    use kubeedge_mesh::agent::{Agent, MeshConfig};
    if !edge.metaserver_enabled() {
        return Err("--mesh needs the metaserver (the mesh reads Services from it)".into());
    }
    let url = format!("http://{}", edge.metaserver_addr());
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let mut tunnel = kubeedge_mesh::tunnel::TunnelConfig::from_cert_dir(node, data_dir)?;
    tunnel.listen = Some(SocketAddr::from((
        [0, 0, 0, 0],
        kubeedge_mesh::tunnel::DEFAULT_PORT,
    )));
    tunnel.relays = mesh.relays;
    let mut config = MeshConfig::new(node);
    config.dns = Some(kubeedge_mesh::dns::DEFAULT_ADDR.parse()?);
    config.dns_dummy = true;
    config.capture = true;
    config.tunnel = Some(tunnel);
    Ok(Agent::start(config, client).await?)
}

/// The device module's settings.
struct Devices {
    /// Off when the file disables the device twin or the event bus.
    enabled: bool,
    dmi_socket: PathBuf,
    bus: EventBusMode,
}

/// The file (if any) with the flags laid over it.
fn settings(cli: Cli) -> Result<(Config, Devices), Box<dyn std::error::Error>> {
    let mut file = match &cli.config {
        Some(path) => EdgeCoreFile::load(path)?,
        None => EdgeCoreFile::default(),
    };
    let mut flags = EdgeCoreFile::default();
    flags.data_dir = cli.data_dir;
    let (hub, edged) = (&mut flags.modules.edge_hub, &mut flags.modules.edged);
    hub.websocket.server = cli.cloud;
    hub.http_server = cli.https;
    hub.token = cli.token;
    edged.hostname_override = cli.node_name;
    edged.node_ip = cli.node_ip;
    edged.runtime = cli.runtime;
    edged.tailored_kubelet_config.container_runtime_endpoint = cli.cri_endpoint;
    if cli.metaserver_port.is_some() || cli.metaserver_address.is_some() {
        let current = file
            .modules
            .meta_manager
            .meta_server
            .server
            .as_deref()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10550)));
        let addr = SocketAddr::new(
            cli.metaserver_address.unwrap_or(current.ip()),
            cli.metaserver_port.unwrap_or(current.port()),
        );
        flags.modules.meta_manager.meta_server.server = Some(addr.to_string());
    }
    flags.modules.device_twin.dmi_sock_path = cli.dmi_dir.map(|d| d.join("dmi.sock"));
    let bus = &mut flags.modules.event_bus;
    if let Some(url) = cli.mqtt_broker {
        bus.mqtt_mode = Some(2);
        bus.mqtt_server_external = Some(url);
    } else if let Some(addr) = cli.mqtt_internal {
        bus.mqtt_mode = Some(0);
        bus.mqtt_server_internal = Some(format!("tcp://{addr}"));
    }
    file.merge(&flags);
    for note in file.unsupported() {
        tracing::warn!("{note}");
    }
    let config = file.to_config()?;
    let devices = Devices {
        enabled: file.devices_enabled(),
        dmi_socket: file
            .dmi_socket()
            .unwrap_or_else(|| config.data_dir.join("dmi.sock")),
        bus: file.event_bus()?,
    };
    Ok((config, devices))
}

/// Starts the device module beside edgecore: its cloud-bound reports go through edgehub's durable
/// queue.
async fn start_devices(
    edge: &EdgeCore,
    node: &str,
    dmi_socket: PathBuf,
    mqtt: String,
) -> Result<DeviceTwinModule, Box<dyn std::error::Error>> {
    let dir = dmi_socket
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut config = devicetwin::Config::new(node, dir);
    config.dmi_socket = Some(dmi_socket);
    config.mqtt_url = Some(mqtt);
    Ok(DeviceTwinModule::start(config, edge.store().clone(), edge.reports()).await?)
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "mesh")]
    let mesh = cli.mesh.then(|| Mesh {
        relays: cli.mesh_relays.clone(),
    });
    let (config, devices) = settings(cli)?;
    let node = config.node.clone();
    #[cfg(feature = "mesh")]
    let data_dir = config.data_dir.clone();
    let edge = EdgeCore::start(config).await?;
    let (broker, mqtt) = match (devices.enabled, devices.bus) {
        (false, _) => (None, String::new()),
        (true, EventBusMode::External(url)) => (None, url),
        (true, EventBusMode::Internal(addr)) => {
            let broker = Broker::start(addr).await?;
            let url = broker.url();
            (Some(broker), url)
        }
    };
    let twin = if devices.enabled {
        Some(start_devices(&edge, &node, devices.dmi_socket, mqtt.clone()).await?)
    } else {
        tracing::info!("device twin and event bus disabled by the configuration");
        None
    };
    let metaserver = if edge.metaserver_enabled() {
        edge.metaserver_addr().to_string()
    } else {
        "off".into()
    };
    let dmi = twin
        .as_ref()
        .map_or_else(|| "off".into(), |t| t.socket().display().to_string());
    #[cfg(feature = "mesh")]
    let mesh = match mesh {
        Some(m) => Some(start_mesh(&edge, &node, &data_dir, m).await?),
        None => None,
    };
    #[cfg(feature = "mesh")]
    let mesh_dns = mesh
        .as_ref()
        .and_then(|m| m.dns_addr())
        .map_or_else(|| "off".into(), |a| a.to_string());
    #[cfg(not(feature = "mesh"))]
    let mesh_dns = "off";
    println!(
        "edgecore ready node={node} metaserver={metaserver} dmi={dmi} mqtt={mqtt} mesh={mesh_dns}"
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    #[cfg(feature = "mesh")]
    drop(mesh);
    if let Some(twin) = twin {
        twin.stop().await;
    }
    if let Some(broker) = broker {
        broker.stop().await;
    }
    edge.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    match daemon::cli::parse::<Cli>() {
        Ok(cli) if cli.config.is_none() => {
            let missing: Vec<&str> = [
                ("--data-dir", cli.data_dir.is_none()),
                ("--node-name", cli.node_name.is_none()),
                ("--cloud", cli.cloud.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, absent)| absent.then_some(flag))
            .collect();
            if missing.is_empty() {
                daemon::run("edgecore", "info", run(cli))
            } else {
                eprintln!(
                    "edgecore: without --config, {} must be given\n\nFor more information, try '--help'.",
                    missing.join(", ")
                );
                ExitCode::from(64)
            }
        }
        Ok(cli) => daemon::run("edgecore", "info", run(cli)),
        Err(code) => code,
    }
}
