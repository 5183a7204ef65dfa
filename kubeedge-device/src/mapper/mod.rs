//! The mapper framework: a mapper is a [`Driver`] (connect, read, write, health) plus
//! [`Mapper::start`], which does the rest as upstream's mapper-framework does:
//!
//! * serves `DeviceMapperService` on its own unix socket and registers with edgecore's
//!   `DeviceManagerService` (`MapperRegister`, with data: it gets its devices and models back),
//!   registering again whenever edgecore comes back after being away;
//! * per device, connects with the driver, reads each property every `collectCycle` and reports
//!   the latest values every `reportCycle` (`ReportDeviceStatus`, properties with
//!   `reportToCloud`), pushes each reading to the property's MQTT or HTTP `pushMethod`;
//! * writes a property's desired value (`spec.properties[].desired.value`) to the device when it
//!   changes, then reads it back;
//! * keeps errors on their device: an unreachable device is reported `offline`, a property that
//!   cannot be read makes its device `unhealthy`, with the driver's error in the reported twin's
//!   metadata (`error`); the other devices go on.
//!
//! ```no_run
//! use kubeedge_device::mapper::{Mapper, MapperConfig, modbus::Modbus};
//!
//! # async fn run() -> Result<(), kubeedge_device::Error> {
//! let config = MapperConfig::new("modbus-mapper", "/etc/kubeedge/modbus.sock", "/etc/kubeedge/dmi.sock");
//! let mapper = Mapper::start(Modbus, config).await?;
//! tokio::signal::ctrl_c().await.ok();
//! drop(mapper);
//! # Ok(()) }
//! ```

#[cfg(feature = "ble")]
pub mod ble;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
mod push;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_core::api::devices::{Device, DeviceModel, DeviceProperty};
use serde_json::Value;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::dmi::{self, v1beta1};
use crate::{Error, now_ms};

/// Collect and report cycle when a property gives none (upstream's default: 1 s).
pub const DEFAULT_CYCLE: Duration = Duration::from_secs(1);
/// Longest a driver call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The device cannot be reached (connection refused, timed out, closed): the mapper
    /// reconnects.
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// The device or the settings refused this property (bad address, bad type, exception
    /// response): the device stays connected.
    #[error("{0}")]
    Property(String),
    /// The device's or property's settings are unusable (missing address, unknown register kind).
    #[error("bad configuration: {0}")]
    Config(String),
}

/// A device as a driver sees it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// `<namespace>/<name>`.
    pub id: String,
    /// The device's `spec.protocol.configData` (merged over the model's `protocolConfigData`).
    pub config: Value,
}

/// A property as a driver sees it.
#[derive(Debug, Clone)]
pub struct PropertyInfo {
    /// Its name.
    pub name: String,
    /// Its visitor's `configData` (where it lives on the device).
    pub visitor: Value,
    /// The model's type, lower case (`int`, `float`, `double`, `boolean`, `string`, ...; "" when
    /// unknown).
    pub kind: String,
}

