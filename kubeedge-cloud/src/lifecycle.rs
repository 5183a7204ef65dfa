//! Node lifecycle: an edge node not heard from for longer than a grace period turns
//! `Ready=Unknown` (every condition it reported becomes Unknown, reason `NodeStatusUnknown`), as
//! the Kubernetes node lifecycle controller does. Its pods are left alone: no taints, no eviction
//! (edge pods keep running offline, and the edge reports their real state when it is back).
//!
//! With several cloudcore replicas, only the leader ([`crate::leader`]) marks nodes, and a node
//! counts as heard from when this replica heard it, when its Lease (`kube-node-lease`, renewed
//! through whichever replica holds its connection) was renewed within the grace period, or when
//! a live replica's record of the nodes it hears lists it. Each replica publishes that record,
//! ConfigMap `cloudcore-heard-<identity>` (label [`HEARD_LABEL`]) in the leader Lease's namespace,
//! every quarter of the grace (at most every 10 s), and within a second when a node arrives that
//! the last record did not list: one write per replica per period however many
//! nodes it holds, where the nodes' own Leases cost one write per node every 10 s (100,000 nodes:
//! 10,000 writes a second). A record lists the nodes the replica heard within the grace,
//! connected now or not, and one the leader has not seen renewed within the grace is ignored: a
//! node gone silent turns Unknown one to two graces (plus a period, plus the time its replica's
//! last record took to reach the leader) after it was last heard, unless it speaks again through
//! any replica; a Ready heartbeat it reported, seen by the leader, holds it for a grace more.
//! The leader deletes records left unrenewed for an hour. Every cloudcore that shares an API with
//! replicas must be one (`Config::replica`): one that is not would mark the nodes it does not
//! hear.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::controller::api_in;
use crate::hub::Hub;
use crate::index::{Index, Kind};
use crate::leader::{LeaderConfig, Leadership};

/// Label of the ConfigMaps in which replicas publish the nodes they hear.
pub const HEARD_LABEL: &str = "kubeedge.io/heard-nodes";

/// How long a replica's record left unrenewed is kept before the leader deletes it.
const RECORD_KEPT: Duration = Duration::from_secs(3600);

/// Reason set on conditions of a node that stopped reporting.
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";

/// The conditions to write for a node gone silent, or `None` if they already say so.
pub fn unknown_conditions(node: &Value, now: &str) -> Option<Value> {
    // Whatever the edge stored, only well-formed conditions are kept.
    let mut conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .map(|a| a.iter().filter(|c| c.is_object()).cloned().collect())
        .unwrap_or_default();
    if !conditions.iter().any(|c| c["type"] == "Ready") {
        conditions.push(json!({"type": "Ready"}));
    }
    let mut changed = false;
    for c in &mut conditions {
        if c["status"] != "Unknown" {
            changed = true;
            c["status"] = json!("Unknown");
            c["reason"] = json!(REASON_UNKNOWN);
            c["message"] =
                json!("The edge node has not reported for longer than its grace period.");
            c["lastTransitionTime"] = json!(now);
            if c["lastHeartbeatTime"].is_null() {
                c["lastHeartbeatTime"] = json!(now);
            }
        }
    }
    changed.then_some(Value::Array(conditions))
}

