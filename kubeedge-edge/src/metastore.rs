//! The metastore: every object the cloud sent, persisted before it is acked, in the same redb
//! [`Store`] the metaserver serves (so local clients list and watch exactly what was acked).
//!
//! Beside the objects, in the same transactions ([`BatchOp`] auxiliary records):
//! * `sync/<key>` → the cloud's version of each synced object (the inventory the edge reports after
//!   a reconnect, so the cloud resends only what differs);
//! * `uplink/<key>` → the latest status message for each key not yet acked by the cloud (the
//!   durable upstream queue: latest per object wins, survives restarts, flushed on reconnect).
//!
//! Objects keep the cloud's identity (uid, creationTimestamp, labels); their `resourceVersion` is
//! the local store's, monotonic across restarts, so a local watch resumes where it left off.
//!
//! The node's own view is the truth while the cloud has not confirmed it: a pod or node status
//! queued for the cloud is written into the local object in the same transaction (local clients
//! see it at once, offline too), and laid over any copy of that object the cloud sends until the
//! cloud has taken the status.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kubeedge_core::kubeapi::patch;
use kubeedge_core::message::{Message, Operation, ResourceType};
use kubeedge_core::resource::ObjectRef;
use kubeedge_core::store::{self, BatchOp, Store};
use serde_json::Value;

const SYNC_PREFIX: &str = "sync/";
const UPLINK_PREFIX: &str = "uplink/";

/// Where objects of an edge resource type live in the store (`pod` → `pods`, ...); `None` for types
/// the edge keeps no objects of.
pub fn store_resource(kind: &ResourceType) -> Option<&'static str> {
    Some(match kind {
        ResourceType::Pod => "pods",
        ResourceType::ConfigMap => "configmaps",
        ResourceType::Secret => "secrets",
        ResourceType::Service => "services",
        ResourceType::Endpoints => "endpoints",
        ResourceType::EndpointSlice => "endpointslices.discovery.k8s.io",
        ResourceType::Node => "nodes",
        ResourceType::Lease => "leases.coordination.k8s.io",
        ResourceType::Event => "events",
        ResourceType::Device => "devices.devices.kubeedge.io",
        ResourceType::DeviceModel => "devicemodels.devices.kubeedge.io",
        _ => return None,
    })
}

/// One change from the cloud, as the sync session hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Edge-form key (`<ns>/<type>/<name>`).
    pub key: String,
    /// The cloud's version.
    pub version: Option<u64>,
    /// Whether the object is deleted.
    pub deleted: bool,
    /// The object (ignored for deletes).
    pub object: Value,
}

/// The metastore. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaStore {
    store: Store,
    /// Held across each read-then-write of an object (a status laid over the cloud's copy), so
    /// that a change from the cloud and a local status never overwrite each other.
    writing: Arc<Mutex<()>>,
}

/// The status kinds the node writes, and the store resource of the object each one patches.
fn status_target(kind: &ResourceType) -> Option<(ResourceType, &'static str)> {
    match kind {
        ResourceType::PodPatch | ResourceType::PodStatus => Some((ResourceType::Pod, "pods")),
        ResourceType::NodePatch | ResourceType::NodeStatus => Some((ResourceType::Node, "nodes")),
        _ => None,
    }
}

/// The `status` a queued status message sets, if it is one (`podpatch`/`nodepatch` carry a JSON
/// patch as a string, `podstatus`/`nodestatus` the status object or an object holding it).
fn queued_status(message: &Message) -> Option<Value> {
    if !matches!(
        message.route.operation,
        Operation::Patch | Operation::Update | Operation::Insert
    ) {
        return None;
    }
    let content = match &message.content {
        Value::String(text) => serde_json::from_str::<Value>(text).ok()?,
        other => other.clone(),
    };
    match content.get("status") {
        Some(status) if status.is_object() => Some(status.clone()),
        _ => None,
    }
}

impl MetaStore {
    /// Opens (or creates) the metastore at `path`.
    pub fn open(path: &Path) -> Result<MetaStore, store::Error> {
        Ok(MetaStore {
            store: Store::open(path, store::Config::default())?,
            writing: Arc::new(Mutex::new(())),
        })
    }

