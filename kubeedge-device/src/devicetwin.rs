//! edgecore's device module: the device twin at the edge.
//!
//! * **Devices and models** come from the metastore (the cloud syncs each node its Devices and
//!   the DeviceModels they use); a change in a Device's `properties[].desired` sets the twin's
//!   expected value, publishes `…/twin/update/document` and, while desired and reported differ,
//!   `…/twin/update/delta`, and is handed to the device's mapper over DMI (`RegisterDevice`,
//!   `UpdateDevice`, `RemoveDevice`, `CreateDeviceModel`, ...), which writes it to the device.
//! * **Reports** come from mappers over DMI (`ReportDeviceStatus`, `ReportDeviceStates`) or MQTT
//!   (`…/twin/update`, `…/state/update`); `…/twin/get` and `$hw/events/node/<node>/membership/get`
//!   are answered on their `…/result` topics. Bad requests get upstream's error result (400 for
//!   malformed input, 404 for an unknown device).
//! * **Persistence**: each device's twin is kept in the metastore (redb, key
//!   `devicetwin/<ns>/<name>`), so reported values survive restarts.
//! * **To the cloud**: twin reports (`device/<ns>/<name>/twin/edge_updated`) and state reports
//!   (`device/<ns>/<name>/state/update`) go out as messages on the channel given to
//!   [`DeviceTwinModule::start`]; edgecore queues them durably (the latest per device replaces an
//!   older one), so after hours offline the latest values reach the cloud.
//! * **Errors on one device** stay on that device: a protocol no mapper serves, a property the
//!   mapper cannot read (reported with metadata `error`) becomes the device's state (`unknown`,
//!   `unhealthy`) with a reason, carried to the cloud with the state report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubeedge_core::api::devices::{Device, DeviceModel};
use kubeedge_core::api::twin::{
    DeviceStateUpdate, DeviceTwinDocument, DeviceTwinUpdate, ErrorResult, MemberDevice,
    MembershipDetail, MembershipUpdate, MsgTwin, STATES, SUBSCRIPTIONS, Topic, TwinDoc, TwinValue,
    Twins, device_topic, node_topic,
};
use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::store::{BatchOp, FieldSelector, LabelSelector, Store};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::transport::Channel;

use crate::dmi::{self, v1beta1};
use crate::eventbus::EventBus;
use crate::twin::{DeviceTwin, from_reported};
use crate::{Error, now_ms};

/// Store resource of Devices.
pub const DEVICES: &str = "devices.devices.kubeedge.io";
/// Store resource of DeviceModels.
pub const MODELS: &str = "devicemodels.devices.kubeedge.io";
/// Prefix of the twins' records in the metastore.
const TWIN_PREFIX: &str = "devicetwin/";
/// How often undelivered devices are offered to their mappers again.
const RETRY: Duration = Duration::from_secs(5);

/// The device module's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's name.
    pub node: String,
    /// The MQTT broker (`tcp://127.0.0.1:1883`); `None` runs without MQTT (DMI only).
    pub mqtt_url: Option<String>,
    /// The directory of the DMI socket ([`dmi::MANAGER_SOCKET`] inside it; upstream
    /// `/etc/kubeedge/`).
    pub dmi_dir: PathBuf,
    /// The DMI socket's full path, when it is not `dmi.sock` in `dmi_dir` (upstream
    /// `modules.deviceTwin.dmiSockPath`).
    pub dmi_socket: Option<PathBuf>,
    /// How long a device may wait for a mapper of its protocol before it is reported `unknown`.
    /// Default 10 s.
    pub mapper_grace: Duration,
}

impl Config {
    /// Defaults for `node`, DMI under `dmi_dir`, no MQTT.
    pub fn new(node: impl Into<String>, dmi_dir: impl Into<PathBuf>) -> Config {
        Config {
            node: node.into(),
            mqtt_url: None,
            dmi_dir: dmi_dir.into(),
            dmi_socket: None,
            mapper_grace: Duration::from_secs(10),
        }
    }
}

/// The running device module; dropping it stops it.
#[derive(Debug)]
pub struct DeviceTwinModule {
    socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    access: TwinAccess,
}

/// Typed access to a running module's twins from code in the same process: read them, set
/// desired values, report actual ones, follow changes; no MQTT client needed. Clones share the
/// module; calls fail with [`Error::Stopped`] once it has stopped.
#[derive(Debug, Clone)]
pub struct TwinAccess {
    tx: mpsc::Sender<Input>,
    changes: broadcast::Sender<TwinChange>,
}

