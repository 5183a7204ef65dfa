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
        for held in holdings(&s) {
            match held {
                Held::Ip(ip) => ips.insert(ip),
                Held::Port(n) => ports.insert(n),
            };
        }
    }
    Ok((ips, ports))
}

/// Fills in (or checks) a new Service's ClusterIP and node ports, against what `store` holds;
/// `owner` is its `namespace/name`.
pub(crate) fn allocate(store: &Store, owner: &str, svc: &mut Value) -> Result<(), ApiError> {
    let (ips, ports) = taken(store, None)?;
    reserved(store, owner, ips, ports, |ips, ports| {
        let mut candidate = svc.clone();
        assign(&mut candidate, None, ips, ports)?;
        Ok(candidate)
    })
    .map(|chosen| *svc = chosen)
}

/// The prefix of the datastore records that reserve a Service's address or node port.
const RESERVATION: &str = "services/reserved/";
/// How old a reservation whose Service does not hold it must be before it is given back (the
/// Service is stored a moment after its addresses are reserved).
const RESERVATION_GRACE_SECS: u64 = 60;

fn owner_of(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        svc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

/// The address and node ports `svc` holds.
fn holdings(svc: &Value) -> Vec<Held> {
    let mut out = Vec::new();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|i| i.parse::<Ipv4Addr>().ok())
    {
        out.push(Held::Ip(ip));
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = p["nodePort"].as_i64() {
            out.push(Held::Port(n));
        }
    }
    out
}

/// A Service's address or one of its node ports.
#[derive(Debug, Clone, Copy)]
enum Held {
    Ip(Ipv4Addr),
    Port(i64),
}

impl Held {
    /// The datastore record that reserves it.
    fn key(self) -> String {
        match self {
            Held::Ip(ip) => format!("{RESERVATION}ip/{ip}"),
            Held::Port(n) => format!("{RESERVATION}port/{n}"),
        }
    }
}