    /// The store underneath (what the metaserver serves).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every synced object's key and cloud version.
    pub fn inventory(&self) -> Result<Vec<(String, Option<u64>)>, store::Error> {
        Ok(self
            .store
            .aux_scan(SYNC_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                let version = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
                (k[SYNC_PREFIX.len()..].to_owned(), version)
            })
            .collect())
    }

    fn ops(change: &Change) -> Result<Vec<BatchOp>, store::Error> {
        let target: ObjectRef = change
            .key
            .parse()
            .map_err(|e| store::Error::Invalid(format!("{e}")))?;
        let name = target
            .name
            .clone()
            .ok_or_else(|| store::Error::Invalid(format!("{} names no object", change.key)))?;
        let sync_key = format!("{SYNC_PREFIX}{}", change.key);
        let mut ops = Vec::with_capacity(2);
        let resource = store_resource(&target.kind);
        if change.deleted {
            if let Some(resource) = resource {
                ops.push(BatchOp::Remove {
                    resource: resource.to_owned(),
                    namespace: target.namespace.clone(),
                    name,
                });
            }
            ops.push(BatchOp::RemoveAux { key: sync_key });
        } else {
            if let Some(resource) = resource {
                let mut object = change.object.clone();
                if !object.is_object() {
                    return Err(store::Error::Invalid(format!(
                        "{} carries no object",
                        change.key
                    )));
                }
                object["metadata"]["name"] = Value::String(name);
                ops.push(BatchOp::Put {
                    resource: resource.to_owned(),
                    namespace: target.namespace.clone(),
                    object,
                });
            }
            ops.push(BatchOp::SetAux {
                key: sync_key,
                value: change
                    .version
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            });
        }
        for op in &ops {
            op.check()?;
        }
        Ok(ops)
    }

    /// Persists `changes` in one transaction (group commit). Returns, per change, whether it was
    /// stored: a change that cannot be stored (no object, an invalid name) is left out and the
    /// others still commit.
    pub fn apply(&self, changes: &[Change]) -> Result<Vec<Result<(), store::Error>>, store::Error> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut ops = Vec::new();
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            match Self::ops(c).and_then(|o| self.with_queued_status(o)) {
                Ok(o) => {
                    ops.extend(o);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if !ops.is_empty() {
            self.store.batch(ops)?;
        }
        Ok(results)
    }

    /// Lays the status the node has queued for an object over the cloud's copy of it: until the
    /// cloud has taken the node's status, the node's own view is the one served locally.
    fn with_queued_status(&self, mut ops: Vec<BatchOp>) -> Result<Vec<BatchOp>, store::Error> {
        for op in &mut ops {
            let BatchOp::Put {
                resource,
                namespace,
                object,
            } = op
            else {
                continue;
            };
            let kind = match resource.as_str() {
                "pods" => "podpatch",
                "nodes" => "nodepatch",
                _ => continue,
            };
            let ns = namespace.as_deref().unwrap_or("null");
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let Some(status) = self
                .queued_uplink(&format!("{ns}/{kind}/{name}"))?
                .as_ref()
                .and_then(queued_status)
            else {
                continue;
            };
            patch::merge(&mut object["status"], &status);
        }
        Ok(ops)
    }

    /// Stores a status message in the durable upstream queue (replacing an older one for the same
    /// resource). A pod or node status is also written into the local object, in the same
    /// transaction, so that local clients see the node's own view at once.
    pub fn queue_uplink(&self, message: &Message) -> Result<(), store::Error> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut ops = vec![BatchOp::SetAux {
            key: format!("{UPLINK_PREFIX}{}", message.route.resource),
            value: message.to_json(),
        }];
        if let Some(put) = self.local_status(message)? {
            ops.push(put);
        }
        self.store.batch(ops)?;
        Ok(())
    }

    /// The local object with the status `message` reports laid over it; `None` if `message` is
    /// no status, or the object is not here (yet).
    fn local_status(&self, message: &Message) -> Result<Option<BatchOp>, store::Error> {
        let Ok(target) = message.route.resource.parse::<ObjectRef>() else {
            return Ok(None);
        };
        let (Some((_, resource)), Some(name)) = (status_target(&target.kind), &target.name) else {
            return Ok(None);
        };
        let Some(status) = queued_status(message) else {
            return Ok(None);
        };
        let namespace = target.namespace.filter(|_| resource != "nodes");
        let mut object = match self.store.get(resource, namespace.as_deref(), name) {
            Ok(object) => object,
            Err(store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let before = object["status"].clone();
        patch::merge(&mut object["status"], &status);
        if object["status"] == before {
            return Ok(None);
        }
        Ok(Some(BatchOp::Put {
            resource: resource.to_owned(),
            namespace,
            object,
        }))
    }

    /// The entry queued for `key` (a status resource such as `<ns>/podpatch/<name>`), if any.
    pub fn queued_uplink(&self, key: &str) -> Result<Option<Message>, store::Error> {
        Ok(self
            .store
            .aux_get(&format!("{UPLINK_PREFIX}{key}"))?
            .and_then(|bytes| Message::from_json(&bytes, usize::MAX).ok()))
    }

    /// The cloud handled `key` up to sequence `seq`: drops the queued entry unless it is newer.
    pub fn uplink_done(&self, key: &str, seq: Option<u64>) -> Result<(), store::Error> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let k = format!("{UPLINK_PREFIX}{key}");
        let Some(bytes) = self.store.aux_get(&k)? else {
            return Ok(());
        };
        let queued = Message::from_json(&bytes, usize::MAX)
            .ok()
            .and_then(|m| m.header.resource_version.parse::<u64>().ok());
        let newer = matches!((queued, seq), (Some(q), Some(s)) if q > s);
        if !newer {
            self.store.batch(vec![BatchOp::RemoveAux { key: k }])?;
        }
        Ok(())
    }

    /// Everything still queued for the cloud, in key order (after a restart: enqueue it again).
    pub fn queued_uplinks(&self) -> Result<Vec<Message>, store::Error> {
        Ok(self
            .store
            .aux_scan(UPLINK_PREFIX)?
            .into_iter()
            .filter_map(|(k, v)| match Message::from_json(&v, usize::MAX) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(key = k, error = %e, "dropping an unreadable queued status");
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edgehub::status_message;
    use serde_json::json;

    fn pod(phase: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "app", "namespace": "default", "uid": "u1"},
               "spec": {"nodeName": "e1"}, "status": {"phase": phase}})
    }

    fn from_cloud(object: Value, version: u64) -> Change {
        Change {
            key: "default/pod/app".into(),
            version: Some(version),
            deleted: false,
            object,
        }
    }

    fn phase(store: &MetaStore) -> Value {
        store.store().get("pods", Some("default"), "app").unwrap()["status"]["phase"].clone()
    }

    #[test]
    fn a_queued_status_is_the_local_view_until_the_cloud_takes_it() {
        let dir = std::env::temp_dir().join(format!(
            "metastore-status-{}-{}",
            std::process::id(),
            kubeedge_core::transport::driver::random_seed()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = MetaStore::open(&dir.join("edge.redb")).unwrap();
        store.apply(&[from_cloud(pod("Pending"), 1)]).unwrap();

        // The node reports Running: the local object says so at once.
        let mut report = status_message(
            Operation::Patch,
            "default/podpatch/app",
            json!(json!({"status": {"phase": "Running", "podIP": "10.0.0.2"}}).to_string()),
        );
        report.header.resource_version = "7".into();
        store.queue_uplink(&report).unwrap();
        assert_eq!(phase(&store), "Running");

        // A copy from the cloud that predates the report does not take it back.
        store.apply(&[from_cloud(pod("Pending"), 2)]).unwrap();
        assert_eq!(phase(&store), "Running");
        let served = store.store().get("pods", Some("default"), "app").unwrap();
        assert_eq!(served["status"]["podIP"], "10.0.0.2");

        // Once the cloud has it, the cloud's copy is served as sent.
        store.uplink_done("default/podpatch/app", Some(7)).unwrap();
        store.apply(&[from_cloud(pod("Succeeded"), 3)]).unwrap();
        assert_eq!(phase(&store), "Succeeded");

        // A status for an object the node does not hold creates nothing.
        let other = status_message(
            Operation::Patch,
            "default/podpatch/ghost",
            json!(json!({"status": {"phase": "Running"}}).to_string()),
        );
        store.queue_uplink(&other).unwrap();
        assert!(store.store().get("pods", Some("default"), "ghost").is_err());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