/// A protocol driver. One connection per device; the framework serializes calls on it.
///
/// A driver for devices that keep their values in memory (a stand-in for a real protocol),
/// served as a mapper to edgecore's DMI socket:
///
/// ```no_run
/// use std::collections::HashMap;
/// use kubeedge_device::mapper::{
///     DeviceInfo, Driver, DriverError, Mapper, MapperConfig, PropertyInfo,
/// };
///
/// struct Memory;
///
/// impl Driver for Memory {
///     type Conn = HashMap<String, String>;
///     fn protocol(&self) -> &str {
///         "memory"
///     }
///     async fn connect(&self, _device: &DeviceInfo) -> Result<Self::Conn, DriverError> {
///         Ok(HashMap::new())
///     }
///     async fn read(&self, conn: &mut Self::Conn, p: &PropertyInfo) -> Result<String, DriverError> {
///         conn.get(&p.name).cloned().ok_or_else(|| DriverError::Property("never written".into()))
///     }
///     async fn write(
///         &self,
///         conn: &mut Self::Conn,
///         p: &PropertyInfo,
///         value: &str,
///     ) -> Result<(), DriverError> {
///         conn.insert(p.name.clone(), value.to_owned());
///         Ok(())
///     }
///     async fn health(&self, _conn: &mut Self::Conn) -> Result<(), DriverError> {
///         Ok(())
///     }
/// }
///
/// # async fn run() -> Result<(), kubeedge_device::Error> {
/// let config = MapperConfig::new(
///     "memory-mapper",
///     "/var/lib/kubeedge/memory.sock",       // this mapper's own DMI socket
///     "/var/lib/kubeedge/dmi.sock",          // edgecore's
/// );
/// let mapper = Mapper::start(Memory, config).await?;
/// # drop(mapper);
/// # Ok(()) }
/// ```
pub trait Driver: Send + Sync + 'static {
    /// An open connection to one device.
    type Conn: Send + 'static;
    /// The protocol it speaks (`modbus`, `opcua`, ...), as Devices name it in
    /// `spec.protocol.protocolName`.
    fn protocol(&self) -> &str;
    /// Opens a connection to `device`.
    fn connect(
        &self,
        device: &DeviceInfo,
    ) -> impl Future<Output = Result<Self::Conn, DriverError>> + Send;
    /// Reads `property`, as the twin's string value.
    fn read(
        &self,
        conn: &mut Self::Conn,
        property: &PropertyInfo,
    ) -> impl Future<Output = Result<String, DriverError>> + Send;
    /// Writes `value` (the twin's string form) to `property`.
    fn write(
        &self,
        conn: &mut Self::Conn,
        property: &PropertyInfo,
        value: &str,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Whether the connection still works (called when no property is due for a while).
    fn health(&self, conn: &mut Self::Conn)
    -> impl Future<Output = Result<(), DriverError>> + Send;
}

/// A mapper's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MapperConfig {
    /// The mapper's name (`MapperInfo.name`).
    pub name: String,
    /// The socket it serves `DeviceMapperService` on.
    pub socket: PathBuf,
    /// edgecore's DMI socket (upstream `/etc/kubeedge/dmi.sock`).
    pub edgecore_socket: PathBuf,
    /// Delay between registration attempts while edgecore is away. Default 2 s.
    pub register_retry: Duration,
}

impl MapperConfig {
    /// Settings for mapper `name`, serving on `socket`, registering at `edgecore_socket`.
    pub fn new(
        name: impl Into<String>,
        socket: impl Into<PathBuf>,
        edgecore_socket: impl Into<PathBuf>,
    ) -> MapperConfig {
        MapperConfig {
            name: name.into(),
            socket: socket.into(),
            edgecore_socket: edgecore_socket.into(),
            register_retry: Duration::from_secs(2),
        }
    }
}

/// The latest reading of a property.
#[derive(Debug, Clone, Default)]
struct Reading {
    value: Option<String>,
    timestamp: i64,
    error: Option<String>,
}

struct Run {
    device: Device,
    task: tokio::task::JoinHandle<()>,
    readings: Arc<Mutex<HashMap<String, Reading>>>,
}

