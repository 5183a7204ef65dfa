//! Which resources the API serves: the built-in kinds, plus every CustomResourceDefinition stored
//! at run time.

use serde_json::{Value, json};

use crate::store::Store;

/// Store resource under which CRDs are kept.
pub const CRD_RESOURCE: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// The verbs of a stored resource.
pub const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

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
    /// Where `/scale` finds the replica counts, for resources that have the subresource.
    pub scale: Option<ScalePaths>,
    /// Only `create` is served and nothing is stored (reviews: TokenReview, SubjectAccessReview).
    pub create_only: bool,
    /// Categories (`kubectl get all` lists the `all` category).
    pub categories: Vec<String>,
    /// A custom resource's `openAPIV3Schema` for this version, if its CRD gives one.
    pub schema: Option<Value>,
}

/// The JSON paths of a scalable resource's replica counts (a CRD's `subresources.scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// The desired count (`.spec.replicas`).
    pub spec_replicas: String,
    /// The observed count (`.status.replicas`).
    pub status_replicas: String,
    /// The serialized label selector (`.status.selector`), if any.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    fn standard() -> ScalePaths {
        ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".spec.selector".into()),
        }
    }
}

impl Resource {
    /// The key the store files objects under: the plural, with the group for non-core types.
    /// Resources that are one object seen through two APIs share one key (core and
    /// `events.k8s.io` Events).
    pub fn store_name(&self) -> String {
        if self.group.is_empty() || (self.group == "events.k8s.io" && self.plural == "events") {
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

    /// The verbs served on the resource.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.group == METRICS_GROUP {
            vec!["get", "list"]
        } else if self.create_only {
            vec!["create"]
        } else {
            ALL_VERBS.to_vec()
        }
    }

    /// The subresources served beside the resource, with their verbs and kinds.
    pub fn subresources(&self) -> Vec<(&'static str, &'static [&'static str], String)> {
        let mut out = Vec::new();
        if self.status {
            out.push(("status", &["get", "patch", "update"][..], self.kind.clone()));
        }
        if self.scale.is_some() {
            out.push(("scale", &["get", "patch", "update"][..], "Scale".to_owned()));
        }
        match (self.group.as_str(), self.plural.as_str()) {
            ("", "pods") => {
                out.push(("eviction", &["create"][..], "Eviction".to_owned()));
                out.push((
                    "ephemeralcontainers",
                    &["get", "patch", "update"][..],
                    "Pod".to_owned(),
                ));
            }
            ("", "serviceaccounts") => {
                out.push(("token", &["create"][..], "TokenRequest".to_owned()));
            }
            ("certificates.k8s.io", "certificatesigningrequests") => {
                out.push((
                    "approval",
                    &["get", "patch", "update"][..],
                    self.kind.clone(),
                ));
            }
            _ => {}
        }
        out
    }

    /// Whether `sub` is a subresource of this resource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources().iter().any(|(name, _, _)| *name == sub)
    }

