//! The scheduler: binds each pod without `spec.nodeName` (and for the `default-scheduler`) to a
//! node that can run it.
//!
//! A node is feasible when it is Ready and schedulable, its labels satisfy the pod's
//! `nodeSelector` and required node affinity, the pod tolerates its NoSchedule and NoExecute
//! taints, the requests of the pods already there plus this one fit its allocatable CPU, memory
//! and pod count, and the pod's required pod (anti-)affinity holds for the node's topology
//! domain. Among feasible nodes it prefers the one with the fewest pods of the same controller,
//! then the fewest pods. A pod no node can take gets `PodScheduled=False` (reason
//! `Unschedulable`, a message counting why each node was refused, as kube-scheduler words it) and a
//! `FailedScheduling` Event; it is tried again whenever a node or a pod changes.
//!
//! Edge autonomy: a node that goes offline keeps its pods; only the taint eviction
//! ([`super::taints`]) may take them off, when a toleration runs out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kubeedge_core::kubeapi::ApiError;
use kubeedge_core::kubeapi::local::Kind;
use kubeedge_core::store::{Event, EventType};
use serde_json::{Value, json};

use super::{
    Cache, Controller, Ctx, Key, NODES, PODS, active, controller_uid, key_of, meta, selector,
};

/// The scheduler's name: pods that name another scheduler are left to it.
pub const NAME: &str = "default-scheduler";

/// What the pods bound to a node ask for.
#[derive(Debug, Default, Clone)]
struct Usage {
    pods: BTreeSet<Key>,
    cpu_milli: i64,
    memory: i64,
    /// Pods per controller uid.
    owners: HashMap<String, usize>,
}

/// One pod's share of a node.
#[derive(Debug, Clone)]
struct Share {
    node: String,
    cpu_milli: i64,
    memory: i64,
    owner: Option<String>,
}

/// The scheduler (see the module docs). It keeps what each node's pods request, updated from
/// pod changes.
#[derive(Debug, Default)]
pub struct Scheduler {
    usage: HashMap<String, Usage>,
    shares: HashMap<Key, Share>,
    pending: BTreeSet<Key>,
    /// The last reason each pending pod was given, so a pod is not re-marked for nothing.
    told: HashMap<Key, String>,
    /// Decisions taken (bindings), for benchmarks.
    bound: u64,
}

impl Scheduler {
    /// How many pods it has bound since it started.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    fn forget(&mut self, key: &Key) {
        if let Some(share) = self.shares.remove(key)
            && let Some(u) = self.usage.get_mut(&share.node)
        {
            u.pods.remove(key);
            u.cpu_milli -= share.cpu_milli;
            u.memory -= share.memory;
            if let Some(o) = share.owner
                && let Some(n) = u.owners.get_mut(&o)
            {
                *n -= 1;
                if *n == 0 {
                    u.owners.remove(&o);
                }
            }
        }
    }

    fn account(&mut self, pod: &Value) {
        let key = key_of(pod);
        self.forget(&key);
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node.is_empty() || !active(pod) {
            return;
        }
        let (cpu_milli, memory) = requests(pod);
        let owner = controller_uid(pod).map(str::to_owned);
        let u = self.usage.entry(node.to_owned()).or_default();
        u.pods.insert(key.clone());
        u.cpu_milli += cpu_milli;
        u.memory += memory;
        if let Some(o) = &owner {
            *u.owners.entry(o.clone()).or_default() += 1;
        }
        self.shares.insert(
            key,
            Share {
                node: node.to_owned(),
                cpu_milli,
                memory,
                owner,
            },
        );
    }
}

/// A quantity (`500m`, `2`, `128Mi`, `1G`, `1e3`) in thousandths (`milli`) or in units.
pub fn quantity(q: &Value, milli: bool) -> i64 {
    let s = match q {
        Value::String(s) => s.trim(),
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            return if milli { (v * 1000.0) as i64 } else { v as i64 };
        }
        _ => return 0,
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let Ok(n) = num.parse::<f64>() else { return 0 };
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().unwrap_or(0)),
        _ => return 0,
    };
    let v = n * factor;
    if milli {
        (v * 1000.0).ceil() as i64
    } else {
        v.ceil() as i64
    }
}