struct Shared<D: Driver> {
    driver: D,
    config: MapperConfig,
    devices: Mutex<HashMap<String, Run>>,
    models: Mutex<HashMap<String, DeviceModel>>,
    /// Desired values last written, by device id and property (kept across device restarts).
    written: Mutex<HashMap<String, HashMap<String, String>>>,
    edge: Mutex<Option<Channel>>,
    /// edgecore failed a call: register again.
    lost: AtomicBool,
    push: push::Pushers,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mapper; [`Mapper::stop`] stops it and waits, dropping it stops it without waiting
/// (its devices' tasks too).
pub struct Mapper<D: Driver> {
    shared: Arc<Shared<D>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<D: Driver> std::fmt::Debug for Mapper<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("name", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Drop for Mapper<D> {
    fn drop(&mut self) {
        self.halt();
    }
}

impl<D: Driver> Mapper<D> {
    /// Serves `DeviceMapperService` on the configured socket and registers with edgecore (in the
    /// background, retrying until edgecore answers).
    pub async fn start(driver: D, config: MapperConfig) -> Result<Mapper<D>, Error> {
        let listener = dmi::bind(&config.socket)?;
        let shared = Arc::new(Shared {
            driver,
            config,
            devices: Mutex::new(HashMap::new()),
            models: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            edge: Mutex::new(None),
            lost: AtomicBool::new(true),
            push: push::Pushers::default(),
        });
        let service = Service {
            shared: shared.clone(),
        };
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(
                    v1beta1::device_mapper_service_server::DeviceMapperServiceServer::new(service),
                )
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %kubeedge_core::error_chain(&e), "mapper's DMI server stopped");
            }
        });
        let registrar = tokio::spawn(register_loop(shared.clone()));
        Ok(Mapper {
            shared,
            tasks: vec![server, registrar],
        })
    }

    /// Stops the mapper and waits until it has: its DMI server and every device's task ended
    /// (connections to devices closed with them), its socket removed.
    pub async fn stop(mut self) {
        for t in self.halt() {
            let _ = t.await;
        }
    }

    /// Aborts the DMI server and every device's task and removes the socket; returns the tasks,
    /// to wait for.
    fn halt(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = std::mem::take(&mut self.tasks);
        tasks.extend(lock(&self.shared.devices).drain().map(|(_, run)| run.task));
        for t in &tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.shared.config.socket);
        tasks
    }

    /// Whether the mapper is registered with edgecore right now.
    pub fn registered(&self) -> bool {
        !self.shared.lost.load(Ordering::SeqCst)
    }

    /// Ids (`<namespace>/<name>`) of the devices it serves.
    pub fn devices(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.shared.devices).keys().cloned().collect();
        ids.sort();
        ids
    }
}

async fn edge_client<D: Driver>(
    shared: &Shared<D>,
) -> Result<v1beta1::device_manager_service_client::DeviceManagerServiceClient<Channel>, Error> {
    let cached = lock(&shared.edge).clone();
    let channel = match cached {
        Some(c) => c,
        None => {
            let c = dmi::connect(&shared.config.edgecore_socket.display().to_string()).await?;
            *lock(&shared.edge) = Some(c.clone());
            c
        }
    };
    Ok(v1beta1::device_manager_service_client::DeviceManagerServiceClient::new(channel))
}

async fn register_loop<D: Driver>(shared: Arc<Shared<D>>) {
    loop {
        if shared.lost.load(Ordering::SeqCst) {
            match register(&shared).await {
                Ok(n) => {
                    tracing::info!(mapper = %shared.config.name, devices = n, "registered with edgecore");
                    shared.lost.store(false, Ordering::SeqCst);
                }
                Err(e) => {
                    *lock(&shared.edge) = None;
                    tracing::debug!(error = %e, "edgecore not reachable yet");
                }
            }
        }
        tokio::time::sleep(shared.config.register_retry).await;
    }
}

