//! Who may do what: ServiceAccount tokens and RBAC.
//!
//! * **Tokens** ([`TokenIssuer`]): bound ServiceAccount tokens as the TokenRequest API hands them
//!   out (`serviceaccounts/<name>/token`, `kubectl create token`): JWTs naming the account (and
//!   the pod they are bound to, if any), with audiences and an expiry, signed with HMAC-SHA256 by
//!   a key kept in the store. A token authenticates while it has not expired, its signature holds
//!   and the ServiceAccount (and bound pod) it names still exist with the same uid.
//! * **RBAC** ([`authorize`]): Roles, ClusterRoles and their bindings, as the apiserver's RBAC
//!   authorizer evaluates them, for every user outside `system:masters`. The default cluster roles
//!   (`cluster-admin`, `admin`, `edit`, `view`, `system:discovery`, `system:basic-user`,
//!   `system:public-info-viewer`) and their bindings are created at start ([`default_roles`]).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::store::{self, BatchOp, LabelSelector, Store};

/// An authenticated API user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (a certificate's CN; `system:serviceaccount:<ns>:<name>` for tokens).
    pub name: String,
    /// The groups (a certificate's O entries; `system:serviceaccounts...` for tokens), with
    /// `system:authenticated`.
    pub groups: Vec<String>,
    /// The uid (ServiceAccounts').
    pub uid: Option<String>,
}

/// The group whose members may do anything (the apiserver's superuser group).
pub const MASTERS_GROUP: &str = "system:masters";

impl User {
    /// Whether the user is a superuser.
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS_GROUP)
    }
}

const KEY_RECORD: &str = "kubeapi/serviceaccount-token-key";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience tokens get when the request names none.
pub const DEFAULT_AUDIENCE: &str = ISSUER;

/// Issues and checks ServiceAccount tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer")
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TokenIssuer {
    /// The issuer of `store`'s API: its signing key is made once and kept in the store.
    pub fn load_or_create(store: &Store) -> Result<TokenIssuer, store::Error> {
        let fresh = || -> Result<Vec<u8>, store::Error> {
            let mut k = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .map_err(|_| store::Error::Invalid("no randomness for the token key".into()))?;
            Ok(k)
        };
        let key = match store.aux_get(KEY_RECORD)? {
            Some(k) if k.len() == 32 => k,
            // Replicas sharing a datastore start at once: the first key stored is everyone's.
            None => store.aux_init(KEY_RECORD, fresh()?)?,
            Some(_) => {
                let k = fresh()?;
                store.batch(vec![BatchOp::SetAux {
                    key: KEY_RECORD.to_owned(),
                    value: k.clone(),
                }])?;
                k
            }
        };
        Ok(TokenIssuer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        })
    }

    /// A token for ServiceAccount `sa` (its stored object), valid for `seconds`, for
    /// `audiences`, bound to `pod` (its stored object) if given.
    pub fn issue(
        &self,
        sa: &Value,
        audiences: &[String],
        seconds: i64,
        pod: Option<&Value>,
    ) -> (String, i64) {
        let now = unix_now();
        let exp = now + seconds;
        let ns = sa
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = sa
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut k8s = json!({"namespace": ns,
            "serviceaccount": {"name": name, "uid": sa.pointer("/metadata/uid")}});
        if let Some(p) = pod {
            k8s["pod"] =
                json!({"name": p.pointer("/metadata/name"), "uid": p.pointer("/metadata/uid")});
        }
        let claims = json!({"iss": ISSUER, "sub": format!("system:serviceaccount:{ns}:{name}"),
            "aud": audiences, "iat": now, "nbf": now, "exp": exp, "kubernetes.io": k8s});
        let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64(claims.to_string().as_bytes());
        let signed = format!("{head}.{body}");
        let sig = ring::hmac::sign(&self.key, signed.as_bytes());
        (format!("{signed}.{}", b64(sig.as_ref())), exp)
    }

    /// The user a token stands for and its audiences, if it is valid now against `store`.
    pub fn verify(&self, store: &Store, token: &str) -> Result<(User, Vec<String>), String> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a token".into());
        };
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "not a token")?;
        ring::hmac::verify(&self.key, format!("{head}.{body}").as_bytes(), &sig)
            .map_err(|_| "invalid token signature")?;
        let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("invalid token claims")?;
        if claims["exp"].as_i64().is_none_or(|exp| exp <= unix_now()) {
            return Err("token has expired".into());
        }
        let k8s = &claims["kubernetes.io"];
        let ns = k8s["namespace"].as_str().unwrap_or_default();
        let name = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
        let sa = store
            .get("serviceaccounts", Some(ns), name)
            .map_err(|_| format!("service account {ns}/{name} does not exist"))?;
        let uid = sa.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        if uid != k8s["serviceaccount"]["uid"] {
            return Err(format!("service account {ns}/{name} has been recreated"));
        }
        if let Some(pod_name) = k8s["pod"]["name"].as_str() {
            let pod = store
                .get("pods", Some(ns), pod_name)
                .map_err(|_| format!("the pod {pod_name} the token is bound to does not exist"))?;
            if pod.pointer("/metadata/uid") != Some(&k8s["pod"]["uid"]) {
                return Err(format!(
                    "the pod {pod_name} the token is bound to has been recreated"
                ));
            }
        }
        let audiences = string_list(&claims["aud"]);
        Ok((
            User {
                name: format!("system:serviceaccount:{ns}:{name}"),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ],
                uid: uid.as_str().map(str::to_owned),
            },
            audiences,
        ))
    }
}

