//! `cloudcore`: the cloud side of kubeedge-rs.
//!
//! `cloudcore --data-dir D` runs the embedded control plane (a Kubernetes-compatible API server on
//! `--api-address`:`--api-port`, default 127.0.0.1:6443) and writes `D/admin.kubeconfig` for
//! kubectl; with `--kubeconfig K` it uses that cluster and serves no API of its own. Either way it
//! runs the controllers, cloudhub (`--hub-port`, default 10000) and cloudhub's HTTPS server
//! (`--https-port`, default 10002) on `--bind-address` (default 0.0.0.0), until SIGINT or SIGTERM.
//! With `--kubeconfig` it also serves the kubelet API for edge nodes (`--stream-port`, default
//! 10003), which that cluster's API server is pointed at for logs, exec and port-forward.
//!
//! Once serving, it prints one line to stdout:
//! `cloudcore ready api=<url|-> kubeconfig=<path> hub=<addr> https=<addr> stream=<addr|->` (port 0
//! picks free ports; the line tells which). Logs go to stderr (`RUST_LOG`, default `info`).
//!
//! With `--replica` it is one of several cloudcores over one Kubernetes API: each edge may
//! connect to any of them (edgecore lists them all), the leader of Lease `kubeedge/cloudcore`
//! does the work done once, and they share one CA through Secret `kubeedge/casecret`.
//!
//! With `--datastore etcd://host:port[,host:port...][/prefix]` the embedded control plane keeps its
//! objects in etcd rather than in `D/controlplane.redb`: every cloudcore given the same etcd serves
//! the same API (resourceVersions are etcd revisions), they share one CA through it, and the
//! leader of the Lease runs the control plane's controllers. It waits for etcd at start.
//!
//! Exit codes: 0 after a signal, 1 when it cannot start, 64 bad usage.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_cloud::{CloudCore, Config};