/// A change of one device's twins, as `…/twin/update/document` announces it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TwinChange {
    /// The device's namespace.
    pub namespace: String,
    /// The device's name.
    pub name: String,
    /// Each changed property: before and after.
    pub document: BTreeMap<String, TwinDoc>,
}

impl TwinAccess {
    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Twins, Error>>) -> ApiCall,
    ) -> Result<Twins, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Api(make(reply)))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// The twins of device `namespace/name`, by property: desired (`expected`) and reported
    /// (`actual`) values with their times and types.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Twins, Error> {
        let id = format!("{namespace}/{name}");
        self.call(|reply| ApiCall::Get { id, reply }).await
    }

    /// Sets desired values of device `namespace/name` (property → value), as an MQTT
    /// `twin/update` with `expected` values does: persisted, the document and the delta
    /// published for mappers, the change reported to the cloud. Returns the changed twins.
    pub async fn set_desired<K: Into<String>, V: Into<String>>(
        &self,
        namespace: &str,
        name: &str,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Twins, Error> {
        self.update(namespace, name, values, true).await
    }

    /// Reports actual values of device `namespace/name` (property → value), as a mapper does.
    /// Returns the changed twins.
    pub async fn report<K: Into<String>, V: Into<String>>(
        &self,
        namespace: &str,
        name: &str,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Twins, Error> {
        self.update(namespace, name, values, false).await
    }

    async fn update<K: Into<String>, V: Into<String>>(
        &self,
        namespace: &str,
        name: &str,
        values: impl IntoIterator<Item = (K, V)>,
        desired: bool,
    ) -> Result<Twins, Error> {
        let now = now_ms();
        let twin = values
            .into_iter()
            .map(|(k, v)| {
                let value = Some(TwinValue::at(v, now));
                let t = if desired {
                    MsgTwin {
                        expected: value,
                        ..MsgTwin::default()
                    }
                } else {
                    MsgTwin {
                        actual: value,
                        ..MsgTwin::default()
                    }
                };
                (k.into(), t)
            })
            .collect();
        let update = DeviceTwinUpdate {
            event_id: event_id(),
            timestamp: now,
            twin,
        };
        let id = format!("{namespace}/{name}");
        self.call(|reply| ApiCall::Update { id, update, reply })
            .await
    }

    /// Every twin change from now on (a receiver that falls more than 256 changes behind misses
    /// the oldest and is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<TwinChange> {
        self.changes.subscribe()
    }
}

/// A call of [`TwinAccess`] for the actor.
#[derive(Debug)]
enum ApiCall {
    Get {
        id: String,
        reply: oneshot::Sender<Result<Twins, Error>>,
    },
    Update {
        id: String,
        update: DeviceTwinUpdate,
        reply: oneshot::Sender<Result<Twins, Error>>,
    },
}

#[derive(Debug)]
enum Input {
    Api(ApiCall),
    Changed,
    Mqtt(String, Vec<u8>),
    Register(
        v1beta1::MapperInfo,
        bool,
        oneshot::Sender<v1beta1::MapperRegisterResponse>,
    ),
    Status(v1beta1::ReportDeviceStatusRequest),
    States(v1beta1::ReportDeviceStatesRequest),
    Delivered {
        id: String,
        version: String,
        result: Result<(), String>,
    },
    Tick,
}

