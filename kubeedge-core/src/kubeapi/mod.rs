//! The Kubernetes REST API over a [`Store`]: what kubectl, kube-rs and client-go talk to, served
//! by the embedded control plane (cloud) and the metaserver (edge).
//!
//! * Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, aggregated
//!   discovery (`apidiscovery.k8s.io` v2 and v2beta1), `/openapi/v2` ([`openapi`], JSON and
//!   protobuf) and `/openapi/v3` (enough for kubectl to validate fields on the server).
//! * Bodies: JSON, and protobuf for built-in kinds ([`protobuf`]); `Table` and
//!   `PartialObjectMetadata` answers when asked for.
//! * Verbs: get, list (with `limit`/`continue`, label and field selectors), watch (JSON lines or
//!   protobuf frames from a resourceVersion, `timeoutSeconds`, bookmarks, streaming lists), create,
//!   update, patch (JSON merge, strategic merge for the common cases, JSON patch), server-side apply
//!   with `managedFields`, delete (graceful for pods bound to a node: `deletionTimestamp` first,
//!   removal when the node confirms with grace period 0; namespaces once empty) and
//!   delete-collection; `dryRun=All` and `fieldValidation` on every write.
//! * Writes are defaulted ([`defaults`]) and validated ([`validation`]; CRD structural schemas
//!   for custom resources).
//! * Subresources: `status`, `scale`, `eviction`, `ephemeralcontainers`, `token`, `approval`;
//!   reviews (TokenReview, SubjectAccessReview and its forms) answer without storing.
//! * Resources: the built-in groups of [`registry`], and the resources of every CRD created at run
//!   time.
//! * Errors are `Status` objects with the apiserver's codes and reasons.
//!
//! [`Api::serve`] and [`Api::router`] serve whoever reaches them (the edge metaserver on loopback,
//! in-process callers); [`Api::serve_tls`] adds authentication (client certificates, ServiceAccount
//! tokens) and RBAC ([`auth`]), as the embedded control plane serves it (see [`tls`]).
//! [`Api::control_plane`] adds what only a control plane has: tokens, default roles, per-namespace
//! ServiceAccounts and CA bundles.

mod apply;
pub mod auth;
pub mod cron;
pub mod defaults;
pub mod local;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
mod reviews;
pub mod services;
mod subresources;
mod table;
pub mod tls;
pub mod validation;
mod views;

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
    /// The minor version `/version` reports.
    minor: Arc<str>,
    /// The control plane's parts: ServiceAccount tokens, and the CA every namespace's
    /// `kube-root-ca.crt` carries (see [`Api::control_plane`]).
    tokens: Option<auth::TokenIssuer>,
    root_ca: Option<Arc<str>>,
    /// Held while a Service's addresses are chosen and stored.
    allocating: Arc<std::sync::Mutex<()>>,
    /// Flipped to `true` when serving stops: open watches end, so that connections close.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// What serves `pods/{log,exec,attach,portforward}` (see [`Api::serve_pod_streams`]).
    pod_streams: Arc<std::sync::OnceLock<Arc<dyn PodStreams>>>,
    /// What answers `metrics.k8s.io` (see [`Api::serve_metrics`]).
    metrics: Arc<std::sync::OnceLock<Arc<dyn MetricsSource>>>,
}

/// The source of the resource metrics API (`metrics.k8s.io/v1beta1`, what `kubectl top`
/// reads): current NodeMetrics and PodMetrics objects.
pub trait MetricsSource: Send + Sync + std::fmt::Debug + 'static {
    /// A NodeMetrics of every node that reports.
    fn nodes(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Value>> + Send>>;
    /// A PodMetrics of every running pod that reports, in every namespace, with the node that
    /// reported it (a PodMetrics whose pod is not bound to that node is not served).
    #[allow(clippy::type_complexity)]
    fn pods(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, Value)>> + Send>>;
}

/// Serves the pod subresources that reach into a running pod: `log`, `exec`, `attach` and
/// `portforward` (the kubelet's part, which a cloud reaches through its tunnel to the pod's
/// node). The request has passed authentication and authorization (`create` for the three
/// streams, `get` for logs); its body is unread (an upgrade takes the connection).
pub trait PodStreams: Send + Sync + std::fmt::Debug + 'static {
    /// Answers `request` for `pod` (as stored).
    fn serve(
        &self,
        request: PodStreamRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;
}

/// One request for a pod stream.
#[derive(Debug)]
pub struct PodStreamRequest {
    /// The pod, as stored.
    pub pod: Value,
    /// `log`, `exec`, `attach` or `portforward`.
    pub subresource: String,
    /// Who asks (none on an unauthenticated server).
    pub user: Option<auth::User>,
    /// The HTTP request, whole.
    pub request: Request,
}

/// How often an idle watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

impl Api {
    /// The API over `store`; creates the default namespaces if missing.
    pub fn new(store: Store) -> Result<Api, store::Error> {
        for ns in DEFAULT_NAMESPACES {
            store.create_if_missing(
                "namespaces",
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            )?;
        }
        Ok(Api {
            store,
            bookmark_interval: BOOKMARK_INTERVAL,
            minor: Arc::from(KUBE_MINOR),
            tokens: None,
            root_ca: None,
            allocating: Arc::new(std::sync::Mutex::new(())),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            pod_streams: Arc::new(std::sync::OnceLock::new()),
            metrics: Arc::new(std::sync::OnceLock::new()),
        })
    }

    /// Has `source` answer the resource metrics API from now on (the first call wins; without
    /// one it answers 503, as an API server whose metrics service is down).
    pub fn serve_metrics(&self, source: Arc<dyn MetricsSource>) {
        let _ = self.metrics.set(source);
    }

    /// Has `streams` serve `pods/{log,exec,attach,portforward}` from now on (the first call
    /// wins; without one they answer 404).
    pub fn serve_pod_streams(&self, streams: Arc<dyn PodStreams>) {
        let _ = self.pod_streams.set(streams);
    }

    /// Creates each CustomResourceDefinition in `crds` that is not stored yet (established at
    /// once, as a CRD created through the API is), and replaces a stored one whose spec differs
    /// (one an earlier version installed: the definitions are the platform's).
    pub fn install_crds(&self, crds: &[Value]) -> Result<(), store::Error> {
        for crd in crds {
            let mut crd = crd.clone();
            accept_crd(&mut crd);
            let name = crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if self
                .store
                .create_if_missing(registry::CRD_RESOURCE, None, crd.clone())?
            {
                continue;
            }
            // Stored by an earlier version (or changed since): these definitions are the
            // platform's, so the stored one becomes this one.
            let stored = self.store.get(registry::CRD_RESOURCE, None, &name)?;
            if stored.get("spec") != crd.get("spec") {
                self.store
                    .update(registry::CRD_RESOURCE, None, &name, crd)?;
            }
        }
        Ok(())
    }

