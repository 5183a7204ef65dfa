//! `keadm`: the kubeedge-rs admin CLI.
//!
//! * `keadm init-pki --data-dir D [--advertise-address IP]... [--dns NAME]...` creates the KubeEdge
//!   CA under `D/ca/` and cloudcore's serving certificate under `D/certs/` (kept if present).
//! * `keadm gettoken --data-dir D [--valid-for-hours H]` prints a join token for edges:
//!   `<sha256 of the CA>.<HS256 JWT>`, as upstream's `keadm gettoken`.
//! * `keadm checktoken --data-dir D TOKEN` says whether a token is valid for this CA.
//!
//! Exit codes: 0 success, 1 failure, 64 bad usage.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

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
    /// Check a join token against this CA.
    Checktoken {
        /// cloudcore's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The token.
        token: String,
    },
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
        Command::Checktoken { data_dir, token } => {
            let ca = Ca::load_or_create(&ca_dir(&data_dir), now)?;
            ca.verify_token(&token, now)?;
            println!("valid");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keadm: {}", kubeedge_core::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
