//! The Kubernetes REST API over a [`Store`]: what kubectl, kube-rs and client-go talk to, served
//! by the embedded control plane (cloud) and the metaserver (edge).
//!
//! * Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, and a minimal
//!   `/openapi/v3` (enough for `kubectl apply` to validate on the server).
//! * Verbs: get, list (with `limit`/`continue`, label and field selectors), watch (chunked JSON
//!   events from a resourceVersion, `timeoutSeconds`, bookmarks), create, update, patch (JSON merge, strategic
//!   merge for the common cases, JSON patch, server-side apply), delete (graceful for pods bound to
//!   a node: `deletionTimestamp` first, removal when the node confirms with grace period 0), the
//!   `status` subresource, and `Table` output for `kubectl get`.
//! * Resources: core/v1 pods, nodes, namespaces, configmaps, secrets, services, endpoints, events,
//!   serviceaccounts; coordination.k8s.io leases; discovery.k8s.io endpointslices; apiextensions
//!   CRDs, and the resources of every CRD created at run time.
//! * Errors are `Status` objects with the apiserver's codes and reasons.
//!
//! [`Api::serve`] and [`Api::router`] serve whoever reaches them (the edge metaserver on loopback,
//! in-process callers); [`Api::serve_tls`] adds client-certificate authentication and group
//! authorization, as the embedded control plane serves it (see [`tls`]).

pub mod patch;
pub mod registry;
mod table;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::{self, FieldSelector, LabelSelector, Store};
use registry::Resource;

/// Largest request body accepted: 3 MiB, as the apiserver.
pub const MAX_BODY: usize = 3 << 20;

/// The Kubernetes version reported by `/version` (kubectl picks its client from the minor).
pub const KUBE_MAJOR: &str = "1";
/// See [`KUBE_MAJOR`].
pub const KUBE_MINOR: &str = "32";

