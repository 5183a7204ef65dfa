//! Node lifecycle: an edge node not heard from for longer than a grace period turns
//! `Ready=Unknown` (every condition it reported becomes Unknown, reason `NodeStatusUnknown`), as
//! the Kubernetes node lifecycle controller does. Its pods are left alone: no taints, no eviction
//! (edge pods keep running offline, and the edge reports their real state when it is back).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::controller::api_in;
use crate::hub::Hub;
use crate::index::{Index, Kind, meta};

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
pub async fn run(client: Client, index: Arc<Index>, hub: Hub, grace: Duration) {
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for node in index.edge_nodes() {
            let name = meta(&node, "name");
            if hub.silent_for(name) < grace {
                continue;
            }
            let now = kubeedge_core::store::rfc3339(std::time::SystemTime::now());
            let Some(conditions) = unknown_conditions(&node, &now) else {
                continue;
            };
            // The edge may have spoken meanwhile: its own report wins.
            if hub.silent_for(name) < grace {
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