/// Chooses with `choose` (from what the others hold) until every address and port chosen is
/// reserved for `owner` in the store. A store of its own is the only writer (the API's lock
/// serialises Services): nothing to reserve. A mirror shares its datastore with other replicas
/// choosing at the same moment: each address and port is reserved first-wins
/// ([`Store::aux_init`]), and one another replica won is chosen around.
fn reserved(
    store: &Store,
    owner: &str,
    mut ips: HashSet<Ipv4Addr>,
    mut ports: HashSet<i64>,
    mut choose: impl FnMut(&HashSet<Ipv4Addr>, &HashSet<i64>) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let failed = |e: crate::store::Error| ApiError::with(503, "ServiceUnavailable", e.to_string());
    for _ in 0..64 {
        let chosen = choose(&ips, &ports)?;
        if !store.is_mirror() || store.is_dry_run() {
            return Ok(chosen);
        }
        let mut lost = None;
        for held in holdings(&chosen) {
            let key = held.key();
            let mine =
                serde_json::to_vec(&json!({"owner": owner, "at": unix_secs()})).unwrap_or_default();
            let stored = store.aux_init(&key, mine).map_err(failed)?;
            let by = serde_json::from_slice::<Value>(&stored)
                .ok()
                .and_then(|v| v["owner"].as_str().map(str::to_owned));
            if by.as_deref() != Some(owner) {
                lost = Some(held);
                break;
            }
        }
        match lost {
            None => return Ok(chosen),
            Some(Held::Ip(ip)) => {
                ips.insert(ip);
            }
            Some(Held::Port(p)) => {
                ports.insert(p);
            }
        }
    }
    Err(ApiError::with(
        500,
        "InternalError",
        "no free Service address or node port could be reserved",
    ))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Gives back reservations that no Service holds any more (control planes sharing a datastore
/// reserve each Service address and node port there, first wins): its Service was
/// deleted, changed type, or never stored. Run by one replica (the leader) now and then; only
/// reservations older than a minute are looked at. How many were given back.
pub fn release_unheld(store: &Store) -> Result<usize, crate::store::Error> {
    if !store.is_mirror() {
        return Ok(0);
    }
    let mut held: HashSet<String> = HashSet::new();
    for svc in store.list_all("services", None)? {
        let owner = owner_of(&svc);
        for h in holdings(&svc) {
            held.insert(format!("{}\n{owner}", h.key()));
        }
    }
    let now = unix_secs();
    let mut gone = Vec::new();
    for (key, value) in store.aux_scan(RESERVATION)? {
        let record: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
        let owner = record["owner"].as_str().unwrap_or_default();
        let at = record["at"].as_u64().unwrap_or(0);
        if now.saturating_sub(at) >= RESERVATION_GRACE_SECS
            && !held.contains(&format!("{key}\n{owner}"))
        {
            gone.push(crate::store::BatchOp::RemoveAux { key });
        }
    }
    let n = gone.len();
    if n > 0 {
        store.batch(gone)?;
    }
    Ok(n)
}

/// Addresses below this offset are for Services that ask for one (as the apiserver keeps a low
/// band for static addresses such as the cluster DNS's 10.96.0.10); automatic ones come after.
const STATIC_BAND: u32 = 256;
/// Node ports below `30000 + this` likewise.
const STATIC_PORTS: i64 = 86;

/// Assigns `svc`'s addresses; `current` is the stored Service on an update (what it already holds
/// is kept without being checked again). `ips` and `ports` are everyone else's.
fn assign(
    svc: &mut Value,
    current: Option<&Value>,
    ips: &HashSet<Ipv4Addr>,
    ports: &HashSet<i64>,
) -> Result<(), ApiError> {
    let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    let old_ip = current
        .and_then(|c| c.pointer("/spec/clusterIP"))
        .and_then(Value::as_str);
    if !gets_cluster_ip(spec) {
        // ExternalName: no address; one it held before is given back.
        match spec.get("clusterIP").and_then(Value::as_str) {
            None | Some("") => {}
            Some(ip) if Some(ip) == old_ip => {}
            Some(_) => {
                return Err(invalid(
                    "spec.clusterIP",
                    &spec["clusterIP"],
                    "may not be set for an ExternalName service",
                ));
            }
        }
        if let Some(o) = spec.as_object_mut() {
            o.remove("clusterIP");
            o.remove("clusterIPs");
        }
    } else {
        let ip = match spec.get("clusterIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(invalid("spec.clusterIP", other, "must be a string"));
            }
        };
        let ip = match ip.as_deref() {
            None => {
                let (net, len) = SERVICE_RANGE;
                let size = 1u32 << (32 - u32::from(len));
                // The last address is the range's broadcast address.
                let free = (STATIC_BAND..size - 1)
                    .map(|i| Ipv4Addr::from(u32::from(net) + i))
                    .find(|ip| !ips.contains(ip))
                    .ok_or_else(|| {
                        ApiError::with(500, "InternalError", "the service range is full")
                    })?;
                Some(free.to_string())
            }
            Some("None") if gets_node_ports(spec) => {
                return Err(invalid(
                    "spec.clusterIP",
                    &spec["clusterIP"],
                    "may not be None (headless) for a NodePort or LoadBalancer service",
                ));
            }
            Some("None") => None,
            Some(given) if Some(given) == old_ip => Some(given.to_owned()),
            Some(given) => {
                let parsed: Option<Ipv4Addr> = given.parse().ok();
                let (net, len) = SERVICE_RANGE;
                let broadcast = Ipv4Addr::from(u32::from(net) | (u32::MAX >> u32::from(len)));
                let why = match parsed {
                    None => Some("must be a valid IPv4 address or None".to_owned()),
                    Some(ip) if !in_range(ip) || ip == net || ip == broadcast => {
                        Some(format!("provided IP is not in the valid range {net}/{len}"))
                    }
                    Some(ip) if ips.contains(&ip) => {
                        Some("provided IP is already allocated".into())
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    return Err(invalid("spec.clusterIP", &spec["clusterIP"], &why));
                }
                Some(given.to_owned())
            }
        };
        let shown = ip.clone().unwrap_or_else(|| "None".into());
        spec["clusterIP"] = json!(shown);
        spec["clusterIPs"] = json!([shown]);
        if ip.is_some() {
            spec["ipFamilies"] = json!(["IPv4"]);
            if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
                spec["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
    }
    let old_ports: HashSet<i64> = current
        .and_then(|c| c.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .map(|ps| ps.iter().filter_map(|p| p["nodePort"].as_i64()).collect())
        .unwrap_or_default();
    let wants_ports = gets_node_ports(spec);
    let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    // One port number may serve several protocols of the same Service.
    let mut mine: HashSet<(i64, String)> = HashSet::new();
    let mut next_free = NODE_PORTS.start() + STATIC_PORTS;
    for (i, p) in list.iter_mut().enumerate().filter(|(_, p)| p.is_object()) {
        let field = format!("spec.ports[{i}].nodePort");
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
        let given = p
            .get("nodePort")
            .filter(|n| !n.is_null() && **n != 0)
            .cloned();
        if !wants_ports {
            match given {
                // Left over from a NodePort type: given back.
                Some(n) if n.as_i64().is_some_and(|n| old_ports.contains(&n)) => {}
                Some(n) => {
                    return Err(invalid(
                        &field,
                        &n,
                        "may not be used when the type is not NodePort or LoadBalancer",
                    ));
                }
                None => {}
            }
            if let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
            continue;
        }
        let port = match given {
            None => {
                let free = (next_free..=*NODE_PORTS.end())
                    .chain(*NODE_PORTS.start()..next_free)
                    .find(|n| !ports.contains(n) && !mine.iter().any(|(m, _)| m == n))
                    .ok_or_else(|| {
                        ApiError::with(500, "InternalError", "the node port range is full")
                    })?;
                next_free = free + 1;
                p["nodePort"] = json!(free);
                free
            }
            Some(n) => {
                let port = n
                    .as_i64()
                    .filter(|v| NODE_PORTS.contains(v))
                    .ok_or_else(|| {
                        invalid(
                            &field,
                            &n,
                            "provided port is not in the valid range 30000-32767",
                        )
                    })?;
                if ports.contains(&port) && !old_ports.contains(&port) {
                    return Err(invalid(&field, &n, "provided port is already allocated"));
                }
                port
            }
        };
        if !mine.insert((port, protocol)) {
            return Err(invalid(
                &field,
                &json!(port),
                "provided port is already allocated",
            ));
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
            }
            Some(Value::String(s)) if s.is_empty() => {
                spec["clusterIP"] = old_ip.clone();
            }
            Some(given) if *given != old_ip => {
                return Err(invalid("spec.clusterIP", given, "field is immutable"));
            }
            Some(_) => {}
        }
        if spec.get("ipFamilyPolicy").is_none_or(Value::is_null)
            && let Some(v) = current.pointer("/spec/ipFamilyPolicy")
        {
            spec["ipFamilyPolicy"] = v.clone();
        }
    }
    // A port keeps its node port when the update names none (0 included), matched by name, or
    // by number and protocol for unnamed ports.
    let old_ports: Vec<Value> = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if gets_node_ports(spec)
        && let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut)
    {
        for p in list.iter_mut().filter(|p| p.is_object()) {
            if p.get("nodePort").is_some_and(|n| !n.is_null() && *n != 0) {
                continue;
            }
            let same = |o: &&Value| match p["name"].as_str().filter(|n| !n.is_empty()) {
                Some(name) => o["name"] == name,
                None => o["port"] == p["port"] && o["protocol"] == p["protocol"],
            };
            if let Some(n) = old_ports.iter().find(same).and_then(|o| o.get("nodePort")) {
                p["nodePort"] = n.clone();
            }
        }
    }
    // The Service's own address and ports are not among the others'.
    let ns = current
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (ips, ports) = taken(store, Some((ns, name)))?;
    let owner = format!("{ns}/{name}");
    reserved(store, &owner, ips, ports, |ips, ports| {
        let mut candidate = next.clone();
        assign(&mut candidate, Some(current), ips, ports)?;
        Ok(candidate)
    })
    .map(|chosen| *next = chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_what_the_service_holds_and_give_back_what_it_no_longer_needs() {
        let current = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "NodePort",
            "clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        // Left out (or 0): kept.
        let mut next = json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "nodePort": 0}]}});
        let (ips, ports) = (HashSet::new(), HashSet::new());
        // As keep() carries them over, then assign() checks.
        next["spec"]["clusterIP"] = json!("10.96.5.5");
        next["spec"]["ports"][0]["nodePort"] = json!(31000);
        assign(&mut next, Some(&current), &ips, &ports).unwrap();
        assert_eq!(next["spec"]["ports"][0]["nodePort"], 31000);
        // Becoming ClusterIP gives the node port back; becoming ExternalName gives the address back.
        let mut to_cluster = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.5.5",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 31000}]}});
        assign(&mut to_cluster, Some(&current), &ips, &ports).unwrap();
        assert!(to_cluster["spec"]["ports"][0].get("nodePort").is_none());
        let mut to_external = json!({"spec": {"type": "ExternalName", "externalName": "x", "clusterIP": "10.96.5.5"}});
        assign(&mut to_external, Some(&current), &ips, &ports).unwrap();
        assert!(to_external["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn addresses_and_ports_are_handed_out_once() {
        let mut taken_ips =
            HashSet::from([Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 1, 0)]);
        let mut svc =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        assign(&mut svc, None, &taken_ips, &HashSet::from([30_086])).unwrap();
        // Above the static band, past what is taken.
        assert_eq!(svc["spec"]["clusterIP"], "10.96.1.1");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30_087);
        taken_ips.insert(Ipv4Addr::new(10, 96, 0, 11));
        let mut clash = json!({"spec": {"clusterIP": "10.96.0.11"}});
        assert_eq!(
            assign(&mut clash, None, &taken_ips, &HashSet::new())
                .unwrap_err()
                .code,
            422
        );
        let mut dns = json!({"spec": {"clusterIP": "10.96.0.10"}});
        assign(&mut dns, None, &taken_ips, &HashSet::new()).unwrap();
        for bad in ["192.168.0.1", "10.96.0.0", "10.111.255.255", "x"] {
            let mut s = json!({"spec": {"clusterIP": bad}});
            assert_eq!(
                assign(&mut s, None, &taken_ips, &HashSet::new())
                    .unwrap_err()
                    .code,
                422,
                "{bad}"
            );
        }
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        assign(&mut headless, None, &taken_ips, &HashSet::new()).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut headless_np = json!({"spec": {"type": "NodePort", "clusterIP": "None"}});
        assert!(assign(&mut headless_np, None, &taken_ips, &HashSet::new()).is_err());
        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "x.example"}});
        assign(&mut external, None, &taken_ips, &HashSet::new()).unwrap();
        assert!(external["spec"].get("clusterIP").is_none());
        // One node port for TCP and UDP of the same Service.
        let mut dns_np = json!({"spec": {"type": "NodePort", "ports": [
            {"port": 53, "protocol": "UDP", "nodePort": 30053}, {"port": 53, "protocol": "TCP", "nodePort": 30053}]}});
        assign(&mut dns_np, None, &taken_ips, &HashSet::new()).unwrap();
    }
}
