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
//! Once serving, it prints one line to stdout: `edgecore ready node=<N> metaserver=<addr>`. Logs go
//! to stderr (`RUST_LOG`, default `info`).
//!
//! Exit codes: 0 after a signal, 1 when it cannot start, 64 bad usage.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_edge::{Config, EdgeCore, PodRuntime};

#[derive(Parser)]
#[command(name = "edgecore", version, about = "kubeedge-rs edgecore")]
struct Cli {
    /// Data directory (certificates and the metastore).
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's name.
    #[arg(long)]
    node_name: String,
    /// cloudhub's WebSocket URL, wss://HOST:PORT.
    #[arg(long)]
    cloud: String,
    /// cloudhub's certificate server, https://HOST:PORT (needed on the first start).
    #[arg(long)]
    https: Option<String>,
    /// Join token from `keadm gettoken` (needed on the first start).
    #[arg(long)]
    token: Option<String>,
    /// The metaserver's port on --metaserver-address.
    #[arg(long, default_value_t = 10550)]
    metaserver_port: u16,
    /// The metaserver's address.
    #[arg(long, default_value = "127.0.0.1")]
    metaserver_address: IpAddr,
    /// The address this node reports.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Where pods run: `cri` (a CRI runtime such as containerd, at --cri-endpoint), `process`
    /// (containers as host processes, for appliances without a container runtime) or `none` (the
    /// node syncs and serves its objects but runs no pods).
    #[arg(long, default_value = "cri", value_parser = ["cri", "process", "none"])]
    runtime: String,
    /// The CRI runtime's socket.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    cri_endpoint: String,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(cli.data_dir, cli.node_name, cli.cloud);
    config.https_url = cli.https;
    config.token = cli.token;
    config.metaserver_addr = SocketAddr::new(cli.metaserver_address, cli.metaserver_port);
    config.node_address = cli.node_ip;
    config.runtime = match cli.runtime.as_str() {
        "cri" => PodRuntime::Cri(cli.cri_endpoint),
        "process" => PodRuntime::Process,
        _ => PodRuntime::None,
    };
    let node = config.node.clone();
    let edge = EdgeCore::start(config).await?;
    println!(
        "edgecore ready node={node} metaserver={}",
        edge.metaserver_addr()
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    edge.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    match daemon::parse::<Cli>() {
        Ok(cli) => daemon::run("edgecore", "info", run(cli)),
        Err(code) => code,
    }
}
