//! Resource strings: what a message is about.
//!
//! Upstream KubeEdge names the object of a message with a slash-separated string (spec §1.6):
//!
//! * **edge form**, on the wire and inside the edge: `<namespace>/<type>[/<name>]`, e.g.
//!   `default/pod/nginx`; cluster-scoped objects use the literal namespace `null`
//!   (`null/node/e1`);
//! * **cloud form**, inside the cloud: the edge form prefixed with `node/<nodeID>/`, e.g.
//!   `node/e1/default/pod/nginx`.
//!
//! Cloudhub [`trim`]s the prefix before sending to the edge and [`prefix`]es what the edge sends.
//! [`ObjectRef`] is the typed view of an edge-form object resource; other forms in use upstream
//! (`node`, `membership`, `k8s/ca.crt`, node-task paths) are plain strings handled by the free
//! functions.
//!
//! ```
//! use kubeedge_core::resource::{self, ObjectRef};
//! use kubeedge_core::message::ResourceType;
//!
//! let r: ObjectRef = "default/pod/nginx".parse().unwrap();
//! assert_eq!(r.kind, ResourceType::Pod);
//! assert_eq!(resource::prefix("e1", &r.to_string()), "node/e1/default/pod/nginx");
//! assert_eq!(resource::trim("node/e1/default/pod/nginx"), "default/pod/nginx");
//! assert_eq!(resource::node_id("node/e1/default/pod/nginx"), Some("e1"));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::message::ResourceType;

/// The namespace token used for cluster-scoped objects.
pub const CLUSTER_NAMESPACE: &str = "null";

/// The first token of a cloud-form resource string.
pub const NODE_PREFIX: &str = "node";

/// Why a resource string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The string does not have the expected number of tokens.
    #[error("resource {resource:?}: expected {expected}, found {found} tokens")]
    Tokens {
        /// The offending string.
        resource: String,
        /// What was expected.
        expected: &'static str,
        /// How many tokens were found.
        found: usize,
    },
    /// A token that must not be empty is empty.
    #[error("resource {resource:?}: empty {what}")]
    Empty {
        /// The offending string.
        resource: String,
        /// Which token is empty.
        what: &'static str,
    },
    /// A cloud-form string does not start with `node/`.
    #[error("resource {0:?} does not start with \"node/\"")]
    NotCloudForm(String),
}

/// An object resource in edge form: `<namespace>/<type>[/<name>]`.
///
/// A missing name means "all objects of that type in the namespace" (a list query such as
/// `default/pod`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The namespace; `None` for cluster-scoped objects (written as `null`).
    pub namespace: Option<String>,
    /// The resource type token.
    pub kind: ResourceType,
    /// The object name; `None` for a whole-type query.
    pub name: Option<String>,
}

/// An object resource in cloud form: `node/<nodeID>/<namespace>/<type>[/<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloudRef {
    /// The node the message is for or from.
    pub node: String,
    /// The object, in edge form.
    pub object: ObjectRef,
}

// === impl ObjectRef ===

impl ObjectRef {
    /// A namespaced object.
    pub fn namespaced(namespace: &str, kind: ResourceType, name: &str) -> Self {
        ObjectRef {
            namespace: Some(namespace.to_owned()),
            kind,
            name: Some(name.to_owned()),
        }
    }

    /// A cluster-scoped object (namespace token `null`).
    pub fn cluster(kind: ResourceType, name: &str) -> Self {
        ObjectRef {
            namespace: None,
            kind,
            name: Some(name.to_owned()),
        }
    }

    /// The namespace token as written: the namespace, or `null`.
    pub fn namespace_token(&self) -> &str {
        self.namespace.as_deref().unwrap_or(CLUSTER_NAMESPACE)
    }

    fn parse_tokens(resource: &str, tokens: &[&str]) -> Result<Self, Error> {
        let (ns, kind, name) = match tokens {
            [ns, kind] => (*ns, *kind, None),
            [ns, kind, name] => (*ns, *kind, Some(*name)),
            _ => {
                return Err(Error::Tokens {
                    resource: resource.to_owned(),
                    expected: "2 or 3 (<namespace>/<type>[/<name>])",
                    found: tokens.len(),
                });
            }
        };
        let empty = |what| Error::Empty {
            resource: resource.to_owned(),
            what,
        };
        if ns.is_empty() {
            return Err(empty("namespace"));
        }
        if kind.is_empty() {
            return Err(empty("type"));
        }
        if name.is_some_and(str::is_empty) {
            return Err(empty("name"));
        }
        Ok(ObjectRef {
            namespace: (ns != CLUSTER_NAMESPACE).then(|| ns.to_owned()),
            kind: ResourceType::parse(kind),
            name: name.map(str::to_owned),
        })
    }
}

