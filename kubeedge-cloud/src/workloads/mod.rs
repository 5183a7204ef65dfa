//! The embedded control plane's workload controllers, as kube-controller-manager and
//! kube-scheduler run them for a cluster: the [`scheduler`], ReplicaSets and Deployments
//! ([`replicaset`], [`deployment`]), DaemonSets ([`daemonset`]), StatefulSets ([`statefulset`]),
//! Jobs and CronJobs ([`job`], [`cronjob`]), the garbage
//! collector ([`gc`]: ownerReferences, background, foreground and orphan deletion), Services'
//! EndpointSlices and Endpoints ([`endpoints`]) and NoExecute taint eviction ([`taints`]).
//!
//! They run in process beside the store ([`Manager::start`]): one task keeps a cache of the
//! objects they read, fed by the store's watch, and runs the controllers (in a blocking thread:
//! store writes block) on the keys each change makes stale, and on every key every [`RESYNC`]. Writes take the API's full write path
//! ([`Local`]): defaults, validation, finalizers, graceful pod deletion. A real cluster has its own
//! controllers; a vendor embedding the control plane starts these on its own [`Api`].

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;
pub mod taints;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kubeedge_core::kubeapi::local::{Kind, Local};
use kubeedge_core::kubeapi::{Api, ApiError};
use kubeedge_core::store::selector::{LabelSelector, selector_text};
use kubeedge_core::store::{self, Event, EventType};
use serde_json::{Value, json};

/// Pods.
pub const PODS: Kind<'static> = ("", "pods");
/// Nodes.
pub const NODES: Kind<'static> = ("", "nodes");
/// Namespaces.
pub const NAMESPACES: Kind<'static> = ("", "namespaces");
/// Services.
pub const SERVICES: Kind<'static> = ("", "services");
/// Endpoints.
pub const ENDPOINTS: Kind<'static> = ("", "endpoints");
/// Core Events.
pub const EVENTS: Kind<'static> = ("", "events");
/// EndpointSlices.
pub const SLICES: Kind<'static> = ("discovery.k8s.io", "endpointslices");
/// ReplicaSets.
pub const REPLICASETS: Kind<'static> = ("apps", "replicasets");
/// Deployments.
pub const DEPLOYMENTS: Kind<'static> = ("apps", "deployments");
/// DaemonSets.
pub const DAEMONSETS: Kind<'static> = ("apps", "daemonsets");
/// Jobs.
pub const JOBS: Kind<'static> = ("batch", "jobs");
/// CronJobs.
pub const CRONJOBS: Kind<'static> = ("batch", "cronjobs");
/// StatefulSets.
pub const STATEFULSETS: Kind<'static> = ("apps", "statefulsets");

/// The kinds the cache holds.
const CACHED: &[Kind<'static>] = &[
    PODS,
    NODES,
    NAMESPACES,
    SERVICES,
    ENDPOINTS,
    SLICES,
    REPLICASETS,
    DEPLOYMENTS,
    DAEMONSETS,
    JOBS,
    CRONJOBS,
    STATEFULSETS,
];

/// Every key of every controller is looked at again this often, changed or not.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The store's name for a kind (`pods`, `replicasets.apps`).
pub fn store_name((group, plural): Kind<'_>) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// An object's namespace and name.
pub type Key = (String, String);

/// What the controllers read: the cached kinds, by store name, then namespace and name; and
/// which objects name each uid as their owner.
#[derive(Debug, Default)]
pub struct Cache {
    objects: HashMap<String, BTreeMap<Key, Arc<Value>>>,
    /// Owner uid → the (store name, key) of its dependents.
    dependents: HashMap<String, BTreeSet<(String, Key)>>,
    /// uid → (store name, key), for every cached object.
    uids: HashMap<String, (String, Key)>,
}

/// `metadata.<field>` as a string ("" if missing).
pub fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

/// An object's key.
pub fn key_of(obj: &Value) -> Key {
    (
        meta(obj, "namespace").to_owned(),
        meta(obj, "name").to_owned(),
    )
}

/// The uids an object names as its owners.
fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
        .collect()
}