/// Checks every edge node every second, forever: a node silent for `grace` (no frame and no new
/// connection: its keepalives, lease renewals and status reports all count) turns Unknown, whether
/// or not its connection still looks up (a half-open link is noticed here, not only when the
/// session's keepalive timeout ends it). It turns Ready again when the edge reports its status,
/// which it does on every reconnect; a Ready heartbeat the edge reported within the grace counts
/// as hearing from it (see `Heartbeats`).
pub async fn run(
    client: Client,
    index: Arc<Index>,
    hub: Hub,
    grace: Duration,
    leadership: Leadership,
    replica: Option<LeaderConfig>,
) {
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only replicas need the Leases and the records (a single cloudcore hears every node itself).
    let leases = replica.is_some().then(|| watch_leases(client.clone()));
    let mut records = replica.as_ref().map(|r| {
        tokio::spawn(publish_heard(client.clone(), hub.clone(), grace, r.clone()));
        Records::new(watch_records(client.clone(), &r.namespace))
    });
    let mut swept = tokio::time::Instant::now();
    let mut heartbeats = Heartbeats::default();
    let mut pruned = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if !leadership.is_leader() {
            heartbeats.clear();
            if let Some(r) = &mut records {
                r.forget();
            }
            continue;
        }
        if pruned.elapsed() >= Duration::from_secs(60) {
            pruned = tokio::time::Instant::now();
            heartbeats.prune(grace * 10);
        }
        if let Some(r) = &mut records {
            r.refresh(grace);
            if swept.elapsed() >= Duration::from_secs(60) {
                swept = tokio::time::Instant::now();
                r.sweep(&client).await;
            }
        }
        // The nodes silent now: not heard within the grace by this replica, through their Lease
        // or a live replica's record (replicas), and no Ready heartbeat seen within it.
        let mut silent = Vec::new();
        for name in index.edge_node_names() {
            if heard(
                name.as_str(),
                &hub,
                leases.as_ref(),
                records.as_ref(),
                grace,
            ) {
                continue;
            }
            let Some(node) = index.get(Kind::Node, "", name.as_str()) else {
                continue;
            };
            if heartbeats.fresh(name.as_str(), &node, grace, tokio::time::Instant::now()) {
                continue;
            }
            let now = kubeedge_core::store::rfc3339(std::time::SystemTime::now());
            let Some(conditions) = unknown_conditions(&node, &now) else {
                continue;
            };
            let version = node["metadata"]["resourceVersion"].clone();
            silent.push((name, version, conditions));
        }
        // Marked a few at a time, each checked again just before: through a busy API a pass
        // takes a while (one mark after another, 646 marks once took six minutes), and a node
        // that came back meanwhile (a replica's new record, its own report) is left alone. The
        // Node's resourceVersion goes with the mark, so that a report landing first fails the
        // mark (a conflict) rather than being overwritten by it.
        for batch in silent.chunks(MARKS_AT_ONCE) {
            if !leadership.is_leader() {
                break;
            }
            if let Some(r) = &mut records {
                r.refresh(grace);
            }
            let marks = batch.iter().filter(|(name, version, _)| {
                !heard(
                    name.as_str(),
                    &hub,
                    leases.as_ref(),
                    records.as_ref(),
                    grace,
                ) && index
                    .get(Kind::Node, "", name.as_str())
                    .is_some_and(|n| n["metadata"]["resourceVersion"] == *version)
            });
            futures_util::future::join_all(marks.map(|(name, version, conditions)| {
                mark_logged(&client, &hub, name.as_str(), version, conditions)
            }))
            .await;
        }
    }
}

/// How many nodes the leader marks at once.
const MARKS_AT_ONCE: usize = 16;

/// Whether node `name` was heard within `grace`: by this replica, or (replicas) through its
/// Lease or a live replica's record.
fn heard(
    name: &str,
    hub: &Hub,
    leases: Option<&Store<Lease>>,
    records: Option<&Records>,
    grace: Duration,
) -> bool {
    hub.silent_for(name) < grace
        || lease_age(leases, name) < grace
        || records.is_some_and(|r| r.heard.contains(name))
}

