//! cloudhub's HTTPS server (default port 10002), as upstream serves it: `GET /ca.crt` (the CA, raw
//! DER), `GET /edge.crt` (signs a node's CSR, DER in and out) and `GET /node/{name}`.
//!
//! `GET /v1/tunnel` upgrades to an edge's stream tunnel (see [`crate::streams`]): only with a
//! node certificate (`O=system:nodes`), under that certificate's node name.
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
use crate::streams::Tunnels;
use kubeedge_core::streaming::tunnel::{TUNNEL_PATH, TUNNEL_UPGRADE};

async fn tunnel(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    mut request: axum::extract::Request,
) -> Response {
    let node = match &peer.user {
        Ok(u) if u.groups.iter().any(|g| g == NODES_ORG) => {
            match u.name.strip_prefix(NODE_CN_PREFIX) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => return unauthorized("a node certificate is required for the stream tunnel"),
            }
        }
        Ok(u) => {
            return (
                StatusCode::FORBIDDEN,
                format!("{} is not a node: only nodes open stream tunnels", u.name),
            )
                .into_response();
        }
        Err(why) => return unauthorized(format!("a node certificate is required: {why}")),
    };
    let asked = request
        .headers()
        .get("NodeName")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&node)
        .to_owned();
    if asked != node {
        tracing::warn!(node, asked, peer = %peer.addr, "refused a stream tunnel for another node");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "the certificate of node {node:?} cannot open the stream tunnel of node {asked:?}"
            ),
        )
            .into_response();
    }
    if !ctx.index.may_be_edge(&node) {
        return (
            StatusCode::FORBIDDEN,
            format!("{node:?} is a node of the cluster, not an edge node"),
        )
            .into_response();
    }
    let wanted = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TUNNEL_UPGRADE));
    if !wanted {
        return (
            StatusCode::BAD_REQUEST,
            format!("upgrade to {TUNNEL_UPGRADE} is required"),
        )
            .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let tunnels = ctx.tunnels.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => tunnels.serve(node, hyper_util::rt::TokioIo::new(io)).await,
            Err(e) => tracing::info!(node, error = %e, "stream tunnel: upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, TUNNEL_UPGRADE),
        ],
    )
        .into_response()
}

/// Largest CSR request body accepted.
pub const MAX_CSR_BODY: usize = 1 << 20;

struct Ctx {
    ca: Arc<Ca>,
    validity: Duration,
    index: Arc<Index>,
    tunnels: Tunnels,
}

/// The routes, signing node certificates valid for `validity`; edges' stream tunnels join
/// `tunnels`.
pub fn router(ca: Arc<Ca>, validity: Duration, index: Arc<Index>, tunnels: Tunnels) -> Router {
    Router::new()
        .route(TUNNEL_PATH, get(tunnel))
        .route("/ca.crt", get(ca_crt))
        .route("/edge.crt", get(edge_crt).post(edge_crt))
        .route("/node/{name}", get(node))
        .layer(DefaultBodyLimit::max(MAX_CSR_BODY))
        .with_state(Arc::new(Ctx {
            ca,
            validity,
            index,
            tunnels,
        }))
}

/// Serves `router` on `listener` until `shutdown` completes, each request knowing its client
/// ([`TlsPeer`]); also the kubelet API's server ([`crate::kubelet`]).
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
    if ctx.index.contains(Kind::Node, "", &name) {
        (StatusCode::OK, "Node found").into_response()
    } else {
        (StatusCode::NOT_FOUND, "Node not found").into_response()
    }
}
