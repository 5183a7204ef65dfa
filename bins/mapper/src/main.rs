//! `mapper`: a device protocol driver run as a standalone, upstream-style mapper.
//!
//! `mapper --protocol modbus --edgecore-socket /etc/kubeedge/dmi.sock` serves
//! `DeviceMapperService` on `--socket` (default `/etc/kubeedge/<name>.sock`), registers with
//! edgecore over DMI, and from then on reads and writes the devices edgecore hands it: every
//! Device whose `spec.protocol.protocolName` is the protocol. It re-registers by itself when
//! edgecore restarts. Protocols: `modbus` (TCP and RTU), `opcua` (its certificates, when an
//! endpoint is secured, under `--pki-dir`, default `/etc/kubeedge/<name>-pki`), `bluetooth` (BLE
//! through BlueZ on the system D-Bus; `DBUS_SYSTEM_BUS_ADDRESS` picks another bus).
//!
//! Once serving, it prints one line to stdout: `mapper ready protocol=<P> socket=<path>`. Logs go
//! to stderr (`RUST_LOG`, default `info`). Exit codes: 0 after a signal, 1 when it cannot start,
//! 64 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../../daemon.rs"]
mod daemon;

use clap::Parser;
use kubeedge_device::mapper::{
    Driver, Mapper, MapperConfig, ble::Ble, modbus::Modbus, opcua::OpcUa,
};

#[derive(Parser)]
#[command(name = "mapper", version, about = "kubeedge-rs mapper")]
struct Cli {
    /// The protocol to serve.
    #[arg(long, value_parser = ["modbus", "opcua", "bluetooth"])]
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
    /// OPC-UA: where the client keeps its key pair and the trusted and rejected server
    /// certificates. Default `/etc/kubeedge/<name>-pki`.
    #[arg(long)]
    pki_dir: Option<PathBuf>,
}

/// Serves `driver` until a signal.
async fn serve<D: Driver>(
    driver: D,
    config: MapperConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let (protocol, socket) = (driver.protocol().to_owned(), config.socket.clone());
    let mapper = Mapper::start(driver, config).await?;
    println!(
        "mapper ready protocol={protocol} socket={}",
        socket.display()
    );
    daemon::shutdown_signal().await;
    tracing::info!("stopping");
    mapper.stop().await;
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let name = cli
        .name
        .unwrap_or_else(|| format!("{}-mapper", cli.protocol));
    let socket = cli
        .socket
        .unwrap_or_else(|| PathBuf::from(format!("/etc/kubeedge/{name}.sock")));
    let config = MapperConfig::new(name, socket, cli.edgecore_socket);
    match cli.protocol.as_str() {
        "modbus" => serve(Modbus, config).await,
        "bluetooth" => serve(Ble::new(), config).await,
        "opcua" => {
            let pki = cli
                .pki_dir
                .unwrap_or_else(|| PathBuf::from(format!("/etc/kubeedge/{}-pki", config.name)));
            serve(OpcUa::new(pki), config).await
        }
        other => Err(format!("no driver for protocol {other:?}").into()),
    }
}

fn main() -> ExitCode {
    match daemon::cli::parse::<Cli>() {
        Ok(cli) => daemon::run("mapper", "info", run(cli)),
        Err(code) => code,
    }
}