    /// The `APIResource` discovery entries (the resource and its subresources).
    pub fn discovery(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        for (sub, verbs, kind) in self.subresources() {
            let mut entry = json!({
                "name": format!("{}/{sub}", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            match sub {
                "scale" => {
                    entry["group"] = json!("autoscaling");
                    entry["version"] = json!("v1");
                }
                "eviction" => {
                    entry["group"] = json!("policy");
                    entry["version"] = json!("v1");
                }
                "token" => {
                    entry["group"] = json!("authentication.k8s.io");
                    entry["version"] = json!("v1");
                }
                _ => {}
            }
            out.push(entry);
        }
        out
    }
}

/// One row of the built-in table: group, version, plural, kind, namespaced, short names,
/// `/status`, `/scale`, categories.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
    bool,
    &'static [&'static str],
);

const NS: bool = true;
const CLUSTER: bool = false;
const ALL: &[&str] = &["all"];

/// The built-in resources of a Kubernetes API server that the control plane serves.
#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "pods", "Pod", NS, &["po"], true, false, ALL),
    ("", "v1", "nodes", "Node", CLUSTER, &["no"], true, false, &[]),
    ("", "v1", "namespaces", "Namespace", CLUSTER, &["ns"], true, false, &[]),
    ("", "v1", "configmaps", "ConfigMap", NS, &["cm"], false, false, &[]),
    ("", "v1", "secrets", "Secret", NS, &[], false, false, &[]),
    ("", "v1", "services", "Service", NS, &["svc"], true, false, ALL),
    ("", "v1", "endpoints", "Endpoints", NS, &["ep"], false, false, &[]),
    ("", "v1", "events", "Event", NS, &["ev"], false, false, &[]),
    ("", "v1", "serviceaccounts", "ServiceAccount", NS, &["sa"], false, false, &[]),
    ("", "v1", "persistentvolumes", "PersistentVolume", CLUSTER, &["pv"], true, false, &[]),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", NS, &["pvc"], true, false, &[]),
    ("", "v1", "replicationcontrollers", "ReplicationController", NS, &["rc"], true, true, ALL),
    ("", "v1", "podtemplates", "PodTemplate", NS, &[], false, false, &[]),
    ("", "v1", "resourcequotas", "ResourceQuota", NS, &["quota"], true, false, &[]),
    ("", "v1", "limitranges", "LimitRange", NS, &["limits"], false, false, &[]),
    ("apps", "v1", "deployments", "Deployment", NS, &["deploy"], true, true, ALL),
    ("apps", "v1", "replicasets", "ReplicaSet", NS, &["rs"], true, true, ALL),
    ("apps", "v1", "statefulsets", "StatefulSet", NS, &["sts"], true, true, ALL),
    ("apps", "v1", "daemonsets", "DaemonSet", NS, &["ds"], true, false, ALL),
    ("apps", "v1", "controllerrevisions", "ControllerRevision", NS, &[], false, false, &[]),
    ("batch", "v1", "jobs", "Job", NS, &[], true, false, ALL),
    ("batch", "v1", "cronjobs", "CronJob", NS, &["cj"], true, false, ALL),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", NS, &["hpa"], true, false, ALL),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", NS, &["pdb"], true, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", NS, &[], false, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", NS, &[], false, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", CLUSTER, &[], false, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", CLUSTER, &[], false, false, &[]),
    ("events.k8s.io", "v1", "events", "Event", NS, &["ev"], false, false, &[]),
    ("networking.k8s.io", "v1", "ingresses", "Ingress", NS, &["ing"], true, false, &[]),
    ("networking.k8s.io", "v1", "ingressclasses", "IngressClass", CLUSTER, &[], false, false, &[]),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", NS, &["netpol"], false, false, &[]),
    ("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", CLUSTER, &["pc"], false, false, &[]),
    ("storage.k8s.io", "v1", "storageclasses", "StorageClass", CLUSTER, &["sc"], false, false, &[]),
    ("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", CLUSTER, &[], false, false, &[]),
    ("coordination.k8s.io", "v1", "leases", "Lease", NS, &[], false, false, &[]),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", NS, &[], false, false, &[]),
    ("certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest", CLUSTER, &["csr"], true, false, &[]),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", CLUSTER, &["crd", "crds"], true, false, &[]),
    ("apiregistration.k8s.io", "v1", "apiservices", "APIService", CLUSTER, &[], true, false, &[]),
    // The resource metrics API (as metrics-server serves it): read-only, answered by the
    // control plane's metrics source, never stored.
    ("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", CLUSTER, &[], false, false, &[]),
    ("metrics.k8s.io", "v1beta1", "pods", "PodMetrics", NS, &[], false, false, &[]),
];

/// Resources that only take `create` and store nothing.
#[rustfmt::skip]
const REVIEWS: &[(&str, &str, &str, bool)] = &[
    ("authentication.k8s.io", "tokenreviews", "TokenReview", CLUSTER),
    ("authentication.k8s.io", "selfsubjectreviews", "SelfSubjectReview", CLUSTER),
    ("authorization.k8s.io", "subjectaccessreviews", "SubjectAccessReview", CLUSTER),
    ("authorization.k8s.io", "selfsubjectaccessreviews", "SelfSubjectAccessReview", CLUSTER),
    ("authorization.k8s.io", "selfsubjectrulesreviews", "SelfSubjectRulesReview", CLUSTER),
    ("authorization.k8s.io", "localsubjectaccessreviews", "LocalSubjectAccessReview", NS),
];