async fn register<D: Driver>(shared: &Arc<Shared<D>>) -> Result<usize, Error> {
    let mut client = edge_client(shared).await?;
    let response = client
        .mapper_register(v1beta1::MapperRegisterRequest {
            with_data: true,
            mapper: Some(v1beta1::MapperInfo {
                name: shared.config.name.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                api_version: dmi::API_VERSION.into(),
                protocol: shared.driver.protocol().to_owned(),
                address: shared.config.socket.display().to_string().into_bytes(),
                state: "ok".into(),
            }),
        })
        .await
        .map_err(|s| Error::Dmi {
            step: "registering with edgecore".into(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    for m in &response.model_list {
        let m = dmi::model_from_dmi(m);
        lock(&shared.models).insert(format!("{}/{}", m.namespace(), m.name()), m);
    }
    let n = response.device_list.len();
    for d in &response.device_list {
        put_device(shared, dmi::device_from_dmi(d));
    }
    Ok(n)
}

/// Starts (or restarts, when its spec changed) the task of a device.
fn put_device<D: Driver>(shared: &Arc<Shared<D>>, device: Device) {
    let id = device.id();
    let mut devices = lock(&shared.devices);
    if let Some(run) = devices.get(&id) {
        if run.device.spec == device.spec && !run.task.is_finished() {
            return;
        }
        run.task.abort();
    }
    let readings = Arc::new(Mutex::new(HashMap::new()));
    let task = tokio::spawn(run_device(shared.clone(), device.clone(), readings.clone()));
    devices.insert(
        id,
        Run {
            device,
            task,
            readings,
        },
    );
}

fn remove_device<D: Driver>(shared: &Shared<D>, id: &str) {
    if let Some(run) = lock(&shared.devices).remove(id) {
        run.task.abort();
    }
    lock(&shared.written).remove(id);
}

fn cycle(ms: i64) -> Duration {
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map_or(DEFAULT_CYCLE, Duration::from_millis)
}

/// One property's settings and schedule.
struct Prop {
    spec: DeviceProperty,
    info: PropertyInfo,
    next_collect: Instant,
    next_report: Instant,
}

fn model_of<D: Driver>(shared: &Shared<D>, device: &Device) -> Option<DeviceModel> {
    let m = device.spec.device_model_ref.as_ref()?;
    lock(&shared.models)
        .get(&format!("{}/{}", device.namespace(), m.name))
        .cloned()
}

fn device_info(device: &Device, model: Option<&DeviceModel>) -> DeviceInfo {
    let mut config = model
        .and_then(|m| m.spec.protocol_config_data.clone())
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Default::default()));
    if let (Some(Value::Object(own)), Some(obj)) = (
        device
            .spec
            .protocol
            .as_ref()
            .and_then(|p| p.config_data.clone()),
        config.as_object_mut(),
    ) {
        obj.extend(own);
    }
    DeviceInfo {
        id: device.id(),
        config,
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, DriverError>>) -> Result<T, DriverError> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(DriverError::Unreachable(format!(
                "no answer within {CALL_TIMEOUT:?}"
            )))
        })
}