impl FromStr for ObjectRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let tokens: Vec<&str> = s.split('/').collect();
        ObjectRef::parse_tokens(s, &tokens)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace_token(), self.kind)?;
        if let Some(name) = &self.name {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

// === impl CloudRef ===

impl FromStr for CloudRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let tokens: Vec<&str> = s.split('/').collect();
        match tokens.as_slice() {
            [NODE_PREFIX, node, rest @ ..] => {
                if node.is_empty() {
                    return Err(Error::Empty {
                        resource: s.to_owned(),
                        what: "node id",
                    });
                }
                Ok(CloudRef {
                    node: (*node).to_owned(),
                    object: ObjectRef::parse_tokens(s, rest)?,
                })
            }
            _ => Err(Error::NotCloudForm(s.to_owned())),
        }
    }
}

impl fmt::Display for CloudRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NODE_PREFIX}/{}/{}", self.node, self.object)
    }
}

// === free functions ===

/// Cloud → edge: removes the `node/<id>/` prefix as cloudhub does before sending.
///
/// Upstream keeps `tokens[2..]` of any resource that starts with `node`; a string that does not start
/// with `node` is returned unchanged. So does the bare keepalive resource `node`.
pub fn trim(resource: &str) -> &str {
    if !resource.starts_with(NODE_PREFIX) {
        return resource;
    }
    let mut parts = resource.splitn(3, '/');
    let _node = parts.next();
    match (parts.next(), parts.next()) {
        (Some(_id), Some(rest)) => rest,
        // `node` or `node/<id>`: upstream's `tokens[2:]` is empty.
        (Some(_id), None) => "",
        _ => resource,
    }
}

/// Edge → cloud: prefixes `node/<node>/` as cloudhub does for everything the edge sends.
pub fn prefix(node: &str, resource: &str) -> String {
    format!("{NODE_PREFIX}/{node}/{resource}")
}

/// The node id of a cloud-form resource: the token after the first `node` token that is followed by a
/// non-empty token, as upstream's `GetNodeID` scans.
pub fn node_id(resource: &str) -> Option<&str> {
    let mut tokens = resource.split('/');
    while let Some(t) = tokens.next() {
        if t == NODE_PREFIX {
            match tokens.next() {
                Some(id) if !id.is_empty() => return Some(id),
                Some(_) | None => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaced_cluster_and_list_forms() {
        let r: ObjectRef = "default/pod/nginx".parse().unwrap();
        assert_eq!(
            r,
            ObjectRef::namespaced("default", ResourceType::Pod, "nginx")
        );
        let r: ObjectRef = "null/node/e1".parse().unwrap();
        assert_eq!(r, ObjectRef::cluster(ResourceType::Node, "e1"));
        assert_eq!(r.to_string(), "null/node/e1");
        let r: ObjectRef = "default/pod".parse().unwrap();
        assert_eq!(r.name, None);
        let r: ObjectRef = "kube-node-lease/lease/e1".parse().unwrap();
        assert_eq!(r.kind, ResourceType::Lease);
    }

    #[test]
    fn rejects_bad_forms_with_typed_errors() {
        assert!(matches!(
            "pod".parse::<ObjectRef>(),
            Err(Error::Tokens { found: 1, .. })
        ));
        assert!(matches!(
            "a/b/c/d".parse::<ObjectRef>(),
            Err(Error::Tokens { found: 4, .. })
        ));
        assert!(matches!(
            "/pod/x".parse::<ObjectRef>(),
            Err(Error::Empty {
                what: "namespace",
                ..
            })
        ));
        assert!(matches!(
            "default/pod/".parse::<ObjectRef>(),
            Err(Error::Empty { what: "name", .. })
        ));
        assert!(matches!(
            "pods/e1/default/pod/x".parse::<CloudRef>(),
            Err(Error::NotCloudForm(_))
        ));
        assert!(matches!(
            "node//default/pod/x".parse::<CloudRef>(),
            Err(Error::Empty {
                what: "node id",
                ..
            })
        ));
    }

    #[test]
    fn trims_like_cloudhub() {
        assert_eq!(trim("node/e1/default/pod/nginx"), "default/pod/nginx");
        assert_eq!(trim("node/e1/null/node/e1"), "null/node/e1");
        assert_eq!(trim("node/e1/membership"), "membership");
        assert_eq!(trim("node/e1/twin"), "twin");
        assert_eq!(trim("node/e1"), "");
        assert_eq!(trim("node"), "node");
        assert_eq!(trim("default/pod/nginx"), "default/pod/nginx");
        assert_eq!(trim("k8s/ca.crt"), "k8s/ca.crt");
    }

    #[test]
    fn finds_node_ids_like_upstream() {
        assert_eq!(node_id("node/e1/default/pod/x"), Some("e1"));
        assert_eq!(node_id("node/e1/membership"), Some("e1"));
        assert_eq!(node_id("apps/v1/nodeupgradejob/job1/node/e7"), Some("e7"));
        assert_eq!(node_id("node"), None);
        assert_eq!(node_id("node//x"), None);
        assert_eq!(node_id("default/pod/x"), None);
    }

    #[test]
    fn cloud_ref_round_trips() {
        let c: CloudRef = "node/e1/default/podpatch/nginx".parse().unwrap();
        assert_eq!(c.node, "e1");
        assert_eq!(c.object.kind, ResourceType::PodPatch);
        assert_eq!(c.to_string(), "node/e1/default/podpatch/nginx");
    }
}