/// The resource metrics API group (`metrics.k8s.io/v1beta1`: NodeMetrics, PodMetrics).
pub const METRICS_GROUP: &str = "metrics.k8s.io";

/// Whether `plural` in `group` is one of the built-in resources (not a custom resource, even in a
/// `*.k8s.io` group).
pub fn is_builtin(group: &str, plural: &str) -> bool {
    BUILTINS.iter().any(|b| b.0 == group && b.2 == plural)
        || REVIEWS.iter().any(|r| r.0 == group && r.1 == plural)
}

/// The built-in resources.
pub fn builtins() -> Vec<Resource> {
    let stored = BUILTINS.iter().map(
        |&(group, version, plural, kind, namespaced, short, status, scale, categories)| Resource {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            status,
            scale: scale.then(ScalePaths::standard),
            create_only: false,
            categories: categories.iter().map(|s| (*s).to_owned()).collect(),
            schema: None,
        },
    );
    let reviews = REVIEWS
        .iter()
        .map(|&(group, plural, kind, namespaced)| Resource {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: Vec::new(),
            status: false,
            scale: None,
            create_only: true,
            categories: Vec::new(),
            schema: None,
        });
    stored.chain(reviews).collect()
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
    let short = super::auth::string_list(&names["shortNames"]);
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let categories = super::auth::string_list(&names["categories"]);
    let subresources = |version: &str| {
        spec["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|x| x["name"] == version))
            .and_then(|x| x.get("subresources"))
    };
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
                    status: subresources(version).is_some_and(|s| s.get("status").is_some()),
                    scale: subresources(version)
                        .and_then(|s| s.get("scale"))
                        .map(|s| ScalePaths {
                            spec_replicas: s["specReplicasPath"]
                                .as_str()
                                .unwrap_or(".spec.replicas")
                                .to_owned(),
                            status_replicas: s["statusReplicasPath"]
                                .as_str()
                                .unwrap_or(".status.replicas")
                                .to_owned(),
                            label_selector: s["labelSelectorPath"].as_str().map(str::to_owned),
                        }),
                    create_only: false,
                    categories: categories.clone(),
                    schema: spec["versions"]
                        .as_array()
                        .and_then(|vs| vs.iter().find(|x| x["name"] == version))
                        .and_then(|x| x.pointer("/schema/openAPIV3Schema"))
                        .cloned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes' version priority, as a sort key (smaller first): GA before beta before alpha,
/// higher major then higher minor first (`v1`, `v1beta2`, `v1beta1`, `v1alpha2`), other names
/// last, alphabetically. The first version of a group is its preferred one.
pub fn version_priority(v: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    use std::cmp::Reverse;
    let other = (3, Reverse(0), Reverse(0), v.to_owned());
    let Some(rest) = v.strip_prefix('v') else {
        return other;
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return other;
    };
    let tail = &rest[digits..];
    let (rank, minor) = if tail.is_empty() {
        (0, Some(0))
    } else if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().ok())
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (2, n.parse().ok())
    } else {
        return other;
    };
    match minor {
        Some(minor) => (rank, Reverse(major), Reverse(minor), String::new()),
        None => other,
    }
}

/// Every resource served right now: built-ins and stored CRDs.
pub fn all(store: &Store) -> Vec<Resource> {
    let mut out = builtins();
    if let Ok(crds) = store.list_all(CRD_RESOURCE, None) {
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

#[cfg(test)]
mod version_tests {
    use super::version_priority;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut vs = [
            "v1alpha2",
            "foo",
            "v1beta1",
            "v2",
            "v1",
            "v1beta2",
            "v10alpha1",
        ];
        vs.sort_by_key(|v| version_priority(v));
        assert_eq!(
            vs,
            [
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v10alpha1",
                "v1alpha2",
                "foo"
            ]
        );
    }
}