    /// Makes this the API of a control plane (not of an edge's metaserver): ServiceAccount tokens
    /// (TokenRequest, TokenReview, bearer authentication), the default RBAC roles and bindings, the
    /// `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap (with `ca_pem`) in every
    /// namespace, now and when namespaces are created.
    pub fn control_plane(mut self, ca_pem: &str) -> Result<Api, store::Error> {
        self.tokens = Some(auth::TokenIssuer::load_or_create(&self.store)?);
        self.root_ca = Some(Arc::from(ca_pem));
        for (resource, obj) in auth::default_roles() {
            self.store.create_if_missing(resource, None, obj)?;
        }
        let namespaces = self.store.list_all("namespaces", None)?;
        for ns in namespaces {
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) {
                self.namespace_defaults(name)?;
            }
        }
        Ok(self)
    }

    /// Creates what every namespace has, if missing: the `default` ServiceAccount and the
    /// `kube-root-ca.crt` ConfigMap (control planes only).
    fn namespace_defaults(&self, ns: &str) -> Result<(), store::Error> {
        let Some(ca) = &self.root_ca else {
            return Ok(());
        };
        let wanted = [
            (
                "serviceaccounts",
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
            ),
            (
                "configmaps",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "kube-root-ca.crt",
                                    "annotations": {"kubernetes.io/description": "The CA that signs the API server's certificate, for clients that reach it from inside the cluster (kubernetes.default.svc)."}},
                       "data": {"ca.crt": ca.as_ref()}}),
            ),
        ];
        for (resource, obj) in wanted {
            // Not into a namespace that is going or gone (checked again for each object).
            match self.store.get("namespaces", None, ns) {
                Ok(n) if n.pointer("/metadata/deletionTimestamp").is_none() => {}
                Ok(_) | Err(store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
            self.store.create_if_missing(resource, Some(ns), obj)?;
        }
        Ok(())
    }

    /// Puts back what every namespace has (the `default` ServiceAccount, `kube-root-ca.crt`)
    /// where it was deleted, as the ServiceAccount and root-CA controllers do; namespaces being
    /// deleted are left alone. Run by the control plane now and then.
    pub fn publish_namespace_defaults(&self) -> Result<(), store::Error> {
        for ns in self.store.list_all("namespaces", None)? {
            if ns.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            if let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str)
                && let Err(e) = self.namespace_defaults(name)
            {
                // The others still get theirs.
                tracing::warn!(namespace = name, error = %e, "publishing namespace defaults");
            }
        }
        Ok(())
    }

    /// Creates or refreshes the `default/kubernetes` Service (ClusterIP `cluster_ip`, port 443)
    /// and its Endpoints and EndpointSlice pointing at the API server on `endpoint`.
    pub fn kubernetes_service(
        &self,
        cluster_ip: std::net::IpAddr,
        endpoint: std::net::SocketAddr,
    ) -> Result<(), store::Error> {
        let ip = endpoint.ip().to_string();
        let port = endpoint.port();
        let family = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
        let labels = json!({"component": "apiserver", "provider": "kubernetes"});
        let objects = [
            (
                "services",
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "labels": labels},
                "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                         "ipFamilies": [family], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                         "internalTrafficPolicy": "Cluster",
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
                "status": {"loadBalancer": {}}}),
            ),
            (
                "endpoints",
                json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}),
            ),
            (
                "endpointslices.discovery.k8s.io",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes",
                             "endpointslice.kubernetes.io/managed-by": "kubeedge-rs"}},
                "addressType": family, "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
            ),
        ];
        for (resource, obj) in objects {
            match self.store.get(resource, Some("default"), "kubernetes") {
                Ok(current) => {
                    let mut next = obj;
                    next["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    let same = {
                        let strip = |v: &Value| {
                            let mut v = v.clone();
                            if let Some(o) = v.as_object_mut() {
                                o.remove("metadata");
                                o.remove("status");
                            }
                            v
                        };
                        strip(&current) == strip(&next)
                    };
                    if !same {
                        self.store
                            .update(resource, Some("default"), "kubernetes", next)?;
                    }
                }
                Err(store::Error::NotFound { .. }) => {
                    self.store.create(resource, Some("default"), obj)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes what is left in namespaces being deleted and removes those that are empty; the
    /// namespace controller's loop, run by the control plane now and then (a namespace whose pods
    /// still wait for their node to stop them stays `Terminating` until they are gone). Returns
    /// how many namespaces were removed.
    pub fn finalize_namespaces(&self) -> Result<usize, store::Error> {
        let namespaces = self.store.list_all("namespaces", None)?;
        let mut removed = 0;
        for ns in namespaces {
            if ns.pointer("/metadata/deletionTimestamp").is_none() {
                continue;
            }
            let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            if self.empty_namespace(name)? {
                match self.store.delete("namespaces", None, name, None) {
                    Ok(_) | Err(store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Deletes every object in namespace `ns` (pods on nodes and objects with finalizers are
    /// marked and go when their owners let them); `true` when nothing is left.
    fn empty_namespace(&self, ns: &str) -> Result<bool, store::Error> {
        let mut left = 0;
        let mut seen = std::collections::HashSet::new();
        for resource in registry::all(&self.store) {
            if !resource.namespaced || resource.create_only || !seen.insert(resource.store_name()) {
                continue;
            }
            let items = self.store.list_all(&resource.store_name(), Some(ns))?;
            let t = Target {
                resource,
                namespace: Some(ns.to_owned()),
                name: None,
                sub: None,
                dry_run: false,
                manager: "namespace-controller".into(),
                field_validation: FieldValidation::Ignore,
                warnings: std::sync::Mutex::new(Vec::new()),
                user: None,
            };
            for item in items {
                match delete_object(self, &t, item, &json!({})) {
                    Ok((StatusCode::OK, gone))
                        if gone.pointer("/metadata/deletionTimestamp").is_none() => {}
                    Ok(_) => left += 1,
                    Err(ApiError { code: 404, .. }) => {}
                    Err(e) => {
                        return Err(store::Error::Invalid(format!(
                            "emptying namespace {ns}: {}",
                            e.message
                        )));
                    }
                }
            }
        }
        Ok(left == 0)
    }

    /// Reports `minor` as the Kubernetes minor version on `/version` instead of [`KUBE_MINOR`]
    /// (kubectl's version dispatcher picks its client by it).
    pub fn with_reported_minor(mut self, minor: &str) -> Api {
        self.minor = Arc::from(minor);
        self
    }

    /// Whether `token` is a valid ServiceAccount token of this control plane now; the user it
    /// stands for.
    pub fn authenticate_token(&self, token: &str) -> Option<auth::User> {
        let issuer = self.tokens.as_ref()?;
        // Only tokens meant for this API: one issued for another audience is that audience's.
        issuer
            .verify(&self.store, token)
            .ok()
            .filter(|(_, audiences)| audiences.iter().any(|a| a == auth::DEFAULT_AUDIENCE))
            .map(|(user, _)| user)
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
    /// of the caller's, e.g. an authorization guard). Connections come in through an admission
    /// [`Gate`](crate::admission::Gate) (`server="metaserver"`), so idle connections cannot
    /// starve the server.
    pub async fn serve_router(
        &self,
        listener: tokio::net::TcpListener,
        router: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let gate = crate::admission::Gate::new(
            "metaserver",
            listener,
            crate::admission::AdmissionConfig::default(),
        )?;
        axum::serve(GatedListener(gate), router)
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

/// Plain TCP for axum, admitted through a gate; the handshake slot is given back when hyper takes
/// the connection.
struct GatedListener(crate::admission::Gate);

impl axum::serve::Listener for GatedListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some(admitted) => (admitted.stream, admitted.peer),
            // The gate only stops when dropped, with this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
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
    /// The Status `details` (the object's name and kind, and the `causes` naming each field that
    /// is wrong), when there are any.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// This error with Status `details`.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
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
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
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
        store::Error::Unavailable(m) => ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the datastore is unavailable: {m}"),
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

/// Whether a request to `uri` is a watch, read as the API reads it (authorization must see the
/// same verb the request is served as).
pub(crate) fn is_watch(uri: &axum::http::Uri) -> bool {
    Query::of(uri).flag("watch")
}

impl Query {
    /// The decoded query of `uri`.
    fn of(uri: &axum::http::Uri) -> Query {
        Query(
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
                .map(|q| q.0)
                .unwrap_or_default(),
        )
    }

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
    /// `dryRun=All`: everything is checked and answered, nothing is stored.
    dry_run: bool,
    /// The field manager of writes (`fieldManager`, else the client's program).
    manager: String,
    /// What to do about fields the kind does not have.
    field_validation: FieldValidation,
    /// Warnings for the client (`Warning` headers).
    warnings: std::sync::Mutex<Vec<String>>,
    /// Who asked, when the API is served with authentication.
    user: Option<auth::User>,
}

/// `fieldValidation`: what a write with fields its kind does not have gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    /// Refused (400).
    Strict,
    /// Accepted with a `Warning` header (the default).
    Warn,
    /// Accepted silently.
    Ignore,
}

impl Target {
    /// Whether the requester may do `a` (always, when the API is served without authorization).
    fn allowed(&self, api: &Api, a: &auth::Attributes) -> bool {
        self.user
            .as_ref()
            .is_none_or(|u| auth::authorize(&api.store, u, a))
    }

    /// Whether the requester may `verb` the named object (see [`Target::allowed`]).
    fn may(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        api: &Api,
    ) -> bool {
        self.allowed(
            api,
            &auth::Attributes::resource(verb, group, resource, namespace, name),
        )
    }

    fn warn(&self, w: String) {
        if let Ok(mut ws) = self.warnings.lock() {
            ws.push(w);
        }
    }

    /// Checks `obj` for fields its kind does not have, as `fieldValidation` asks.
    fn check_fields(&self, obj: &Value) -> Result<(), ApiError> {
        if self.field_validation == FieldValidation::Ignore {
            return Ok(());
        }
        let unknown = validation::unknown_fields(&self.resource, obj).unwrap_or_default();
        if unknown.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match self.field_validation {
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            ))),
            _ => {
                for w in list {
                    self.warn(w);
                }
                Ok(())
            }
        }
    }
}

impl Target {
    /// The store to write through: a dry-run handle for `dryRun=All`.
    fn store(&self, api: &Api) -> Store {
        if self.dry_run {
            api.store.dry_run()
        } else {
            api.store.clone()
        }
    }
}

async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    if let Some(answer) = pod_stream(&api, req.uri().path()) {
        return match answer {
            Ok((pod, sub, streams)) => {
                let user = req.extensions().get::<auth::User>().cloned();
                streams
                    .serve(PodStreamRequest {
                        pod,
                        subresource: sub,
                        user,
                        request: req,
                    })
                    .await
            }
            Err(e) => e.into_response(),
        };
    }
    let (parts, body) = req.into_parts();
    let query = Query::of(&parts.uri);
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
    // Protobuf bodies (client-go's default for built-in kinds) are transcoded to JSON here; the
    // rest of the API speaks JSON.
    let body = match decode_body(&parts.headers, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let answer_protobuf = wants_protobuf(&parts.headers);
    let path = parts.uri.path().to_owned();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let user = parts.extensions.get::<auth::User>().cloned();
    let response = match dispatch(
        &api,
        &parts.method,
        &parts.headers,
        &segs,
        &query,
        body,
        user,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // Watches frame their own events; everything else is re-encoded whole.
    if answer_protobuf && !query.flag("watch") {
        to_protobuf(response).await
    } else {
        response
    }
}

/// For `pods/{log,exec,attach,portforward}`: the pod, the subresource and what serves them.
#[allow(clippy::type_complexity)]
fn pod_stream(
    api: &Api,
    path: &str,
) -> Option<Result<(Value, String, Arc<dyn PodStreams>), ApiError>> {
    // Every request passes here: only these four suffixes get a closer look.
    let sub = path.trim_end_matches('/').rsplit('/').next()?;
    if !matches!(sub, "log" | "exec" | "attach" | "portforward") {
        return None;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["api", "v1", "namespaces", ns, "pods", name, sub] = segs.as_slice() else {
        return None;
    };
    let Some(streams) = api.pod_streams.get() else {
        return Some(Err(ApiError::new(
            404,
            "NotFound",
            format!("pods/{sub} is not served here: no node connection reaches pods"),
        )));
    };
    Some(
        api.store
            .get("pods", Some(ns), name)
            .map(|pod| (pod, (*sub).to_owned(), streams.clone()))
            .map_err(|e| match e {
                store::Error::NotFound { .. } => ApiError::not_found("pods", name),
                other => ApiError::new(500, "InternalError", other.to_string()),
            }),
    )
}

fn media_type(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A protobuf request body as JSON; other bodies as they are.
fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let protobuf = media_type(headers, header::CONTENT_TYPE)
        .is_some_and(|ct| ct.trim_start().starts_with(protobuf::CONTENT_TYPE));
    if !protobuf || body.is_empty() {
        return Ok(body);
    }
    match protobuf::decode(&body) {
        Ok(v) => Ok(Bytes::from(v.to_string())),
        Err(e @ protobuf::Error::UnknownKind { .. }) => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("{e}: send it as application/json"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body cannot be decoded: {e}"
        ))),
    }
}

/// Whether the client asks for protobuf first (client-go's typed clients do; tables and metadata
/// views are asked for as JSON).
fn wants_protobuf(headers: &HeaderMap) -> bool {
    media_type(headers, header::ACCEPT)
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| {
            let mut params = first.split(';').map(str::trim);
            params.next() == Some(protobuf::CONTENT_TYPE) && params.all(|p| !p.starts_with("as="))
        })
}

/// A JSON answer re-encoded as protobuf when its kind has a protobuf form; streams (watches choose
/// their own encoding) and other answers pass as they are.
async fn to_protobuf(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct == "application/json");
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::new(500, "InternalError", "reading the answer").into_response();
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| protobuf::encode(&v).ok());
    match encoded {
        Some(pb) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(protobuf::CONTENT_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn dispatch(
    api: &Api,
    method: &Method,
    headers: &HeaderMap,
    segs: &[&str],
    query: &Query,
    body: Bytes,
    user: Option<auth::User>,
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
            Ok(json_response(StatusCode::OK, &version(&api.minor)))
        }
        ["livez"] => Ok((StatusCode::OK, "ok").into_response()),
        // Ready and healthy while the store takes writes (a mirror's datastore answers).
        ["healthz" | "readyz"] => Ok(match api.store.health() {
            Ok(()) => (StatusCode::OK, "ok").into_response(),
            Err(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("[-]datastore failed: {why}\n{} check failed\n", segs[0]),
            )
                .into_response(),
        }),
        ["metrics"] => {
            discovery_only()?;
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                crate::metrics::render(),
            )
                .into_response())
        }
        ["api"] => {
            discovery_only()?;
            if let Some(version) = aggregated_discovery(headers) {
                return Ok(aggregated(&api.store, true, version));
            }
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
            if let Some(version) = aggregated_discovery(headers) {
                return Ok(aggregated(&api.store, false, version));
            }
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
        ["openapi", "v2"] | ["swagger-2.0.0.pb-v1"] => {
            discovery_only()?;
            let resources = registry::all(&api.store);
            let version = format!("v{KUBE_MAJOR}.{}.0", api.minor);
            let protobuf =
                media_type(headers, header::ACCEPT).is_some_and(|a| a.contains("protobuf"));
            if protobuf {
                Ok((
                    StatusCode::OK,
                    // Go's media type parser refuses the `@` of the name asked for.
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    openapi::v2_protobuf(&resources, &version),
                )
                    .into_response())
            } else {
                Ok(json_response(
                    StatusCode::OK,
                    &openapi::v2_json(&resources, &version),
                ))
            }
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
            resource_request(api, method, headers, "", "v1", rest, query, body, user).await
        }
        ["apis", registry::METRICS_GROUP, "v1beta1", rest @ ..] => {
            metrics_request(api, method, rest, query).await
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(
                api, method, headers, group, version, rest, query, body, user,
            )
            .await
        }
        _ => Err(ApiError::not_found("path", &format!("/{}", segs.join("/")))),
    }
}

/// The PodMetrics of `source` (in `namespace`, if given) whose pod is bound to the node that
/// reported it: a node reports for its own pods only.
async fn pod_metrics(api: &Api, source: &dyn MetricsSource, namespace: Option<&str>) -> Vec<Value> {
    source
        .pods()
        .await
        .into_iter()
        .filter(|(node, m)| {
            let ns = m["metadata"]["namespace"].as_str().unwrap_or("");
            namespace.is_none_or(|want| want == ns)
                && api
                    .store
                    .get(
                        "pods",
                        Some(ns),
                        m["metadata"]["name"].as_str().unwrap_or(""),
                    )
                    .is_ok_and(|pod| pod["spec"]["nodeName"] == node.as_str())
        })
        .map(|(_, m)| m)
        .collect()
}

/// `metrics.k8s.io/v1beta1`: reads only, from the metrics source.
async fn metrics_request(
    api: &Api,
    method: &Method,
    rest: &[&str],
    query: &Query,
) -> Result<Response, ApiError> {
    if *method != Method::GET {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the resource metrics API is read-only",
        ));
    }
    let Some(source) = api.metrics.get() else {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request (no metrics source)",
        ));
    };
    let selector = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (kind, items, name) = match rest {
        ["nodes"] => ("NodeMetrics", source.nodes().await, None),
        ["nodes", n] => ("NodeMetrics", source.nodes().await, Some(*n)),
        ["pods"] => (
            "PodMetrics",
            pod_metrics(api, source.as_ref(), None).await,
            None,
        ),
        ["namespaces", ns, "pods", tail @ ..] if tail.len() <= 1 => (
            "PodMetrics",
            pod_metrics(api, source.as_ref(), Some(ns)).await,
            tail.first().copied(),
        ),
        _ => return Err(ApiError::not_found("path", &rest.join("/"))),
    };
    let plural = if kind == "NodeMetrics" {
        "nodes"
    } else {
        "pods"
    };
    if let Some(name) = name {
        return items
            .into_iter()
            .find(|i| i["metadata"]["name"] == name)
            .map(|i| json_response(StatusCode::OK, &i))
            .ok_or_else(|| {
                ApiError::not_found(&format!("{plural}.{}", registry::METRICS_GROUP), name)
            });
    }
    let items: Vec<Value> = items.into_iter().filter(|i| selector.matches(i)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {}, "items": items}),
    ))
}