// === RBAC ===

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or a
    /// lower-case HTTP method for non-resource requests.
    pub verb: String,
    /// Whether it is about a resource (else a non-resource path such as `/healthz`).
    pub resource_request: bool,
    /// The API group (`""` for core).
    pub group: String,
    /// The resource (plural).
    pub resource: String,
    /// The subresource, if any.
    pub subresource: String,
    /// The namespace, if any.
    pub namespace: String,
    /// The object's name, if any.
    pub name: String,
    /// The request path (non-resource requests).
    pub path: String,
}

impl Attributes {
    /// `verb` on the object `name` of `resource` in `group` (and `namespace`; empty strings for
    /// none), as the API's own checks ask (approve, bind, escalate, impersonate, create).
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    /// The attributes of `method` on `path`; `watch` when the query asks for a watch (read as the
    /// API reads it).
    pub fn of_request(method: &str, path: &str, watch: bool) -> Attributes {
        let segs: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let (group, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", g, _v, rest @ ..] if !rest.is_empty() => (*g, rest),
            _ => {
                return Attributes {
                    verb: method.to_ascii_lowercase(),
                    resource_request: false,
                    path: path.to_owned(),
                    ..Attributes::default()
                };
            }
        };
        let (namespace, rest) = match rest {
            // A Namespace's own subresources.
            ["namespaces", _, "status" | "finalize"] => ("", rest),
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (*ns, tail),
            other => ("", other),
        };
        let (resource, name, sub) = match rest {
            [r] => (*r, "", ""),
            [r, n] => (*r, *n, ""),
            [r, n, s, ..] => (*r, *n, *s),
            [] => ("", "", ""),
        };
        // `namespaces/<ns>` is the Namespace itself.
        let (namespace, resource, name) = if rest.is_empty() && path.contains("/namespaces/") {
            ("", "namespaces", namespace)
        } else if resource == "namespaces" {
            (name, resource, name)
        } else {
            (namespace, resource, name)
        };
        let verb = match method {
            "GET" | "HEAD" if watch => "watch",
            "GET" | "HEAD" if name.is_empty() => "list",
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" if name.is_empty() => "deletecollection",
            "DELETE" => "delete",
            other => {
                return Attributes {
                    verb: other.to_ascii_lowercase(),
                    ..Attributes::default()
                };
            }
        };
        // Reaching into a pod is a create, also over a WebSocket upgrade (a GET), as
        // kube-apiserver authorizes it since 1.35: a role that may only read pods cannot exec.
        let verb = if group.is_empty()
            && resource == "pods"
            && matches!(sub, "exec" | "attach" | "portforward")
        {
            "create"
        } else {
            verb
        };
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: path.to_owned(),
        }
    }
}

/// The strings of a JSON array (others skipped; nothing for a non-array).
pub(crate) fn string_list(v: &Value) -> Vec<String> {
    strings(v).into_iter().map(str::to_owned).collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether a rule's non-resource URL (`*`, a path, or a prefix ending in `*`) covers `path`.
fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether one PolicyRule allows `a`.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strings(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if !a.resource_request {
        return strings(&rule["nonResourceURLs"])
            .iter()
            .any(|u| url_matches(u, &a.path));
    }
    let groups = strings(&rule["apiGroups"]);
    if !groups.iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = strings(&rule["resources"]);
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == full
            || (a.subresource.is_empty() && *r == a.resource)
            || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
            || r.strip_suffix("/*")
                .is_some_and(|res| res == a.resource && !a.subresource.is_empty())
    });
    if !resource_ok {
        return false;
    }
    let names = strings(&rule["resourceNames"]);
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

fn subject_matches(subject: &Value, user: &User) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn list_all(store: &Store, resource: &str, ns: Option<&str>) -> Vec<Value> {
    // An unreadable store grants nothing.
    store.list_all(resource, ns).unwrap_or_default()
}

