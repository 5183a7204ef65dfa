//! Pod lifecycle: a controller over the local store, as the kubelet is over an API server. It runs
//! the pods bound to this node on a [`Runtime`], restarts containers by their pod's restart policy
//! with crash-loop backoff, and reports pod status (as `podpatch`, through the durable queue).
//!
//! * Start: a sandbox per pod, then its containers. Images are never pulled: a missing image
//!   leaves the container waiting with reason `ErrImageNeverPull`.
//! * Environment: `value`, and `valueFrom` ConfigMap and Secret keys from the local store; a missing
//!   ConfigMap, Secret or key leaves the container waiting with `CreateContainerConfigError`.
//! * Volumes: `configMap` and `secret` (files written under the data directory), `emptyDir`,
//!   `hostPath`.
//! * Restarts: `Always`, `OnFailure`, `Never`; the delay doubles from 10 s up to 5 min and resets
//!   once a container has run for 10 min.
//! * Deletion: a pod marked for deletion has its containers stopped with its
//!   `terminationGracePeriodSeconds` (SIGTERM, then SIGKILL), its sandbox removed, and the
//!   deletion confirmed to the cloud. Sandboxes of pods the store no longer has are removed.
//! * Restarts of edgecore: sandboxes carry the pod's UID in a label and are adopted again, so
//!   running containers are kept, and dead ones restarted at once, from the store alone (offline
//!   too). The status goes into the local store as well as to the cloud, so the metaserver shows
//!   the node's own view at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeedge_core::message::Operation;
use kubeedge_core::store::{FieldSelector, LabelSelector, Store, rfc3339};
use serde_json::{Value, json};

use crate::edgehub::{EdgeHub, status_message};
use crate::runtime::{ContainerSpec, ContainerState, Mount, Runtime, SandboxSpec};

/// Sandbox label carrying the pod's UID.
pub const UID_LABEL: &str = "kubeedge.io/pod-uid";
/// First crash-loop delay.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest crash-loop delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its backoff afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often pods are checked (a change in the store wakes the controller at once).
const RESYNC: Duration = Duration::from_secs(1);

/// Pod lifecycle settings.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// This node's name.
    pub node: String,
    /// The node's address (`status.hostIP`).
    pub node_ip: String,
    /// Where container logs and volume files go.
    pub data_dir: PathBuf,
    /// First crash-loop delay (default [`BACKOFF_START`]).
    pub backoff_start: Duration,
}

#[derive(Debug, Default)]
struct Ctr {
    id: Option<String>,
    attempt: u32,
    restarts: u32,
    next_start: Option<Instant>,
    backoff: Duration,
    state: Option<ContainerState>,
    last_terminated: Option<ContainerState>,
    waiting: Option<(String, String)>,
    liveness: Probing,
    readiness: Probing,
    /// Why the last run was killed (a failed liveness probe).
    killed_because: Option<String>,
}

/// One probe's progress on the current run of a container.
#[derive(Debug, Default)]
struct Probing {
    next: Option<Instant>,
    failures: u32,
    successes: u32,
    ok: bool,
    last_error: Option<String>,
}

impl Probing {
    /// Runs due probes' bookkeeping: returns whether a probe is due now.
    fn due(&mut self, probe: &Value, started_at: i64) -> bool {
        let now = Instant::now();
        let next = *self.next.get_or_insert_with(|| {
            let delay = Duration::from_secs(probe["initialDelaySeconds"].as_u64().unwrap_or(0));
            let started = UNIX_EPOCH + Duration::from_nanos(u64::try_from(started_at).unwrap_or(0));
            let waited = SystemTime::now()
                .duration_since(started)
                .unwrap_or_default();
            now + delay.saturating_sub(waited)
        });
        now >= next
    }

    /// Records a result; returns whether the probe's verdict is now "failed".
    fn record(&mut self, probe: &Value, result: Result<(), String>) -> bool {
        let period = Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10).max(1));
        self.next = Some(Instant::now() + period);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= probe["successThreshold"].as_u64().unwrap_or(1).max(1) as u32 {
                    self.ok = true;
                    self.last_error = None;
                }
                false
            }
            Err(e) => {
                self.successes = 0;
                self.failures += 1;
                self.last_error = Some(e);
                if self.failures >= probe["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32 {
                    self.ok = false;
                    return true;
                }
                false
            }
        }
    }
}