fn version(minor: &str) -> Value {
    json!({"major": KUBE_MAJOR, "minor": minor, "gitVersion": format!("v{KUBE_MAJOR}.{minor}.0-kubeedge-rs"),
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

/// The aggregated discovery version (`v2` or `v2beta1`) the client asks for first, if any.
fn aggregated_discovery(headers: &HeaderMap) -> Option<&'static str> {
    let accept = media_type(headers, header::ACCEPT)?;
    for range in accept.split(',') {
        let params: Vec<&str> = range.split(';').map(str::trim).skip(1).collect();
        let has = |p: &str| params.contains(&p);
        if has("as=APIGroupDiscoveryList") && has("g=apidiscovery.k8s.io") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

/// `/api` (`core`) or `/apis` as one `APIGroupDiscoveryList`: every group, version and resource
/// with its verbs and subresources, in one answer.
fn aggregated(store: &Store, core: bool, version: &str) -> Response {
    /// A version's resources.
    type Versions = Vec<(String, Vec<Value>)>;
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for r in registry::all(store)
        .into_iter()
        .filter(|r| r.group.is_empty() == core)
    {
        let subresources: Vec<Value> = r
            .subresources()
            .into_iter()
            .map(|(sub, verbs, kind)| {
                let (group, v) = match sub {
                    "scale" => ("autoscaling", "v1"),
                    "eviction" => ("policy", "v1"),
                    "token" => ("authentication.k8s.io", "v1"),
                    _ => (r.group.as_str(), r.version.as_str()),
                };
                json!({"subresource": sub, "responseKind": {"group": group, "version": v, "kind": kind},
                       "verbs": verbs})
            })
            .collect();
        let mut entry = json!({"resource": r.plural,
            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular, "verbs": r.verbs()});
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        if !subresources.is_empty() {
            entry["subresources"] = Value::Array(subresources);
        }
        let group = match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some(g) => g,
            None => {
                groups.push((r.group.clone(), Vec::new()));
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        match group.1.iter_mut().find(|(v, _)| *v == r.version) {
            Some((_, resources)) => resources.push(entry),
            None => group.1.push((r.version.clone(), vec![entry])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(name, mut versions)| {
            versions.sort_by_key(|(v, _)| registry::version_priority(v));
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(v, resources)| json!({"version": v, "resources": resources, "freshness": "Current"}))
                .collect();
            let metadata = if name.is_empty() { json!({}) } else { json!({"name": name}) };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"),
                      "metadata": {}, "items": items});
    let content_type =
        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept".to_owned()),
        ],
        body.to_string(),
    )
        .into_response()
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
        .map(|(name, mut versions)| {
            versions.sort_by_key(|v| registry::version_priority(v));
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
    user: Option<auth::User>,
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
        && !resource.has_subresource(s)
    {
        return Err(ApiError::not_found("subresource", s));
    }
    let dry_run = match query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dry run option {other:?} (only \"All\")"
            )));
        }
    };
    let field_validation = match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be Strict, Warn or Ignore, not {other:?}"
            )));
        }
    };
    let manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| apply::default_manager(headers));
    let t = Target {
        resource,
        namespace,
        name,
        sub,
        dry_run,
        manager,
        field_validation,
        warnings: std::sync::Mutex::new(Vec::new()),
        user,
    };
    let mut response = serve_target(api, &t, method, headers, query, body).await?;
    let warnings = t.warnings.lock().map(|w| w.clone()).unwrap_or_default();
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