async fn run_device<D: Driver>(
    shared: Arc<Shared<D>>,
    device: Device,
    readings: Arc<Mutex<HashMap<String, Reading>>>,
) {
    let id = device.id();
    let model = model_of(&shared, &device);
    let info = device_info(&device, model.as_ref());
    let now = Instant::now();
    let mut props: Vec<Prop> = device
        .spec
        .properties
        .iter()
        .map(|p| {
            let kind = model
                .as_ref()
                .and_then(|m| m.spec.properties.iter().find(|mp| mp.name == p.name))
                .map(|mp| mp.kind.to_ascii_lowercase())
                .unwrap_or_default();
            Prop {
                info: PropertyInfo {
                    name: p.name.clone(),
                    visitor: p
                        .visitors
                        .as_ref()
                        .and_then(|v| v.config_data.clone())
                        .unwrap_or(Value::Null),
                    kind,
                },
                spec: p.clone(),
                next_collect: now,
                next_report: now + cycle(p.report_cycle),
            }
        })
        .collect();
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut conn = match timed(shared.driver.connect(&info)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "cannot connect to the device");
                for p in &props {
                    lock(&readings)
                        .entry(p.info.name.clone())
                        .or_default()
                        .error = Some(e.to_string());
                }
                report_all(&shared, &device, &props, &readings).await;
                report_state(&shared, &device, "offline").await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        tracing::info!(device = %id, "connected to the device");
        let mut state = String::new();
        loop {
            // Desired values first: write what changed, then read it back below.
            let mut unreachable = None;
            for p in &mut props {
                let Some(want) = p
                    .spec
                    .desired
                    .as_ref()
                    .map(|d| d.value.clone())
                    .filter(|v| !v.is_empty())
                else {
                    continue;
                };
                let done = lock(&shared.written)
                    .get(&id)
                    .and_then(|w| w.get(&p.info.name))
                    == Some(&want);
                if done {
                    continue;
                }
                match timed(shared.driver.write(&mut conn, &p.info, &want)).await {
                    Ok(()) => {
                        tracing::info!(device = %id, property = %p.info.name, value = %want, "desired value written");
                        lock(&shared.written)
                            .entry(id.clone())
                            .or_default()
                            .insert(p.info.name.clone(), want);
                        p.next_collect = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(device = %id, property = %p.info.name, error = %e, "cannot write the desired value");
                        if matches!(e, DriverError::Unreachable(_)) {
                            unreachable = Some(e);
                            break;
                        }
                        lock(&readings)
                            .entry(p.info.name.clone())
                            .or_default()
                            .error = Some(format!("writing {want:?}: {e}"));
                    }
                }
            }
            let now = Instant::now();
            for p in props.iter_mut().filter(|p| p.next_collect <= now) {
                if unreachable.is_some() {
                    break;
                }
                p.next_collect = now + cycle(p.spec.collect_cycle);
                match timed(shared.driver.read(&mut conn, &p.info)).await {
                    Ok(value) => {
                        let ts = now_ms();
                        {
                            let mut r = lock(&readings);
                            let slot = r.entry(p.info.name.clone()).or_default();
                            slot.value = Some(value.clone());
                            slot.timestamp = ts;
                            slot.error = None;
                        }
                        if let Some(method) = &p.spec.push_method {
                            shared.push.push(method, &device, &p.info, &value, ts).await;
                        }
                    }
                    Err(e @ DriverError::Unreachable(_)) => unreachable = Some(e),
                    Err(e) => {
                        lock(&readings)
                            .entry(p.info.name.clone())
                            .or_default()
                            .error = Some(e.to_string());
                    }
                }
            }
            if let Some(e) = unreachable {
                tracing::warn!(device = %id, error = %e, "lost the device; reconnecting");
                for p in &props {
                    lock(&readings)
                        .entry(p.info.name.clone())
                        .or_default()
                        .error = Some(e.to_string());
                }
                report_all(&shared, &device, &props, &readings).await;
                report_state(&shared, &device, "offline").await;
                break;
            }
            let healthy = lock(&readings).values().all(|r| r.error.is_none());
            let now_state = if healthy { "online" } else { "unhealthy" };
            let now = Instant::now();
            let due: Vec<usize> = props
                .iter()
                .enumerate()
                .filter(|(_, p)| p.next_report <= now)
                .map(|(i, _)| i)
                .collect();
            if !due.is_empty() || now_state != state {
                for &i in &due {
                    props[i].next_report = now + cycle(props[i].spec.report_cycle);
                }
                let chosen: Vec<&Prop> = if now_state != state {
                    props.iter().collect()
                } else {
                    due.iter().map(|&i| &props[i]).collect()
                };
                report_some(&shared, &device, &chosen, &readings).await;
            }
            if now_state != state {
                report_state(&shared, &device, now_state).await;
                state = now_state.to_owned();
            }
            let next = props
                .iter()
                .flat_map(|p| [p.next_collect, p.next_report])
                .min()
                .unwrap_or(now + DEFAULT_CYCLE);
            if props.is_empty() {
                tokio::time::sleep(DEFAULT_CYCLE * 5).await;
                if let Err(e) = timed(shared.driver.health(&mut conn)).await {
                    tracing::warn!(device = %id, error = %e, "device unhealthy; reconnecting");
                    report_state(&shared, &device, "offline").await;
                    break;
                }
            } else {
                tokio::time::sleep_until(next).await;
            }
        }
    }
}

/// Reports every property (after a connection failure: each carries the error).
async fn report_all<D: Driver>(
    shared: &Shared<D>,
    device: &Device,
    props: &[Prop],
    readings: &Mutex<HashMap<String, Reading>>,
) {
    let chosen: Vec<&Prop> = props.iter().collect();
    report_some(shared, device, &chosen, readings).await;
}

