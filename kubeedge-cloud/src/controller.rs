//! The controllers: kube-rs watchers that feed every synced kind into the [`Index`], the same code
//! against a real cluster or the embedded control plane.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use crate::index::{Index, Kind};

/// The kube-rs resource description of a kind.
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version, k, plural) = kind.gvk();
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, k), plural)
}

/// A dynamic API handle for `kind`, across all namespaces.
pub fn api_all(client: &Client, kind: Kind) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &api_resource(kind))
}

/// A dynamic API handle for `kind` in `namespace` (ignored for cluster-scoped kinds).
pub fn api_in(client: &Client, kind: Kind, namespace: &str) -> Api<DynamicObject> {
    if kind.namespaced() {
        Api::namespaced_with(client.clone(), namespace, &api_resource(kind))
    } else {
        api_all(client, kind)
    }
}

/// The object as JSON, with `apiVersion` and `kind` set (list items often lack them).
pub fn to_value(kind: Kind, obj: DynamicObject) -> Value {
    let (group, version, k, _) = kind.gvk();
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        let api_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(k.to_owned()));
    }
    v
}

/// Watches `kind` forever (re-listing after errors, with backoff), keeping the index current.
pub async fn watch_kind(client: Client, index: Arc<Index>, kind: Kind) {
    let mut stream = watcher::watcher(api_all(&client, kind), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut init: Option<Vec<Value>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(ev) => {
                if failing && !matches!(ev, Event::Init | Event::InitApply(_)) {
                    tracing::info!(?kind, "watch recovered");
                    failing = false;
                }
                match ev {
                    Event::Init => init = Some(Vec::new()),
                    Event::InitApply(o) => init.get_or_insert_default().push(to_value(kind, o)),
                    Event::InitDone => index.replace_all(kind, init.take().unwrap_or_default()),
                    Event::Apply(o) => index.apply(kind, to_value(kind, o)),
                    Event::Delete(o) => index.delete(kind, &to_value(kind, o)),
                }
            }
            Err(e) => {
                // Devices are served only once their CRD is installed: say so once, quietly.
                if !failing {
                    if matches!(kind, Kind::Device | Kind::DeviceModel) {
                        tracing::info!(error = %e, "devices are not served (yet); retrying");
                    } else {
                        tracing::warn!(?kind, error = %e, "watch failed; retrying");
                    }
                }
                failing = true;
            }
        }
    }
}

/// Starts a watcher per synced kind; they stop when the returned handles are aborted.
pub fn start(client: &Client, index: &Arc<Index>) -> Vec<tokio::task::JoinHandle<()>> {
    Kind::ALL
        .iter()
        .map(|&kind| tokio::spawn(watch_kind(client.clone(), index.clone(), kind)))
        .collect()
}