/// A pod's CPU (millicores) and memory (bytes) requests: its containers' sum, or its largest init
/// container's if larger.
pub fn requests(pod: &Value) -> (i64, i64) {
    let sum = |field: &str| -> (i64, i64) {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .fold((0, 0), |(c, m), ct| {
                let r = &ct["resources"]["requests"];
                (
                    c + quantity(&r["cpu"], true),
                    m + quantity(&r["memory"], false),
                )
            })
    };
    let (c, m) = sum("containers");
    let (ic, im) = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .fold((0, 0), |(c, m), ct| {
            let r = &ct["resources"]["requests"];
            (
                c.max(quantity(&r["cpu"], true)),
                m.max(quantity(&r["memory"], false)),
            )
        });
    (c.max(ic), m.max(im))
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && taint["effect"] != effect {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    let op = toleration["operator"].as_str().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if taint["key"] != key {
        return false;
    }
    match op {
        "Exists" => true,
        _ => {
            toleration["value"].as_str().unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default()
        }
    }
}

/// The node's taints with this effect that none of the pod's tolerations tolerates.
pub fn untolerated<'a>(pod: &Value, node: &'a Value, effects: &[&str]) -> Vec<&'a Value> {
    let tolerations = pod["spec"]["tolerations"].as_array();
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| effects.iter().any(|e| t["effect"] == *e))
        .filter(|t| {
            !tolerations
                .into_iter()
                .flatten()
                .any(|tol| tolerates(tol, t))
        })
        .collect()
}

/// Whether the node is Ready.
pub fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj["metadata"]["labels"][key].as_str()
}

