//! The metaserver: the Kubernetes API over the metastore, for local clients (kubectl, client-go,
//! kube-rs, the edge's own controllers), online and offline.
//!
//! It serves what the cloud synced: get, list and watch of everything the node holds. Status is
//! the one thing local clients may write, and only the node's own: `PUT`/`PATCH` of
//! `pods/<name>/status` for pods bound to this node and of `nodes/<this node>/status`. Such a write
//! is applied to the metastore (local watchers see it at once) and queued for the cloud in
//! edgehub's durable queue (as `podpatch`/`nodepatch` carrying the whole new status), so it
//! reaches the cloud when the link is up, after restarts too. Until the cloud answers with its own
//! copy of the object, the local one shows the local status.
//!
//! Every other write gets `403 Forbidden` with a `Status` saying why: the objects are the cloud's,
//! and a local change would be overwritten or, worse, silently diverge.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kubeedge_core::kubeapi::{Api, ApiError};
use kubeedge_core::message::{Message, Operation, Route, names};
use serde_json::{Value, json};

use crate::edgehub::EdgeHub;

/// Largest status write accepted (the API's own body limit applies first).
const MAX_STATUS_RESPONSE: usize = 8 << 20;

/// Where the metaserver sends status writes: the node and its edgehub.
#[derive(Debug, Clone)]
pub struct StatusWrites {
    /// This node's name.
    pub node: String,
    /// The link whose durable queue carries the writes to the cloud.
    pub hub: EdgeHub,
}

/// The metaserver's routes: `api`'s, read-only except the node's own status when `status` is
/// given (without it every write is refused).
pub fn router(api: &Api, status: Option<StatusWrites>) -> Router {
    api.router()
        .layer(middleware::from_fn_with_state((api.clone(), status), guard))
}

/// What a status write targets.
enum StatusTarget {
    Pod { namespace: String, name: String },
    Node { name: String },
}

fn status_target(path: &str) -> Option<StatusTarget> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => Some(StatusTarget::Pod {
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        ["api", "v1", "nodes", name, "status"] => Some(StatusTarget::Node {
            name: (*name).to_owned(),
        }),
        _ => None,
    }
}

fn forbidden(message: String) -> Response {
    ApiError::with(403, "Forbidden", message).into_response()
}

async fn guard(
    State((api, status)): State<(Api, Option<StatusWrites>)>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let refused = || {
        forbidden(format!(
            "the edge metaserver is read-only except the node's own status: {method} {path} must go to the cloud"
        ))
    };
    let (Some(writes), Some(target)) = (&status, status_target(&path)) else {
        return refused();
    };
    if !matches!(method, Method::PUT | Method::PATCH) {
        return refused();
    }
    let (resource, key) = match &target {
        StatusTarget::Node { name } => {
            if *name != writes.node {
                return forbidden(format!(
                    "node {} may not write the status of node {name}",
                    writes.node
                ));
            }
            ("nodepatch", format!("null/nodepatch/{name}"))
        }
        StatusTarget::Pod { namespace, name } => {
            // Only pods bound to this node; an unknown pod is the API's 404.
            if let Ok(pod) = api.store().get("pods", Some(namespace), name)
                && pod["spec"]["nodeName"].as_str() != Some(writes.node.as_str())
            {
                return forbidden(format!(
                    "pod {namespace}/{name} is not bound to node {}",
                    writes.node
                ));
            }
            ("podpatch", format!("{namespace}/podpatch/{name}"))
        }
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_STATUS_RESPONSE).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::with(500, "InternalError", format!("reading the result: {e}"))
                .into_response();
        }
    };
    let object: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let patch = json!({"status": object.get("status").cloned().unwrap_or(Value::Null)});
    let message = Message::new(
        "",
        0,
        Route::new("edged", names::RESOURCE_GROUP, Operation::Patch, key),
    )
    .with_content(json!(patch.to_string()));
    if let Err(e) = writes.hub.report(message).await {
        // Stored locally but not queued: say so, the client may retry.
        return ApiError::with(
            503,
            "ServiceUnavailable",
            format!(
                "the {resource} was stored on the edge but could not be queued for the cloud: {}",
                crate::chain(&e)
            ),
        )
        .into_response();
    }
    Response::from_parts(parts, Body::from(bytes))
}
