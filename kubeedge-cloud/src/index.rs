//! Which objects each node gets: the controllers feed every watched object in, the node sessions
//! read their node's share out.
//!
//! A node's share ([`Index::desired`]): its own Node, the pods bound to it (`spec.nodeName`), the
//! ConfigMaps and Secrets those pods reference (volumes, projected volumes, `env`, `envFrom`,
//! `imagePullSecrets`) and no others, every Service and EndpointSlice (the mesh resolves them
//! locally), the Devices bound to it (`spec.nodeName`) and the DeviceModels they use. Each change wakes exactly the nodes
//! whose share it touches, and reading a share costs its own size (pods, devices and references
//! are indexed by node), not the size of the cluster: a change to one node's pod costs the other
//! 9,999 nodes nothing.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

/// An object as watched, shared between the index and the node sessions.
pub type Object = Arc<Stored>;

/// An object as the index keeps it: its compact JSON text, parsed again when a message is built
/// from it. A parsed [`Value`] costs about eight times the memory (each JSON object is a map
/// with room for eleven entries: a 600-byte pod takes about 4.9 KB), and every cloudcore replica
/// holds every object it may send, so this is most of a replica's memory at scale.
#[derive(Debug)]
pub struct Stored {
    json: Box<str>,
    resource_version: Box<str>,
    edge_node: bool,
}

impl Stored {
    /// Keeps `object`.
    pub fn new(object: &Value) -> Stored {
        Stored {
            json: object.to_string().into_boxed_str(),
            resource_version: meta(object, "resourceVersion").into(),
            edge_node: is_edge_node(object),
        }
    }

    /// The object, parsed.
    pub fn value(&self) -> Value {
        // The text is `Value`'s own rendering, which parses back (a value nested deeper than
        // the parser allows could not have been parsed from the watch in the first place).
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    /// The object as compact JSON.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// `metadata.resourceVersion` ("" when missing).
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    /// `metadata.resourceVersion` as a number, if it is one.
    pub fn version(&self) -> Option<u64> {
        self.resource_version.parse().ok()
    }

    /// Whether the object is JSON `null` (a placeholder).
    pub fn is_null(&self) -> bool {
        &*self.json == "null"
    }

    /// Whether this is a Node carrying the edge role label.
    pub fn is_edge_node(&self) -> bool {
        self.edge_node
    }
}

/// The kinds the cloud syncs to edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Node (cluster-scoped).
    Node,
    /// core/v1 Pod.
    Pod,
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// devices.kubeedge.io/v1beta1 Device.
    Device,
    /// devices.kubeedge.io/v1beta1 DeviceModel (sent to the nodes whose devices use it).
    DeviceModel,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::Pod,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Device,
        Kind::DeviceModel,
    ];

    /// The resource type in upstream resource strings (`<ns>/<type>/<name>`).
    pub fn edge_type(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::Device => "device",
            Kind::DeviceModel => "devicemodel",
        }
    }

    /// `(group, version, kind, plural)`.
    pub fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Node => ("", "v1", "Node", "nodes"),
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::ConfigMap => ("", "v1", "ConfigMap", "configmaps"),
            Kind::Secret => ("", "v1", "Secret", "secrets"),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Device => ("devices.kubeedge.io", "v1beta1", "Device", "devices"),
            Kind::DeviceModel => (
                "devices.kubeedge.io",
                "v1beta1",
                "DeviceModel",
                "devicemodels",
            ),
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }
}

/// Namespace (empty for cluster-scoped objects) and name.
pub type NsName = (String, String);

/// `metadata.<field>` as a string ("" when missing).
pub fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// The object's `metadata.resourceVersion` as a number, if it is one.
pub fn version(obj: &Value) -> Option<u64> {
    meta(obj, "resourceVersion").parse().ok()
}

fn ns_name(obj: &Value) -> NsName {
    (
        meta(obj, "namespace").to_owned(),
        meta(obj, "name").to_owned(),
    )
}

/// The edge-form resource string of an object: `<ns>/<type>/<name>`, `null` for cluster scope.
pub fn edge_key(kind: Kind, namespace: &str, name: &str) -> String {
    let ns = if namespace.is_empty() {
        "null"
    } else {
        namespace
    };
    format!("{ns}/{}/{name}", kind.edge_type())
}

/// The node a pod or device is bound to.
pub fn bound_node(obj: &Value) -> Option<&str> {
    obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
}

/// Whether a Node carries the edge role label.
pub fn is_edge_node(node: &Value) -> bool {
    node["metadata"]["labels"]
        .get(crate::EDGE_NODE_LABEL)
        .is_some()
}