#[derive(Debug, Default)]
struct PodRun {
    sandbox: Option<String>,
    ip: Option<String>,
    containers: BTreeMap<String, Ctr>,
    start_time: Option<String>,
    reported: Value,
    waiting: Option<(String, String)>,
    confirmed_delete: bool,
}

/// The pod controller. See the module docs.
pub struct PodManager<R: Runtime> {
    rt: R,
    store: Store,
    hub: EdgeHub,
    config: PodConfig,
    pods: HashMap<String, PodRun>,
    /// The runtime's name, the scheme of `containerID`s (`containerd`, `process`).
    scheme: String,
}

fn nanos_to_rfc3339(ns: i64) -> String {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(0);
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or("").to_owned()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

impl<R: Runtime> PodManager<R> {
    /// A controller for the pods of `config.node` in `store`, reporting through `hub`.
    pub fn new(rt: R, store: Store, hub: EdgeHub, config: PodConfig) -> Self {
        PodManager {
            rt,
            store,
            hub,
            config,
            pods: HashMap::new(),
            scheme: "containerd".into(),
        }
    }

    /// Runs forever.
    pub async fn run(mut self) {
        if let Ok(version) = self.rt.version().await
            && let Some((name, _)) = version.split_once("://")
        {
            self.scheme = name.to_owned();
        }
        self.adopt().await;
        self.sweep_pod_dirs();
        let mut watch = match self
            .store
            .resource_version()
            .and_then(|rv| self.store.watch(rv))
        {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "pod controller: no store watch, polling only");
                None
            }
        };
        loop {
            self.reconcile().await;
            let wake = async {
                match &mut watch {
                    Some(w) => {
                        let _ = w.next().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake => {}
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// Takes back the sandboxes an earlier run left (labelled with their pod's UID).
    async fn adopt(&mut self) {
        let Ok(sandboxes) = self.rt.list_sandboxes().await else {
            return;
        };
        for s in sandboxes {
            let Some(uid) = s.labels.get(UID_LABEL).cloned() else {
                continue;
            };
            if !s.ready {
                let _ = self.rt.remove_sandbox(&s.id).await;
                continue;
            }
            let mut run = PodRun {
                ip: self.rt.sandbox_ip(&s.id).await.ok().flatten(),
                sandbox: Some(s.id.clone()),
                ..PodRun::default()
            };
            for c in self.rt.list_containers(&s.id).await.unwrap_or_default() {
                let slot = run.containers.entry(c.name.clone()).or_default();
                if c.attempt >= slot.attempt {
                    // One that ended while nobody watched restarts at once (if its policy wants
                    // it), as the kubelet does on its first restart; backoff starts after that.
                    slot.next_start =
                        matches!(c.state, ContainerState::Exited { .. }).then(Instant::now);
                    slot.id = Some(c.id);
                    slot.attempt = c.attempt;
                    slot.restarts = c.attempt;
                    slot.state = Some(c.state);
                }
            }
            let exited: Vec<&str> = run
                .containers
                .iter()
                .filter(|(_, c)| matches!(c.state, Some(ContainerState::Exited { .. })))
                .map(|(name, _)| name.as_str())
                .collect();
            if exited.is_empty() {
                tracing::info!(uid, sandbox = %s.id, "adopted a running pod");
            } else {
                tracing::info!(uid, sandbox = %s.id, ?exited, "adopted a pod whose containers ended while edgecore was down");
            }
            self.pods.insert(uid, run);
        }
    }

    fn bound_pods(&self) -> Vec<Value> {
        let fields = match FieldSelector::parse(&format!("spec.nodeName={}", self.config.node)) {
            Ok(f) => f,
            Err(_) => return Vec::new(),
        };
        self.store
            .list("pods", None, &LabelSelector::default(), &fields)
            .map(|(items, _)| items)
            .unwrap_or_default()
    }

    async fn reconcile(&mut self) {
        let pods = self.bound_pods();
        let mut seen = HashSet::new();
        for pod in &pods {
            let uid = uid_of(pod);
            if uid.is_empty() {
                continue;
            }
            seen.insert(uid.clone());
            if pod["metadata"]["deletionTimestamp"].is_string() {
                self.terminate(pod, &uid).await;
            } else {
                self.sync_pod(pod, &uid).await;
            }
        }
        // Pods the store no longer has: nothing of them may keep running.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(run) = self.pods.remove(&uid) {
                self.teardown(&run, Duration::from_secs(2)).await;
                self.remove_pod_dir(&uid);
                tracing::info!(uid, "removed a pod the node no longer has");
            }
        }
    }

    /// Removes a pod's directory (its logs and volumes) once the pod is gone, as the kubelet does.
    fn remove_pod_dir(&self, uid: &str) {
        let dir = self.config.data_dir.join("pods").join(uid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a pod's directory")
            }
        }
    }

    /// Removes the directories of pods neither running here nor in the store (left by pods that
    /// went while edgecore was down).
    fn sweep_pod_dirs(&self) {
        let mut known: HashSet<String> = self.pods.keys().cloned().collect();
        known.extend(self.bound_pods().iter().map(uid_of));
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("pods")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                self.remove_pod_dir(&name);
            }
        }
    }

    async fn teardown(&self, run: &PodRun, grace: Duration) {
        for c in run.containers.values() {
            if let Some(id) = &c.id {
                let _ = self.rt.stop_container(id, grace).await;
                let _ = self.rt.remove_container(id).await;
            }
        }
        if let Some(sid) = &run.sandbox
            && let Err(e) = self.rt.remove_sandbox(sid).await
        {
            tracing::warn!(sandbox = %sid, error = %e, "removing a sandbox");
        }
    }

    async fn terminate(&mut self, pod: &Value, uid: &str) {
        let grace = Duration::from_secs(
            pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        );
        let Some(run) = self.pods.get_mut(uid) else {
            // Never ran here (or already torn down): confirm once.
            let mut run = PodRun::default();
            self.confirm_delete(pod, uid, &mut run).await;
            self.pods.insert(uid.to_owned(), run);
            return;
        };
        if run.confirmed_delete {
            return;
        }
        let mut run = std::mem::take(run);
        self.teardown(&run, grace).await;
        run.sandbox = None;
        run.containers.clear();
        self.confirm_delete(pod, uid, &mut run).await;
        self.pods.insert(uid.to_owned(), run);
    }

    async fn confirm_delete(&self, pod: &Value, uid: &str, run: &mut PodRun) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let msg = status_message(Operation::Delete, format!("{ns}/pod/{name}"), json!(uid));
        match self.hub.report(msg).await {
            Ok(()) => run.confirmed_delete = true,
            Err(e) => tracing::warn!(pod = name, error = %e, "queueing a pod deletion"),
        }
    }

    fn lookup(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.store.get(kind, Some(ns), name).ok()
    }

    /// The container's environment, or why it cannot be built.
    fn env(&self, ns: &str, c: &Value) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for from in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = str_of(from, "prefix");
            for (kind, field, label, decode) in [
                ("configmaps", "configMapRef", "configmap", false),
                ("secrets", "secretRef", "secret", true),
            ] {
                let name = str_of(&from[field], "name");
                if name.is_empty() {
                    continue;
                }
                let Some(obj) = self.lookup(kind, ns, name) else {
                    if from[field]["optional"].as_bool() == Some(true) {
                        continue;
                    }
                    return Err(format!("{label} \"{name}\" not found"));
                };
                for (k, v) in obj["data"].as_object().into_iter().flatten() {
                    out.push((format!("{prefix}{k}"), value(v, decode)));
                }
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = str_of(e, "name").to_owned();
            if let Some(v) = e["value"].as_str() {
                out.push((name, v.to_owned()));
                continue;
            }
            let from = &e["valueFrom"];
            for (kind, field, label, decode) in [
                ("configmaps", "configMapKeyRef", "configmap", false),
                ("secrets", "secretKeyRef", "secret", true),
            ] {
                let r = &from[field];
                if !r.is_object() {
                    continue;
                }
                let (obj_name, key) = (str_of(r, "name"), str_of(r, "key"));
                let optional = r["optional"].as_bool() == Some(true);
                match self.lookup(kind, ns, obj_name) {
                    None if optional => {}
                    None => return Err(format!("{label} \"{obj_name}\" not found")),
                    Some(obj) => match obj["data"].get(key) {
                        Some(v) => out.push((name.clone(), value(v, decode))),
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {key} in {label} {ns}/{obj_name}"
                            ));
                        }
                    },
                }
            }
        }
        Ok(out)
    }

    /// Prepares the pod's volumes; returns volume name → host path.
    fn volumes(&self, pod: &Value, uid: &str) -> Result<HashMap<String, (PathBuf, bool)>, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let root = self.config.data_dir.join("pods").join(uid).join("volumes");
        let mut out = HashMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = str_of(v, "name").to_owned();
            let dir = root.join(&name);
            if let Some(path) = v["hostPath"]["path"].as_str() {
                out.insert(name, (PathBuf::from(path), false));
                continue;
            }
            let source = if v["configMap"].is_object() {
                Some((
                    "configmaps",
                    str_of(&v["configMap"], "name"),
                    "configmap",
                    false,
                    &v["configMap"],
                ))
            } else if v["secret"].is_object() {
                Some((
                    "secrets",
                    str_of(&v["secret"], "secretName"),
                    "secret",
                    true,
                    &v["secret"],
                ))
            } else {
                None
            };
            std::fs::create_dir_all(&dir).map_err(|e| format!("volume {name}: {e}"))?;
            if let Some((kind, obj_name, label, decode, spec)) = source {
                let Some(obj) = self.lookup(kind, ns, obj_name) else {
                    if spec["optional"].as_bool() == Some(true) {
                        out.insert(name, (dir, true));
                        continue;
                    }
                    return Err(format!("{label} \"{obj_name}\" not found"));
                };
                for (k, val) in obj["data"].as_object().into_iter().flatten() {
                    if k.contains('/') || k.starts_with('.') {
                        continue;
                    }
                    write_atomically(&dir, k, value(val, decode).as_bytes())
                        .map_err(|e| format!("volume {name}: {e}"))?;
                }
                out.insert(name, (dir, true));
            } else {
                // emptyDir and anything else: a directory of the pod's own.
                out.insert(name, (dir, false));
            }
        }
        Ok(out)
    }

    fn sandbox_spec(&self, pod: &Value, uid: &str) -> SandboxSpec {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
        SandboxSpec {
            uid: uid.to_owned(),
            namespace: pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            hostname: name.clone(),
            name,
            attempt: 0,
            host_network: pod["spec"]["hostNetwork"].as_bool() == Some(true),
            log_directory: self.config.data_dir.join("pods").join(uid).join("logs"),
            labels: [(UID_LABEL.to_owned(), uid.to_owned())]
                .into_iter()
                .collect(),
        }
    }

    async fn sync_pod(&mut self, pod: &Value, uid: &str) {
        let mut run = self.pods.remove(uid).unwrap_or_default();
        let restart_policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_owned();
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let sandbox = self.sandbox_spec(pod, uid);
        run.waiting = None;
        if run.sandbox.is_none() {
            let missing: Vec<&str> = containers
                .iter()
                .map(|c| str_of(c, "image"))
                .collect::<Vec<_>>();
            let mut absent = None;
            for image in missing {
                match self.rt.has_image(image).await {
                    Ok(true) => {}
                    Ok(false) => {
                        absent = Some(image.to_owned());
                        break;
                    }
                    Err(e) => {
                        run.waiting = Some(("RuntimeUnavailable".into(), e.to_string()));
                        break;
                    }
                }
            }
            if let Some(image) = absent {
                for c in &containers {
                    let slot = run
                        .containers
                        .entry(str_of(c, "name").to_owned())
                        .or_default();
                    slot.waiting = (str_of(c, "image") == image).then(|| {
                        (
                            "ErrImageNeverPull".to_owned(),
                            format!("Container image \"{image}\" is not present on the node and images are not pulled here"),
                        )
                    });
                    if slot.waiting.is_none() {
                        slot.waiting = Some(("ContainerCreating".into(), String::new()));
                    }
                }
            } else if run.waiting.is_none() {
                match self.rt.run_sandbox(&sandbox).await {
                    Ok(id) => {
                        run.ip = self.rt.sandbox_ip(&id).await.ok().flatten();
                        run.sandbox = Some(id);
                        run.start_time
                            .get_or_insert_with(|| rfc3339(SystemTime::now()));
                    }
                    Err(e) => {
                        run.waiting = Some(("FailedCreatePodSandBox".into(), e.to_string()));
                    }
                }
            }
        }
        if let Some(sid) = run.sandbox.clone() {
            let volumes = self.volumes(pod, uid);
            let ns = sandbox.namespace.clone();
            for c in &containers {
                let name = str_of(c, "name").to_owned();
                let slot = run.containers.entry(name.clone()).or_default();
                // Refresh the state of what runs.
                if let Some(id) = &slot.id {
                    match self.rt.container_state(id).await {
                        Ok(state) => slot.state = Some(state),
                        Err(e) => tracing::debug!(container = %name, error = %e, "container state"),
                    }
                }
                if let (Some(id), Some(ContainerState::Running { started_at })) =
                    (slot.id.clone(), slot.state.clone())
                {
                    let ip = run
                        .ip
                        .clone()
                        .unwrap_or_else(|| self.config.node_ip.clone());
                    let readiness = &c["readinessProbe"];
                    if readiness.is_object() && slot.readiness.due(readiness, started_at) {
                        let result = self.probe(readiness, c, &id, &ip).await;
                        slot.readiness.record(readiness, result);
                    }
                    let liveness = &c["livenessProbe"];
                    if liveness.is_object() && slot.liveness.due(liveness, started_at) {
                        let result = self.probe(liveness, c, &id, &ip).await;
                        if slot.liveness.record(liveness, result) {
                            let why = slot.liveness.last_error.clone().unwrap_or_default();
                            tracing::info!(container = %name, reason = %why, "liveness probe failed: restarting");
                            let grace = Duration::from_secs(
                                pod["spec"]["terminationGracePeriodSeconds"]
                                    .as_u64()
                                    .unwrap_or(30),
                            );
                            let _ = self.rt.stop_container(&id, grace).await;
                            slot.killed_because = Some(format!("Liveness probe failed: {why}"));
                            slot.state = self.rt.container_state(&id).await.ok();
                        }
                    }
                }
                let due = match (&slot.id, &slot.state) {
                    (None, _) => true,
                    (
                        Some(_),
                        Some(ContainerState::Exited {
                            exit_code,
                            started_at,
                            finished_at,
                            ..
                        }),
                    ) => {
                        let wants = match restart_policy.as_str() {
                            "Never" => false,
                            "OnFailure" => *exit_code != 0,
                            _ => true,
                        };
                        if wants && slot.next_start.is_none() {
                            let ran = Duration::from_nanos(
                                u64::try_from(finished_at.saturating_sub(*started_at)).unwrap_or(0),
                            );
                            slot.backoff = if ran >= BACKOFF_RESET || slot.backoff.is_zero() {
                                self.config.backoff_start
                            } else {
                                (slot.backoff * 2).min(BACKOFF_MAX)
                            };
                            slot.next_start = Some(Instant::now() + slot.backoff);
                        }
                        wants && slot.next_start.is_some_and(|t| Instant::now() >= t)
                    }
                    _ => false,
                };
                if !due {
                    continue;
                }
                let env = self.env(&ns, c);
                let spec = match (&volumes, &env) {
                    (Err(e), _) | (_, Err(e)) => {
                        slot.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                        continue;
                    }
                    (Ok(vols), Ok(env)) => {
                        let env = env.clone();
                        let mut mounts = Vec::new();
                        for m in c["volumeMounts"].as_array().into_iter().flatten() {
                            if let Some((path, ro)) = vols.get(str_of(m, "name")) {
                                mounts.push(Mount {
                                    host_path: path.clone(),
                                    container_path: str_of(m, "mountPath").to_owned(),
                                    readonly: *ro || m["readOnly"].as_bool() == Some(true),
                                });
                            }
                        }
                        let strings = |f: &str| -> Vec<String> {
                            c[f].as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        };
                        let attempt = if slot.id.is_some() {
                            slot.attempt + 1
                        } else {
                            slot.attempt
                        };
                        ContainerSpec {
                            name: name.clone(),
                            image: str_of(c, "image").to_owned(),
                            command: strings("command"),
                            args: strings("args"),
                            env,
                            working_dir: str_of(c, "workingDir").to_owned(),
                            attempt,
                            log_path: format!("{name}_{attempt}.log"),
                            mounts,
                        }
                    }
                };
                slot.liveness = Probing::default();
                slot.readiness = Probing::default();
                if let Some(old) = slot.id.take() {
                    slot.last_terminated = slot.state.take();
                    if let (Some(why), Some(ContainerState::Exited { message, .. })) =
                        (slot.killed_because.take(), slot.last_terminated.as_mut())
                    {
                        *message = why;
                    }
                    slot.restarts += 1;
                    let _ = self.rt.remove_container(&old).await;
                }
                slot.attempt = spec.attempt;
                slot.next_start = None;
                match self.rt.start_container(&sid, &sandbox, &spec).await {
                    Ok(id) => {
                        slot.state = self.rt.container_state(&id).await.ok();
                        slot.id = Some(id);
                        slot.waiting = None;
                    }
                    Err(e) => {
                        slot.waiting = Some(("CreateContainerError".into(), e.to_string()));
                    }
                }
            }
        }
        let status = self.status(pod, &run, &containers, &restart_policy);
        if status != run.reported {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let patch = json!({"status": status}).to_string();
            let msg = status_message(
                Operation::Patch,
                format!("{ns}/podpatch/{name}"),
                json!(patch),
            );
            match self.hub.report(msg).await {
                Ok(()) => run.reported = status,
                Err(e) => tracing::warn!(pod = name, error = %e, "queueing a pod status"),
            }
        }
        self.pods.insert(uid.to_owned(), run);
    }

    /// Runs one probe (exec, httpGet or tcpSocket) against a running container.
    async fn probe(&self, probe: &Value, c: &Value, id: &str, ip: &str) -> Result<(), String> {
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
        if let Some(cmd) = probe["exec"]["command"].as_array() {
            let cmd: Vec<String> = cmd
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            return match self.rt.exec_sync(id, &cmd, timeout).await {
                Ok((0, _, _)) => Ok(()),
                Ok((code, out, err)) => {
                    let text = String::from_utf8_lossy(if err.is_empty() { &out } else { &err })
                        .trim()
                        .to_owned();
                    Err(format!("command {cmd:?} exited with {code}: {text}"))
                }
                Err(e) => Err(e.to_string()),
            };
        }
        let (handler, http) = if probe["httpGet"].is_object() {
            (&probe["httpGet"], true)
        } else if probe["tcpSocket"].is_object() {
            (&probe["tcpSocket"], false)
        } else {
            return Err("the probe has no exec, httpGet or tcpSocket handler".into());
        };
        let port = match &handler["port"] {
            Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Value::String(named) => c["ports"].as_array().into_iter().flatten().find_map(|p| {
                (p["name"] == named.as_str())
                    .then(|| p["containerPort"].as_u64())
                    .flatten()
                    .and_then(|p| u16::try_from(p).ok())
            }),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "the probe's port {} is not a container port",
                handler["port"]
            )
        })?;
        let host = handler["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(ip)
            .to_owned();
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
            if !http {
                return Ok(());
            }
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let path = handler["path"].as_str().unwrap_or("/");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("probe to {host}:{port} timed out after {timeout:?}"))?
    }

    fn status(&self, pod: &Value, run: &PodRun, containers: &[Value], policy: &str) -> Value {
        let mut statuses = Vec::new();
        let mut unready: Vec<String> = Vec::new();
        let (mut running, mut succeeded, mut failed, mut waiting) = (0, 0, 0, 0);
        for c in containers {
            let name = str_of(c, "name");
            let slot = run.containers.get(name);
            let state = match slot {
                Some(Ctr {
                    waiting: Some((reason, message)),
                    ..
                }) => {
                    waiting += 1;
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                Some(Ctr {
                    state: Some(ContainerState::Running { started_at }),
                    ..
                }) => {
                    running += 1;
                    json!({"running": {"startedAt": nanos_to_rfc3339(*started_at)}})
                }
                Some(Ctr {
                    state:
                        Some(ContainerState::Exited {
                            exit_code,
                            reason,
                            message,
                            started_at,
                            finished_at,
                        }),
                    next_start,
                    ..
                }) => {
                    if *exit_code == 0 {
                        succeeded += 1
                    } else {
                        failed += 1
                    }
                    if next_start.is_some() {
                        waiting += 1;
                        json!({"waiting": {"reason": "CrashLoopBackOff",
                            "message": format!("back-off restarting failed container {name}")}})
                    } else {
                        json!({"terminated": {"exitCode": exit_code,
                            "reason": if reason.is_empty() { if *exit_code == 0 { "Completed" } else { "Error" } } else { reason.as_str() },
                            "message": message, "startedAt": nanos_to_rfc3339(*started_at),
                            "finishedAt": nanos_to_rfc3339(*finished_at)}})
                    }
                }
                _ => {
                    waiting += 1;
                    let (reason, message) = run
                        .waiting
                        .clone()
                        .unwrap_or(("ContainerCreating".into(), String::new()));
                    json!({"waiting": {"reason": reason, "message": message}})
                }
            };
            let last = match slot.and_then(|s| s.last_terminated.as_ref()) {
                Some(ContainerState::Exited {
                    exit_code,
                    reason,
                    message,
                    started_at,
                    finished_at,
                }) => json!({
                    "terminated": {"exitCode": exit_code, "reason": if reason.is_empty() { "Error" } else { reason.as_str() },
                        "message": message,
                        "startedAt": nanos_to_rfc3339(*started_at), "finishedAt": nanos_to_rfc3339(*finished_at)}}),
                _ => json!({}),
            };
            // The cloud merges status patches: name every state, so that the old one goes.
            let full = |mut v: Value| {
                for k in ["waiting", "running", "terminated"] {
                    if v.get(k).is_none() {
                        v[k] = Value::Null;
                    }
                }
                v
            };
            let state = full(state);
            let last = full(last);
            let is_running = state.get("running").is_some_and(|r| !r.is_null());
            let probe_ready =
                !c["readinessProbe"].is_object() || slot.is_some_and(|s| s.readiness.ok);
            if is_running && !probe_ready {
                unready.push(name.to_owned());
            }
            statuses.push(json!({
                "name": name, "image": str_of(c, "image"), "imageID": "",
                "containerID": slot.and_then(|s| s.id.as_ref()).map(|id| format!("{}://{id}", self.scheme)).unwrap_or_default(),
                "ready": is_running && probe_ready, "started": is_running,
                "restartCount": slot.map(|s| s.restarts).unwrap_or(0),
                "state": state, "lastState": last,
            }));
        }
        let total = containers.len();
        let phase = if total > 0 && running == total {
            "Running"
        } else if total > 0 && succeeded == total && waiting == 0 {
            "Succeeded"
        } else if failed > 0 && policy == "Never" && running == 0 && waiting == 0 {
            "Failed"
        } else if running > 0 {
            "Running"
        } else {
            "Pending"
        };
        let all_ready = total > 0 && running == total && unready.is_empty();
        let ready = if all_ready { "True" } else { "False" };
        let now = rfc3339(SystemTime::now());
        let not_ready: Vec<&str> = statuses
            .iter()
            .filter(|st| st["ready"] == false)
            .filter_map(|st| st["name"].as_str())
            .collect();
        let cond = |t: &str, s: &str| {
            let mut c =
                json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": now});
            if s == "False" && matches!(t, "Ready" | "ContainersReady") {
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    not_ready.join(" ")
                ));
            }
            c
        };
        let mut status = json!({
            "phase": phase,
            "hostIP": self.config.node_ip,
            "conditions": [cond("PodScheduled", "True"), cond("Initialized", "True"),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": statuses,
            "qosClass": pod["status"]["qosClass"].as_str().unwrap_or("BestEffort"),
        });
        if let Some(t) = &run.start_time {
            status["startTime"] = json!(t);
        }
        let ip = if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
            Some(self.config.node_ip.clone())
        } else {
            run.ip.clone()
        };
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        // Transition times change every pass: compare without them.
        strip_times(status)
    }
}

/// Conditions keep a fixed transition time so that an unchanged status compares equal.
/// Writes `dir/name` only if its content changes, and then whole: a temporary file beside it
/// renamed over it, so that a container reading it never sees it empty or half written (volume
/// files are refreshed on every pass). Keys never start with `.`, so the temporary name is free.
fn write_atomically(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}

fn strip_times(mut status: Value) -> Value {
    if let Some(conds) = status["conditions"].as_array_mut() {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    status
}

fn value(v: &Value, base64: bool) -> String {
    let s = v.as_str().unwrap_or("");
    if base64 {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    } else {
        s.to_owned()
    }
}
