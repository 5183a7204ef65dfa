//! The node's own status: registers its Node (labels `node-role.kubernetes.io/edge` and
//! `node-role.kubernetes.io/agent`), renews its Lease every 10 s (40 s duration, as the kubelet),
//! and reports its status when it changes, on every (re)connect to the cloud (so that a node the
//! cloud marked Unknown turns Ready as soon as it is back), within a renewal period when the Node
//! the cloud sends says it is not Ready while it is connected (a mark made while the cloud could
//! not see it), and at least every 5 minutes.

use std::time::{Duration, SystemTime};

use kubeedge_core::message::Operation;
use kubeedge_core::store::rfc3339;
use serde_json::{Value, json};

use crate::edgehub::{EdgeHub, LeaseState, status_message};

/// The kubelet version this edge reports.
pub const KUBELET_VERSION: &str = concat!("v1.32.10-kubeedge-rs-", env!("CARGO_PKG_VERSION"));
/// Lease duration.
pub const LEASE_SECONDS: u64 = 40;
/// Lease renewal period.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Longest time between two status reports.
pub const STATUS_REPORT: Duration = Duration::from_secs(300);

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The kubelet port edge nodes report (upstream KubeEdge's), for the API server's DNAT rule.
pub const KUBELET_PORT: u16 = 10350;

/// The status this machine reports: capacity, addresses, nodeInfo (every field the Kubernetes
/// clients require), and Ready.
pub fn machine_status(address: &str, runtime_version: &str) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = meminfo_kib("MemTotal:").unwrap_or(0);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let resources =
        json!({"cpu": cpus.to_string(), "memory": format!("{memory}Ki"), "pods": "110"});
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": address},
                      {"type": "Hostname", "address": read_trim("/proc/sys/kernel/hostname")}],
        // Nothing listens there: as upstream's edges, the port the API server's DNAT rule for
        // this node matches (cloudcore serves the kubelet API, see kubeedge_cloud::kubelet).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "architecture": arch,
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "containerRuntimeVersion": runtime_version,
            "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
            "kubeProxyVersion": "",
            "kubeletVersion": KUBELET_VERSION,
            "machineID": read_trim("/etc/machine-id"),
            "operatingSystem": std::env::consts::OS,
            "osImage": os_image(),
            "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
        },
    })
}

fn ready(now: &str) -> Value {
    json!([{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
            "lastTransitionTime": now}])
}

/// Whether the Node the cloud sent last says this node is not Ready (a Ready condition whose
/// status is not `True`).
fn marked_not_ready(hub: &EdgeHub, node: &str) -> bool {
    hub.store()
        .store()
        .get("nodes", None, node)
        .is_ok_and(|n| not_ready(&n))
}

/// Whether `node` (a Node object) has a Ready condition that is not `True`.
pub fn not_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] != "True")
}

/// Registers the node, then keeps its lease and status current, forever.
pub async fn run(hub: EdgeHub, node: String, address: String, runtime_version: String) {
    let started = rfc3339(SystemTime::now());
    let mut status = machine_status(&address, &runtime_version);
    status["conditions"] = ready(&started);
    let registration = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {
            "node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": "",
            "kubernetes.io/hostname": node, "kubernetes.io/os": std::env::consts::OS}},
        "status": status,
    });
    if let Err(e) = hub
        .report(status_message(
            Operation::Insert,
            format!("null/node/{node}"),
            registration,
        ))
        .await
    {
        tracing::error!(error = %e, "queueing the node registration");
    }
    // The registration carries the status: the first report is the next change (or reconnect).
    let mut last_status = machine_status(&address, &runtime_version);
    let mut last_report = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    let mut connections = hub.connections();
    connections.mark_unchanged();
    loop {
        let reconnected = tokio::select! {
            _ = tick.tick() => false,
            // `hub` holds the sender, so this cannot end while the loop runs. The first
            // connection carries the registration itself.
            changed = connections.changed() => {
                changed.is_ok() && *connections.borrow_and_update() > 1
            }
        };
        let now = rfc3339(SystemTime::now());
        let mut lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": now.replace('Z', ".000000Z")}});
        // As the kubelet's lease controller: update from the version the cloud last answered,
        // create when the cloud has none (an upstream cloud answers 404 then), read it again
        // after a conflict.
        let operation = match hub.lease_state() {
            LeaseState::Unknown => Operation::Update,
            LeaseState::Version(rv) => {
                lease["metadata"]["resourceVersion"] = json!(rv);
                Operation::Update
            }
            LeaseState::Missing => Operation::Insert,
            LeaseState::Stale => {
                hub.lease_reread();
                lease = Value::Null;
                Operation::Query
            }
        };
        if let Err(e) = hub
            .report(status_message(
                operation,
                format!("kube-node-lease/lease/{node}"),
                lease,
            ))
            .await
        {
            tracing::warn!(error = %e, "queueing the lease renewal");
        }
        let current = machine_status(&address, &runtime_version);
        // As the kubelet compares with the API's copy: a connected node whose Node the cloud
        // marked not Ready (its leader may have missed it while the API was overloaded) says
        // otherwise at the next tick, not at the next five-minute report.
        let contradicted = hub.is_connected() && marked_not_ready(&hub, &node);
        if reconnected
            || contradicted
            || current != last_status
            || last_report.elapsed() >= STATUS_REPORT
        {
            let mut status = current.clone();
            status["conditions"] = ready(&now);
            let patch = json!({"status": status}).to_string();
            if let Err(e) = hub
                .report(status_message(
                    Operation::Patch,
                    format!("null/nodepatch/{node}"),
                    json!(patch),
                ))
                .await
            {
                tracing::warn!(error = %e, "queueing the node status");
            }
            last_status = current;
            last_report = tokio::time::Instant::now();
        }
    }
}