/// Namespaces every control plane starts with.
pub const DEFAULT_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The API over one store.
#[derive(Debug, Clone)]
pub struct Api {
    store: Store,
    bookmark_interval: Duration,
    /// Flipped to `true` when serving stops: open watches end, so that connections close.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

/// How often an idle watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

impl Api {
    /// The API over `store`; creates the default namespaces if missing.
    pub fn new(store: Store) -> Result<Api, store::Error> {
        for ns in DEFAULT_NAMESPACES {
            match store.create(
                "namespaces",
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            ) {
                Ok(_) | Err(store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Api {
            store,
            bookmark_interval: BOOKMARK_INTERVAL,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Creates each CustomResourceDefinition in `crds` that is not stored yet (established at
    /// once, as a CRD created through the API is); existing ones are left as they are.
    pub fn install_crds(&self, crds: &[Value]) -> Result<(), store::Error> {
        for crd in crds {
            let mut crd = crd.clone();
            accept_crd(&mut crd);
            match self.store.create(registry::CRD_RESOURCE, None, crd) {
                Ok(_) | Err(store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends watch bookmarks every `interval` instead of [`BOOKMARK_INTERVAL`].
    pub fn with_bookmark_interval(mut self, interval: Duration) -> Api {
        self.bookmark_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves the API over plain HTTP on `listener` until `shutdown` completes (the embedded control
    /// plane wraps TLS around it; the edge metaserver serves loopback only).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_router(listener, self.router(), shutdown).await
    }

    /// Like [`serve`](Self::serve), with `router` (this API's [`router`](Self::router) with layers
    /// of the caller's, e.g. an authorization guard).
    pub async fn serve_router(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, router)
            .with_graceful_shutdown(self.closing_after(shutdown))
            .await
    }

    /// Ends every open watch (they end as if their timeout had passed), so that a server shutting
    /// down gracefully is not held open by them. Watches opened later are not affected.
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
        self.closing.send_replace(false);
    }

    /// `shutdown`, then [`close_watches`](Self::close_watches).
    pub(crate) fn closing_after(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let api = self.clone();
        async move {
            shutdown.await;
            api.close_watches();
        }
    }

    /// An axum router serving the whole API.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(handle)
            .with_state(Arc::new(self.clone()))
    }
}

// === errors ===

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    fn not_found(what: &str, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{what} {name:?} not found"))
    }

    /// An error with this code, reason and message.
    pub fn with(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(code, reason, message)
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response()
    }
}

fn store_error(r: &Resource, e: store::Error) -> ApiError {
    match e {
        store::Error::NotFound { name, .. } => ApiError::not_found(&r.plural, &name),
        store::Error::AlreadyExists { name, .. } => ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", r.plural),
        ),
        store::Error::Conflict { name, .. } => ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                r.plural
            ),
        ),
        store::Error::Invalid(m) => ApiError::new(422, "Invalid", m),
        store::Error::Gone { requested, oldest } => ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        ),
        other => ApiError::new(500, "InternalError", other.to_string()),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

// === request parsing ===

/// Query parameters, keeping repeats.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = Query(
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default(),
    );
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("request body exceeds {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    // Bodies are JSON only. Protobuf (client-go's default for built-in types in some commands)
    // gets 415, on which client-go retries the request as JSON.
    let protobuf = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("protobuf"));
    if protobuf && !body.is_empty() {
        return ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body must be JSON (application/vnd.kubernetes.protobuf is not supported)",
        )
        .into_response();
    }
    let path = parts.uri.path().to_owned();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match dispatch(&api, &parts.method, &parts.headers, &segs, &query, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    api: &Api,
    method: &Method,
    headers: &HeaderMap,
    segs: &[&str],
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let discovery_only = || {
        if method == Method::GET {
            Ok(())
        } else {
            Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "only GET is served here",
            ))
        }
    };
    match segs {
        ["version"] => {
            discovery_only()?;
            Ok(json_response(StatusCode::OK, &version()))
        }
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => {
            discovery_only()?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
            ))
        }
        ["api", "v1"] => {
            discovery_only()?;
            Ok(json_response(
                StatusCode::OK,
                &resource_list(&api.store, "", "v1"),
            ))
        }
        ["apis"] => {
            discovery_only()?;
            Ok(json_response(StatusCode::OK, &group_list(&api.store)))
        }
        ["apis", group] => {
            discovery_only()?;
            let groups = group_list(&api.store);
            let found = groups["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|x| x["name"] == *group).cloned())
                .ok_or_else(|| ApiError::not_found("group", group))?;
            let mut g = found;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(json_response(StatusCode::OK, &g))
        }
        ["apis", group, version] => {
            discovery_only()?;
            let list = resource_list(&api.store, group, version);
            if list["resources"].as_array().is_none_or(Vec::is_empty) {
                return Err(ApiError::not_found(
                    "group version",
                    &format!("{group}/{version}"),
                ));
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        ["openapi", "v3"] => {
            discovery_only()?;
            Ok(json_response(StatusCode::OK, &openapi_index(&api.store)))
        }
        ["openapi", "v3", rest @ ..] => {
            discovery_only()?;
            let (group, version) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(ApiError::not_found("openapi document", &rest.join("/"))),
            };
            Ok(json_response(
                StatusCode::OK,
                &openapi_doc(&api.store, group, version),
            ))
        }
        ["api", "v1", rest @ ..] => {
            resource_request(api, method, headers, "", "v1", rest, query, body).await
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(api, method, headers, group, version, rest, query, body).await
        }
        _ => Err(ApiError::not_found("path", &format!("/{}", segs.join("/")))),
    }
}

fn version() -> Value {
    json!({"major": KUBE_MAJOR, "minor": KUBE_MINOR, "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-kubeedge-rs"),
           "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
           "goVersion": "rust", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = registry::all(store)
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(Resource::discovery)
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in registry::all(store)
        .into_iter()
        .filter(|r| !r.group.is_empty())
    {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            let preferred = vs.first().cloned().unwrap_or(Value::Null);
            json!({"name": name, "versions": vs, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn openapi_index(store: &Store) -> Value {
    let mut paths = serde_json::Map::new();
    for r in registry::all(store) {
        let key = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=kubeedge-rs")}),
        );
    }
    json!({"paths": paths})
}

/// Just enough OpenAPI for kubectl to use server-side field validation: a PATCH operation per kind
/// with its group-version-kind and a `fieldValidation` parameter.
fn openapi_doc(store: &Store, group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in registry::all(store)
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {"x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                             "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                             "responses": {"200": {"description": "OK"}}}}),
        );
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0")},
           "paths": paths, "components": {"schemas": {}}})
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    api: &Api,
    method: &Method,
    headers: &HeaderMap,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let store = &api.store;
    // `namespaces/<ns>/<plural>...` is namespaced; `namespaces/<name>[/status]` is a Namespace.
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry::find(store, group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            (Some((*ns).to_owned()), v)
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return Err(ApiError::not_found("path", &rest.join("/"))),
    };
    let resource = registry::find(store, group, version, plural).ok_or_else(|| {
        ApiError::not_found("resource", &format!("{plural} in {group}/{version}"))
    })?;
    if resource.namespaced != namespace.is_some() && name.is_some() {
        return Err(ApiError::not_found(
            &resource.plural,
            name.as_deref().unwrap_or_default(),
        ));
    }
    // Listing and watching a namespaced resource across namespaces is fine; writing is not.
    if resource.namespaced && namespace.is_none() && *method != Method::GET {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{} must be written within a namespace", resource.plural),
        ));
    }
    if let Some(s) = &sub
        && !(s == "status" && resource.status)
    {
        return Err(ApiError::not_found("subresource", s));
    }
    let t = Target {
        resource,
        namespace,
        name,
        sub,
    };
    match (method.clone(), &t.name) {
        (Method::GET, Some(_)) => get(api, &t, headers),
        (Method::GET, None) if query.flag("watch") => watch(api, &t, query).await,
        (Method::GET, None) => list(api, &t, headers, query),
        (Method::POST, None) => create(api, &t, body),
        (Method::PUT, Some(_)) => update(api, &t, body),
        (Method::PATCH, Some(_)) => patch(api, &t, headers, query, body),
        (Method::DELETE, Some(_)) => delete(api, &t, query, body),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not allowed here"),
        )),
    }
}