/// Writes `conditions` (see [`unknown_conditions`]) into node `name`'s status, only if the Node
/// is still at resourceVersion `version` (as the caller found it silent): `Ok(false)` when it
/// changed since (a report of its own landed first, and stays), `Ok(true)` when it was marked.
pub async fn mark_unknown(
    client: &Client,
    name: &str,
    version: &Value,
    conditions: &Value,
) -> Result<bool, kube::Error> {
    let patch = json!({"metadata": {"resourceVersion": version},
                       "status": {"conditions": conditions}});
    match api_in(client, Kind::Node, "")
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`mark_unknown`], logged.
async fn mark_logged(client: &Client, hub: &Hub, name: &str, version: &Value, conditions: &Value) {
    match mark_unknown(client, name, version, conditions).await {
        Ok(true) => tracing::info!(
            node = name,
            silent = ?hub.silent_for(name),
            "node silent past its grace period: Ready=Unknown"
        ),
        // Looked at again at the next check.
        Ok(false) => tracing::debug!(node = name, "node changed before it was marked"),
        Err(e) => tracing::warn!(node = name, error = %e, "marking a node unreachable"),
    }
}

/// How long ago an RFC 3339 time was, by this machine's clock (zero for a time to come); `None`
/// if it does not parse.
fn age_of(time: &str) -> Option<Duration> {
    time.parse::<Timestamp>().ok().map(since)
}

/// How long ago `at` was, by this machine's clock (zero for a time to come).
fn since(at: Timestamp) -> Duration {
    let ms = Timestamp::now().as_millisecond() - at.as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The Ready heartbeats (`lastHeartbeatTime`) of the nodes the leader found silent, as it
/// observed them. A node's own status report is proof of life, as upstream's node lifecycle
/// controller takes it: an edge that comes back reports Ready at once, while the record of the
/// replica it came back to may reach the leader later through a busy API, and without this the
/// leader marks again a node that has just said it is Ready.
///
/// A heartbeat counts from when this leader saw it change, not by the edge's clock (which may be
/// off); one seen for the first time counts from its own time, never from the future, so that
/// an edge's clock running ahead gains it at most one grace.
#[derive(Debug, Default)]
struct Heartbeats(Observed);

/// Values (heartbeats, records' resourceVersions) by name, each timed from when it was seen to
/// change: the same value again ages, a new one is zero old, and one seen for the first time is
/// as old as it says (capped by the caller).
#[derive(Debug, Default)]
struct Observed(HashMap<String, Seen>);

impl Observed {
    /// How old `name`'s `value` is at `now`; `first` gives its age when `name` is new here.
    fn age(
        &mut self,
        name: &str,
        value: &str,
        now: tokio::time::Instant,
        first: impl FnOnce() -> Duration,
    ) -> Duration {
        match self.0.get_mut(name) {
            Some(seen) if seen.value == value => seen.age(now),
            Some(entry) => {
                *entry = Seen::new(value, now, Duration::ZERO);
                Duration::ZERO
            }
            None => {
                let age = first();
                self.0.insert(name.to_owned(), Seen::new(value, now, age));
                age
            }
        }
    }

    /// Keeps only the names `keep` says yes to.
    fn retain(&mut self, mut keep: impl FnMut(&str, &Seen) -> bool) {
        self.0.retain(|name, seen| keep(name, seen));
    }

    /// Forgets everything (leadership lost: what it saw then says nothing of what changed since).
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A value (a heartbeat, a record's resourceVersion) as first seen: when, and how old it was
/// then. Kept as an age at an instant rather than an instant in the past, which a monotonic
/// clock younger than the grace (a host just booted) cannot express.
#[derive(Debug)]
struct Seen {
    value: String,
    at: tokio::time::Instant,
    age: Duration,
}

impl Seen {
    /// `value` seen at `now`, already `age` old.
    fn new(value: &str, now: tokio::time::Instant, age: Duration) -> Seen {
        Seen {
            value: value.to_owned(),
            at: now,
            age,
        }
    }

    /// Its age at `now`.
    fn age(&self, now: tokio::time::Instant) -> Duration {
        self.age + now.saturating_duration_since(self.at)
    }
}

impl Heartbeats {
    /// Whether `node` (named `name`) reported Ready's heartbeat within `grace` of `now`.
    fn fresh(
        &mut self,
        name: &str,
        node: &Value,
        grace: Duration,
        now: tokio::time::Instant,
    ) -> bool {
        let Some(beat) = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["lastHeartbeatTime"].as_str())
        else {
            return false;
        };
        self.0
            .age(name, beat, now, || age_of(beat).unwrap_or(grace).min(grace))
            < grace
    }

    /// Forgets heartbeats older than `kept` (nodes heard again, or gone).
    fn prune(&mut self, kept: Duration) {
        let now = tokio::time::Instant::now();
        self.0.retain(|_, seen| seen.age(now) < kept);
    }

    /// Forgets everything (leadership lost).
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The node Leases (`kube-node-lease`), kept current by a watch.
fn watch_leases(client: Client) -> Store<Lease> {
    kept_current(
        Api::namespaced(client, "kube-node-lease"),
        watcher::Config::default(),
        "watching node leases",
    )
}

/// A store of the objects `api` lists with `config`, kept current by a watch of its own (errors
/// are logged at debug level as `what`; the watch backs off and goes on).
fn kept_current<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "{what}");
            }
        }
    });
    reader
}