/// Whether the node satisfies one node selector requirement (`matchExpressions` item).
fn node_requirement(node: &Value, r: &Value, field: bool) -> bool {
    let key = r["key"].as_str().unwrap_or_default();
    let value = if field {
        (key == "metadata.name").then(|| meta(node, "name"))
    } else {
        label(node, key)
    };
    let values: Vec<&str> = r["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
    match r["operator"].as_str().unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Whether the node matches the pod's `nodeSelector` and required node affinity.
pub fn node_matches(pod: &Value, node: &Value) -> bool {
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(node, k) == v.as_str());
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let affinity_ok = terms.is_none_or(|terms| {
        terms.iter().any(|term| {
            let exprs = term["matchExpressions"].as_array();
            let fields = term["matchFields"].as_array();
            (exprs.is_some() || fields.is_some())
                && exprs
                    .into_iter()
                    .flatten()
                    .all(|r| node_requirement(node, r, false))
                && fields
                    .into_iter()
                    .flatten()
                    .all(|r| node_requirement(node, r, true))
        })
    });
    selector_ok && affinity_ok
}

/// Allocatable CPU (millicores), memory (bytes) and pods of a node; unset ones are unlimited.
fn allocatable(node: &Value) -> (i64, i64, i64) {
    let a = &node["status"]["allocatable"];
    let or_max = |v: &Value, milli| {
        if v.is_null() {
            i64::MAX
        } else {
            quantity(v, milli)
        }
    };
    (
        or_max(&a["cpu"], true),
        or_max(&a["memory"], false),
        or_max(&a["pods"], false),
    )
}

impl Scheduler {
    /// Why `node` cannot take `pod`, or `None` if it can.
    fn refuse(&self, cache: &Cache, pod: &Value, node: &Value) -> Option<String> {
        if !node_ready(node) {
            return Some("node(s) were not ready".into());
        }
        if node["spec"]["unschedulable"] == true
            && !untolerated(
                pod,
                &json!({"spec": {"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
                &["NoSchedule"],
            )
            .is_empty()
        {
            return Some("node(s) were unschedulable".into());
        }
        if !node_matches(pod, node) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
        if let Some(t) = untolerated(pod, node, &["NoSchedule", "NoExecute"]).first() {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or_default(),
                t["value"].as_str().unwrap_or_default()
            ));
        }
        let name = meta(node, "name");
        let empty = Usage::default();
        let used = self.usage.get(name).unwrap_or(&empty);
        let (cpu, memory, pods) = allocatable(node);
        let (want_cpu, want_memory) = requests(pod);
        if used.pods.len() as i64 + 1 > pods {
            return Some("Too many pods".into());
        }
        if want_cpu > 0 && used.cpu_milli.saturating_add(want_cpu) > cpu {
            return Some("Insufficient cpu".into());
        }
        if want_memory > 0 && used.memory.saturating_add(want_memory) > memory {
            return Some("Insufficient memory".into());
        }
        let affinity = pod.pointer("/spec/affinity");
        for (path, anti) in [
            (
                "/podAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                false,
            ),
            (
                "/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                true,
            ),
        ] {
            for term in affinity
                .and_then(|a| a.pointer(path))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let found = self.term_met(cache, pod, node, term);
                if anti && found {
                    return Some("node(s) didn't match pod anti-affinity rules".into());
                }
                if !anti && !found && !self.matches_itself(cache, pod, term) {
                    return Some("node(s) didn't match pod affinity rules".into());
                }
            }
        }
        None
    }

    /// Whether some pod in the node's topology domain (nodes sharing its `topologyKey` label)
    /// matches the term's label selector and namespaces.
    fn term_met(&self, cache: &Cache, pod: &Value, node: &Value, term: &Value) -> bool {
        let Some(topology) = term["topologyKey"].as_str() else {
            return false;
        };
        let Some(domain) = label(node, topology).map(str::to_owned).or_else(|| {
            (topology == "kubernetes.io/hostname").then(|| meta(node, "name").to_owned())
        }) else {
            return false;
        };
        let Some(sel) = selector(&term["labelSelector"]) else {
            return false;
        };
        let namespaces: Vec<&str> = match term["namespaces"].as_array() {
            Some(n) if !n.is_empty() => n.iter().filter_map(Value::as_str).collect(),
            _ => vec![meta(pod, "namespace")],
        };
        let nodes = cache.list(NODES, None);
        nodes
            .iter()
            .filter(|n| {
                label(n, topology)
                    .map(str::to_owned)
                    .or_else(|| {
                        (topology == "kubernetes.io/hostname").then(|| meta(n, "name").to_owned())
                    })
                    .as_deref()
                    == Some(domain.as_str())
            })
            .filter_map(|n| self.usage.get(meta(n, "name")))
            .flat_map(|u| u.pods.iter())
            .filter(|(ns, _)| namespaces.contains(&ns.as_str()))
            .filter_map(|(ns, name)| cache.get(PODS, ns, name))
            .any(|p| sel.matches(&p))
    }

    /// A pod whose affinity term selects itself may go anywhere when no bound pod matches the
    /// term yet (kube-scheduler's rule for the first pod of a group).
    fn matches_itself(&self, cache: &Cache, pod: &Value, term: &Value) -> bool {
        let Some(sel) = selector(&term["labelSelector"]) else {
            return false;
        };
        sel.matches(pod)
            && !self
                .usage
                .values()
                .flat_map(|u| u.pods.iter())
                .filter_map(|(ns, n)| cache.get(PODS, ns, n))
                .any(|p| sel.matches(&p))
    }
}

impl Controller for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn kind(&self) -> Kind<'static> {
        PODS
    }

    fn affected(&mut self, cache: &Cache, ev: &Event) -> Vec<Key> {
        let _ = cache;
        if ev.resource == "pods" {
            let key = (ev.namespace.clone().unwrap_or_default(), ev.name.clone());
            let freed = self.shares.contains_key(&key)
                && (ev.kind == EventType::Deleted || !active(&ev.object));
            if ev.kind == EventType::Deleted {
                self.forget(&key);
                self.pending.remove(&key);
                self.told.remove(&key);
            } else {
                self.account(&ev.object);
            }
            // A pod leaving a node may make room for a pending one.
            if freed {
                return self.pending.iter().cloned().collect();
            }
            return Vec::new();
        }
        if ev.resource == "nodes" {
            return self.pending.iter().cloned().collect();
        }
        Vec::new()
    }

    fn reconcile(&mut self, ctx: &mut Ctx<'_>, key: &Key) -> Result<Option<Duration>, ApiError> {
        let Some(pod) = ctx.cache.get(PODS, &key.0, &key.1) else {
            self.pending.remove(key);
            return Ok(None);
        };
        let scheduler = pod["spec"]["schedulerName"].as_str().unwrap_or(NAME);
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if bound || !active(&pod) || scheduler != NAME {
            self.pending.remove(key);
            self.told.remove(key);
            if bound {
                self.account(&pod);
            }
            return Ok(None);
        }
        let nodes = ctx.cache.list(NODES, None);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let owner = controller_uid(&pod);
        let mut best: Option<((usize, usize, String), &Value)> = None;
        for node in &nodes {
            match self.refuse(ctx.cache, &pod, node) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None => {
                    let name = meta(node, "name");
                    let used = self.usage.get(name);
                    let score = (
                        owner
                            .and_then(|o| used.and_then(|u| u.owners.get(o)).copied())
                            .unwrap_or(0),
                        used.map_or(0, |u| u.pods.len()),
                        name.to_owned(),
                    );
                    if best.as_ref().is_none_or(|(b, _)| score < *b) {
                        best = Some((score, node));
                    }
                }
            }
        }
        let Some((_, node)) = best else {
            let mut parts: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            parts.sort();
            let message = if nodes.is_empty() {
                "0/0 nodes are available: no nodes available to schedule pods.".to_owned()
            } else {
                format!(
                    "0/{} nodes are available: {}.",
                    nodes.len(),
                    parts.join(", ")
                )
            };
            self.pending.insert(key.clone());
            if self.told.get(key) != Some(&message) {
                let mut next = (*pod).clone();
                set_condition(
                    &mut next,
                    "PodScheduled",
                    "False",
                    "Unschedulable",
                    &message,
                    ctx,
                );
                if next["status"]["phase"].is_null() {
                    next["status"]["phase"] = json!("Pending");
                }
                ctx.update(PODS, next, true)?;
                ctx.event(&pod, "Warning", "FailedScheduling", &message, NAME);
                self.told.insert(key.clone(), message);
            }
            return Ok(None);
        };
        let node_name = meta(node, "name").to_owned();
        let written = ctx.bind(&pod, &node_name)?;
        self.account(&written);
        self.pending.remove(key);
        self.told.remove(key);
        self.bound += 1;
        ctx.event(
            &written,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {}/{} to {node_name}", key.0, key.1),
            NAME,
        );
        Ok(None)
    }
}

