//! `edgemesh`: the mesh agent on its own, as upstream's edgemesh-agent runs (a host process or a
//! DaemonSet pod with host networking and CAP_NET_ADMIN).
//!
//! `edgemesh --node-name N [--api http://127.0.0.1:10550 | --kubeconfig F] --certs DIR
//! [--relay-node NAME@IP:PORT]... [--relay]`
//!
//! At the edge it reads Services and EndpointSlices from edgecore's metaserver; in the cloud from
//! the API server (`--kubeconfig`). It serves DNS on upstream's 169.254.96.16:53 (on the
//! `edgemesh0` dummy interface), redirects ClusterIP traffic to its proxy with iptables, and
//! reaches endpoints on other nodes through the tunnel (port 20006), with the node's certificate
//! from edgecore's data directory (`ca/rootCA.crt`, `certs/server.{crt,key}`). It prints one line
//! when ready: `edgemesh ready node=<n> dns=<addr|-> tunnel=<addr|-> socks=<addr|->`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kubeedge_mesh::agent::{Agent, GatewayRule, MeshConfig};
use kubeedge_mesh::tunnel::{RelayAddr, TunnelConfig};

#[path = "../../daemon.rs"]
mod daemon;

/// The mesh agent: edge DNS, the service proxy, the tunnel between edges.
#[derive(Debug, Parser)]
#[command(name = "edgemesh", version)]
struct Cli {
    /// This node's name (its certificate's).
    #[arg(long)]
    node_name: String,
    /// The Kubernetes API to read Services from (edgecore's metaserver at the edge).
    #[arg(
        long,
        default_value = "http://127.0.0.1:10550",
        conflicts_with = "kubeconfig"
    )]
    api: String,
    /// A kubeconfig for the API instead (in the cloud).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Where DNS listens.
    #[arg(long, default_value = kubeedge_mesh::dns::DEFAULT_ADDR)]
    dns: SocketAddr,
    /// No DNS server.
    #[arg(long)]
    no_dns: bool,
    /// Do not put the DNS address on the edgemesh0 dummy interface.
    #[arg(long)]
    no_dummy: bool,
    /// The resolvers for names outside the cluster.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Do not redirect ClusterIP traffic with iptables (reach Services through SOCKS5 or the
    /// gateway only).
    #[arg(long)]
    no_capture: bool,
    /// Where the tunnel accepts peers.
    #[arg(long, default_value = "0.0.0.0:20006")]
    tunnel_listen: SocketAddr,
    /// No tunnel listener: dial out only (behind NAT).
    #[arg(long)]
    no_listen: bool,
    /// No tunnel at all: every endpoint is dialled directly.
    #[arg(long)]
    no_tunnel: bool,
    /// Addresses to announce for direct connections (default: the listen address, or the one the
    /// relay sees).
    #[arg(long)]
    advertise: Vec<SocketAddr>,
    /// A relay to keep connected to, `NAME@IP[:PORT]` (repeatable).
    #[arg(long = "relay-node")]
    relay_nodes: Vec<RelayAddr>,
    /// Relay circuits for other nodes (a node every edge reaches, e.g. with a public address).
    #[arg(long)]
    relay: bool,
    /// Only the tunnel, as a relay: no API, DNS, proxy or capture (e.g. on the cloud's host).
    #[arg(long)]
    relay_only: bool,
    /// The directory holding the node's certificates in edgecore's layout.
    #[arg(long, default_value = "/var/lib/kubeedge")]
    certs: PathBuf,
    /// A SOCKS5 entry for applications that cannot be redirected (upstream: 0.0.0.0:10800).
    #[arg(long)]
    socks: Option<SocketAddr>,
    /// Expose a Service to clients outside the mesh: ADDR:PORT=NS/SVC:PORT (repeatable).
    #[arg(long)]
    gateway: Vec<GatewayRule>,
}

fn main() -> ExitCode {
    let cli = match daemon::cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    daemon::run("edgemesh", "info", run(cli))
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = match &cli.kubeconfig {
        _ if cli.relay_only => None,
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let config = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            Some(kube::Client::try_from(config)?)
        }
        None => Some(kube::Client::try_from(kube::Config::new(cli.api.parse()?))?),
    };
    let tunnel = if cli.no_tunnel {
        None
    } else {
        let mut t = TunnelConfig::from_cert_dir(&cli.node_name, &cli.certs)?;
        t.listen = (!cli.no_listen).then_some(cli.tunnel_listen);
        t.advertise = cli.advertise;
        t.relays = cli.relay_nodes;
        t.relay = cli.relay;
        Some(t)
    };
    if cli.relay_only {
        let Some(mut tunnel) = tunnel else {
            return Err("--relay-only needs the tunnel (drop --no-tunnel)".into());
        };
        tunnel.relay = true;
        let deny: kubeedge_mesh::tunnel::Allow = std::sync::Arc::new(|_, _, _| false);
        let relay = kubeedge_mesh::tunnel::Tunnel::start(tunnel, deny).await?;
        println!(
            "edgemesh ready node={} dns=- tunnel={} socks=-",
            cli.node_name,
            relay
                .addr()
                .map_or_else(|| "-".to_owned(), |a| a.to_string())
        );
        daemon::shutdown_signal().await;
        return Ok(());
    }
    let mut config = MeshConfig::new(cli.node_name.clone());
    config.domain = cli.domain;
    config.dns = (!cli.no_dns).then_some(cli.dns);
    config.dns_dummy = !cli.no_dns && !cli.no_dummy;
    config.resolv_conf = cli.resolv_conf;
    config.capture = !cli.no_capture;
    config.proxy_bind = IpAddr::from([0, 0, 0, 0]);
    config.tunnel = tunnel;
    config.socks = cli.socks;
    config.gateway = cli.gateway;
    let client = client.ok_or("no Kubernetes API")?;
    let agent = Agent::start(config, client).await?;
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!(
        "edgemesh ready node={} dns={} tunnel={} socks={}",
        cli.node_name,
        show(agent.dns_addr()),
        show(agent.tunnel().and_then(|t| t.addr())),
        show(agent.socks_addr()),
    );
    daemon::shutdown_signal().await;
    tracing::info!("edgemesh: stopping");
    agent.stop();
    Ok(())
}
