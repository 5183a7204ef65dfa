//! # kubeedge-device
//!
//! Devices as Kubernetes objects, for kubeedge-rs: what runs beside edgecore, and the mappers that
//! talk to the devices.
//!
//! * [`twin`]: the device twin as pure data: desired (`expected`) against reported (`actual`)
//!   values, the delta, upstream's update, result, document and error payloads.
//! * [`eventbus`]: the MQTT connection (rumqttc) with upstream's `$hw/events/...` topics, to an
//!   external broker such as mosquitto or to the [`broker`] embedded in edgecore.
//! * [`dmi`]: the Device Management Interface (upstream `v1beta1` gRPC over unix sockets).
//! * [`devicetwin`]: edgecore's device module: Devices and DeviceModels from the metastore, twin
//!   state persisted in it, MQTT requests from mappers and apps, `DeviceManagerService` for mappers,
//!   reports up to the cloud.
//! * [`mapper`]: the mapper framework: implement [`mapper::Driver`] (connect, read, write,
//!   health) and [`mapper::Mapper`] does the rest (DMI registration, collect and report cycles,
//!   desired values, MQTT and HTTP push, per-device errors); `mapper::modbus` (feature `modbus`,
//!   default) is the Modbus TCP/RTU driver, `mapper::opcua` (feature `opcua`) the OPC-UA one, `mapper::ble` (feature
//!   `ble`) the Bluetooth Low Energy one.
//!
//! What it is not: no cloud or edge logic of its own; it depends on [`kubeedge_core`] only, and
//! reaches the cloud through a channel of messages that edgecore carries.
//!
//! ```no_run
//! # async fn run(store: kubeedge_core::store::Store,
//! #     uplink: tokio::sync::mpsc::Sender<kubeedge_core::message::Message>)
//! #     -> Result<(), kubeedge_device::Error> {
//! use kubeedge_device::devicetwin::{Config, DeviceTwinModule};
//! // Beside an edge: its store, and its report path (`EdgeCore::store()`, `EdgeCore::reports()`).
//! let module = DeviceTwinModule::start(Config::new("edge-1", "/var/lib/kubeedge"), store, uplink)
//!     .await?;
//! let twins = module.twins();
//! twins.set_desired("default", "thermo", [("temperature", "25")]).await?;
//! let now = twins.get("default", "thermo").await?;
//! println!("reported: {:?}", now["temperature"].actual_value());
//! module.stop().await;
//! # Ok(()) }
//! ```

// docs.rs (nightly, `--cfg docsrs`) marks what each feature-gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod broker;
pub mod devicetwin;
pub mod dmi;
pub mod eventbus;
pub mod mapper;
pub mod twin;

/// The shared core (the store, messages, Device types), re-exported so that an application names
/// the very version this crate was built with.
pub use kubeedge_core;

/// Why a device component could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metastore failed.
    #[error("metastore")]
    Store(#[from] kubeedge_core::store::Error),
    /// A DMI call or connection failed.
    #[error("DMI: {step}: {message}")]
    Dmi {
        /// What was being done.
        step: String,
        /// The cause.
        message: String,
    },
    /// Settings or input are unusable.
    #[error("{0}")]
    Config(String),
    /// A twin request was refused, with upstream's code (400 malformed, 404 unknown device).
    #[error("twin: {reason} ({code})")]
    Twin {
        /// The code of upstream's error result.
        code: u16,
        /// Why.
        reason: String,
    },
    /// The device module has stopped.
    #[error("the device module has stopped")]
    Stopped,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