fn ns(t: &Target) -> Option<&str> {
    t.namespace.as_deref()
}

fn name(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn get(api: &Api, t: &Target, headers: &HeaderMap) -> Result<Response, ApiError> {
    let obj = api
        .store
        .get(&t.resource.store_name(), ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    if wants_table(headers) {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&t.resource, std::slice::from_ref(&obj), rv),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

fn list(api: &Api, t: &Target, headers: &HeaderMap, query: &Query) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request("limit must be a number"))?,
        )
        .filter(|l| *l > 0),
        None => None,
    };
    let after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            Some(
                String::from_utf8(raw)
                    .map_err(|_| ApiError::bad_request("invalid continue token"))?,
            )
        }
        None => None,
    };
    let page = api
        .store
        .list_page(
            &t.resource.store_name(),
            ns(t),
            &labels,
            &fields,
            limit,
            after.as_deref(),
        )
        .map_err(|e| store_error(&t.resource, e))?;
    let rv = Value::String(page.rv.to_string());
    if wants_table(headers) {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&t.resource, &page.items, rv),
        ));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(next) = page.continue_after {
        use base64::Engine as _;
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(next));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": t.resource.api_version(), "kind": format!("{}List", t.resource.kind),
                "metadata": meta, "items": page.items}),
    ))
}

/// Checks `apiVersion`/`kind` and the namespace of a written object, filling in what is missing.
fn normalize(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let api_version = t.resource.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "apiVersion {v:?} does not match {api_version:?}"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None => obj["kind"] = json!(t.resource.kind),
        Some(k) if k == t.resource.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "kind {k:?} does not match {:?}",
                t.resource.kind
            )));
        }
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        return Err(ApiError::new(422, "Invalid", "metadata must be an object"));
    }
    if let (Some(url_ns), Some(body_ns)) = (
        ns(t),
        obj.pointer("/metadata/namespace").and_then(Value::as_str),
    ) && url_ns != body_ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({body_ns}) does not match the namespace on the request ({url_ns})"
        )));
    }
    Ok(())
}

fn require_namespace(api: &Api, t: &Target) -> Result<(), ApiError> {
    if let Some(ns) = ns(t)
        && api.store.get("namespaces", None, ns).is_err()
    {
        return Err(ApiError::not_found("namespaces", ns));
    }
    Ok(())
}

fn create(api: &Api, t: &Target, body: Bytes) -> Result<Response, ApiError> {
    let mut obj = parse_body(&body)?;
    normalize(t, &mut obj)?;
    require_namespace(api, t)?;
    if t.resource.plural == "customresourcedefinitions" {
        accept_crd(&mut obj);
    }
    let stored = api
        .store
        .create(&t.resource.store_name(), ns(t), obj)
        .map_err(|e| store_error(&t.resource, e))?;
    Ok(json_response(StatusCode::CREATED, &stored))
}

