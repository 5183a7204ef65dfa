//! Service addresses, as the apiserver's Service registry hands them out: a ClusterIP from the
//! service range ([`SERVICE_RANGE`], 10.96.0.0/12 as kubeadm's default) for every Service but
//! ExternalName and headless ones, and a node port from [`NODE_PORTS`] for every port of a
//! NodePort or LoadBalancer Service that names none. Requested addresses and ports must be in
//! range and free; both are immutable afterwards (an update that leaves them out keeps them).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::ApiError;
use crate::store::Store;

/// The service range: network address and prefix length.
pub const SERVICE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The node port range.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30_000..=32_767;

fn in_range(ip: Ipv4Addr) -> bool {
    let (net, len) = SERVICE_RANGE;
    let mask = u32::MAX << (32 - u32::from(len));
    u32::from(ip) & mask == u32::from(net)
}

fn invalid(field: &str, value: &Value, why: &str) -> ApiError {
    let what = format!("Invalid value: {value}: {why}");
    ApiError::with(422, "Invalid", format!("Service is invalid: {field}: {what}")).with_details(
        json!({"kind": "Service", "causes": [{"reason": "FieldValueInvalid", "message": what, "field": field}]}),
    )
}

fn gets_cluster_ip(spec: &Value) -> bool {
    spec["type"] != "ExternalName"
}

fn gets_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// What every other Service holds (`except` the one being written).
fn taken(
    store: &Store,
    except: Option<(&str, &str)>,
) -> Result<(HashSet<Ipv4Addr>, HashSet<i64>), ApiError> {
    let services = store
        .list_all("services", None)
        .map_err(|e| ApiError::with(500, "InternalError", e.to_string()))?;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for s in services {
        let id = (
            s.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            s.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        if except == Some(id) {
            continue;
        }
        if let Some(ip) = s
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|i| i.parse().ok())
        {
            ips.insert(ip);
        }
        for p in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p["nodePort"].as_i64() {
                ports.insert(n);
            }
        }
    }
    Ok((ips, ports))
}

/// Fills in (or checks) a new Service's ClusterIP and node ports, against what `store` holds.
pub(crate) fn allocate(store: &Store, svc: &mut Value) -> Result<(), ApiError> {
    let (ips, ports) = taken(store, None)?;
    assign(svc, &ips, &ports)
}