async fn serve_target(
    api: &Api,
    t: &Target,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    if t.resource.create_only {
        return match (method.clone(), &t.name) {
            (Method::POST, None) => reviews::create(api, t, body),
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("only create is served on {}", t.resource.plural),
            )),
        };
    }
    match (method.clone(), &t.name, t.sub.as_deref()) {
        (_, Some(_), Some("scale")) => subresources::scale(api, t, method, headers, body),
        (Method::POST, Some(_), Some("eviction")) => subresources::evict(api, t, body),
        (Method::POST, Some(_), Some("token")) => reviews::token_request(api, t, body),
        (Method::GET, Some(_), _) => get(api, t, headers),
        (Method::GET, None, _) if query.flag("watch") => watch(api, t, headers, query).await,
        (Method::GET, None, _) => list(api, t, headers, query),
        (Method::POST, None, _) => create(api, t, headers, body),
        (Method::PUT, Some(_), Some(_) | None)
            if !matches!(t.sub.as_deref(), Some("eviction" | "token")) =>
        {
            update(api, t, headers, body)
        }
        (Method::PATCH, Some(_), Some(_) | None)
            if !matches!(t.sub.as_deref(), Some("eviction" | "token")) =>
        {
            patch(api, t, headers, query, body)
        }
        (Method::DELETE, Some(_), None) => delete(api, t, query, body),
        (Method::DELETE, None, None) if !is_namespace(t) => delete_collection(api, t, query, body),
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

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// What form the client asked for (`Accept`): the objects, a `Table`, or only their metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Full,
    Table,
    Metadata,
}