/// Whether `held` rules allow everything `rule` grants (each verb on each group, resource and
/// name, or each verb on each non-resource URL); wildcards are only covered by wildcards.
pub fn covers(held: &[Value], rule: &Value) -> bool {
    let verbs = strings(&rule["verbs"]);
    let has = |list: &Value, x: &str| strings(list).iter().any(|v| *v == "*" || *v == x);
    let urls = strings(&rule["nonResourceURLs"]);
    if !urls.is_empty() {
        return urls.iter().all(|u| {
            verbs.iter().all(|v| {
                held.iter().any(|h| {
                    has(&h["verbs"], v)
                        && strings(&h["nonResourceURLs"])
                            .iter()
                            .any(|hu| url_matches(hu, u))
                })
            })
        });
    }
    let names = strings(&rule["resourceNames"]);
    let groups = strings(&rule["apiGroups"]);
    let resources = strings(&rule["resources"]);
    verbs.iter().all(|v| {
        groups.iter().all(|g| {
            resources.iter().all(|r| {
                held.iter().any(|h| {
                    let held_names = strings(&h["resourceNames"]);
                    has(&h["verbs"], v)
                        && has(&h["apiGroups"], g)
                        && has(&h["resources"], r)
                        && (held_names.is_empty()
                            || (!names.is_empty() && names.iter().all(|n| held_names.contains(n))))
                })
            })
        })
    })
}

/// The rules of the role `role_ref` names (a Role in `ns`, or a ClusterRole).
pub fn role_rules(store: &Store, role_ref: &Value, ns: Option<&str>) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => store.get("clusterroles.rbac.authorization.k8s.io", None, name),
        Some("Role") => match ns {
            Some(ns) => store.get("roles.rbac.authorization.k8s.io", Some(ns), name),
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let Ok(role) = role else {
        return Vec::new();
    };
    let mut rules: Vec<Value> = role["rules"].as_array().cloned().unwrap_or_default();
    // Aggregated cluster roles take the rules of the roles their selectors pick.
    for sel in role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = store::selector_text(sel);
        if let Ok(selector) = LabelSelector::parse(&text) {
            for other in list_all(store, "clusterroles.rbac.authorization.k8s.io", None) {
                if selector.matches(&other) && other["metadata"]["name"] != role["metadata"]["name"]
                {
                    rules.extend(other["rules"].as_array().cloned().unwrap_or_default());
                }
            }
        }
    }
    rules
}

/// The rules that apply to `user` in `namespace` (cluster-wide ones always; a namespace's role
/// bindings' when `namespace` is given).
pub fn rules_for(store: &Store, user: &User, namespace: Option<&str>) -> Vec<Value> {
    let mut rules = Vec::new();
    for b in list_all(store, "clusterrolebindings.rbac.authorization.k8s.io", None) {
        if binds(&b, user) {
            rules.extend(role_rules(store, &b["roleRef"], None));
        }
    }
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        for b in list_all(store, "rolebindings.rbac.authorization.k8s.io", Some(ns)) {
            if binds(&b, user) {
                rules.extend(role_rules(store, &b["roleRef"], Some(ns)));
            }
        }
    }
    rules
}

/// Whether a binding names `user` among its subjects.
fn binds(binding: &Value, user: &User) -> bool {
    binding["subjects"]
        .as_array()
        .is_some_and(|subjects| subjects.iter().any(|s| subject_matches(s, user)))
}

/// Whether `user` may do `a`: superusers always, everyone else by RBAC.
pub fn authorize(store: &Store, user: &User, a: &Attributes) -> bool {
    if user.is_master() {
        return true;
    }
    let ns = (!a.namespace.is_empty()).then_some(a.namespace.as_str());
    rules_for(store, user, ns).iter().any(|r| rule_allows(r, a))
}

