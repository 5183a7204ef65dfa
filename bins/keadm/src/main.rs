//! `keadm`: the kubeedge-rs admin CLI.
//!
//! * `keadm init-pki --data-dir D [--advertise-address IP]... [--dns NAME]...` creates the KubeEdge
//!   CA under `D/ca/` and cloudcore's serving certificate under `D/certs/` (kept if present).
//! * `keadm gettoken --data-dir D [--valid-for-hours H]` prints a join token for edges:
//!   `<sha256 of the CA>.<HS256 JWT>`, as upstream's `keadm gettoken`.
//! * `keadm checktoken --data-dir D TOKEN` says whether a token is valid for this CA.
//! * `keadm join --cloudcore-ipport HOST:PORT --token T [--edgenode-name N] [--data-dir D]` joins
//!   this machine as an edge node: node certificate from the certificate server (`--certport`,
//!   10002), a check that cloudhub admits it, and `D/edgecore.yaml` (or `--config F`) for
//!   `edgecore --config`. Each step is shown as it runs.
//!
//! Exit codes: 0 success, 1 failure, 64 bad usage.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[path = "../../cli.rs"]
mod cli;

use clap::{Parser, Subcommand};
use kubeedge_core::pki::{self, Ca};

#[derive(Parser)]
#[command(name = "keadm", version, about = "kubeedge-rs admin CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA and cloudcore's serving certificate (existing files are kept).
    InitPki {
        /// cloudcore's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Addresses edges dial cloudcore on (IP SANs). Default 127.0.0.1.
        #[arg(long = "advertise-address")]
        advertise: Vec<IpAddr>,
        /// DNS names edges dial cloudcore by (DNS SANs).
        #[arg(long)]
        dns: Vec<String>,
    },
    /// Print a join token for edges.
    Gettoken {
        /// cloudcore's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// How long the token stays valid. Default 24 (upstream: 2 × 12 h refresh).
        #[arg(long, default_value_t = 24)]
        valid_for_hours: u64,
    },
    /// Join this machine to a cloud as an edge node.
    Join(JoinArgs),
    /// Check a join token against this CA.
    Checktoken {
        /// cloudcore's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The token.
        token: String,
    },
}

/// `keadm join`'s arguments.
#[derive(clap::Args)]
struct JoinArgs {
    /// cloudhub's address, HOST:PORT.
    #[arg(long = "cloudcore-ipport")]
    cloudcore: String,
    /// The certificate server's port on the same host.
    #[arg(long, default_value_t = 10002)]
    certport: u16,
    /// Join token from `keadm gettoken` (not needed if the node has a certificate).
    #[arg(long)]
    token: Option<String>,
    /// The node's name. Default: this machine's host name.
    #[arg(long = "edgenode-name")]
    node: Option<String>,
    /// The edge's data directory.
    #[arg(long, default_value = "/var/lib/kubeedge-rs")]
    data_dir: PathBuf,
    /// Where to write the configuration file. Default: DATA_DIR/edgecore.yaml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where pods run: cri, process or none.
    #[arg(long, default_value = "cri", value_parser = ["cri", "process", "none"])]
    runtime: String,
    /// The CRI runtime's socket.
    #[arg(
        long = "remote-runtime-endpoint",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    cri_endpoint: String,
    /// The address this node reports.
    #[arg(long)]
    node_ip: Option<String>,
}

fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let now = SystemTime::now();
    match cli.command {
        Command::InitPki {
            data_dir,
            advertise,
            dns,
        } => {
            let ca = Ca::load_or_create(&ca_dir(&data_dir), now)?;
            let cert = data_dir.join("certs").join("server.crt");
            let key = data_dir.join("certs").join("server.key");
            if cert.exists() && key.exists() {
                println!("kept {}", cert.display());
            } else {
                let ips = if advertise.is_empty() {
                    vec![IpAddr::from([127, 0, 0, 1])]
                } else {
                    advertise
                };
                let id = ca.issue_server(&dns, &ips, now)?;
                pki::write(&cert, &id.cert_pem(), false)?;
                pki::write(&key, &id.key_pem()?, true)?;
                println!("wrote {}", cert.display());
            }
            println!("CA {} (sha256 {})", ca_dir(&data_dir).display(), ca.hash());
        }
        Command::Gettoken {
            data_dir,
            valid_for_hours,
        } => {
            let ca = Ca::load_or_create(&ca_dir(&data_dir), now)?;
            println!(
                "{}",
                ca.token(Duration::from_secs(valid_for_hours * 3600), now)
            );
        }
        Command::Join(args) => join(args)?,
        Command::Checktoken { data_dir, token } => {
            let ca = Ca::load_or_create(&ca_dir(&data_dir), now)?;
            ca.verify_token(&token, now)?;
            println!("valid");
        }
    }
    Ok(())
}

fn join(args: JoinArgs) -> Result<(), Box<dyn std::error::Error>> {
    use kubeedge_edge::config_file::EdgeCoreFile;
    let JoinArgs {
        cloudcore,
        certport,
        token,
        node,
        data_dir,
        config,
        runtime,
        cri_endpoint,
        node_ip,
    } = args;
    use kubeedge_edge::join::Progress;
    let host = cloudcore
        .rsplit_once(':')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("--cloudcore-ipport {cloudcore:?} is not HOST:PORT"))?;
    let node = match node {
        Some(n) => n,
        None => cli::hostname()
            .map(|h| h.to_lowercase())
            .map_err(|e| format!("no --edgenode-name, and the host name is unreadable: {e}"))?,
    };
    let mut file = EdgeCoreFile::default();
    file.data_dir = Some(std::path::absolute(&data_dir)?);
    let (hub, edged) = (&mut file.modules.edge_hub, &mut file.modules.edged);
    hub.websocket.server = Some(cloudcore.clone());
    hub.http_server = Some(format!("https://{host}:{certport}"));
    hub.token = token;
    edged.hostname_override = Some(node);
    edged.node_ip = node_ip;
    edged.runtime = Some(runtime);
    edged.tailored_kubelet_config.container_runtime_endpoint = Some(cri_endpoint);
    let path = config.unwrap_or_else(|| data_dir.join("edgecore.yaml"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(kubeedge_edge::join::join(&file, &path, |p| match p {
        Progress::Begin { n, of, what } => println!("[{n}/{of}] {what}"),
        Progress::Done(what) => println!("      ok: {what}"),
        _ => {}
    }))?;
    Ok(())
}

fn main() -> ExitCode {
    match cli::parse::<Cli>() {
        Ok(c) => cli::outcome("keadm", run(c)),
        Err(code) => code,
    }
}
