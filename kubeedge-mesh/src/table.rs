//! The service table: what the Services and EndpointSlices of the local Kubernetes API say, in the
//! shape the DNS server and the proxy ask it in.
//!
//! Built whole from the current objects ([`Table::build`]) each time discovery sees a change; the
//! proxy and DNS server read the newest table through a [`tokio::sync::watch`] channel, so a lookup
//! never waits for a lock held by discovery.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::lb::Policy;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services carrying this label are left to another proxy (upstream EdgeMesh's
/// `FilterIfLabelExists` mode).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.edgemesh.kubeedge.io/service-proxy-name";

/// The annotation that picks a Service's load-balancing policy when no Istio `DestinationRule`
/// says otherwise: `ROUND_ROBIN`, `RANDOM`, `CONSISTENT_HASH_SOURCE_IP` or
/// `CONSISTENT_HASH_HEADER:<name>`.
pub const LB_ANNOTATION: &str = "mesh.kubeedge.io/lb-policy";

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// From the Kubernetes spelling (`TCP`, `UDP`); SCTP and others are not proxied.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The name used in DNS SRV records and on the tunnel (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One place a service port's traffic may go: a ready endpoint's address and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The endpoint's address (a pod IP; the node's for host-network pods).
    pub ip: IpAddr,
    /// The endpoint's port.
    pub port: u16,
    /// The node the endpoint runs on, when the slice says.
    pub node: Option<String>,
    /// The pod behind the endpoint, when the slice says.
    pub pod: Option<String>,
}

/// A port of a Service with its backends.
#[derive(Debug, Clone)]
pub struct Port {
    /// The port's name (empty for a Service's only, unnamed port).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The ready endpoints, in a stable order (address, then port).
    pub backends: Vec<Backend>,
}

/// A Service as the mesh uses it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The ClusterIPs (none for a headless Service).
    pub cluster_ips: Vec<IpAddr>,
    /// The ports.
    pub ports: Vec<Port>,
    /// The ready endpoints' addresses with their hostnames (headless Services' DNS answers).
    pub endpoint_ips: Vec<(IpAddr, Option<String>)>,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity: Option<Duration>,
    /// The load-balancing policy.
    pub policy: Policy,
}

impl ServiceView {
    /// Whether the Service has no ClusterIP (`clusterIP: None`).
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }
}

/// The key of a proxied address: ClusterIP, port, protocol.
pub type Frontend = (IpAddr, u16, Protocol);

/// Every Service of the API with its endpoints.
#[derive(Debug, Clone, Default)]
pub struct Table {
    services: BTreeMap<(String, String), ServiceView>,
    frontends: HashMap<Frontend, (String, String, usize)>,
}

impl Table {
    /// The table for these Services and EndpointSlices. Services labelled
    /// [`SERVICE_PROXY_NAME_LABEL`] are left out; `policies` (from DestinationRules, by namespace
    /// and host name) override the annotation.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        policies: &HashMap<(String, String), Policy>,
    ) -> Table {
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            by_service.entry((ns, svc.clone())).or_default().push(slice);
        }
        let mut table = Table::default();
        for svc in services {
            if svc
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
            {
                continue;
            }
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            let view = view_of(svc, by_service.get(&key).map_or(&[][..], Vec::as_slice), {
                policies.get(&key).cloned()
            });
            for ip in &view.cluster_ips {
                for (i, p) in view.ports.iter().enumerate() {
                    table
                        .frontends
                        .insert((*ip, p.port, p.protocol), (ns.clone(), name.clone(), i));
                }
            }
            table.services.insert(key, view);
        }
        table
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceView> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every Service, by namespace then name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceView> {
        self.services.values()
    }

    /// The Service and port behind a ClusterIP address.
    pub fn frontend(&self, key: &Frontend) -> Option<(&ServiceView, &Port)> {
        let (ns, name, i) = self.frontends.get(key)?;
        let svc = self.service(ns, name)?;
        Some((svc, svc.ports.get(*i)?))
    }

    /// Every proxied address.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.keys()
    }

    /// The Service owning a ClusterIP (for reverse lookups).
    pub fn by_cluster_ip(&self, ip: IpAddr) -> Option<&ServiceView> {
        self.services.values().find(|s| s.cluster_ips.contains(&ip))
    }
}