impl Cache {
    /// Every cached object of `kind` in `namespace` (all namespaces for `None`).
    pub fn list(&self, kind: Kind<'_>, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(objects) = self.objects.get(&store_name(kind)) else {
            return Vec::new();
        };
        match namespace {
            None => objects.values().cloned().collect(),
            Some(ns) => objects
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// One cached object.
    pub fn get(&self, kind: Kind<'_>, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&store_name(kind))?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Whether some cached object has this uid.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }

    /// The objects that name `uid` as an owner: (store name, key).
    pub fn dependents_of(&self, uid: &str) -> Vec<(String, Key)> {
        self.dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The cached object under `store` and `key`.
    pub fn get_stored(&self, store: &str, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(store)?.get(key).cloned()
    }

    /// Pods controlled by the owner with this uid (its `controller: true` reference), not being
    /// deleted.
    pub fn controlled_pods(&self, owner_uid: &str) -> Vec<Arc<Value>> {
        self.dependents_of(owner_uid)
            .into_iter()
            .filter(|(s, _)| s == "pods")
            .filter_map(|(s, k)| self.get_stored(&s, &k))
            .filter(|p| controller_uid(p) == Some(owner_uid))
            .collect()
    }

    /// Stores `obj` (as read or written) under `store`, unless the cache already holds a newer
    /// version. Managed fields are left out: no controller reads them, a write recomputes them
    /// from the stored object, and they are a good part of an object's size.
    fn put(&mut self, store: &str, mut obj: Value) {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let key = key_of(&obj);
        let rv = |v: &Value| {
            meta(v, "resourceVersion")
                .parse::<u64>()
                .unwrap_or_default()
        };
        let objects = self.objects.entry(store.to_owned()).or_default();
        if let Some(old) = objects.get(&key) {
            if rv(old) > rv(&obj) {
                return;
            }
            let old = old.clone();
            self.unindex(store, &key, &old);
        }
        let uid = meta(&obj, "uid").to_owned();
        for owner in owner_uids(&obj) {
            self.dependents
                .entry(owner)
                .or_default()
                .insert((store.to_owned(), key.clone()));
        }
        if !uid.is_empty() {
            self.uids.insert(uid, (store.to_owned(), key.clone()));
        }
        self.objects
            .entry(store.to_owned())
            .or_default()
            .insert(key, Arc::new(obj));
    }

    fn remove(&mut self, store: &str, key: &Key) {
        if let Some(old) = self.objects.get_mut(store).and_then(|o| o.remove(key)) {
            self.unindex(store, key, &old);
        }
    }

    fn unindex(&mut self, store: &str, key: &Key, old: &Value) {
        for owner in owner_uids(old) {
            if let Some(d) = self.dependents.get_mut(&owner) {
                d.remove(&(store.to_owned(), key.clone()));
                if d.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
        let uid = meta(old, "uid");
        if self
            .uids
            .get(uid)
            .is_some_and(|(s, k)| s == store && k == key)
        {
            self.uids.remove(uid);
        }
    }

    fn apply(&mut self, ev: &Event) {
        match ev.kind {
            EventType::Deleted => self.remove(
                &ev.resource,
                &(ev.namespace.clone().unwrap_or_default(), ev.name.clone()),
            ),
            _ => self.put(&ev.resource, ev.object.clone()),
        }
    }
}

/// The uid of the object's controller (its owner reference with `controller: true`).
pub fn controller_uid(obj: &Value) -> Option<&str> {
    controller_ref(obj).and_then(|r| r["uid"].as_str())
}

/// The key of the `kind` object that controls the object of `ev`, if `ev` is about `resource`
/// (a store name): how a controller hears of changes to what it made.
pub fn owner_key(ev: &Event, resource: &str, kind: &str) -> Vec<Key> {
    if ev.resource != resource {
        return Vec::new();
    }
    controller_ref(&ev.object)
        .filter(|r| r["kind"] == kind)
        .and_then(|r| r["name"].as_str())
        .map(|name| vec![(ev.namespace.clone().unwrap_or_default(), name.to_owned())])
        .unwrap_or_default()
}

/// The object's owner reference with `controller: true`.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

/// An owner reference to `owner` (`controller: true`, `blockOwnerDeletion: true`).
pub fn owner_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta(owner, "name"),
           "uid": meta(owner, "uid"), "controller": true, "blockOwnerDeletion": true})
}

/// Whether the object is being deleted.
pub fn terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether a pod has finished (Succeeded or Failed).
pub fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod counts for its controller: neither being deleted nor finished.
pub fn active(pod: &Value) -> bool {
    !terminating(pod) && !finished(pod)
}

/// When the pod's `Ready` condition last turned true, if it is true.
pub fn ready_since(pod: &Value) -> Option<SystemTime> {
    let c = pod
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    if c["status"] != "True" {
        return None;
    }
    Some(
        c["lastTransitionTime"]
            .as_str()
            .and_then(parse_time)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

/// Whether a pod is Ready.
pub fn ready(pod: &Value) -> bool {
    ready_since(pod).is_some()
}

/// Whether a pod has been Ready for `min_ready` at `now`.
pub fn available(pod: &Value, min_ready: Duration, now: SystemTime) -> bool {
    ready_since(pod).is_some_and(|t| min_ready.is_zero() || t + min_ready <= now)
}

/// An RFC 3339 time (`2024-03-01T10:20:30Z`, fractions and offsets allowed) as a system time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = kubeedge_core::kubeapi::protobuf::parse_time(s)?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::new(u64::try_from(secs).ok()?, u32::try_from(nanos).ok()?),
    )
}

/// A label selector object (`matchLabels`, `matchExpressions`) parsed; `None` if it cannot be.
pub fn selector(sel: &Value) -> Option<LabelSelector> {
    LabelSelector::parse(&selector_text(sel)).ok()
}

/// An int-or-percent (`maxSurge: 1`, `"25%"`) of `total`, rounding up or down.
pub fn int_or_percent(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// A short random suffix for generated names, from the apiserver's alphabet (no vowels).
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let mut x = h.finish();
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

/// FNV-1a (32 bits) of `data`, in the apiserver's name alphabet: the `pod-template-hash` of a
/// template.
pub fn template_hash(data: &Value) -> String {
    let text = data.to_string();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = u64::from(h);
    let mut out = String::new();
    loop {
        out.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        x /= ALPHABET.len() as u64;
        if x == 0 {
            break;
        }
    }
    out
}

/// What a reconcile pass works with: the cache, the API and the time.
pub struct Ctx<'a> {
    /// The cached objects.
    pub cache: &'a mut Cache,
    /// The API.
    pub local: &'a Local,
    /// Now.
    pub now: SystemTime,
    /// Events recorded in this pass, written together at its end (one disk sync).
    pub events: &'a mut Vec<Value>,
}

impl Ctx<'_> {
    fn remember(&mut self, kind: Kind<'_>, obj: &Value) {
        if CACHED.contains(&kind) {
            self.cache.put(&store_name(kind), obj.clone());
        }
    }

    /// Creates an object (and caches what was stored).
    pub fn create(
        &mut self,
        kind: Kind<'_>,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let ns = (!namespace.is_empty()).then_some(namespace);
        let made = self.local.create(kind, ns, obj)?;
        self.remember(kind, &made);
        Ok(made)
    }

    /// Writes an object (`status`: only its status) and caches what was stored.
    pub fn update(&mut self, kind: Kind<'_>, obj: Value, status: bool) -> Result<Value, ApiError> {
        let written = self.local.update(kind, obj, status)?;
        if CACHED.contains(&kind) {
            if terminating(&written)
                && self
                    .local
                    .get(
                        kind,
                        Some(meta(&written, "namespace")),
                        meta(&written, "name"),
                    )
                    .is_err()
            {
                // Finalizers done: the write removed it.
                self.cache.remove(&store_name(kind), &key_of(&written));
            } else {
                self.remember(kind, &written);
            }
        }
        Ok(written)
    }

    /// Deletes an object with these `DeleteOptions`; 404 counts as done.
    pub fn delete(
        &mut self,
        kind: Kind<'_>,
        namespace: &str,
        name: &str,
        options: &Value,
    ) -> Result<(), ApiError> {
        let ns = (!namespace.is_empty()).then_some(namespace);
        match self.local.delete(kind, ns, name, options) {
            Ok(obj) => {
                if CACHED.contains(&kind) {
                    if terminating(&obj) && self.local.get(kind, ns, name).is_ok() {
                        self.remember(kind, &obj);
                    } else {
                        self.cache
                            .remove(&store_name(kind), &(namespace.to_owned(), name.to_owned()));
                    }
                }
                Ok(())
            }
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Records a core Event about `obj` (`type` Normal or Warning), as `component` reports it.
    pub fn event(&mut self, obj: &Value, kind: &str, reason: &str, message: &str, component: &str) {
        let ns = match meta(obj, "namespace") {
            "" => "default",
            ns => ns,
        };
        let now = store::rfc3339(self.now);
        let event = json!({
            "metadata": {"name": format!("{}.{}", meta(obj, "name"), random_suffix(10)), "namespace": ns},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta(obj, "name"),
                               "namespace": meta(obj, "namespace"), "uid": meta(obj, "uid"),
                               "resourceVersion": meta(obj, "resourceVersion")},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        self.events.push(event);
    }

    /// Binds a pod to a node (one write) and caches the result.
    pub fn bind(&mut self, pod: &Value, node: &str) -> Result<Value, ApiError> {
        let bound = self.local.bind(
            meta(pod, "namespace"),
            meta(pod, "name"),
            meta(pod, "resourceVersion"),
            node,
            &store::rfc3339(self.now),
        )?;
        self.remember(PODS, &bound);
        Ok(bound)
    }
}

/// A controller: which of its keys a change makes stale, and how to bring one key to its spec.
pub trait Controller: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// The primary kind whose objects are its keys.
    fn kind(&self) -> Kind<'static>;
    /// The keys to look at again on a resync: by default every object of its kind.
    fn resync(&mut self, cache: &Cache) -> Vec<Key> {
        cache
            .list(self.kind(), None)
            .iter()
            .map(|o| key_of(o))
            .collect()
    }
    /// The keys `ev` makes stale (its own kind's events are handled already).
    fn affected(&mut self, cache: &Cache, ev: &Event) -> Vec<Key>;
    /// Brings `key` toward its spec; `Some(d)` asks to be run again after `d` even if nothing
    /// changes (a timer: minReadySeconds, a toleration running out).
    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError>;
}

/// The controller manager: the cache, the controllers, and the task that runs them.
#[derive(Debug)]
pub struct Manager {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The controllers an embedded control plane runs, with their defaults.
pub fn standard() -> Vec<Box<dyn Controller>> {
    vec![
        Box::new(gc::GarbageCollector::default()),
        Box::new(scheduler::Scheduler::default()),
        Box::new(deployment::DeploymentController),
        Box::new(replicaset::ReplicaSetController),
        Box::new(daemonset::DaemonSetController),
        Box::new(statefulset::StatefulSetController),
        Box::new(job::JobController),
        Box::new(cronjob::CronJobController),
        Box::new(endpoints::EndpointsController),
        Box::new(taints::TaintEviction),
    ]
}

struct Slot {
    controller: Box<dyn Controller>,
    store: String,
    dirty: BTreeSet<Key>,
    timers: BTreeMap<Key, Instant>,
}

/// What a pass of the controllers works on: moved into a blocking thread for the pass (store
/// writes block) and back.
struct State {
    local: Local,
    cache: Cache,
    slots: Vec<Slot>,
    stop: Arc<AtomicBool>,
}

impl Manager {
    /// Starts `controllers` on `api`; they run until [`Manager::stop`] (or the runtime ends).
    /// Must be called within a Tokio runtime.
    pub fn start(
        api: &Api,
        controllers: Vec<Box<dyn Controller>>,
    ) -> Result<Manager, store::Error> {
        let local = api.local("kube-controller-manager");
        let stop = Arc::new(AtomicBool::new(false));
        let (cache, watch) = Self::load(&local)?;
        let slots = controllers
            .into_iter()
            .map(|c| Slot {
                store: store_name(c.kind()),
                controller: c,
                dirty: BTreeSet::new(),
                timers: BTreeMap::new(),
            })
            .collect();
        let state = State {
            local,
            cache,
            slots,
            stop: stop.clone(),
        };
        let task = tokio::spawn(run(state, watch));
        Ok(Manager {
            stop,
            task: Some(task),
        })
    }

    fn load(local: &Local) -> Result<(Cache, store::Watch), store::Error> {
        let store = local.api().store();
        let rv = store.resource_version()?;
        let watch = store.watch(rv)?;
        let mut cache = Cache::default();
        for kind in CACHED {
            let name = store_name(*kind);
            for obj in store.list_all(&name, None)? {
                cache.put(&name, obj);
            }
        }
        Ok((cache, watch))
    }

    /// Stops the controllers after the pass under way.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn run(mut state: State, mut watch: store::Watch) {
    let mut next_resync = Instant::now();
    while !state.stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_resync {
            for slot in &mut state.slots {
                let keys = slot.controller.resync(&state.cache);
                slot.dirty.extend(keys);
            }
            next_resync = Instant::now() + RESYNC;
        }
        // Wait for a change (or a timer, or the next look at `stop`), then take every change
        // already there.
        let soonest = state
            .slots
            .iter()
            .flat_map(|s| s.timers.values())
            .min()
            .copied()
            .unwrap_or(next_resync)
            .min(next_resync);
        let wait = if state.slots.iter().any(|s| !s.dirty.is_empty()) {
            Duration::ZERO
        } else {
            soonest
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200))
        };
        let mut next = tokio::time::timeout(wait, watch.next()).await.ok();
        while let Some(result) = next {
            match result {
                Ok(ev) => {
                    state.cache.apply(&ev);
                    for slot in &mut state.slots {
                        if ev.resource == slot.store && !slot.store.is_empty() {
                            slot.dirty.insert((
                                ev.namespace.clone().unwrap_or_default(),
                                ev.name.clone(),
                            ));
                        }
                        let more = slot.controller.affected(&state.cache, &ev);
                        slot.dirty.extend(more);
                    }
                }
                Err(e) => {
                    // Fell out of the event log: read everything again.
                    tracing::warn!(error = %e, "controllers: watch lost, reloading");
                    match Manager::load(&state.local) {
                        Ok((c, w)) => {
                            state.cache = c;
                            watch = w;
                            next_resync = Instant::now();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "controllers: reloading");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    break;
                }
            }
            next = futures_util::FutureExt::now_or_never(watch.next());
        }
        let now = Instant::now();
        for slot in &mut state.slots {
            let due: Vec<Key> = slot
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                slot.timers.remove(&k);
                slot.dirty.insert(k);
            }
        }
        if state.slots.iter().all(|s| s.dirty.is_empty()) {
            continue;
        }
        // Store writes block: the pass runs off the async workers.
        state = match tokio::task::spawn_blocking(move || {
            pass(&mut state);
            state
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "controllers stopped");
                return;
            }
        };
    }
}

