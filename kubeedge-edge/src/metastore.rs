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

use std::path::Path;

use kubeedge_core::message::{Message, ResourceType};
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
}

impl MetaStore {
    /// Opens (or creates) the metastore at `path`.
    pub fn open(path: &Path) -> Result<MetaStore, store::Error> {
        Ok(MetaStore {
            store: Store::open(path, store::Config::default())?,
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
        let mut ops = Vec::new();
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            match Self::ops(c) {
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

    /// Stores a status message in the durable upstream queue (replacing an older one for the same
    /// resource).
    pub fn queue_uplink(&self, message: &Message) -> Result<(), store::Error> {
        self.store.batch(vec![BatchOp::SetAux {
            key: format!("{UPLINK_PREFIX}{}", message.route.resource),
            value: message.to_json(),
        }])?;
        Ok(())
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