/// The twins of `props` (those reported to the cloud) from their latest readings.
fn twins(props: &[&Prop], readings: &Mutex<HashMap<String, Reading>>) -> Vec<v1beta1::Twin> {
    let readings = lock(readings);
    props
        .iter()
        .filter(|p| p.spec.report_to_cloud)
        .filter_map(|p| {
            let r = readings.get(&p.info.name)?;
            let mut metadata = HashMap::new();
            if !p.info.kind.is_empty() {
                metadata.insert("type".to_owned(), p.info.kind.clone());
            }
            if r.timestamp > 0 {
                metadata.insert("timestamp".to_owned(), r.timestamp.to_string());
            }
            if let Some(e) = &r.error {
                metadata.insert("error".to_owned(), e.clone());
            }
            Some(v1beta1::Twin {
                property_name: p.info.name.clone(),
                observed_desired: p.spec.desired.as_ref().map(|d| v1beta1::TwinProperty {
                    value: d.value.clone(),
                    metadata: d
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                }),
                // A failed reading reports no value (the last good one stays at the edge).
                reported: Some(v1beta1::TwinProperty {
                    value: if r.error.is_some() {
                        String::new()
                    } else {
                        r.value.clone().unwrap_or_default()
                    },
                    metadata,
                }),
            })
        })
        .collect()
}

async fn report_some<D: Driver>(
    shared: &Shared<D>,
    device: &Device,
    props: &[&Prop],
    readings: &Mutex<HashMap<String, Reading>>,
) {
    let twins = twins(props, readings);
    if twins.is_empty() {
        return;
    }
    let request = v1beta1::ReportDeviceStatusRequest {
        device_name: device.name().to_owned(),
        device_namespace: device.namespace().to_owned(),
        reported_device: Some(v1beta1::DeviceStatus {
            twins,
            report_to_cloud: true,
            report_cycle: 0,
        }),
    };
    let sent = match edge_client(shared).await {
        Ok(mut c) => c
            .report_device_status(request)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::debug!(device = %device.id(), error = %e, "edgecore did not take the report");
        lost(shared);
    }
}

async fn report_state<D: Driver>(shared: &Shared<D>, device: &Device, state: &str) {
    let request = v1beta1::ReportDeviceStatesRequest {
        device_name: device.name().to_owned(),
        device_namespace: device.namespace().to_owned(),
        state: state.to_owned(),
    };
    let sent = match edge_client(shared).await {
        Ok(mut c) => c
            .report_device_states(request)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::debug!(device = %device.id(), error = %e, "edgecore did not take the state");
        lost(shared);
    }
}

fn lost<D: Driver>(shared: &Shared<D>) {
    *lock(&shared.edge) = None;
    shared.lost.store(true, Ordering::SeqCst);
}

/// `DeviceMapperService`: edgecore hands devices and models over.
struct Service<D: Driver> {
    shared: Arc<Shared<D>>,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

impl<D: Driver> Service<D> {
    /// Keeps a model edgecore handed over (created or updated alike).
    fn put_model(
        &self,
        model: Option<v1beta1::DeviceModel>,
    ) -> Result<v1beta1::DeviceModel, tonic::Status> {
        let model = model.ok_or_else(|| tonic::Status::invalid_argument("model is missing"))?;
        let m = dmi::model_from_dmi(&model);
        lock(&self.shared.models).insert(format!("{}/{}", m.namespace(), m.name()), m);
        Ok(model)
    }
}

fn checked_device(d: Option<v1beta1::Device>) -> Result<Device, tonic::Status> {
    let d = d.ok_or_else(|| tonic::Status::invalid_argument("device is missing"))?;
    if d.name.is_empty() {
        return Err(tonic::Status::invalid_argument("device has no name"));
    }
    Ok(dmi::device_from_dmi(&d))
}

#[tonic::async_trait]
impl<D: Driver> v1beta1::device_mapper_service_server::DeviceMapperService for Service<D> {
    async fn register_device(
        &self,
        request: tonic::Request<v1beta1::RegisterDeviceRequest>,
    ) -> Reply<v1beta1::RegisterDeviceResponse> {
        let device = checked_device(request.into_inner().device)?;
        let response = v1beta1::RegisterDeviceResponse {
            device_name: device.name().to_owned(),
            device_namespace: device.namespace().to_owned(),
        };
        tracing::info!(device = %device.id(), "device registered");
        put_device(&self.shared, device);
        Ok(tonic::Response::new(response))
    }