/// The name of replica `identity`'s record: `cloudcore-heard-` and the identity as a DNS label
/// (lower case; other characters as `-`; at most 253 characters).
pub fn heard_record_name(identity: &str) -> String {
    let id: String = identity
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let mut name = format!("cloudcore-heard-{}", id.trim_matches(['-', '.']));
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

/// The record's body: the nodes this replica heard within the grace, sorted, one per line, and
/// when that was true.
fn heard_data(nodes: &[String], at: Timestamp) -> Value {
    json!({"renewTime": at.to_string(), "nodes": nodes.join("\n")})
}

/// Publishes this replica's record every quarter of the grace (at most every 10 s), forever.
async fn publish_heard(client: Client, hub: Hub, grace: Duration, replica: LeaderConfig) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &replica.namespace);
    let name = heard_record_name(&replica.identity);
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    // Checked every second (at most every period): a node that arrived since the last record
    // (one moving here from a replica that died) is published at once rather than at the next
    // period, since the dead replica's record stops counting a grace after its last renewal.
    let mut tick = tokio::time::interval(period.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let namespaces = Api::all(client);
    let mut warned = false;
    let mut published: HashSet<String> = HashSet::new();
    let mut published_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let due = published_at.is_none_or(|at| at.elapsed() >= period);
        if !due && hub.connected_nodes().iter().all(|n| published.contains(n)) {
            continue;
        }
        // Connected or not: a node that just left counts as heard until its silence passes the
        // grace, as it would on a single cloudcore.
        let nodes = hub.heard_within(grace);
        let new = nodes.iter().filter(|n| !published.contains(*n)).count();
        published = nodes.iter().cloned().collect();
        let started = tokio::time::Instant::now();
        published_at = Some(started);
        let data = heard_data(&nodes, Timestamp::now());
        let patch = json!({"data": data});
        let written = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let record = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": replica.namespace,
                                 "labels": {HEARD_LABEL: "true"}},
                    "data": data});
                match serde_json::from_value::<ConfigMap>(record) {
                    Ok(cm) => {
                        let _ =
                            crate::leader::ensure_namespace(&namespaces, &replica.namespace).await;
                        api.create(&PostParams::default(), &cm).await.map(|_| ())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "building this replica's heard-nodes record");
                        return;
                    }
                }
            }
            other => other.map(|_| ()),
        };
        match written {
            Ok(()) => {
                warned = false;
                tracing::debug!(record = %name, nodes = nodes.len(), new, took = ?started.elapsed(), "published the nodes this replica hears");
            }
            // Once per outage: the leader counts these nodes as heard until the grace ends.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(record = %name, error = %e, "publishing the nodes this replica hears");
            }
            Err(_) => {}
        }
    }
}