fn assign(svc: &mut Value, ips: &HashSet<Ipv4Addr>, ports: &HashSet<i64>) -> Result<(), ApiError> {
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    if gets_cluster_ip(spec) {
        let ip = match spec["clusterIP"].as_str() {
            None | Some("") => {
                let (net, len) = SERVICE_RANGE;
                let size = 1u32 << (32 - u32::from(len));
                // .1 is the API's own (default/kubernetes); the last is the broadcast address.
                let free = (10..size - 1)
                    .map(|i| Ipv4Addr::from(u32::from(net) + i))
                    .find(|ip| !ips.contains(ip))
                    .ok_or_else(|| {
                        ApiError::with(500, "InternalError", "the service range is full")
                    })?;
                Some(free.to_string())
            }
            Some("None") => None,
            Some(given) => {
                let ip: Ipv4Addr = given.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIP",
                        &spec["clusterIP"],
                        "must be a valid IPv4 address or None",
                    )
                })?;
                if !in_range(ip) {
                    return Err(invalid(
                        "spec.clusterIP",
                        &spec["clusterIP"],
                        &format!(
                            "provided IP is not in the valid range {}/{}",
                            SERVICE_RANGE.0, SERVICE_RANGE.1
                        ),
                    ));
                }
                if ips.contains(&ip) {
                    return Err(invalid(
                        "spec.clusterIP",
                        &spec["clusterIP"],
                        "provided IP is already allocated",
                    ));
                }
                Some(given.to_owned())
            }
        };
        let shown = ip.clone().unwrap_or_else(|| "None".into());
        spec["clusterIP"] = json!(shown);
        spec["clusterIPs"] = json!([shown]);
        if ip.is_some() {
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
    if gets_node_ports(spec) {
        let mut used = ports.clone();
        if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, p) in list.iter_mut().enumerate().filter(|(_, p)| p.is_object()) {
                match p.get("nodePort").filter(|n| !n.is_null() && **n != 0) {
                    None => {
                        let free =
                            NODE_PORTS
                                .clone()
                                .find(|n| !used.contains(n))
                                .ok_or_else(|| {
                                    ApiError::with(
                                        500,
                                        "InternalError",
                                        "the node port range is full",
                                    )
                                })?;
                        used.insert(free);
                        p["nodePort"] = json!(free);
                    }
                    Some(n) => {
                        let field = format!("spec.ports[{i}].nodePort");
                        let port =
                            n.as_i64()
                                .filter(|n| NODE_PORTS.contains(n))
                                .ok_or_else(|| {
                                    invalid(
                                        &field,
                                        n,
                                        "provided port is not in the valid range 30000-32767",
                                    )
                                })?;
                        if !used.insert(port) {
                            return Err(invalid(&field, n, "provided port is already allocated"));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// An update of `current` to `next`: what was allocated stays (left out, it is carried over;
/// changed, the update is refused), and what the update newly needs is allocated.
pub(crate) fn keep(store: &Store, current: &Value, next: &mut Value) -> Result<(), ApiError> {
    let Some(spec) = next.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    let old_ip = current
        .pointer("/spec/clusterIP")
        .cloned()
        .unwrap_or(Value::Null);
    if gets_cluster_ip(spec) && !old_ip.is_null() {
        match spec.get("clusterIP") {
            None | Some(Value::Null) => {
                spec["clusterIP"] = old_ip.clone();
                spec["clusterIPs"] = current
                    .pointer("/spec/clusterIPs")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            Some(Value::String(s)) if s.is_empty() => {
                spec["clusterIP"] = old_ip.clone();
                spec["clusterIPs"] = current
                    .pointer("/spec/clusterIPs")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            Some(given) if *given != old_ip => {
                return Err(invalid("spec.clusterIP", given, "field is immutable"));
            }
            Some(_) => {}
        }
        for field in ["ipFamilies", "ipFamilyPolicy"] {
            if spec.get(field).is_none_or(Value::is_null)
                && let Some(v) = current.pointer(&format!("/spec/{field}"))
            {
                spec[field] = v.clone();
            }
        }
    }
    // A port keeps its node port when the update names none.
    let old_ports: Vec<Value> = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if gets_node_ports(spec)
        && let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut)
    {
        for p in list.iter_mut().filter(|p| p.is_object()) {
            if p.get("nodePort").is_some_and(|n| !n.is_null()) {
                continue;
            }
            if let Some(n) = old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| o.get("nodePort"))
            {
                p["nodePort"] = n.clone();
            }
        }
    }
    let ns = current
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The Service's own address and ports are not among the others': kept, they check out.
    let (ips, ports) = taken(store, Some((ns, name)))?;
    assign(next, &ips, &ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_handed_out_once() {
        let mut taken_ips =
            HashSet::from([Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 10)]);
        let mut svc =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        assign(&mut svc, &taken_ips, &HashSet::from([30_000])).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.11");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30_001);
        taken_ips.insert(Ipv4Addr::new(10, 96, 0, 11));
        let mut clash = json!({"spec": {"clusterIP": "10.96.0.11"}});
        assert_eq!(
            assign(&mut clash, &taken_ips, &HashSet::new())
                .unwrap_err()
                .code,
            422
        );
        let mut outside = json!({"spec": {"clusterIP": "192.168.0.1"}});
        assert_eq!(
            assign(&mut outside, &taken_ips, &HashSet::new())
                .unwrap_err()
                .code,
            422
        );
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        assign(&mut headless, &taken_ips, &HashSet::new()).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "x.example"}});
        assign(&mut external, &taken_ips, &HashSet::new()).unwrap();
        assert!(external["spec"].get("clusterIP").is_none());
    }
}