/// The default cluster roles and bindings of a Kubernetes API server (those this API needs).
pub fn default_roles() -> Vec<(&'static str, Value)> {
    let read = json!(["get", "list", "watch"]);
    let all_verbs = json!(super::registry::ALL_VERBS);
    let workloads = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy",
            "pods/eviction", "replicationcontrollers", "replicationcontrollers/scale", "services", "services/proxy",
            "endpoints", "persistentvolumeclaims", "configmaps", "secrets", "serviceaccounts", "events"], "verbs": all_verbs},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "replicasets", "replicasets/scale",
            "statefulsets", "statefulsets/scale", "daemonsets", "controllerrevisions"], "verbs": all_verbs},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": all_verbs},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": all_verbs},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": all_verbs},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": all_verbs},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all_verbs},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": all_verbs},
        {"apiGroups": ["devices.kubeedge.io"], "resources": ["devices", "devicemodels"], "verbs": all_verbs}]);
    let view = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status", "replicationcontrollers",
            "replicationcontrollers/scale", "replicationcontrollers/status", "services", "services/status", "endpoints",
            "persistentvolumeclaims", "persistentvolumeclaims/status", "configmaps", "serviceaccounts", "events",
            "limitranges", "resourcequotas", "resourcequotas/status", "namespaces", "namespaces/status", "bindings"], "verbs": read},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "deployments/status", "replicasets",
            "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status",
            "daemonsets", "daemonsets/status", "controllerrevisions"], "verbs": read},
        {"apiGroups": ["batch"], "resources": ["jobs", "jobs/status", "cronjobs", "cronjobs/status"], "verbs": read},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": read},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"], "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status", "networkpolicies"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": read},
        {"apiGroups": ["devices.kubeedge.io"], "resources": ["devices", "devicemodels"], "verbs": read}]);
    let mut edit: Vec<Value> = workloads.as_array().cloned().unwrap_or_default();
    edit.extend(view.as_array().cloned().unwrap_or_default());
    let mut admin = edit.clone();
    admin.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": all_verbs}));
    admin.push(json!({"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}));
    let role = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
               "rules": rules})
    };
    let binding = |name: &str, role: &str, group: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})
    };
    vec![
        (
            "clusterroles.rbac.authorization.k8s.io",
            role(
                "cluster-admin",
                json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
            ),
        ),
        (
            "clusterroles.rbac.authorization.k8s.io",
            role("admin", Value::Array(admin)),
        ),
        (
            "clusterroles.rbac.authorization.k8s.io",
            role("edit", Value::Array(edit)),
        ),
        ("clusterroles.rbac.authorization.k8s.io", role("view", view)),
        (
            "clusterroles.rbac.authorization.k8s.io",
            role(
                "system:discovery",
                json!([
            {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
                                 "/openapi", "/openapi/*", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "clusterroles.rbac.authorization.k8s.io",
            role(
                "system:basic-user",
                json!([
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
            ),
        ),
        (
            "clusterroles.rbac.authorization.k8s.io",
            role(
                "system:public-info-viewer",
                json!([
            {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            binding("cluster-admin", "cluster-admin", MASTERS_GROUP),
        ),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            binding(
                "system:discovery",
                "system:discovery",
                "system:authenticated",
            ),
        ),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            binding(
                "system:basic-user",
                "system:basic-user",
                "system:authenticated",
            ),
        ),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            binding(
                "system:public-info-viewer",
                "system:public-info-viewer",
                "system:unauthenticated",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_attributes() {
        let a = Attributes::of_request("GET", "/api/v1/namespaces/ns1/pods", true);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("watch", "pods", "ns1")
        );
        let a = Attributes::of_request(
            "POST",
            "/api/v1/namespaces/ns1/serviceaccounts/sa/token",
            false,
        );
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str(), a.name.as_str()),
            ("create", "token", "sa")
        );
        let a = Attributes::of_request("DELETE", "/api/v1/namespaces/ns1", false);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("delete", "namespaces", "ns1")
        );
        let a = Attributes::of_request("GET", "/apis/apps/v1/deployments", false);
        assert_eq!(
            (a.verb.as_str(), a.group.as_str(), a.namespace.as_str()),
            ("list", "apps", "")
        );
        let a = Attributes::of_request("PUT", "/api/v1/namespaces/a/status", false);
        assert_eq!(
            (a.resource.as_str(), a.subresource.as_str(), a.name.as_str()),
            ("namespaces", "status", "a")
        );
        let a = Attributes::of_request("GET", "/healthz", false);
        assert!(!a.resource_request);
    }

    #[test]
    fn rules_match_like_rbac() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        let mut a = Attributes::of_request("GET", "/api/v1/namespaces/x/pods", false);
        assert!(rule_allows(&rule, &a));
        a.verb = "delete".into();
        assert!(!rule_allows(&rule, &a));
        let exec = Attributes::of_request("POST", "/api/v1/namespaces/x/pods/p/exec", false);
        assert!(!rule_allows(
            &json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}),
            &exec
        ));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]});
        assert!(rule_allows(
            &named,
            &Attributes::of_request("GET", "/api/v1/namespaces/x/configmaps/a", false)
        ));
        assert!(!rule_allows(
            &named,
            &Attributes::of_request("GET", "/api/v1/namespaces/x/configmaps", false)
        ));
        let urls = json!({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]});
        assert!(rule_allows(
            &urls,
            &Attributes::of_request("GET", "/apis/apps", false)
        ));
    }
}
