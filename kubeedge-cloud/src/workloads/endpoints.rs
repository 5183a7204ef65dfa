//! Service endpoints: for every Service with a selector, the EndpointSlice (`<service>-<suffix>`,
//! labelled `kubernetes.io/service-name` and managed by `endpointslice-controller.k8s.io`) and the
//! Endpoints object (named as the Service) list the selected pods that have an IP: each with its
//! node name, its readiness, and the ports the Service's `targetPort`s resolve to (a named target
//! port by the pod's container port of that name). Pods being deleted leave. Services without a
//! selector keep whatever endpoints their users write.

use std::collections::BTreeMap;
use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::Event;
use serde_json::{Value, json};

use super::{
    Cache, Controller, Ctx, ENDPOINTS, Key, PODS, SERVICES, SLICES, key_of, meta, owner_ref,
    random_suffix, ready, selector, terminating,
};

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The EndpointSlice label naming its controller.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY_LABEL`].
pub const MANAGER: &str = "endpointslice-controller.k8s.io";

/// One Endpoints subset being built: ready addresses, not-ready addresses, ports.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// The endpoints controller.
#[derive(Debug, Default)]
pub struct EndpointsController;

/// The port a Service port reaches on `pod`: a number as given, a name through the pod's
/// containers' named ports (`None` when the pod has no port of that name).
fn target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    match &service_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64())
            .or_else(|| name.parse().ok()),
        _ => service_port["port"].as_i64(),
    }
}

impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn kind(&self) -> Kind<'static> {
        SERVICES
    }

    fn affected(&mut self, cache: &Cache, ev: &Event) -> Vec<Key> {
        let ns = ev.namespace.clone().unwrap_or_default();
        match ev.resource.as_str() {
            "pods" => cache
                .list(SERVICES, Some(&ns))
                .iter()
                .filter(|s| {
                    s["spec"]["selector"]
                        .as_object()
                        .is_some_and(|sel| !sel.is_empty())
                        && selector(&json!({"matchLabels": s["spec"]["selector"]}))
                            .is_some_and(|sel| sel.matches(&ev.object))
                })
                .map(|s| key_of(s))
                .collect(),
            // Someone changed or removed what this controller keeps: put it back.
            "endpoints" => vec![(ns, ev.name.clone())],
            "endpointslices.discovery.k8s.io" => ev.object["metadata"]["labels"]
                [SERVICE_NAME_LABEL]
                .as_str()
                .filter(|_| ev.object["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGER)
                .map(|s| vec![(ns, s.to_owned())])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let (ns, name) = key;
        let slices: Vec<_> = ctx
            .cache
            .list(SLICES, Some(ns))
            .into_iter()
            .filter(|s| {
                s["metadata"]["labels"][SERVICE_NAME_LABEL] == name.as_str()
                    && s["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGER
            })
            .collect();
        let Some(svc) = ctx.cache.get(SERVICES, ns, name) else {
            // The Service is gone: so are its endpoints (also done by the garbage collector).
            for s in slices {
                ctx.delete(SLICES, ns, meta(&s, "name"), &json!({}))?;
            }
            return Ok(None);
        };
        let Some(sel) = svc["spec"]["selector"]
            .as_object()
            .filter(|s| !s.is_empty())
            .and_then(|s| selector(&json!({"matchLabels": s})))
        else {
            return Ok(None);
        };
        if terminating(&svc) {
            return Ok(None);
        }
        let ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let mut pods: Vec<_> = ctx
            .cache
            .list(PODS, Some(ns))
            .into_iter()
            .filter(|p| sel.matches(p) && !terminating(p))
            .filter(|p| {
                p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| !ip.is_empty())
            })
            .collect();
        pods.sort_by_key(|p| meta(p, "name").to_owned());
        // Endpoints group addresses by the ports they resolve to; the slice takes the first set.
        let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
        let mut slice_endpoints = Vec::new();
        let mut slice_ports: Option<Vec<Value>> = None;
        for p in &pods {
            let resolved: Vec<Value> = ports
                .iter()
                .filter_map(|sp| {
                    let port = target_port(sp, p)?;
                    let mut v =
                        json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                        v["name"] = json!(n);
                    }
                    Some(v)
                })
                .collect();
            let ip = p["status"]["podIP"].as_str().unwrap_or_default();
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let target = json!({"kind": "Pod", "name": meta(p, "name"), "namespace": ns, "uid": meta(p, "uid")});
            let address = json!({"ip": ip, "nodeName": node, "targetRef": target});
            let entry = subsets
                .entry(serde_json::to_string(&resolved).unwrap_or_default())
                .or_insert_with(|| (Vec::new(), Vec::new(), resolved.clone()));
            if ready(p) {
                entry.0.push(address);
            } else {
                entry.1.push(address);
            }
            if slice_ports.is_none() {
                slice_ports = Some(resolved.clone());
            }
            if slice_ports.as_ref() == Some(&resolved) {
                let r = ready(p);
                slice_endpoints.push(json!({
                    "addresses": [ip], "nodeName": node, "targetRef": target,
                    "conditions": {"ready": r, "serving": r, "terminating": false},
                }));
            }
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .map(|(ready, not_ready, ports)| {
                let mut s = json!({"ports": ports});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                s
            })
            .collect();
        let labels = svc["metadata"]["labels"].clone();
        // Endpoints.
        let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns}, "subsets": subsets});
        if labels.is_object() {
            endpoints["metadata"]["labels"] = labels.clone();
        }
        match ctx.cache.get(ENDPOINTS, ns, name) {
            Some(current)
                if current["subsets"] == endpoints["subsets"]
                    || current["subsets"].is_null() && subsets_empty(&endpoints) => {}
            Some(current) => {
                let mut next = (*current).clone();
                next["subsets"] = endpoints["subsets"].clone();
                ctx.update(ENDPOINTS, next, false)?;
            }
            None => {
                ctx.create(ENDPOINTS, ns, endpoints)?;
            }
        }
        // The EndpointSlice.
        let mut slice_labels = if labels.is_object() {
            labels
        } else {
            json!({})
        };
        slice_labels[SERVICE_NAME_LABEL] = json!(name);
        slice_labels[MANAGED_BY_LABEL] = json!(MANAGER);
        let want_ports = slice_ports.unwrap_or_else(|| {
            ports
                .iter()
                .map(|sp| {
                    let mut v = json!({"protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect()
        });
        let mut slices = slices.into_iter();
        match slices.next() {
            Some(current) => {
                if current["endpoints"] != json!(slice_endpoints)
                    || current["ports"] != json!(want_ports)
                {
                    let mut next = (*current).clone();
                    next["endpoints"] = json!(slice_endpoints);
                    next["ports"] = json!(want_ports);
                    ctx.update(SLICES, next, false)?;
                }
            }
            None => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{}", random_suffix(5)), "namespace": ns,
                                 "labels": slice_labels, "ownerReferences": [owner_ref(&svc)]},
                    "addressType": "IPv4", "endpoints": slice_endpoints, "ports": want_ports,
                });
                ctx.create(SLICES, ns, slice)?;
            }
        }
        for extra in slices {
            ctx.delete(SLICES, ns, meta(&extra, "name"), &json!({}))?;
        }
        Ok(None)
    }
}

fn subsets_empty(endpoints: &Value) -> bool {
    endpoints["subsets"].as_array().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_resolve_by_number_and_name() {
        let pod =
            json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": 9090}), &pod),
            Some(9090)
        );
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": "http"}), &pod),
            Some(8080)
        );
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": "grpc"}), &pod),
            None
        );
        assert_eq!(target_port(&json!({"port": 80}), &pod), Some(80));
    }
}
