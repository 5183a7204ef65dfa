//! cloudhub's HTTPS server (default port 10002), as upstream serves it: `GET /ca.crt` (the CA, raw
//! DER), `GET /edge.crt` (signs a node's CSR, DER in and out) and `GET /node/{name}`.
//!
//! `/edge.crt` is authorized either by a client certificate that already names the node
//! (`CN=system:node:<NodeName header>`, `O=system:nodes`: certificate rotation) or by a join token
//! in `Authorization: Bearer <token>` (the JWT part, as upstream edges send it, or the whole
//! four-part token). Failures answer 401 with a plain-text reason; the request body is limited to
//! 1 MiB.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kubeedge_core::kubeapi::tls::{TlsListener, TlsPeer};
use kubeedge_core::pki::{Ca, NODE_CN_PREFIX, NODES_ORG};

use crate::index::{Index, Kind};

/// Largest CSR request body accepted.
pub const MAX_CSR_BODY: usize = 1 << 20;

struct Ctx {
    ca: Arc<Ca>,
    validity: Duration,
    index: Arc<Index>,
}

/// The routes, signing node certificates valid for `validity`.
pub fn router(ca: Arc<Ca>, validity: Duration, index: Arc<Index>) -> Router {
    Router::new()
        .route("/ca.crt", get(ca_crt))
        .route("/edge.crt", get(edge_crt).post(edge_crt))
        .route("/node/{name}", get(node))
        .layer(DefaultBodyLimit::max(MAX_CSR_BODY))
        .with_state(Arc::new(Ctx {
            ca,
            validity,
            index,
        }))
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TlsListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<TlsPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

fn der(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

async fn ca_crt(State(ctx): State<Arc<Ctx>>) -> Response {
    der(ctx.ca.cert_der().to_vec())
}

fn unauthorized(why: impl Into<String>) -> Response {
    (StatusCode::UNAUTHORIZED, why.into()).into_response()
}

async fn edge_crt(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(node) = headers
        .get("NodeName")
        .and_then(|v| v.to_str().ok())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
    else {
        return (StatusCode::BAD_REQUEST, "missing NodeName header").into_response();
    };
    if !ctx.index.may_be_edge(&node) {
        return unauthorized(format!(
            "{node:?} is a node of the cluster, not an edge node"
        ));
    }
    let now = SystemTime::now();
    let by_cert = peer.user.as_ref().is_ok_and(|u| {
        u.name == format!("{NODE_CN_PREFIX}{node}") && u.groups.iter().any(|g| g == NODES_ORG)
    });
    if !by_cert {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return unauthorized("no client certificate for this node and no bearer token");
        };
        let checked = if token.split('.').count() == 4 {
            ctx.ca.verify_token(token, now)
        } else {
            ctx.ca.verify_jwt(token, now)
        };
        if let Err(e) = checked {
            tracing::info!(node, peer = %peer.addr, error = %e, "refused a certificate request");
            return unauthorized(format!("invalid token: {e}"));
        }
    }
    match ctx.ca.sign_csr(&body, &node, ctx.validity, now) {
        Ok(cert) => {
            tracing::info!(node, peer = %peer.addr, renewal = by_cert, "signed a node certificate");
            der(cert)
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("cannot sign: {e}")).into_response(),
    }
}

async fn node(State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> Response {
    if ctx.index.get(Kind::Node, "", &name).is_some() {
        (StatusCode::OK, "Node found").into_response()
    } else {
        (StatusCode::NOT_FOUND, "Node not found").into_response()
    }
}