/// The replicas' records, kept current by a watch.
fn watch_records(client: Client, namespace: &str) -> Store<ConfigMap> {
    kept_current(
        Api::namespaced(client, namespace),
        watcher::Config::default().labels(HEARD_LABEL),
        "watching the replicas' heard-nodes records",
    )
}

/// The nodes live replicas' records list, rebuilt when a record changes or expires.
///
/// A record is live for a grace from when this leader saw it renewed (as upstream's node
/// lifecycle times a Lease by when it saw `renewTime` change): through an API that runs at a
/// full core a renewal can take tens of seconds to land, and timed by its own `renewTime` it
/// would arrive already stale and its nodes be marked. One seen for the first time counts from
/// its `renewTime`, never from the future.
struct Records {
    store: Store<ConfigMap>,
    /// The live records the set was built from: name and resourceVersion.
    from: Vec<(String, String)>,
    heard: HashSet<String>,
    /// Each record's resourceVersion as last seen, and when this leader takes it renewed.
    renewed: Observed,
}

impl Records {
    fn new(store: Store<ConfigMap>) -> Records {
        Records {
            store,
            from: Vec::new(),
            heard: HashSet::new(),
            renewed: Observed::default(),
        }
    }

    /// How long ago this leader takes `record` (named `name`, at `version`) to have been renewed.
    fn observed_age(
        &mut self,
        name: &str,
        version: &str,
        record: &ConfigMap,
        grace: Duration,
        now: tokio::time::Instant,
    ) -> Duration {
        self.renewed
            .age(name, version, now, || Records::age(record).min(grace))
    }

    /// Forgets when records were seen renewed (leadership lost).
    fn forget(&mut self) {
        self.renewed.clear();
    }

    /// How long ago `record` was renewed (`Duration::MAX` when it does not say).
    fn age(record: &ConfigMap) -> Duration {
        record
            .data
            .as_ref()
            .and_then(|d| d.get("renewTime"))
            .and_then(|t| age_of(t))
            .unwrap_or(Duration::MAX)
    }

    /// Rebuilds the set from the records renewed within `grace`, if they changed.
    fn refresh(&mut self, grace: Duration) {
        let now = tokio::time::Instant::now();
        let state = self.store.state();
        // One record per replica: a handful, read every second.
        let names: HashSet<String> = state
            .iter()
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        self.renewed.retain(|n, _| names.contains(n));
        let mut live: Vec<(String, String, Arc<ConfigMap>)> = Vec::new();
        for r in state {
            let name = r.metadata.name.clone().unwrap_or_default();
            let rv = r.metadata.resource_version.clone().unwrap_or_default();
            if self.observed_age(&name, &rv, &r, grace, now) < grace {
                live.push((name, rv, r));
            }
        }
        live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let from: Vec<(String, String)> = live
            .iter()
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect();
        if from == self.from {
            return;
        }
        self.heard = live
            .iter()
            .filter_map(|(_, _, r)| r.data.as_ref()?.get("nodes"))
            .flat_map(|nodes| nodes.lines())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        tracing::debug!(records = ?from, nodes = self.heard.len(), "the live replicas' records changed");
        self.from = from;
    }

    /// Deletes records left unrenewed for [`RECORD_KEPT`] (replicas gone for good).
    async fn sweep(&self, client: &Client) {
        for r in self.store.state() {
            if Records::age(&r) < RECORD_KEPT {
                continue;
            }
            let (Some(name), Some(ns)) = (&r.metadata.name, &r.metadata.namespace) else {
                continue;
            };
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(record = %name, "deleted a replica's stale heard-nodes record")
                }
                Err(e) => tracing::debug!(record = %name, error = %e, "deleting a stale record"),
            }
        }
    }
}