impl DeviceTwinModule {
    /// Starts the module over the edge's `store`: loads the persisted twins, serves DMI on
    /// `<dmi_dir>/dmi.sock`, connects to the broker, and sends cloud-bound messages on `uplink`.
    pub async fn start(
        config: Config,
        store: Store,
        uplink: mpsc::Sender<Message>,
    ) -> Result<DeviceTwinModule, Error> {
        let (tx, rx) = mpsc::channel::<Input>(1024);
        let mut tasks = Vec::new();
        let bus = match &config.mqtt_url {
            Some(url) => {
                let id = format!(
                    "hub-client-sub-{:010}",
                    kubeedge_core::sync::stamp::random_seed() % 10_000_000_000
                );
                let (bus, mut received) = EventBus::connect(url, &id, &SUBSCRIPTIONS)?;
                let to_actor = tx.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some((topic, payload)) = received.recv().await {
                        if to_actor.send(Input::Mqtt(topic, payload)).await.is_err() {
                            return;
                        }
                    }
                }));
                Some(bus)
            }
            None => None,
        };
        let socket = config
            .dmi_socket
            .clone()
            .unwrap_or_else(|| config.dmi_dir.join(dmi::MANAGER_SOCKET));
        let listener = dmi::bind(&socket)?;
        let manager = Manager { tx: tx.clone() };
        tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(
                    v1beta1::device_manager_service_server::DeviceManagerServiceServer::new(
                        manager,
                    ),
                )
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %kubeedge_core::error_chain(&e), "DMI server stopped");
            }
        }));
        tasks.push(tokio::spawn(watch_store(store.clone(), tx.clone())));
        let ticker = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                if ticker.send(Input::Tick).await.is_err() {
                    return;
                }
            }
        }));
        let twins = load_twins(&store)?;
        let (changes, _) = broadcast::channel(256);
        let access = TwinAccess {
            tx: tx.clone(),
            changes: changes.clone(),
        };
        let actor = Actor {
            changes,
            node: config.node.clone(),
            grace: config.mapper_grace,
            store,
            uplink,
            bus,
            tx: tx.clone(),
            devices: BTreeMap::new(),
            models: BTreeMap::new(),
            twins,
            mappers: HashMap::new(),
            delivered: HashMap::new(),
            models_delivered: HashMap::new(),
            inflight: HashSet::new(),
            started: Instant::now(),
        };
        tasks.push(tokio::spawn(actor.run(rx)));
        let _ = tx.send(Input::Changed).await;
        tracing::info!(socket = %socket.display(), mqtt = ?config.mqtt_url, "device twin started");
        Ok(DeviceTwinModule {
            socket,
            tasks,
            access,
        })
    }

    /// The DMI socket mappers register on.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Typed access to the twins.
    pub fn twins(&self) -> TwinAccess {
        self.access.clone()
    }

    /// Stops the module and waits until its tasks have ended: the DMI socket is closed and
    /// removed, the broker connection dropped, the store no longer used by it.
    pub async fn stop(mut self) {
        for t in self.halt() {
            let _ = t.await;
        }
    }

    /// Aborts the module's tasks and removes the DMI socket; returns the tasks, to wait for.
    fn halt(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
        tasks
    }
}

impl Drop for DeviceTwinModule {
    fn drop(&mut self) {
        self.halt();
    }
}

fn load_twins(store: &Store) -> Result<BTreeMap<String, DeviceTwin>, Error> {
    let mut out = BTreeMap::new();
    for (key, bytes) in store.aux_scan(TWIN_PREFIX)? {
        let id = key.trim_start_matches(TWIN_PREFIX).to_owned();
        match serde_json::from_slice::<DeviceTwin>(&bytes) {
            Ok(t) => {
                out.insert(id, t);
            }
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "dropping an unreadable twin record")
            }
        }
    }
    Ok(out)
}

/// Wakes the actor whenever a Device or DeviceModel changes in the store.
async fn watch_store(store: Store, tx: mpsc::Sender<Input>) {
    loop {
        let watch = store.resource_version().and_then(|rv| store.watch(rv));
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "device twin: no store watch; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Ok(ev) if ev.resource == DEVICES || ev.resource == MODELS => {
                    if tx.send(Input::Changed).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // Fell behind the log: start again from now and look at everything.
                    let _ = tx.send(Input::Changed).await;
                    break;
                }
            }
        }
    }
}

struct Mapper {
    address: String,
    channel: Option<Channel>,
}

struct Actor {
    changes: broadcast::Sender<TwinChange>,
    node: String,
    grace: Duration,
    store: Store,
    uplink: mpsc::Sender<Message>,
    bus: Option<EventBus>,
    tx: mpsc::Sender<Input>,
    devices: BTreeMap<String, Device>,
    models: BTreeMap<String, DeviceModel>,
    twins: BTreeMap<String, DeviceTwin>,
    /// Registered mappers by protocol.
    mappers: HashMap<String, Mapper>,
    /// Device id → the spec its mapper has.
    delivered: HashMap<String, String>,
    /// (protocol, model id) → the model spec that mapper has.
    models_delivered: HashMap<(String, String), String>,
    inflight: HashSet<String>,
    started: Instant,
}

/// What a mapper must be told again when it changes: the spec (status-only updates, such as the
/// cloud writing reported values, are not the mapper's business).
fn spec_key<T: serde::Serialize>(spec: &T) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

fn event_id() -> String {
    format!("{:016x}", kubeedge_core::sync::stamp::random_seed())
}