    async fn remove_device(
        &self,
        request: tonic::Request<v1beta1::RemoveDeviceRequest>,
    ) -> Reply<v1beta1::RemoveDeviceResponse> {
        let r = request.into_inner();
        remove_device(
            &self.shared,
            &format!("{}/{}", r.device_namespace, r.device_name),
        );
        Ok(tonic::Response::new(v1beta1::RemoveDeviceResponse {}))
    }

    async fn update_device(
        &self,
        request: tonic::Request<v1beta1::UpdateDeviceRequest>,
    ) -> Reply<v1beta1::UpdateDeviceResponse> {
        let device = checked_device(request.into_inner().device)?;
        put_device(&self.shared, device);
        Ok(tonic::Response::new(v1beta1::UpdateDeviceResponse {}))
    }

    async fn create_device_model(
        &self,
        request: tonic::Request<v1beta1::CreateDeviceModelRequest>,
    ) -> Reply<v1beta1::CreateDeviceModelResponse> {
        let model = self.put_model(request.into_inner().model)?;
        Ok(tonic::Response::new(v1beta1::CreateDeviceModelResponse {
            device_model_name: model.name,
            device_model_namespace: model.namespace,
        }))
    }

    async fn remove_device_model(
        &self,
        request: tonic::Request<v1beta1::RemoveDeviceModelRequest>,
    ) -> Reply<v1beta1::RemoveDeviceModelResponse> {
        let r = request.into_inner();
        lock(&self.shared.models).remove(&format!("{}/{}", r.model_namespace, r.model_name));
        Ok(tonic::Response::new(v1beta1::RemoveDeviceModelResponse {}))
    }

    async fn update_device_model(
        &self,
        request: tonic::Request<v1beta1::UpdateDeviceModelRequest>,
    ) -> Reply<v1beta1::UpdateDeviceModelResponse> {
        self.put_model(request.into_inner().model)?;
        Ok(tonic::Response::new(v1beta1::UpdateDeviceModelResponse {}))
    }

    async fn get_device(
        &self,
        request: tonic::Request<v1beta1::GetDeviceRequest>,
    ) -> Reply<v1beta1::GetDeviceResponse> {
        let r = request.into_inner();
        let id = format!("{}/{}", r.device_namespace, r.device_name);
        let devices = lock(&self.shared.devices);
        let run = devices
            .get(&id)
            .ok_or_else(|| tonic::Status::not_found(format!("device {id} is not served here")))?;
        let mut device = dmi::device(&run.device);
        let readings = lock(&run.readings);
        device.status = Some(v1beta1::DeviceStatus {
            twins: readings
                .iter()
                .map(|(name, r)| v1beta1::Twin {
                    property_name: name.clone(),
                    observed_desired: None,
                    reported: Some(v1beta1::TwinProperty {
                        value: r.value.clone().unwrap_or_default(),
                        metadata: [("timestamp".to_owned(), r.timestamp.to_string())]
                            .into_iter()
                            .chain(r.error.clone().map(|e| ("error".to_owned(), e)))
                            .collect(),
                    }),
                })
                .collect(),
            report_to_cloud: true,
            report_cycle: 0,
        });
        Ok(tonic::Response::new(v1beta1::GetDeviceResponse {
            device: Some(device),
        }))
    }
}