/// How long ago node `name`'s Lease was renewed (`Duration::MAX` without one, or without
/// `leases`).
fn lease_age(leases: Option<&Store<Lease>>, name: &str) -> Duration {
    let Some(lease) = leases.and_then(|l| l.get(&ObjectRef::new(name).within("kube-node-lease")))
    else {
        return Duration::MAX;
    };
    let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
        return Duration::MAX;
    };
    since(renewed.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const GRACE: Duration = Duration::from_secs(40);

    fn node(beat: Option<SystemTime>) -> Value {
        let mut ready = json!({"type": "Ready", "status": "True"});
        if let Some(t) = beat {
            ready["lastHeartbeatTime"] = json!(kubeedge_core::store::rfc3339(t));
        }
        json!({"status": {"conditions": [ready]}})
    }

    fn record(renewed: SystemTime) -> ConfigMap {
        ConfigMap {
            data: Some(
                [(
                    "renewTime".to_owned(),
                    kubeedge_core::store::rfc3339(renewed),
                )]
                .into(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_record_counts_from_when_the_leader_saw_it_renewed() {
        let mut records = Records::new(reflector::store::<ConfigMap>().0);
        let t0 = tokio::time::Instant::now();
        let wall = SystemTime::now();
        // First seen: by its own time, never older than the grace nor from the future.
        let late = record(wall - Duration::from_secs(35));
        let age = records.observed_age("r1", "7", &late, GRACE, t0);
        assert_eq!(age.as_secs(), 35);
        let old = record(wall - GRACE * 5);
        assert_eq!(records.observed_age("r2", "3", &old, GRACE, t0), GRACE);
        let ahead = record(wall + Duration::from_secs(600));
        assert_eq!(
            records.observed_age("r3", "1", &ahead, GRACE, t0),
            Duration::ZERO
        );
        // A renewal that landed late (its renewTime already past the grace) counts from when it
        // was seen, for one grace.
        let landed = t0 + Duration::from_secs(20);
        let stale_on_arrival = record(wall - Duration::from_secs(50));
        assert_eq!(
            records.observed_age("r1", "8", &stale_on_arrival, GRACE, landed),
            Duration::ZERO
        );
        let later = landed + Duration::from_secs(39);
        assert!(records.observed_age("r1", "8", &stale_on_arrival, GRACE, later) < GRACE);
        let expired = landed + GRACE;
        assert!(records.observed_age("r1", "8", &stale_on_arrival, GRACE, expired) >= GRACE);
    }

    #[test]
    fn a_heartbeat_counts_for_one_grace_from_when_it_was_seen_change() {
        let mut beats = Heartbeats::default();
        let t0 = tokio::time::Instant::now();
        let wall = SystemTime::now();
        // Never reported a heartbeat, or reported it long ago: silent.
        assert!(!beats.fresh("a", &node(None), GRACE, t0));
        assert!(!beats.fresh("b", &node(Some(wall - GRACE * 3)), GRACE, t0));
        // Seen first 10 s after the edge's time: fresh for the rest of the grace.
        let recent = node(Some(wall - Duration::from_secs(10)));
        assert!(beats.fresh("c", &recent, GRACE, t0));
        assert!(beats.fresh("c", &recent, GRACE, t0 + Duration::from_secs(29)));
        assert!(!beats.fresh("c", &recent, GRACE, t0 + Duration::from_secs(31)));
        // A new heartbeat counts from when it is seen, whatever the edge's clock says of it.
        let late_clock = node(Some(wall - Duration::from_secs(3600)));
        let seen = t0 + Duration::from_secs(100);
        assert!(!beats.fresh("b", &node(Some(wall - GRACE * 3)), GRACE, seen));
        assert!(beats.fresh("b", &late_clock, GRACE, seen));
        assert!(beats.fresh("b", &late_clock, GRACE, seen + GRACE / 2));
        assert!(!beats.fresh("b", &late_clock, GRACE, seen + GRACE));
        // A clock running ahead gains at most one grace.
        let ahead = node(Some(wall + Duration::from_secs(3600)));
        assert!(beats.fresh("d", &ahead, GRACE, t0));
        assert!(!beats.fresh("d", &ahead, GRACE, t0 + GRACE));
    }
}