/// The ConfigMaps and Secrets (by name, in the pod's namespace) a pod references.
/// The objects a pod or device uses: a pod's ConfigMaps and Secrets ([`pod_references`]), a
/// device's DeviceModel (`spec.deviceModelRef`), in the object's namespace.
pub fn references(kind: Kind, obj: &Value) -> BTreeSet<(Kind, String)> {
    match kind {
        Kind::Pod => pod_references(obj),
        Kind::Device => obj["spec"]["deviceModelRef"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(|n| (Kind::DeviceModel, n.to_owned()))
            .into_iter()
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// The ConfigMaps and Secrets a pod uses (volumes, projected volumes, `env`, `envFrom`, ...).
pub fn pod_references(pod: &Value) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    let mut add = |kind: Kind, name: &Value| {
        if let Some(n) = name.as_str().filter(|n| !n.is_empty()) {
            out.insert((kind, n.to_owned()));
        }
    };
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(Kind::ConfigMap, &v["configMap"]["name"]);
        add(Kind::Secret, &v["secret"]["secretName"]);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(Kind::ConfigMap, &s["configMap"]["name"]);
            add(Kind::Secret, &s["secret"]["name"]);
        }
        // Volume plugins that read credentials from a Secret (as the node authorizer walks them).
        add(Kind::Secret, &v["csi"]["nodePublishSecretRef"]["name"]);
        add(Kind::Secret, &v["azureFile"]["secretName"]);
        for plugin in [
            "cephfs",
            "rbd",
            "iscsi",
            "flexVolume",
            "scaleIO",
            "storageos",
        ] {
            add(Kind::Secret, &v[plugin]["secretRef"]["name"]);
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(Kind::ConfigMap, &e["valueFrom"]["configMapKeyRef"]["name"]);
                add(Kind::Secret, &e["valueFrom"]["secretKeyRef"]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(Kind::ConfigMap, &e["configMapRef"]["name"]);
                add(Kind::Secret, &e["secretRef"]["name"]);
            }
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(Kind::Secret, &s["name"]);
    }
    out
}

/// One entry of a node's share.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The kind.
    pub kind: Kind,
    /// The object's resourceVersion.
    pub version: Option<u64>,
    /// The object.
    pub object: Object,
}

#[derive(Debug, Default)]
struct Data {
    objects: HashMap<Kind, BTreeMap<NsName, Object>>,
    /// Pods and devices by node.
    bound: HashMap<(Kind, String), BTreeSet<NsName>>,
    /// (kind, namespace, name) of a ConfigMap or Secret → node → number of its pods using it.
    refs: Counts<(Kind, String, String), String>,
    /// The same counts by node first, so that a node's share is read without a scan of all.
    node_refs: Counts<String, (Kind, String, String)>,
}

/// The shared index. See the module docs.
#[derive(Debug, Default)]
pub struct Index {
    data: RwLock<Data>,
    wake: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Arc<Index> {
        Arc::new(Index::default())
    }