#[derive(Parser)]
#[command(name = "cloudcore", version, about = "kubeedge-rs cloudcore")]
struct Cli {
    /// Data directory (CA, certificates, the embedded control plane's store and kubeconfig).
    #[arg(long)]
    data_dir: PathBuf,
    /// Use this cluster instead of the embedded control plane.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The embedded API server's address.
    #[arg(long, default_value = "127.0.0.1")]
    api_address: IpAddr,
    /// The embedded API server's port.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Address cloudhub listens on (WebSocket and HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// cloudhub's WebSocket port.
    #[arg(long, default_value_t = 10000)]
    hub_port: u16,
    /// cloudhub's HTTPS port (CA and node certificate signing).
    #[arg(long, default_value_t = 10002)]
    https_port: u16,
    /// The kubelet API port for edge nodes (with --kubeconfig only).
    #[arg(long, default_value_t = 10003)]
    stream_port: u16,
    /// Addresses edges dial (IP SANs of cloudhub's certificate).
    #[arg(long = "advertise-address")]
    advertise: Vec<IpAddr>,
    /// DNS names edges dial (DNS SANs).
    #[arg(long)]
    dns: Vec<String>,
    /// Most edge nodes connected at once.
    #[arg(long, default_value_t = 1000)]
    node_limit: usize,
    /// Seconds a node may be disconnected before it turns Ready=Unknown.
    #[arg(long, default_value_t = 40)]
    node_grace_seconds: u64,
    /// Uplink requests of all nodes handled at once (each may hold a connection to the API).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    api_concurrency: u16,
    /// Messages in flight to one edge, unacked, at once (1 behaves like upstream cloudhub).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    window: u16,
    /// The Kubernetes minor version the embedded API reports on /version (kubectl's version
    /// dispatcher picks its client by it).
    #[arg(long, default_value = kubeedge_core::kubeapi::KUBE_MINOR)]
    kube_minor: String,
    /// Run as one of several cloudcore replicas sharing one Kubernetes API (usually with
    /// --kubeconfig): the work done once (marking silent nodes) runs on the leader of Lease
    /// kubeedge/cloudcore, and the replicas share one CA through Secret kubeedge/casecret. Edges
    /// list every replica (`edgecore --cloud wss://A:P,wss://B:P`).
    #[arg(long)]
    replica: bool,
    /// This replica's identity in the leader election. Default: host name and process id.
    #[arg(long)]
    replica_id: Option<String>,
    /// Where the embedded control plane keeps its objects: `redb` (a file in the data
    /// directory, the default) or `etcd://host:port[,host:port...][/prefix]`, shared by every
    /// cloudcore given the same etcd (replicas: implies --replica).
    #[arg(long, default_value = "redb", conflicts_with = "kubeconfig")]
    datastore: String,
    /// TLS with etcd: the CA its members' certificates are checked against (the endpoints are
    /// then https).
    #[arg(long)]
    datastore_cafile: Option<PathBuf>,
    /// TLS with etcd: this cloudcore's client certificate (with --datastore-keyfile).
    #[arg(long, requires = "datastore_cafile")]
    datastore_certfile: Option<PathBuf>,
    /// TLS with etcd: the client certificate's key.
    #[arg(long, requires = "datastore_certfile")]
    datastore_keyfile: Option<PathBuf>,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(cli.data_dir);
    config.kubeconfig = cli.kubeconfig;
    config.api_addr = SocketAddr::new(cli.api_address, cli.api_port);
    config.hub_addr = SocketAddr::new(cli.bind_address, cli.hub_port);
    config.https_addr = SocketAddr::new(cli.bind_address, cli.https_port);
    config.stream_addr = SocketAddr::new(cli.bind_address, cli.stream_port);
    config.advertise = cli.advertise;
    config.dns = cli.dns;
    config.hub.node_limit = cli.node_limit;
    config.hub.session.outbox.window = usize::from(cli.window);
    config.hub.api_concurrency = usize::from(cli.api_concurrency);
    config.node_grace = Duration::from_secs(cli.node_grace_seconds);
    config.kube_minor = cli.kube_minor;
    let shared = match cli.datastore.as_str() {
        "redb" => false,
        #[cfg(feature = "etcd")]
        url => {
            let mut etcd = kubeedge_cloud::etcd::EtcdConfig::parse(url)?;
            if let Some(ca) = &cli.datastore_cafile {
                etcd = etcd.with_tls(kubeedge_cloud::etcd::EtcdTls::from_files(
                    ca,
                    cli.datastore_certfile.as_deref(),
                    cli.datastore_keyfile.as_deref(),
                )?);
            }
            config.etcd = Some(etcd);
            true
        }
        #[cfg(not(feature = "etcd"))]
        url => {
            return Err(format!(
                "--datastore {url}: this cloudcore was built without the `etcd` feature"
            )
            .into());
        }
    };
    if cli.datastore_cafile.is_some() && !shared {
        return Err("--datastore-cafile needs --datastore etcd://...".into());
    }
    if cli.replica_id.is_some() && !cli.replica && !shared {
        return Err("--replica-id needs --replica or --datastore etcd://...".into());
    }
    if cli.replica || shared {
        let id = cli.replica_id.unwrap_or_else(|| {
            let host = daemon::cli::hostname().unwrap_or_default();
            format!("{host}_{}", std::process::id())
        });
        config.replica = Some(kubeedge_cloud::leader::LeaderConfig::new(id));
    }
    let kubeconfig = config.kubeconfig.clone();
    let core = CloudCore::start(config).await?;
    let (api, kubeconfig) = match core.control_plane() {
        Some(cp) => (format!("https://{}", cp.addr()), cp.kubeconfig().to_owned()),
        None => ("-".to_owned(), kubeconfig.unwrap_or_default()),
    };
    let stream = core
        .stream_addr()
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!(
        "cloudcore ready api={api} kubeconfig={} hub={} https={} stream={stream}",
        kubeconfig.display(),
        core.hub_addr(),
        core.https_addr()
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    core.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    match daemon::cli::parse::<Cli>() {
        Ok(cli) => daemon::run("cloudcore", "info", run(cli)),
        Err(code) => code,
    }
}
