//! `mapper`: a device protocol driver run as a standalone, upstream-style mapper.
//!
//! `mapper --protocol modbus --edgecore-socket /etc/kubeedge/dmi.sock` serves
//! `DeviceMapperService` on `--socket` (default `/etc/kubeedge/<name>.sock`), registers with
//! edgecore over DMI, and from then on reads and writes the devices edgecore hands it: every
//! Device whose `spec.protocol.protocolName` is the protocol. It re-registers by itself when
//! edgecore restarts. Protocols: `modbus` (TCP and RTU).
//!
//! Once serving, it prints one line to stdout: `mapper ready protocol=<P> socket=<path>`. Logs go
//! to stderr (`RUST_LOG`, default `info`). Exit codes: 0 after a signal, 1 when it cannot start,
//! 64 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_device::mapper::{Mapper, MapperConfig, modbus::Modbus};

#[derive(Parser)]
#[command(name = "mapper", version, about = "kubeedge-rs mapper")]
struct Cli {
    /// The protocol to serve.
    #[arg(long, value_parser = ["modbus"])]
    protocol: String,
    /// The mapper's name. Default `<protocol>-mapper`.
    #[arg(long)]
    name: Option<String>,
    /// The socket to serve DeviceMapperService on. Default `/etc/kubeedge/<name>.sock`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// edgecore's DMI socket.
    #[arg(long, default_value = "/etc/kubeedge/dmi.sock")]
    edgecore_socket: PathBuf,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let name = cli
        .name
        .unwrap_or_else(|| format!("{}-mapper", cli.protocol));
    let socket = cli
        .socket
        .unwrap_or_else(|| PathBuf::from(format!("/etc/kubeedge/{name}.sock")));
    let config = MapperConfig::new(name, socket.clone(), cli.edgecore_socket);
    let mapper = match cli.protocol.as_str() {
        "modbus" => Mapper::start(Modbus, config).await?,
        other => return Err(format!("no driver for protocol {other:?}").into()),
    };
    println!(
        "mapper ready protocol={} socket={}",
        cli.protocol,
        socket.display()
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    drop(mapper);
    Ok(())
}

fn main() -> ExitCode {
    match daemon::cli::parse::<Cli>() {
        Ok(cli) => daemon::run("mapper", "info", run(cli)),
        Err(code) => code,
    }
}