    /// A receiver that changes whenever `node`'s share may have changed.
    pub fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.entry(node.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, nodes: impl IntoIterator<Item = String>) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        for node in nodes {
            if let Some(tx) = wake.get(&node) {
                tx.send_modify(|g| *g += 1);
            }
        }
    }

    fn notify_all(&self) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        for tx in wake.values() {
            tx.send_modify(|g| *g += 1);
        }
    }

    /// Adds or replaces an object.
    pub fn apply(&self, kind: Kind, object: Value) {
        let mut touched = BTreeSet::new();
        let all = {
            let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
            data.insert(kind, &object, &mut touched)
        };
        self.after(all, touched);
    }

    /// Removes an object.
    pub fn delete(&self, kind: Kind, object: &Value) {
        let mut touched = BTreeSet::new();
        let all = {
            let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
            data.remove(kind, &ns_name(object), &mut touched)
        };
        self.after(all, touched);
    }

    /// Replaces every object of `kind` (after a re-list).
    pub fn replace_all(&self, kind: Kind, objects: Vec<Value>) {
        let mut touched = BTreeSet::new();
        let mut all = false;
        {
            let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
            let fresh: BTreeMap<NsName, Value> =
                objects.into_iter().map(|o| (ns_name(&o), o)).collect();
            let gone: Vec<NsName> = data
                .objects
                .get(&kind)
                .map(|m| {
                    m.keys()
                        .filter(|k| !fresh.contains_key(*k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for key in gone {
                all |= data.remove(kind, &key, &mut touched);
            }
            for (key, obj) in fresh {
                let same = data
                    .objects
                    .get(&kind)
                    .and_then(|m| m.get(&key))
                    .is_some_and(|old| old.resource_version() == meta(&obj, "resourceVersion"));
                if !same {
                    all |= data.insert(kind, &obj, &mut touched);
                }
            }
        }
        self.after(all, touched);
    }

    fn after(&self, all: bool, touched: BTreeSet<String>) {
        if all {
            self.notify_all();
        } else {
            self.notify(touched);
        }
    }

    /// One object as kept.
    pub fn stored(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.objects
            .get(&kind)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// One object, parsed.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.stored(kind, namespace, name).map(|o| o.value())
    }

    /// Whether the index holds an object.
    pub fn contains(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.stored(kind, namespace, name).is_some()
    }

    /// Whether a pod bound to `node` references the ConfigMap or Secret `namespace/name`.
    pub fn referenced_by(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.refs
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .is_some_and(|nodes| nodes.contains_key(node))
    }

    /// The pods bound to `node`, parsed.
    pub fn pods_on(&self, node: &str) -> Vec<Value> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let Some(names) = data.bound.get(&(Kind::Pod, node.to_owned())) else {
            return Vec::new();
        };
        let pods = data.objects.get(&Kind::Pod);
        names
            .iter()
            .filter_map(|n| pods.and_then(|p| p.get(n)))
            .map(|p| p.value())
            .collect()
    }

    /// Every Node object that carries the edge role label, parsed.
    pub fn edge_nodes(&self) -> Vec<Value> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.objects
            .get(&Kind::Node)
            .map(|m| {
                m.values()
                    .filter(|n| n.is_edge_node())
                    .map(|n| n.value())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The names of the Nodes that carry the edge role label.
    pub fn edge_node_names(&self) -> Vec<String> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        data.objects
            .get(&Kind::Node)
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| n.is_edge_node())
                    .map(|((_, name), _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `name` may act as an edge node: its Node carries the edge label, or it has no Node
    /// yet (it is about to register). A node of the cluster that is not an edge node never is.
    pub fn may_be_edge(&self, name: &str) -> bool {
        self.stored(Kind::Node, "", name)
            .is_none_or(|n| n.is_edge_node())
    }

    /// `node`'s share, by edge key (nothing for a Node that is not an edge node). See the module
    /// docs.
    pub fn desired(&self, node: &str) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        if !self.may_be_edge(node) {
            return out;
        }
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut put = |kind: Kind, (ns, name): &NsName, obj: &Object| {
            out.insert(
                edge_key(kind, ns, name),
                Entry {
                    kind,
                    version: obj.version(),
                    object: obj.clone(),
                },
            );
        };
        let objects = |kind: Kind| data.objects.get(&kind);
        let node_key = (String::new(), node.to_owned());
        if let Some(n) = objects(Kind::Node).and_then(|m| m.get(&node_key)) {
            put(Kind::Node, &node_key, n);
        }
        for kind in [Kind::Pod, Kind::Device] {
            let Some(keys) = data.bound.get(&(kind, node.to_owned())) else {
                continue;
            };
            for key in keys {
                if let Some(obj) = objects(kind).and_then(|m| m.get(key)) {
                    put(kind, key, obj);
                }
            }
        }
        for (kind, ns, name) in data.node_refs.get(node).into_iter().flat_map(|r| r.keys()) {
            let key = (ns.clone(), name.clone());
            if let Some(obj) = objects(*kind).and_then(|m| m.get(&key)) {
                put(*kind, &key, obj);
            }
        }
        for kind in [Kind::Service, Kind::EndpointSlice] {
            for (key, obj) in objects(kind).into_iter().flatten() {
                put(kind, key, obj);
            }
        }
        out
    }
}

/// Counts by two keys: `a` → `b` → count, no zero counts and no empty inner maps.
type Counts<A, B> = HashMap<A, HashMap<B, usize>>;

/// Adds one to `a` → `b`.
fn count_up<A: Hash + Eq, B: Hash + Eq>(counts: &mut Counts<A, B>, a: A, b: B) {
    *counts.entry(a).or_default().entry(b).or_default() += 1;
}

/// Takes one from `a` → `b`, dropping what reaches zero.
fn count_down<A, B, QA, QB>(counts: &mut Counts<A, B>, a: &QA, b: &QB)
where
    A: Hash + Eq + Borrow<QA>,
    B: Hash + Eq + Borrow<QB>,
    QA: Hash + Eq + ?Sized,
    QB: Hash + Eq + ?Sized,
{
    let Some(inner) = counts.get_mut(a) else {
        return;
    };
    if let Some(n) = inner.get_mut(b) {
        *n -= 1;
        if *n == 0 {
            inner.remove(b);
        }
    }
    if inner.is_empty() {
        counts.remove(a);
    }
}

impl Data {
    /// Inserts; records touched nodes; returns true when every node is touched.
    fn insert(&mut self, kind: Kind, obj: &Value, touched: &mut BTreeSet<String>) -> bool {
        let key = ns_name(obj);
        let old = self
            .objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), Arc::new(Stored::new(obj)));
        if let Some(old) = &old {
            self.unlink(kind, &key, &old.value(), touched);
        }
        self.link(kind, &key, obj, touched)
    }

    fn remove(&mut self, kind: Kind, key: &NsName, touched: &mut BTreeSet<String>) -> bool {
        let old = self.objects.get_mut(&kind).and_then(|m| m.remove(key));
        match old {
            Some(old) => self.unlink(kind, key, &old.value(), touched),
            None => false,
        }
    }

    fn link(
        &mut self,
        kind: Kind,
        key: &NsName,
        obj: &Value,
        touched: &mut BTreeSet<String>,
    ) -> bool {
        match kind {
            Kind::Node => {
                touched.insert(key.1.clone());
                false
            }
            Kind::Pod | Kind::Device => {
                if let Some(node) = bound_node(obj) {
                    self.bound
                        .entry((kind, node.to_owned()))
                        .or_default()
                        .insert(key.clone());
                    touched.insert(node.to_owned());
                    for (rk, name) in references(kind, obj) {
                        let rkey = (rk, key.0.clone(), name);
                        count_up(&mut self.refs, rkey.clone(), node.to_owned());
                        count_up(&mut self.node_refs, node.to_owned(), rkey);
                    }
                }
                false
            }
            Kind::ConfigMap | Kind::Secret | Kind::DeviceModel => {
                if let Some(nodes) = self.refs.get(&(kind, key.0.clone(), key.1.clone())) {
                    touched.extend(nodes.keys().cloned());
                }
                false
            }
            Kind::Service | Kind::EndpointSlice => true,
        }
    }

    fn unlink(
        &mut self,
        kind: Kind,
        key: &NsName,
        old: &Value,
        touched: &mut BTreeSet<String>,
    ) -> bool {
        match kind {
            Kind::Pod | Kind::Device => {
                if let Some(node) = bound_node(old) {
                    let slot = (kind, node.to_owned());
                    if let Some(set) = self.bound.get_mut(&slot) {
                        set.remove(key);
                        if set.is_empty() {
                            self.bound.remove(&slot);
                        }
                    }
                    touched.insert(node.to_owned());
                    for (rk, name) in references(kind, old) {
                        let rkey = (rk, key.0.clone(), name);
                        count_down(&mut self.refs, &rkey, node);
                        count_down(&mut self.node_refs, node, &rkey);
                    }
                }
                false
            }
            // The others touch the same nodes on removal as on insertion.
            _ => self.link(kind, key, old, touched),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, config: &str) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name, "resourceVersion": "1"},
            "spec": {"nodeName": node, "volumes": [{"name": "v", "configMap": {"name": config}}]}})
    }

    fn keys(index: &Index, node: &str) -> Vec<String> {
        index.desired(node).into_keys().collect()
    }

    #[test]
    fn a_share_holds_only_the_configmaps_of_its_own_pods_while_they_use_them() {
        let index = Index::new();
        for c in ["a", "b"] {
            index.apply(
                Kind::ConfigMap,
                json!({"metadata": {"namespace": "ns", "name": c, "resourceVersion": "1"}}),
            );
        }
        index.apply(Kind::Pod, pod("p1", "n1", "a"));
        index.apply(Kind::Pod, pod("p2", "n1", "a"));
        index.apply(Kind::Pod, pod("p3", "n2", "b"));
        assert_eq!(
            keys(&index, "n1"),
            ["ns/configmap/a", "ns/pod/p1", "ns/pod/p2"]
        );
        assert_eq!(keys(&index, "n2"), ["ns/configmap/b", "ns/pod/p3"]);
        index.delete(Kind::Pod, &pod("p1", "n1", "a"));
        assert_eq!(keys(&index, "n1"), ["ns/configmap/a", "ns/pod/p2"]);
        // p2 now uses b: a leaves n1's share, b joins it.
        index.apply(Kind::Pod, pod("p2", "n1", "b"));
        assert_eq!(keys(&index, "n1"), ["ns/configmap/b", "ns/pod/p2"]);
        index.delete(Kind::Pod, &pod("p2", "n1", "b"));
        assert!(keys(&index, "n1").is_empty());
        assert!(!index.data.read().unwrap().node_refs.contains_key("n1"));
        assert!(index.referenced_by("n2", Kind::ConfigMap, "ns", "b"));
        assert!(!index.referenced_by("n1", Kind::ConfigMap, "ns", "b"));
    }
}