/// Each controller takes its stale keys in turn; what they write comes back as events. A
/// reconcile that panics is logged and retried later; the others go on.
fn pass(state: &mut State) {
    let State {
        local,
        cache,
        slots,
        stop,
    } = state;
    let mut events = Vec::new();
    for slot in slots.iter_mut() {
        let keys = std::mem::take(&mut slot.dirty);
        for key in keys {
            let mut ctx = Ctx {
                cache,
                local,
                now: SystemTime::now(),
                events: &mut events,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slot.controller.reconcile(&mut ctx, &key)
            }));
            let retry = match result {
                Ok(Ok(Some(after))) => Some(after),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    if e.code != 409 {
                        tracing::warn!(controller = slot.controller.name(), namespace = key.0, name = key.1,
                            error = %e.message, "reconcile failed; retrying");
                    }
                    Some(Duration::from_millis(if e.code == 409 {
                        100
                    } else {
                        1000
                    }))
                }
                Err(_) => {
                    tracing::error!(
                        controller = slot.controller.name(),
                        namespace = key.0,
                        name = key.1,
                        "reconcile panicked; retrying later"
                    );
                    Some(Duration::from_secs(5))
                }
            };
            if let Some(after) = retry {
                let at = Instant::now() + after;
                let t = slot.timers.entry(key).or_insert(at);
                *t = (*t).min(at);
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            // Events go out in groups, not one disk sync each.
            if events.len() >= 256 {
                flush_events(local, &mut events);
            }
        }
    }
    flush_events(local, &mut events);
}

fn flush_events(local: &Local, events: &mut Vec<Value>) {
    if let Err(e) = local.create_unchecked(EVENTS, std::mem::take(events)) {
        tracing::debug!(error = %e.message, "recording events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_percentages() {
        let t = parse_time("2024-03-01T10:20:30Z").unwrap();
        assert_eq!(store::rfc3339(t), "2024-03-01T10:20:30Z");
        assert!(parse_time("2024-03-01T10:20:30.123456Z").is_some());
        assert!(parse_time("yesterday").is_none());
        assert_eq!(int_or_percent(&json!("25%"), 4, true), 1);
        assert_eq!(int_or_percent(&json!("25%"), 5, true), 2);
        assert_eq!(int_or_percent(&json!("25%"), 5, false), 1);
        assert_eq!(int_or_percent(&json!(3), 5, false), 3);
        assert_ne!(
            template_hash(&json!({"a": 1})),
            template_hash(&json!({"a": 2}))
        );
        assert_eq!(
            template_hash(&json!({"a": 1})),
            template_hash(&json!({"a": 1}))
        );
    }
}