/// A CRD is established as soon as it is stored: its names are accepted as given.
fn accept_crd(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let now = store::rfc3339(SystemTime::now());
    crd["status"] = json!({"acceptedNames": names, "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array)
            .map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).filter_map(|v| v["name"].as_str()).collect::<Vec<_>>()),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now}]});
}

/// Writes `obj` over the stored object as an update of the main resource or of `/status`, keeping
/// the part the other one owns; removes an object whose deletion only waited for its finalizers.
fn write(api: &Api, t: &Target, mut obj: Value) -> Result<Value, ApiError> {
    normalize(t, &mut obj)?;
    let store_name = t.resource.store_name();
    let current = api
        .store
        .get(&store_name, ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    if t.sub.as_deref() == Some("status") {
        // Only the status changes.
        let mut next = current.clone();
        next["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
        if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
            next["metadata"]["resourceVersion"] = rv.clone();
        }
        obj = next;
    } else if t.resource.status {
        // The status belongs to the subresource.
        match current.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    // Server-owned deletion fields cannot be changed by an update.
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match current.pointer(&format!("/metadata/{field}")) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    let updated = api
        .store
        .update(&store_name, ns(t), name(t), obj)
        .map_err(|e| store_error(&t.resource, e))?;
    let finalizers_done = updated
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if updated.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers_done
        && !graceful_pod(t, &updated)
    {
        return api
            .store
            .delete(&store_name, ns(t), name(t), None)
            .map_err(|e| store_error(&t.resource, e));
    }
    Ok(updated)
}

fn update(api: &Api, t: &Target, body: Bytes) -> Result<Response, ApiError> {
    let obj = parse_body(&body)?;
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name(t))
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    Ok(json_response(StatusCode::OK, &write(api, t, obj)?))
}

fn patch(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let patch_doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
    let store_name = t.resource.store_name();
    // Retry on a concurrent write between read and update.
    for _ in 0..5 {
        let current = match api.store.get(&store_name, ns(t), name(t)) {
            Ok(c) => c,
            Err(store::Error::NotFound { .. })
                if content_type == "application/apply-patch+yaml" && t.sub.is_none() =>
            {
                // Server-side apply creates what does not exist.
                let _ = query.get("fieldManager");
                let mut obj = patch_doc.clone();
                if !obj.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                obj["metadata"]["name"] = json!(name(t));
                return create(api, t, Bytes::from(obj.to_string()));
            }
            Err(e) => return Err(store_error(&t.resource, e)),
        };
        let mut next = current.clone();
        match content_type.as_str() {
            "application/merge-patch+json" => patch::merge(&mut next, &patch_doc),
            "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
                patch::strategic(&mut next, &patch_doc)
            }
            "application/json-patch+json" => patch::json_patch(&mut next, &patch_doc)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("unsupported patch type {other:?}"),
                ));
            }
        }
        // The patch applies to what was read: pin that version unless the patch set one itself.
        if patch_doc.pointer("/metadata/resourceVersion").is_none() {
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        match write(api, t, next) {
            Err(ApiError {
                code: 409,
                reason: "Conflict",
                ..
            }) if patch_doc.pointer("/metadata/resourceVersion").is_none() => {}
            other => return other.map(|v| json_response(StatusCode::OK, &v)),
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        "too many concurrent writes; try again",
    ))
}

fn graceful_pod(t: &Target, obj: &Value) -> bool {
    t.resource.group.is_empty()
        && t.resource.plural == "pods"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

fn delete(api: &Api, t: &Target, query: &Query, body: Bytes) -> Result<Response, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace = query
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| options["gracePeriodSeconds"].as_i64());
    let store_name = t.resource.store_name();
    let current = api
        .store
        .get(&store_name, ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            "precondition failed: UID mismatch",
        ));
    }
    let precondition_rv = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    let has_finalizers = current
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let graceful = graceful_pod(t, &current) && grace != Some(0);
    if has_finalizers || graceful {
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(json_response(StatusCode::OK, &current));
        }
        let grace = grace
            .or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0);
        let mut next = current.clone();
        let at = SystemTime::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        next["metadata"]["deletionTimestamp"] = json!(store::rfc3339(at));
        next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let marked = api
            .store
            .update(&store_name, ns(t), name(t), next)
            .map_err(|e| store_error(&t.resource, e))?;
        return Ok(json_response(StatusCode::OK, &marked));
    }
    let gone = api
        .store
        .delete(&store_name, ns(t), name(t), precondition_rv)
        .map_err(|e| store_error(&t.resource, e))?;
    Ok(json_response(StatusCode::OK, &gone))
}

