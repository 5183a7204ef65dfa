//! Node lifecycle: an edge node not heard from for longer than a grace period turns
//! `Ready=Unknown` (every condition it reported becomes Unknown, reason `NodeStatusUnknown`), as
//! the Kubernetes node lifecycle controller does. Its pods are left alone: no taints, no eviction
//! (edge pods keep running offline, and the edge reports their real state when it is back).
//!
//! With several cloudcore replicas, only the leader ([`crate::leader`]) marks nodes, and a node
//! counts as heard from when this replica heard it or when its Lease (`kube-node-lease`, renewed
//! through whichever replica holds its connection) was renewed within the grace period. Every
//! cloudcore that shares an API with replicas must be one (`Config::replica`): one that is not
//! would mark the nodes it does not hear.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::controller::api_in;
use crate::hub::Hub;
use crate::index::{Index, Kind, meta};
use crate::leader::Leadership;

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
/// which it does on every reconnect.
pub async fn run(
    client: Client,
    index: Arc<Index>,
    hub: Hub,
    grace: Duration,
    leadership: Leadership,
    replicated: bool,
) {
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only replicas need the Leases (a single cloudcore hears every node itself).
    let leases = replicated.then(|| watch_leases(client.clone()));
    // Heard from within the grace: by this replica, or (replicas) through its Lease.
    let heard =
        |name: &str| hub.silent_for(name) < grace || lease_age(leases.as_ref(), name) < grace;
    loop {
        tick.tick().await;
        if !leadership.is_leader() {
            continue;
        }
        for node in index.edge_nodes() {
            let name = meta(&node, "name");
            if heard(name) {
                continue;
            }
            let now = kubeedge_core::store::rfc3339(std::time::SystemTime::now());
            let Some(conditions) = unknown_conditions(&node, &now) else {
                continue;
            };
            // The edge may have spoken meanwhile: its own report wins.
            if heard(name) {
                continue;
            }
            let patch = json!({"status": {"conditions": conditions}});
            match api_in(&client, Kind::Node, "")
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(
                    node = name,
                    silent = ?hub.silent_for(name),
                    "node silent past its grace period: Ready=Unknown"
                ),
                Err(e) => tracing::warn!(node = name, error = %e, "marking a node unreachable"),
            }
        }
    }
}

/// The node Leases (`kube-node-lease`), kept current by a watch.
fn watch_leases(client: Client) -> Store<Lease> {
    let (reader, writer) = reflector::store();
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "watching node leases");
            }
        }
    });
    reader
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
    let ms = k8s_openapi::jiff::Timestamp::now().as_millisecond() - renewed.0.as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
