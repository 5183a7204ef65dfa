//! Service discovery: list/watch of Services, EndpointSlices and (where the API has them) Istio
//! DestinationRules on the local Kubernetes API, folded into a [`Table`].
//!
//! At the edge the API is edgecore's metaserver, which serves from the edge's own store, so
//! discovery keeps working while the cloud is unreachable; in the cloud it is the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::lb::Policy;
use crate::table::Table;

/// The newest table, with whether every watch has listed once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The table.
    pub table: Arc<Table>,
    /// Whether Services and EndpointSlices have both been listed (before that, the table may miss
    /// Services that exist).
    pub synced: bool,
}

/// Receives each new [`Snapshot`].
pub type Tables = watch::Receiver<Snapshot>;

enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Rule(Box<Event<DynamicObject>>),
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    rules: BTreeMap<String, DynamicObject>,
    init: [Option<BTreeMap<String, ()>>; 3],
    listed: [bool; 3],
}

fn key(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Applies one watch event to `map`; `init` collects the keys of a relist so that objects gone
/// meanwhile are dropped at its end. Returns whether the list finished.
fn apply<K: kube::Resource>(
    map: &mut BTreeMap<String, K>,
    init: &mut Option<BTreeMap<String, ()>>,
    ev: Event<K>,
) -> bool {
    match ev {
        Event::Apply(o) => {
            map.insert(key(o.meta()), o);
        }
        Event::Delete(o) => {
            map.remove(&key(o.meta()));
        }
        Event::Init => *init = Some(BTreeMap::new()),
        Event::InitApply(o) => {
            let k = key(o.meta());
            if let Some(seen) = init.as_mut() {
                seen.insert(k.clone(), ());
            }
            map.insert(k, o);
        }
        Event::InitDone => {
            if let Some(seen) = init.take() {
                map.retain(|k, _| seen.contains_key(k));
            }
            return true;
        }
    }
    false
}

/// The DestinationRule resource (`networking.istio.io/v1alpha3`).
fn destination_rules() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "DestinationRule"),
        "destinationrules",
    )
}

/// The policies the DestinationRules set, by the namespace and name of the Service their `host`
/// names (`name`, `name.ns`, `name.ns.svc…`).
fn policies(rules: &BTreeMap<String, DynamicObject>) -> HashMap<(String, String), Policy> {
    let mut out = HashMap::new();
    for rule in rules.values() {
        let ns = rule.metadata.namespace.clone().unwrap_or_default();
        let spec = &rule.data["spec"];
        let Some(host) = spec["host"].as_str() else {
            continue;
        };
        let mut parts = host.split('.');
        let name = parts.next().unwrap_or_default().to_owned();
        let ns = parts.next().map_or(ns, str::to_owned);
        if let Some(p) = Policy::from_destination_rule(&spec["trafficPolicy"]["loadBalancer"]) {
            out.insert((ns, name), p);
        }
    }
    out
}

/// Starts watching through `client`; the returned receiver always holds the newest snapshot.
/// DestinationRules are watched only when the API serves them. The task ends when every receiver
/// is dropped.
pub async fn spawn(client: kube::Client) -> (Tables, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let config = watcher::Config::default();
    let services = watcher::watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|r| r.map(|e| Change::Service(Box::new(e))));
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|r| r.map(|e| Change::Slice(Box::new(e))));
    let ar = destination_rules();
    let rules_api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let with_rules = rules_api
        .list(&ListParams::default().limit(1))
        .await
        .is_ok();
    let mut streams = vec![services.boxed(), slices.boxed()];
    if with_rules {
        streams.push(
            watcher::watcher(rules_api, config)
                .default_backoff()
                .map(|r| r.map(|e| Change::Rule(Box::new(e))))
                .boxed(),
        );
    } else {
        tracing::debug!("the API serves no DestinationRules: policies come from annotations");
    }
    let mut state = State {
        listed: [false, false, !with_rules],
        ..State::default()
    };
    let mut events = futures_util::stream::select_all(streams);
    let task = tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                ev = events.next() => ev,
                () = tx.closed() => return,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while let Some(Some(ev)) = events.next().now_or_never() {
                batch.push(ev);
                if batch.len() >= 1024 {
                    break;
                }
            }
            for ev in batch {
                match ev {
                    Ok(Change::Service(ev)) => {
                        state.listed[0] |= apply(&mut state.services, &mut state.init[0], *ev)
                    }
                    Ok(Change::Slice(ev)) => {
                        state.listed[1] |= apply(&mut state.slices, &mut state.init[1], *ev)
                    }
                    Ok(Change::Rule(ev)) => {
                        state.listed[2] |= apply(&mut state.rules, &mut state.init[2], *ev)
                    }
                    Err(e) => tracing::warn!(error = %e, "mesh discovery: watch failed, retrying"),
                }
            }
            let table = Table::build(
                state.services.values(),
                state.slices.values(),
                &policies(&state.rules),
            );
            let snapshot = Snapshot {
                table: Arc::new(table),
                synced: state.listed.iter().all(|l| *l),
            };
            if tx.send(snapshot).is_err() {
                return;
            }
        }
    });
    (rx, task)
}