/// Sets (or replaces) a condition in `obj.status.conditions`, keeping its transition time when
/// its status does not change.
pub fn set_condition(
    obj: &mut Value,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    ctx: &Ctx<'_>,
) {
    let now = kubeedge_core::store::rfc3339(ctx.now);
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    let conditions = obj["status"]["conditions"].take();
    let mut list: Vec<Value> = conditions.as_array().cloned().unwrap_or_default();
    let old = list.iter().position(|c| c["type"] == kind);
    let transition = old
        .and_then(|i| (list[i]["status"] == status).then(|| list[i]["lastTransitionTime"].clone()))
        .filter(|t| !t.is_null())
        .unwrap_or_else(|| json!(now));
    let mut c = json!({"type": kind, "status": status, "lastTransitionTime": transition, "lastProbeTime": null});
    if !reason.is_empty() {
        c["reason"] = json!(reason);
    }
    if !message.is_empty() {
        c["message"] = json!(message);
    }
    match old {
        Some(i) => list[i] = c,
        None => list.push(c),
    }
    obj["status"]["conditions"] = Value::Array(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_tolerations_and_affinity() {
        assert_eq!(quantity(&json!("500m"), true), 500);
        assert_eq!(quantity(&json!("2"), true), 2000);
        assert_eq!(quantity(&json!("128Mi"), false), 128 * 1024 * 1024);
        assert_eq!(quantity(&json!("1G"), false), 1_000_000_000);
        assert_eq!(quantity(&json!("1e3"), false), 1000);
        assert_eq!(quantity(&json!("bogus"), false), 0);
        let taint = json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"});
        assert!(tolerates(
            &json!({"key": "dedicated", "value": "gpu"}),
            &taint
        ));
        assert!(tolerates(
            &json!({"key": "dedicated", "operator": "Exists"}),
            &taint
        ));
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
        assert!(!tolerates(
            &json!({"key": "dedicated", "value": "cpu"}),
            &taint
        ));
        assert!(!tolerates(
            &json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            &taint
        ));
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a", "cores": "8"}}});
        let pod = |affinity: Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [affinity]}}}}});
        assert!(node_matches(
            &pod(
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]})
            ),
            &node
        ));
        assert!(!node_matches(
            &pod(
                json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]})
            ),
            &node
        ));
        assert!(node_matches(
            &pod(
                json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]})
            ),
            &node
        ));
        assert!(node_matches(
            &pod(
                json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]})
            ),
            &node
        ));
        assert!(!node_matches(
            &json!({"spec": {"nodeSelector": {"zone": "b"}}}),
            &node
        ));
        assert_eq!(
            requests(
                &json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "250m", "memory": "1Mi"}}}, {"resources": {"requests": {"cpu": "250m"}}}],
                                       "initContainers": [{"resources": {"requests": {"cpu": "1"}}}]}})
            ),
            (1000, 1024 * 1024)
        );
    }
}