fn output(headers: &HeaderMap) -> Output {
    let accept = media_type(headers, header::ACCEPT).unwrap_or("");
    // The first form the client lists that is served wins.
    for range in accept.split(',') {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
        match as_ {
            Some("Table") => return Output::Table,
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => {
                return Output::Metadata;
            }
            Some(_) => continue,
            None => return Output::Full,
        }
    }
    Output::Full
}

/// One object in the form asked for (store form to the resource's view first).
fn render_one(t: &Target, headers: &HeaderMap, obj: Value) -> Value {
    let obj = views::outward(&t.resource, obj);
    match output(headers) {
        Output::Full => obj,
        Output::Metadata => partial_metadata(obj),
        Output::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            table::table(&t.resource, std::slice::from_ref(&obj), rv)
        }
    }
}

fn partial_metadata(obj: Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

fn get(api: &Api, t: &Target, headers: &HeaderMap) -> Result<Response, ApiError> {
    let obj = api
        .store
        .get(&t.resource.store_name(), ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    Ok(json_response(StatusCode::OK, &render_one(t, headers, obj)))
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
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|o| views::outward(&t.resource, o))
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(next) = page.continue_after {
        use base64::Engine as _;
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(next));
    }
    let body = match output(headers) {
        Output::Table => table::table(&t.resource, &items, rv),
        Output::Metadata => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": meta, "items": items.into_iter().map(partial_metadata).collect::<Vec<_>>()})
        }
        Output::Full => json!({"apiVersion": t.resource.api_version(),
            "kind": format!("{}List", t.resource.kind), "metadata": meta, "items": items}),
    };
    Ok(json_response(StatusCode::OK, &body))
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
    for part in ["spec", "status"] {
        if obj
            .get(part)
            .is_some_and(|v| !v.is_object() && !v.is_null())
            && t.resource.schema.is_none()
        {
            return Err(ApiError::bad_request(format!("{part} must be an object")));
        }
    }
    // A ConfigMap or Secret value that is not a string is refused as invalid, naming the key
    // (422 with a cause), before the type check below would refuse the whole body.
    if t.resource.group.is_empty() && matches!(t.resource.plural.as_str(), "configmaps" | "secrets")
    {
        validation::check(&t.resource, obj)?;
    }
    // Built-in kinds are typed: what does not fit Kubernetes' types is refused, as the
    // apiserver's decoder refuses it.
    if let Err(protobuf::Error::Encode { field, why }) = protobuf::encode(obj) {
        return Err(ApiError::bad_request(format!(
            "{} in body: {field}: {why}",
            t.resource.kind
        )));
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
    if let Some(ns) = ns(t) {
        match api.store.get("namespaces", None, ns) {
            Err(_) => return Err(ApiError::not_found("namespaces", ns)),
            Ok(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("namespace {ns} is being deleted: nothing new can be created in it"),
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Creates `obj` (already a JSON object) as `t`'s resource, through `t`'s store (dry run or not).
fn create_object(api: &Api, t: &Target, mut obj: Value) -> Result<Value, ApiError> {
    normalize(t, &mut obj)?;
    require_namespace(api, t)?;
    t.check_fields(&obj)?;
    validation::custom_resource(&t.resource, &mut obj)?;
    if obj.pointer("/metadata/managedFields").is_none() {
        apply::record_update(&json!({}), &mut obj, &t.manager, None, "Update");
    }
    let mut obj = views::inward(&t.resource, obj);
    if is_csr(t)
        && let Some(o) = obj.as_object_mut()
    {
        // Approval and the certificate come later, from the approver and the signer.
        o.remove("status");
    }
    if is_csr(t)
        && let Some(user) = &t.user
        && obj["spec"].is_object()
    {
        // A certificate request says who asked for it.
        obj["spec"]["username"] = json!(user.name);
        obj["spec"]["groups"] = json!(user.groups);
        if let Some(uid) = &user.uid {
            obj["spec"]["uid"] = json!(uid);
        }
    }
    defaults::apply(&t.resource, &mut obj);
    validation::check(&t.resource, &obj)?;
    rbac_escalation(api, t, &obj)?;
    if t.resource.plural == "customresourcedefinitions" {
        accept_crd(&mut obj);
    }
    // Addresses are handed out and stored under one lock: two Services never get the same.
    let _allocating = is_service(t).then(|| api.allocating.lock());
    if is_service(t) {
        // Reservations name their Service: a generated name is chosen now.
        if obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && let Some(base) = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        {
            obj["metadata"]["name"] = json!(api.store.generate_name(&base));
        }
        let owner = format!(
            "{}/{}",
            ns(t).unwrap_or_default(),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        services::allocate(&api.store, &owner, &mut obj)?;
    }
    let mut stored = t
        .store(api)
        .create(&t.resource.store_name(), ns(t), obj)
        .map_err(|e| store_error(&t.resource, e))?;
    if t.dry_run {
        // Nothing was stored: there is no version to report.
        if let Some(m) = stored["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
    } else if t.resource.group.is_empty()
        && t.resource.plural == "namespaces"
        && let Some(ns) = stored.pointer("/metadata/name").and_then(Value::as_str)
    {
        api.namespace_defaults(ns)
            .map_err(|e| store_error(&t.resource, e))?;
    }
    Ok(stored)
}

fn create(api: &Api, t: &Target, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let obj = parse_body(&body)?;
    let stored = create_object(api, t, obj)?;
    Ok(json_response(
        StatusCode::CREATED,
        &render_one(t, headers, stored),
    ))
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

/// Who the fields a [`write`] sets belong to.
#[derive(Debug, Clone, Copy)]
enum Ownership<'a> {
    /// The request's manager, updating through `subresource` (if any): recorded by `write`.
    Update(Option<&'a str>),
    /// Already recorded in the object (server-side apply).
    Recorded,
}

/// Writes `obj` over the stored object as an update of the main resource or of a subresource
/// (`status`, `ephemeralcontainers`, `approval`), keeping the parts the others own; removes an
/// object whose deletion only waited for its finalizers.
fn write(api: &Api, t: &Target, mut obj: Value, ownership: Ownership) -> Result<Value, ApiError> {
    normalize(t, &mut obj)?;
    let store_name = t.resource.store_name();
    // A Service's addresses are read, chosen and stored under one lock.
    let _allocating = is_service(t).then(|| api.allocating.lock());
    let current = api
        .store
        .get(&store_name, ns(t), name(t))
        .map_err(|e| store_error(&t.resource, e))?;
    if let Ownership::Update(subresource) = ownership {
        // Ownership is recorded in the resource's own view of the object.
        let shown = views::outward(&t.resource, current.clone());
        apply::record_update(&shown, &mut obj, &t.manager, subresource, "Update");
    }
    let mut obj = views::inward(&t.resource, obj);
    let given_rv = obj.pointer("/metadata/resourceVersion").cloned();
    if is_csr(t) && t.sub.as_deref() == Some("approval") {
        // Approving for a signer takes the `approve` verb on that signer.
        let signer = current
            .pointer("/spec/signerName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let domain = format!("{}/*", signer.split('/').next().unwrap_or_default());
        if ![signer, domain.as_str()]
            .iter()
            .any(|n| t.may("approve", "certificates.k8s.io", "signers", "", n, api))
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("user not permitted to approve requests with signerName {signer:?}"),
            ));
        }
    }
    rbac_escalation(api, t, &obj)?;
    match t.sub.as_deref() {
        Some(sub @ ("status" | "ephemeralcontainers" | "approval")) => {
            // Only the subresource's part changes.
            let mut next = current.clone();
            match sub {
                "status" if is_csr(t) => {
                    // The signer writes the certificate; approval is /approval's.
                    next["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
                    next["status"]["conditions"] = current
                        .pointer("/status/conditions")
                        .cloned()
                        .unwrap_or(Value::Null);
                }
                "status" => next["status"] = obj.get("status").cloned().unwrap_or(Value::Null),
                "ephemeralcontainers" => {
                    next["spec"]["ephemeralContainers"] = obj
                        .pointer("/spec/ephemeralContainers")
                        .cloned()
                        .unwrap_or(Value::Null)
                }
                _ => {
                    next["status"]["conditions"] = obj
                        .pointer("/status/conditions")
                        .cloned()
                        .unwrap_or(Value::Null)
                }
            }
            if let Some(rv) = given_rv {
                next["metadata"]["resourceVersion"] = rv;
            }
            obj = next;
        }
        _ => {
            if is_namespace(t) {
                // Only the namespace controller finalizes.
                obj["spec"]["finalizers"] = current
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            if is_csr(t) {
                // A request cannot be changed once made.
                obj["spec"] = current.get("spec").cloned().unwrap_or(Value::Null);
            }
            if t.resource.status {
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
            t.check_fields(&obj)?;
            validation::custom_resource(&t.resource, &mut obj)?;
            defaults::apply(&t.resource, &mut obj);
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
    validation::check(&t.resource, &obj)?;
    if is_service(t) {
        services::keep(&api.store, &current, &mut obj)?;
    }
    let store = t.store(api);
    let mut updated = store
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
        if t.dry_run {
            return Ok(updated);
        }
        return store
            .delete(&store_name, ns(t), name(t), None)
            .map_err(|e| store_error(&t.resource, e));
    }
    if t.dry_run {
        // Nothing was stored: the version stays the one read.
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    }
    Ok(updated)
}

/// Refuses a body that names another object than the URL does.
fn check_name(t: &Target, obj: &Value) -> Result<(), ApiError> {
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name(t))
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    Ok(())
}

fn update(api: &Api, t: &Target, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let obj = parse_body(&body)?;
    check_name(t, &obj)?;
    let written = write(api, t, obj, Ownership::Update(t.sub.as_deref()))?;
    Ok(json_response(
        StatusCode::OK,
        &render_one(t, headers, written),
    ))
}

fn patch(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = patch_type(headers);
    let patch_doc: Value = if content_type == "application/apply-patch+yaml" {
        apply::parse(&body)?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?
    };
    if content_type == "application/apply-patch+yaml" {
        let manager = query.get("fieldManager").unwrap_or_default();
        let force = query.flag("force");
        return apply::apply(api, t, headers, patch_doc, manager, force);
    }
    let store_name = t.resource.store_name();
    // Retry on a concurrent write between read and update.
    for _ in 0..5 {
        let current = api
            .store
            .get(&store_name, ns(t), name(t))
            .map_err(|e| store_error(&t.resource, e))?;
        let current = views::outward(&t.resource, current);
        let mut next = current.clone();
        match content_type.as_str() {
            "application/merge-patch+json" => patch::merge(&mut next, &patch_doc),
            "application/strategic-merge-patch+json" => {
                if !patch::strategic_supported(&current) {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge patch is not supported for custom resources)",
                    ));
                }
                patch::strategic(&mut next, &patch_doc)
                    .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?
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
        if !next.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::new(422, "Invalid", "metadata must be an object"));
        }
        // The patch applies to what was read: pin that version unless the patch set one itself.
        if patch_doc.pointer("/metadata/resourceVersion").is_none() {
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        match write(api, t, next, Ownership::Update(t.sub.as_deref())) {
            Err(ApiError {
                code: 409,
                reason: "Conflict",
                ..
            }) if patch_doc.pointer("/metadata/resourceVersion").is_none() => {}
            other => {
                return other.map(|v| json_response(StatusCode::OK, &render_one(t, headers, v)));
            }
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        "too many concurrent writes; try again",
    ))
}

/// RBAC's escalation rule: a Role or ClusterRole may only grant what its writer holds (or the
/// writer has `escalate` on it), a binding only bind what its writer holds (or `bind` on the
/// role).
fn rbac_escalation(api: &Api, t: &Target, obj: &Value) -> Result<(), ApiError> {
    if t.resource.group != "rbac.authorization.k8s.io" || t.sub.is_some() {
        return Ok(());
    }
    let Some(user) = t.user.as_ref().filter(|u| !u.is_master()) else {
        return Ok(());
    };
    let namespace = ns(t).unwrap_or_default();
    let held = auth::rules_for(&api.store, user, ns(t));
    let (granted, verb, resource, role_name) = match t.resource.plural.as_str() {
        "roles" | "clusterroles" => (
            obj["rules"].as_array().cloned().unwrap_or_default(),
            "escalate",
            t.resource.plural.as_str(),
            name(t).to_owned(),
        ),
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = &obj["roleRef"];
            let role_ns = (role_ref["kind"] == "Role").then_some(namespace);
            let rules = auth::role_rules(&api.store, role_ref, role_ns);
            let kind = if role_ref["kind"] == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            (
                rules,
                "bind",
                kind,
                role_ref["name"].as_str().unwrap_or_default().to_owned(),
            )
        }
        _ => return Ok(()),
    };
    if granted.iter().all(|r| auth::covers(&held, r))
        || t.may(
            verb,
            "rbac.authorization.k8s.io",
            resource,
            namespace,
            &role_name,
            api,
        )
    {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} {:?} is forbidden: user {:?} may only grant permissions it holds itself (or needs the escalate or bind verb)",
            t.resource.plural,
            name(t),
            user.name
        ),
    ))
}

fn is_service(t: &Target) -> bool {
    t.resource.group.is_empty() && t.resource.plural == "services" && t.sub.is_none()
}

fn is_csr(t: &Target) -> bool {
    t.resource.group == "certificates.k8s.io" && t.resource.plural == "certificatesigningrequests"
}

fn is_namespace(t: &Target) -> bool {
    t.resource.group.is_empty() && t.resource.plural == "namespaces"
}

/// The media type of a request's body, without parameters (`application/merge-patch+json`).
fn patch_type(headers: &HeaderMap) -> String {
    media_type(headers, header::CONTENT_TYPE)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
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

fn delete_options(query: &Query, body: &Bytes) -> Result<Value, ApiError> {
    let mut options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    if !options.is_object() {
        return Err(ApiError::bad_request("DeleteOptions must be an object"));
    }
    if let Some(g) = query.get("gracePeriodSeconds") {
        let g = g
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be a number"))?;
        options["gracePeriodSeconds"] = json!(g);
    }
    if let Some(p) = query.get("propagationPolicy") {
        options["propagationPolicy"] = json!(p);
    }
    Ok(options)
}

fn delete(api: &Api, t: &Target, query: &Query, body: Bytes) -> Result<Response, ApiError> {
    let options = delete_options(query, &body)?;
    // Marking an object for deletion writes it: a controller's write between the read and the
    // mark is a conflict the client did not ask for (it gave no resourceVersion), so read again
    // and retry, as kube-apiserver does.
    let pinned = options.pointer("/preconditions/resourceVersion").is_some();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = api
            .store
            .get(&t.resource.store_name(), ns(t), name(t))
            .map_err(|e| store_error(&t.resource, e))?;
        match delete_object(api, t, current, &options) {
            Ok((code, gone)) => return Ok(json_response(code, &views::outward(&t.resource, gone))),
            Err(e) if e.reason == "Conflict" && !pinned && attempts < 5 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Deletes one object (`current`, as read): marks it for deletion when finalizers or a node's
/// graceful termination must run first (202 for the mark), removes it otherwise (200).
fn delete_object(
    api: &Api,
    t: &Target,
    current: Value,
    options: &Value,
) -> Result<(StatusCode, Value), ApiError> {
    let store_name = t.resource.store_name();
    let namespace = current
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let obj_name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let grace = options["gracePeriodSeconds"].as_i64();
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
    let mut finalizers: Vec<Value> = current
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // A namespace goes once its content is gone (the `kubernetes` finalizer in its spec); one
    // already being deleted goes when the namespace controller has emptied it.
    let finalizing_namespace = is_namespace(t)
        && current
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    if is_namespace(t) && current.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok((StatusCode::OK, current));
    }
    // Foreground deletion waits for the dependents, which the garbage collector removes; orphan
    // deletion waits for it to take the owner references off them.
    let policy_finalizer = match options["propagationPolicy"].as_str() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        None if options["orphanDependents"] == true => Some("orphan"),
        _ => None,
    };
    if let Some(f) = policy_finalizer
        && !finalizing_namespace
        && !finalizers.iter().any(|x| x == f)
        && current.pointer("/metadata/deletionTimestamp").is_none()
    {
        finalizers.push(json!(f));
    }
    let graceful = graceful_pod(t, &current) && grace != Some(0);
    let store = t.store(api);
    if !finalizers.is_empty() || graceful || finalizing_namespace {
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok((StatusCode::OK, current));
        }
        // A namespace is marked now; others after their grace period, at most a year ahead (a
        // deadline no clock can hold is not a grace period).
        let grace = if finalizing_namespace {
            0
        } else {
            grace
                .or_else(|| {
                    current
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .clamp(0, 365 * 86_400)
        };
        let mut next = current.clone();
        let at = SystemTime::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        next["metadata"]["deletionTimestamp"] = json!(store::rfc3339(at));
        next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if !finalizers.is_empty() {
            next["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        if is_namespace(t) {
            next["status"]["phase"] = json!("Terminating");
        }
        let mut marked = store
            .update(&store_name, namespace.as_deref(), &obj_name, next)
            .map_err(|e| store_error(&t.resource, e))?;
        if t.dry_run {
            marked["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        } else if finalizing_namespace
            && api
                .empty_namespace(&obj_name)
                .map_err(|e| store_error(&t.resource, e))?
        {
            match api.store.delete(&store_name, None, &obj_name, None) {
                Ok(gone) => return Ok((StatusCode::OK, gone)),
                Err(store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(&t.resource, e)),
            }
        }
        let code = if graceful || finalizing_namespace {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((code, marked));
    }
    let gone = store
        .delete(
            &store_name,
            namespace.as_deref(),
            &obj_name,
            precondition_rv,
        )
        .map_err(|e| store_error(&t.resource, e))?;
    if t.dry_run {
        return Ok((StatusCode::OK, current));
    }
    Ok((StatusCode::OK, gone))
}

/// `DELETE` on a collection: every object the selectors match (in the namespace, if any), as one
/// delete each; answers the list of what was deleted or marked.
fn delete_collection(
    api: &Api,
    t: &Target,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let options = delete_options(query, &body)?;
    let (labels, fields) = selectors(query)?;
    let (items, _) = api
        .store
        .list(&t.resource.store_name(), ns(t), &labels, &fields)
        .map_err(|e| store_error(&t.resource, e))?;
    let mut deleted = Vec::with_capacity(items.len());
    for item in items {
        match delete_object(api, t, item, &options) {
            Ok((_, gone)) => deleted.push(views::outward(&t.resource, gone)),
            // Deleted by someone else meanwhile: nothing left to do for it.
            Err(ApiError { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let rv = api.store.resource_version().unwrap_or(0).to_string();
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": t.resource.api_version(), "kind": format!("{}List", t.resource.kind),
                "metadata": {"resourceVersion": rv}, "items": deleted}),
    ))
}

async fn watch(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Response, ApiError> {
    let metadata_only = output(headers) == Output::Metadata;
    let (shown_version, shown_kind) = if metadata_only {
        (
            "meta.k8s.io/v1".to_owned(),
            "PartialObjectMetadata".to_owned(),
        )
    } else {
        (t.resource.api_version(), t.resource.kind.clone())
    };
    let framing = if wants_protobuf(headers) && protobuf::has_kind(&shown_version, &shown_kind) {
        Framing::Protobuf
    } else {
        Framing::Json
    };
    let show = {
        let resource = t.resource.clone();
        move |o: Value| {
            let o = views::outward(&resource, o);
            if metadata_only {
                partial_metadata(o)
            } else {
                o
            }
        }
    };
    let (labels, fields) = selectors(query)?;
    let store_name = t.resource.store_name();
    let namespace = t.namespace.clone();
    let requested = query.get("resourceVersion").unwrap_or("");
    // A streaming list: the current state, then a bookmark saying it is complete.
    let send_initial = query.flag("sendInitialEvents");
    let (initial, from) = if requested.is_empty() || requested == "0" || send_initial {
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
        .watch_resource(from, &store_name)
        .map_err(|e| store_error(&t.resource, e))?;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut initial: std::collections::VecDeque<Bytes> = initial
        .into_iter()
        .map(|o| framing.event("ADDED", show(o)))
        .collect();
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let bookmark_kind = json!({"kind": shown_kind, "apiVersion": shown_version});
    if send_initial {
        let mut object = bookmark_kind.clone();
        object["metadata"] = json!({"resourceVersion": from.to_string(),
                                    "annotations": {"k8s.io/initial-events-end": "true"}});
        initial.push_back(framing.event("BOOKMARK", object));
    }
    struct St<F> {
        show: F,
        framing: Framing,
        initial: std::collections::VecDeque<Bytes>,
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
        show,
        framing,
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
            return Some((Ok::<_, std::io::Error>(ev), st));
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
                    let frame = st.framing.event("BOOKMARK", object);
                    return Some((Ok(frame), st));
                }
                Ok(Err(store::Error::Gone { requested, oldest })) => {
                    let status = ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {requested} ({oldest})"),
                    );
                    let frame = st.framing.event("ERROR", status.status());
                    st.deadline = tokio::time::Instant::now();
                    return Some((Ok(frame), st));
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
            let frame = st.framing.event(kind, (st.show)(ev.object.clone()));
            return Some((Ok(frame), st));
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, framing.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How a watch writes its events.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// One JSON object a line.
    Json,
    /// Length-prefixed protobuf `WatchEvent`s.
    Protobuf,
}

impl Framing {
    fn content_type(self) -> &'static str {
        match self {
            Framing::Json => "application/json",
            Framing::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch",
        }
    }

    fn event(self, kind: &str, object: Value) -> Bytes {
        if let Framing::Protobuf = self {
            match protobuf::encode_watch_event(kind, &object) {
                Ok(frame) => return Bytes::from(frame),
                // The object does not fit its kind's message (a stored object with a field of
                // the wrong type): tell the client instead of sending something else.
                Err(e) => {
                    let status = ApiError::new(500, "InternalError", e.to_string()).status();
                    if let Ok(frame) = protobuf::encode_watch_event("ERROR", &status) {
                        return Bytes::from(frame);
                    }
                }
            }
        }
        let line = json!({"type": kind, "object": object});
        Bytes::from(format!("{line}\n"))
    }
}