fn rfc3339_now() -> String {
    kubeedge_core::store::rfc3339(std::time::SystemTime::now())
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Api(ApiCall::Get { id, reply }) => {
                    let got = if self.devices.contains_key(&id) {
                        Ok(self
                            .twins
                            .get(&id)
                            .map(DeviceTwin::plain)
                            .unwrap_or_default())
                    } else {
                        Err(self.not_here(&id))
                    };
                    let _ = reply.send(got);
                }
                Input::Api(ApiCall::Update { id, update, reply }) => {
                    let done = self.update_twin(&id, &update).await;
                    let _ = reply.send(done.map_err(|(code, reason)| Error::Twin { code, reason }));
                }
                Input::Changed => self.reconcile().await,
                Input::Mqtt(topic, payload) => self.mqtt(&topic, &payload).await,
                Input::Register(info, with_data, reply) => {
                    let _ = reply.send(self.register(info, with_data));
                    self.deliver();
                }
                Input::Status(req) => self.status(req).await,
                Input::States(req) => {
                    let id = format!("{}/{}", req.device_namespace, req.device_name);
                    self.set_state(&id, &req.state, None).await;
                }
                Input::Delivered {
                    id,
                    version,
                    result,
                } => {
                    self.inflight.remove(&id);
                    match result {
                        Ok(()) => {
                            self.delivered.insert(id.clone(), version);
                            let waiting = self.twins.get(&id).is_some_and(|t| t.state == "unknown");
                            if waiting {
                                self.set_state(&id, "online", Some(String::new())).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(device = %id, error = %e, "cannot hand the device to its mapper; retrying");
                            if let Some(p) =
                                self.devices.get(&id).map(|d| d.protocol_name().to_owned())
                                && let Some(m) = self.mappers.get_mut(&p)
                            {
                                m.channel = None;
                            }
                        }
                    }
                }
                Input::Tick => {
                    self.check_mappers().await;
                    self.deliver();
                }
            }
        }
    }

    fn publish<T: serde::Serialize>(&self, topic: &str, value: &T) {
        if let Some(bus) = &self.bus {
            bus.publish_json(topic, value);
        }
    }

    fn persist(&self, id: &str) {
        let op = match self.twins.get(id) {
            Some(t) => BatchOp::SetAux {
                key: format!("{TWIN_PREFIX}{id}"),
                value: serde_json::to_vec(t).unwrap_or_default(),
            },
            None => BatchOp::RemoveAux {
                key: format!("{TWIN_PREFIX}{id}"),
            },
        };
        if let Err(e) = self.store.batch(vec![op]) {
            tracing::warn!(device = %id, error = %e, "cannot persist the device twin");
        }
    }

    async fn send_up(&self, resource: String, content: Value) {
        let msg = Message::new(
            "",
            0,
            Route::new(
                names::TWIN_MODULE,
                names::RESOURCE_GROUP,
                Operation::Update,
                resource,
            ),
        )
        .with_content(content);
        if self.uplink.send(msg).await.is_err() {
            tracing::warn!("device twin: the link to the cloud is gone");
        }
    }

    async fn report_twin(&self, id: &str) {
        if let Some(t) = self.twins.get(id) {
            self.send_up(
                format!("device/{id}/twin/edge_updated"),
                json!({"event_id": event_id(), "timestamp": now_ms(), "twin": t.plain()}),
            )
            .await;
        }
    }

    async fn report_state(&self, id: &str) {
        let Some(t) = self.twins.get(id) else { return };
        let name = id.split_once('/').map_or(id, |(_, n)| n);
        let mut device = json!({"name": name, "state": t.state, "lastOnlineTime": t.last_online});
        if !t.reason.is_empty() {
            device["reason"] = json!(t.reason);
        }
        self.send_up(
            format!("device/{id}/state/update"),
            json!({"event_id": event_id(), "timestamp": now_ms(), "device": device}),
        )
        .await;
    }

    /// Publishes the document of a change and, while desired and reported differ, the delta.
    fn announce(&self, id: &str, doc: BTreeMap<String, TwinDoc>) {
        let Some((ns, name)) = id.split_once('/') else {
            return;
        };
        let now = now_ms();
        if !doc.is_empty() {
            let _ = self.changes.send(TwinChange {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                document: doc.clone(),
            });
            self.publish(
                &device_topic(ns, name, "twin/update/document"),
                &DeviceTwinDocument {
                    event_id: event_id(),
                    timestamp: now,
                    twin: doc,
                },
            );
        }
        if let Some(delta) = self
            .twins
            .get(id)
            .and_then(|t| t.delta_message(&event_id(), now))
        {
            self.publish(&device_topic(ns, name, "twin/update/delta"), &delta);
        }
    }

    fn member(&self, id: &str, d: &Device) -> MemberDevice {
        let t = self.twins.get(id);
        MemberDevice {
            id: id.to_owned(),
            name: d.name().to_owned(),
            description: d.metadata["labels"]["description"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            state: t.map(|t| t.state.clone()).unwrap_or_default(),
            twin: t.map(DeviceTwin::plain).unwrap_or_default(),
            ..MemberDevice::default()
        }
    }

    async fn reconcile(&mut self) {
        let list = |resource: &str| {
            self.store
                .list(
                    resource,
                    None,
                    &LabelSelector::default(),
                    &FieldSelector::default(),
                )
                .map(|(items, _)| items)
        };
        let (devices, models) = match (list(DEVICES), list(MODELS)) {
            (Ok(d), Ok(m)) => (d, m),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "device twin: cannot read devices");
                return;
            }
        };
        self.models = models
            .into_iter()
            .filter_map(|v| match serde_json::from_value::<DeviceModel>(v) {
                Ok(m) => Some((format!("{}/{}", m.namespace(), m.name()), m)),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a malformed DeviceModel");
                    None
                }
            })
            .collect();
        let mut current = BTreeMap::new();
        for v in devices {
            match serde_json::from_value::<Device>(v) {
                Ok(d) if d.spec.node_name.is_empty() || d.spec.node_name == self.node => {
                    current.insert(d.id(), d);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed Device"),
            }
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|id| !current.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(d) = self.devices.remove(&id) {
                removed.push(self.member(&id, &d));
                self.twins.remove(&id);
                self.persist(&id);
                self.delivered.remove(&id);
                self.remove_from_mapper(&d);
            }
        }
        // Twins whose device went while edgecore was down.
        let stale: Vec<String> = self
            .twins
            .keys()
            .filter(|id| !current.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            self.twins.remove(&id);
            self.persist(&id);
        }
        let now = now_ms();
        for (id, d) in current {
            let changed = self.devices.get(&id).is_none_or(|old| old.spec != d.spec);
            if !changed {
                continue;
            }
            let is_new = !self.devices.contains_key(&id);
            let model = d
                .spec
                .device_model_ref
                .as_ref()
                .and_then(|m| self.models.get(&format!("{}/{}", d.namespace(), m.name)));
            let twin = self.twins.entry(id.clone()).or_default();
            let doc = twin.set_desired(&d, model, now);
            if !doc.is_empty() || is_new {
                self.persist(&id);
            }
            self.devices.insert(id.clone(), d);
            self.announce(&id, doc);
            if is_new && let Some(d) = self.devices.get(&id) {
                added.push(self.member(&id, d));
            }
        }
        if !added.is_empty() || !removed.is_empty() {
            self.publish(
                &node_topic(&self.node, "membership/updated"),
                &MembershipUpdate {
                    event_id: event_id(),
                    timestamp: now,
                    added_devices: added,
                    removed_devices: removed,
                },
            );
        }
        self.deliver();
    }

    /// A mapper registered: remembers it; with `with_data`, answers its protocol's devices and
    /// models (which it then has).
    fn register(
        &mut self,
        info: v1beta1::MapperInfo,
        with_data: bool,
    ) -> v1beta1::MapperRegisterResponse {
        let address = String::from_utf8_lossy(&info.address).into_owned();
        tracing::info!(mapper = %info.name, protocol = %info.protocol, %address, "mapper registered");
        let protocol = info.protocol.clone();
        self.mappers.insert(
            protocol.clone(),
            Mapper {
                address,
                channel: None,
            },
        );
        let mine: Vec<(String, Device)> = self
            .devices
            .iter()
            .filter(|(_, d)| d.protocol_name() == protocol)
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        self.models_delivered.retain(|(p, _), _| *p != protocol);
        let mut response = v1beta1::MapperRegisterResponse::default();
        for (id, d) in &mine {
            if with_data {
                self.delivered.insert(id.clone(), spec_key(&d.spec));
                response.device_list.push(dmi::device(d));
            } else {
                self.delivered.remove(id);
            }
        }
        if with_data {
            let used: HashSet<String> = mine
                .iter()
                .filter_map(|(_, d)| {
                    d.spec
                        .device_model_ref
                        .as_ref()
                        .map(|m| format!("{}/{}", d.namespace(), m.name))
                })
                .collect();
            for (mid, m) in &self.models {
                if used.contains(mid) || m.spec.protocol == protocol {
                    self.models_delivered
                        .insert((protocol.clone(), mid.clone()), spec_key(&m.spec));
                    response.model_list.push(dmi::model(m));
                }
            }
        }
        response
    }

    /// Hands each device its mapper does not have yet (or has an older version of) to it.
    fn deliver(&mut self) {
        let todo: Vec<(String, Device)> = self
            .devices
            .iter()
            .filter(|(id, d)| {
                !self.inflight.contains(*id)
                    && self.delivered.get(*id) != Some(&spec_key(&d.spec))
                    && self.mappers.contains_key(d.protocol_name())
            })
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        for (id, d) in todo {
            let protocol = d.protocol_name().to_owned();
            let model = d.spec.device_model_ref.as_ref().and_then(|m| {
                let mid = format!("{}/{}", d.namespace(), m.name);
                let mv = self.models.get(&mid)?;
                let known = self.models_delivered.get(&(protocol.clone(), mid.clone()));
                (known != Some(&spec_key(&mv.spec))).then(|| (mid, known.is_some(), mv.clone()))
            });
            if let Some((mid, _, m)) = &model {
                self.models_delivered
                    .insert((protocol.clone(), mid.clone()), spec_key(&m.spec));
            }
            let Some(mapper) = self.mappers.get(&protocol) else {
                continue;
            };
            let address = mapper.address.clone();
            let cached = mapper.channel.clone();
            let first = !self.delivered.contains_key(&id);
            let tx = self.tx.clone();
            let v = spec_key(&d.spec);
            self.inflight.insert(id.clone());
            tokio::spawn(async move {
                let result = async {
                    let channel = match cached {
                        Some(c) => c,
                        None => dmi::connect(&address).await.map_err(|e| e.to_string())?,
                    };
                    let mut client =
                        v1beta1::device_mapper_service_client::DeviceMapperServiceClient::new(
                            channel,
                        );
                    if let Some((_, known, m)) = model {
                        let model = Some(dmi::model(&m));
                        let r = if known {
                            client
                                .update_device_model(v1beta1::UpdateDeviceModelRequest { model })
                                .await
                                .map(|_| ())
                        } else {
                            client
                                .create_device_model(v1beta1::CreateDeviceModelRequest { model })
                                .await
                                .map(|_| ())
                        };
                        r.map_err(|s| format!("model: {}", s.message()))?;
                    }
                    let device = Some(dmi::device(&d));
                    let r = if first {
                        client
                            .register_device(v1beta1::RegisterDeviceRequest { device })
                            .await
                            .map(|_| ())
                    } else {
                        client
                            .update_device(v1beta1::UpdateDeviceRequest { device })
                            .await
                            .map(|_| ())
                    };
                    r.map_err(|s| s.message().to_owned())
                }
                .await;
                let _ = tx
                    .send(Input::Delivered {
                        id,
                        version: v,
                        result,
                    })
                    .await;
            });
        }
    }

    fn remove_from_mapper(&self, d: &Device) {
        let Some(mapper) = self.mappers.get(d.protocol_name()) else {
            return;
        };
        let address = mapper.address.clone();
        let (name, namespace) = (d.name().to_owned(), d.namespace().to_owned());
        tokio::spawn(async move {
            let Ok(channel) = dmi::connect(&address).await else {
                return;
            };
            let mut client =
                v1beta1::device_mapper_service_client::DeviceMapperServiceClient::new(channel);
            if let Err(e) = client
                .remove_device(v1beta1::RemoveDeviceRequest {
                    device_name: name.clone(),
                    device_namespace: namespace.clone(),
                })
                .await
            {
                tracing::warn!(device = %format!("{namespace}/{name}"), error = %e.message(), "mapper did not remove the device");
            }
        });
    }

    /// Devices waiting too long for a mapper of their protocol are reported `unknown`, with why.
    async fn check_mappers(&mut self) {
        if self.started.elapsed() < self.grace {
            return;
        }
        let waiting: Vec<(String, String)> = self
            .devices
            .iter()
            .filter(|(_, d)| !self.mappers.contains_key(d.protocol_name()))
            .map(|(id, d)| {
                let reason = if d.protocol_name().is_empty() {
                    "the device names no protocol (spec.protocol.protocolName)".to_owned()
                } else {
                    format!(
                        "no mapper for protocol {:?} has registered with this node",
                        d.protocol_name()
                    )
                };
                (id.clone(), reason)
            })
            .collect();
        for (id, reason) in waiting {
            let same = self
                .twins
                .get(&id)
                .is_some_and(|t| t.state == "unknown" && t.reason == reason);
            if !same {
                self.set_state(&id, "unknown", Some(reason)).await;
            }
        }
    }

    /// Sets a device's state (and reason, when given), persists and reports it.
    async fn set_state(&mut self, id: &str, state: &str, reason: Option<String>) {
        let Some(t) = self.twins.get_mut(id) else {
            tracing::warn!(device = %id, "state for an unknown device");
            return;
        };
        let state = state.to_ascii_lowercase();
        if matches!(state.as_str(), "online" | "ok") {
            t.last_online = rfc3339_now();
            if reason.is_none() && t.state != state {
                t.reason.clear();
            }
        }
        let changed = t.state != state || reason.as_ref().is_some_and(|r| *r != t.reason);
        t.state = state;
        if let Some(r) = reason {
            t.reason = r;
        }
        if changed {
            tracing::info!(device = %id, state = %t.state, reason = %t.reason, "device state");
        }
        self.persist(id);
        self.report_state(id).await;
    }

    async fn status(&mut self, req: v1beta1::ReportDeviceStatusRequest) {
        let id = format!("{}/{}", req.device_namespace, req.device_name);
        if !self.devices.contains_key(&id) {
            tracing::warn!(device = %id, "status report for a device this node does not have");
            return;
        }
        let twins = req.reported_device.map(|d| d.twins).unwrap_or_default();
        let errors: Vec<String> = twins
            .iter()
            .filter_map(|t| {
                let e = t.reported.as_ref()?.metadata.get("error")?;
                Some(format!("{}: {e}", t.property_name))
            })
            .collect();
        let update = from_reported(&twins, &event_id(), now_ms());
        let twin = self.twins.entry(id.clone()).or_default();
        match twin.apply(&update, now_ms()) {
            Ok(doc) => {
                self.persist(&id);
                self.announce(&id, doc);
                self.report_twin(&id).await;
            }
            Err(e) => tracing::warn!(device = %id, error = %e, "mapper reported an invalid twin"),
        }
        let reason = errors.join("; ");
        let current = self
            .twins
            .get(&id)
            .map(|t| (t.state.clone(), t.reason.clone()));
        if let Some((state, old_reason)) = current {
            if !reason.is_empty() {
                // An unreachable device stays `offline` (its mapper says so); otherwise a property
                // that cannot be read makes the device unhealthy.
                let next = if state == "offline" {
                    "offline"
                } else {
                    "unhealthy"
                };
                if old_reason != reason || state != next {
                    self.set_state(&id, next, Some(reason)).await;
                }
            } else if !old_reason.is_empty() && matches!(state.as_str(), "unhealthy" | "offline") {
                self.set_state(&id, "online", Some(String::new())).await;
            }
        }
    }

    /// The error for a device this node does not have.
    fn not_here(&self, id: &str) -> Error {
        Error::Twin {
            code: 404,
            reason: format!("device {id} is not on node {}", self.node),
        }
    }

    /// Applies a twin update (MQTT `twin/update` or [`TwinAccess`]): persisted, announced,
    /// reported to the cloud. The changed twins, or upstream's error code and reason.
    async fn update_twin(
        &mut self,
        id: &str,
        update: &DeviceTwinUpdate,
    ) -> Result<Twins, (u16, String)> {
        if !self.devices.contains_key(id) {
            return Err((404, format!("device {id} is not on node {}", self.node)));
        }
        let twin = self.twins.entry(id.to_owned()).or_default();
        let doc = twin
            .apply(update, now_ms())
            .map_err(|e| (e.code, e.reason))?;
        let changed: Twins = update
            .twin
            .keys()
            .filter_map(|k| Some((k.clone(), twin.twins.get(k)?.without_versions())))
            .collect();
        self.persist(id);
        self.announce(id, doc);
        self.report_twin(id).await;
        Ok(changed)
    }

    async fn mqtt(&mut self, topic: &str, payload: &[u8]) {
        let Some(parsed) = Topic::parse(topic) else {
            tracing::debug!(topic, "MQTT message outside the twin's topics");
            return;
        };
        match parsed {
            Topic::Node { node, action } => {
                if node == self.node && action == "membership/get" {
                    let devices = self
                        .devices
                        .iter()
                        .map(|(id, d)| self.member(id, d))
                        .collect();
                    self.publish(
                        &node_topic(&self.node, "membership/get/result"),
                        &MembershipDetail {
                            event_id: event_id_of(payload),
                            timestamp: now_ms(),
                            devices,
                        },
                    );
                }
            }
            Topic::Device {
                namespace,
                name,
                action,
            } => {
                let id = format!("{namespace}/{name}");
                let reply = |suffix: &str| device_topic(&namespace, &name, suffix);
                let error = |code: u16, reason: String| ErrorResult {
                    event_id: event_id_of(payload),
                    timestamp: now_ms(),
                    code,
                    reason,
                };
                let known = self.devices.contains_key(&id);
                match action.as_str() {
                    "twin/update" => {
                        let update: DeviceTwinUpdate = match serde_json::from_slice(payload) {
                            Ok(u) => u,
                            Err(e) => {
                                self.publish(
                                    &reply("twin/update/result"),
                                    &error(400, format!("malformed twin update: {e}")),
                                );
                                return;
                            }
                        };
                        match self.update_twin(&id, &update).await {
                            Ok(twin) => {
                                let result = DeviceTwinUpdate {
                                    event_id: update.event_id.clone(),
                                    timestamp: now_ms(),
                                    twin,
                                };
                                self.publish(&reply("twin/update/result"), &result);
                            }
                            Err((code, reason)) => {
                                self.publish(&reply("twin/update/result"), &error(code, reason))
                            }
                        }
                    }
                    "twin/get" => {
                        if !known {
                            self.publish(
                                &reply("twin/get/result"),
                                &error(404, format!("device {id} is not on node {}", self.node)),
                            );
                            return;
                        }
                        let result = DeviceTwinUpdate {
                            event_id: event_id_of(payload),
                            timestamp: now_ms(),
                            twin: self
                                .twins
                                .get(&id)
                                .map(DeviceTwin::plain)
                                .unwrap_or_default(),
                        };
                        self.publish(&reply("twin/get/result"), &result);
                    }
                    "state/update" => {
                        let update: DeviceStateUpdate = match serde_json::from_slice(payload) {
                            Ok(u) => u,
                            Err(e) => {
                                self.publish(
                                    &reply("state/update/result"),
                                    &error(400, format!("malformed state update: {e}")),
                                );
                                return;
                            }
                        };
                        let state = update.state.to_ascii_lowercase();
                        if !STATES.contains(&state.as_str()) {
                            self.publish(
                                &reply("state/update/result"),
                                &error(
                                    400,
                                    format!("unknown state {:?}; one of {STATES:?}", update.state),
                                ),
                            );
                            return;
                        }
                        if !known {
                            self.publish(
                                &reply("state/update/result"),
                                &error(404, format!("device {id} is not on node {}", self.node)),
                            );
                            return;
                        }
                        self.set_state(&id, &state, None).await;
                        let last = self
                            .twins
                            .get(&id)
                            .map(|t| t.last_online.clone())
                            .unwrap_or_default();
                        self.publish(
                            &reply("state/update/result"),
                            &json!({"event_id": update.event_id, "timestamp": now_ms(),
                                    "device": {"name": name, "state": state, "lastOnlineTime": last}}),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `event_id` of a JSON request ("" when absent or not JSON).
fn event_id_of(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `DeviceManagerService` for mappers: hands requests to the actor.
struct Manager {
    tx: mpsc::Sender<Input>,
}

fn unavailable<T>(_: T) -> tonic::Status {
    tonic::Status::unavailable("edgecore's device twin is stopping")
}

#[tonic::async_trait]
impl v1beta1::device_manager_service_server::DeviceManagerService for Manager {
    async fn mapper_register(
        &self,
        request: tonic::Request<v1beta1::MapperRegisterRequest>,
    ) -> Result<tonic::Response<v1beta1::MapperRegisterResponse>, tonic::Status> {
        let req = request.into_inner();
        let Some(mapper) = req.mapper else {
            return Err(tonic::Status::invalid_argument("mapper info is missing"));
        };
        if mapper.protocol.is_empty() || mapper.address.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "a mapper needs a protocol and an address",
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Register(mapper, req.with_data, reply))
            .await
            .map_err(unavailable)?;
        answer.await.map(tonic::Response::new).map_err(unavailable)
    }

    async fn report_device_status(
        &self,
        request: tonic::Request<v1beta1::ReportDeviceStatusRequest>,
    ) -> Result<tonic::Response<v1beta1::ReportDeviceStatusResponse>, tonic::Status> {
        self.tx
            .send(Input::Status(request.into_inner()))
            .await
            .map_err(unavailable)?;
        Ok(tonic::Response::new(v1beta1::ReportDeviceStatusResponse {}))
    }

    async fn report_device_states(
        &self,
        request: tonic::Request<v1beta1::ReportDeviceStatesRequest>,
    ) -> Result<tonic::Response<v1beta1::ReportDeviceStatesResponse>, tonic::Status> {
        let req = request.into_inner();
        if !STATES.contains(&req.state.to_ascii_lowercase().as_str()) {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown state {:?}; one of {STATES:?}",
                req.state
            )));
        }
        self.tx
            .send(Input::States(req))
            .await
            .map_err(unavailable)?;
        Ok(tonic::Response::new(v1beta1::ReportDeviceStatesResponse {}))
    }
}
