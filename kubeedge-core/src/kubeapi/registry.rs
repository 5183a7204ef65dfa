//! Which resources the API serves: the built-in kinds, plus every CustomResourceDefinition stored
//! at run time.

use serde_json::{Value, json};

use crate::store::{FieldSelector, LabelSelector, Store};

/// Store resource under which CRDs are kept.
pub const CRD_RESOURCE: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// One servable resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name, as in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Whether `/status` is a subresource (status is then ignored on the main resource).
    pub status: bool,
}

impl Resource {
    /// The key the store files objects under: the plural, with the group for non-core types.
    pub fn store_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `apiVersion` of the objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `APIResource` discovery entries (the resource and its subresources).
    pub fn discovery(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": self.short_names,
        })];
        if self.status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

fn builtin(
    group: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> Resource {
    let version = "v1";
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        status,
    }
}

/// The built-in resources.
pub fn builtins() -> Vec<Resource> {
    vec![
        builtin("", "pods", "Pod", true, &["po"], true),
        builtin("", "nodes", "Node", false, &["no"], true),
        builtin("", "namespaces", "Namespace", false, &["ns"], true),
        builtin("", "configmaps", "ConfigMap", true, &["cm"], false),
        builtin("", "secrets", "Secret", true, &[], false),
        builtin("", "services", "Service", true, &["svc"], true),
        builtin("", "endpoints", "Endpoints", true, &["ep"], false),
        builtin("", "events", "Event", true, &["ev"], false),
        builtin(
            "",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        builtin("coordination.k8s.io", "leases", "Lease", true, &[], false),
        builtin(
            "discovery.k8s.io",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ]
}

/// The resources a stored CRD defines (one per served version).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        names["plural"].as_str(),
        names["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    let singular = names["singular"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let short: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["served"].as_bool().unwrap_or(true))
                .filter_map(|v| v["name"].as_str())
                .map(|version| Resource {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.into(),
                    singular: singular.clone(),
                    kind: kind.into(),
                    namespaced,
                    short_names: short.clone(),
                    status: spec["versions"]
                        .as_array()
                        .and_then(|vs| vs.iter().find(|x| x["name"] == version))
                        .is_some_and(|x| x.pointer("/subresources/status").is_some()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every resource served right now: built-ins and stored CRDs.
pub fn all(store: &Store) -> Vec<Resource> {
    let mut out = builtins();
    if let Ok((crds, _)) = store.list(
        CRD_RESOURCE,
        None,
        &LabelSelector::default(),
        &FieldSelector::default(),
    ) {
        for crd in &crds {
            out.extend(from_crd(crd));
        }
    }
    out
}

/// The resource at `group`/`version`/`plural`, if served.
pub fn find(store: &Store, group: &str, version: &str, plural: &str) -> Option<Resource> {
    all(store)
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}