async fn watch(api: &Api, t: &Target, query: &Query) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let store_name = t.resource.store_name();
    let namespace = t.namespace.clone();
    let requested = query.get("resourceVersion").unwrap_or("");
    let (initial, from) = if requested.is_empty() || requested == "0" {
        // "Any version": the current state as ADDED events, then changes.
        let (items, rv) = api
            .store
            .list(&store_name, namespace.as_deref(), &labels, &fields)
            .map_err(|e| store_error(&t.resource, e))?;
        (items, rv)
    } else {
        let rv = requested
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("resourceVersion must be a number"))?;
        (Vec::new(), rv)
    };
    let watch = api
        .store
        .watch(from)
        .map_err(|e| store_error(&t.resource, e))?;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let initial: std::collections::VecDeque<Value> = initial
        .into_iter()
        .map(|o| json!({"type": "ADDED", "object": o}))
        .collect();
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let bookmark_kind = json!({"kind": t.resource.kind, "apiVersion": t.resource.api_version()});
    struct St {
        initial: std::collections::VecDeque<Value>,
        bookmarks: Option<(Duration, tokio::time::Instant, Value)>,
        closing: tokio::sync::watch::Receiver<bool>,
        watch: store::Watch,
        store_name: String,
        namespace: Option<String>,
        labels: LabelSelector,
        fields: FieldSelector,
        deadline: tokio::time::Instant,
    }
    let interval = api.bookmark_interval;
    let state = St {
        initial,
        bookmarks: bookmarks.then(|| {
            (
                interval,
                tokio::time::Instant::now() + interval,
                bookmark_kind,
            )
        }),
        closing: api.closing.subscribe(),
        watch,
        store_name,
        namespace,
        labels,
        fields,
        deadline,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(ev) = st.initial.pop_front() {
            return Some((Ok::<_, std::io::Error>(Bytes::from(format!("{ev}\n"))), st));
        }
        loop {
            let wake = match &st.bookmarks {
                Some((_, at, _)) => (*at).min(st.deadline),
                None => st.deadline,
            };
            let next = tokio::select! {
                next = tokio::time::timeout_at(wake, st.watch.next()) => next,
                _ = st.closing.changed() => return None,
            };
            let ev = match next {
                Err(_) if tokio::time::Instant::now() >= st.deadline => return None,
                Err(_) => {
                    // Idle: tell the client how far the watch has come (events it filtered
                    // out included), so that it can resume from there.
                    let rv = st.watch.last_rv().to_string();
                    let Some((interval, at, kind)) = &mut st.bookmarks else {
                        continue;
                    };
                    *at = tokio::time::Instant::now() + *interval;
                    let mut object = kind.clone();
                    object["metadata"] = json!({"resourceVersion": rv});
                    let line = json!({"type": "BOOKMARK", "object": object});
                    return Some((Ok(Bytes::from(format!("{line}\n"))), st));
                }
                Ok(Err(store::Error::Gone { requested, oldest })) => {
                    let status = ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {requested} ({oldest})"),
                    );
                    let line = json!({"type": "ERROR", "object": status.status()});
                    st.deadline = tokio::time::Instant::now();
                    return Some((Ok(Bytes::from(format!("{line}\n"))), st));
                }
                Ok(Err(_)) => return None,
                Ok(Ok(ev)) => ev,
            };
            if ev.resource != st.store_name
                || (st.namespace.is_some() && ev.namespace != st.namespace)
                || !st.labels.matches(&ev.object)
                || !st.fields.matches(&ev.object)
            {
                continue;
            }
            let kind = match ev.kind {
                store::EventType::Added => "ADDED",
                store::EventType::Modified => "MODIFIED",
                store::EventType::Deleted => "DELETED",
            };
            if let Some((interval, at, _)) = &mut st.bookmarks {
                *at = tokio::time::Instant::now() + *interval;
            }
            let line = json!({"type": kind, "object": ev.object});
            return Some((Ok(Bytes::from(format!("{line}\n"))), st));
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