fn view_of(svc: &Service, slices: &[&EndpointSlice], policy: Option<Policy>) -> ServiceView {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .unwrap_or_default()
        .iter()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let mut ports = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let name = sp.name.clone().unwrap_or_default();
        let mut backends = Vec::new();
        for slice in slices {
            for slice_port in slice.ports.iter().flatten() {
                if slice_port.name.clone().unwrap_or_default() != name
                    || Protocol::parse(slice_port.protocol.as_deref()) != Some(protocol)
                {
                    continue;
                }
                let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    if !ready(ep) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        let Ok(ip) = addr.parse() else { continue };
                        backends.push(Backend {
                            ip,
                            port: target,
                            node: ep.node_name.clone(),
                            pod: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
                        });
                    }
                }
            }
        }
        backends.sort_by_key(|b| (b.ip, b.port));
        backends.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        ports.push(Port {
            name,
            protocol,
            port,
            backends,
        });
    }
    let mut endpoint_ips: Vec<(IpAddr, Option<String>)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|ep| ready(ep))
        .flat_map(|ep| {
            ep.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|ip| (ip, ep.hostname.clone()))
        })
        .collect();
    endpoint_ips.sort();
    endpoint_ips.dedup_by(|a, b| a.0 == b.0);
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(10_800);
        Duration::from_secs(secs)
    });
    let policy = policy.unwrap_or_else(|| {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_ANNOTATION))
            .and_then(|v| Policy::parse(v))
            .unwrap_or_default()
    });
    ServiceView {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        cluster_ips,
        ports,
        endpoint_ips,
        affinity,
        policy,
    }
}

/// An endpoint is used when ready (a missing condition counts as ready, as kube-proxy reads it).
fn ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}],
                "sessionAffinity": "ClientIP"}
        }))
        .unwrap()
    }

    fn slice(name: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}]
        }))
        .unwrap()
    }

    #[test]
    fn ports_take_the_ready_endpoints_of_every_slice() {
        let svc = service();
        let a = slice(
            "web-a",
            json!([{"addresses": ["10.0.1.2"], "nodeName": "a", "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": "web-1"}},
                   {"addresses": ["10.0.1.3"], "nodeName": "a", "conditions": {"ready": false}}]),
        );
        let b = slice(
            "web-b",
            json!([{"addresses": ["10.0.2.2"], "nodeName": "b"}]),
        );
        let table = Table::build([&svc], [&a, &b], &HashMap::new());
        let (view, port) = table
            .frontend(&("10.96.0.10".parse().unwrap(), 8080, Protocol::Tcp))
            .unwrap();
        assert_eq!(view.name, "web");
        assert_eq!(view.affinity, Some(Duration::from_secs(10_800)));
        let got: Vec<_> = port
            .backends
            .iter()
            .map(|b| (b.ip.to_string(), b.port, b.node.clone(), b.pod.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "10.0.1.2".into(),
                    80,
                    Some("a".into()),
                    Some("web-1".into())
                ),
                ("10.0.2.2".into(), 80, Some("b".into()), None),
            ]
        );
        let (_, udp) = table
            .frontend(&("10.96.0.10".parse().unwrap(), 53, Protocol::Udp))
            .unwrap();
        assert_eq!(udp.backends.len(), 2);
        assert_eq!(udp.backends[0].port, 5353);
        assert!(
            table
                .frontend(&("10.96.0.10".parse().unwrap(), 53, Protocol::Tcp))
                .is_none()
        );
    }

    #[test]
    fn labelled_services_are_left_to_another_proxy() {
        let mut svc = service();
        svc.metadata.labels = Some([(SERVICE_PROXY_NAME_LABEL.to_owned(), "x".to_owned())].into());
        let table = Table::build([&svc], [], &HashMap::new());
        assert!(table.service("default", "web").is_none());
        assert_eq!(table.frontends().count(), 0);
    }
}
