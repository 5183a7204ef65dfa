//! The metaserver: the Kubernetes API over the metastore, for local clients (kubectl, client-go,
//! kube-rs, the edge's own controllers), online and offline.
//!
//! It serves what the cloud synced: get, list and watch of everything the node holds. Writes are
//! the cloud's business (the objects are the cloud's, and a local change would be overwritten, or
//! worse, silently diverge): they get `403 Forbidden` with a `Status` saying so. The node's own
//! status reaches the cloud through edgehub's durable queue, not through here.

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kubeedge_core::kubeapi::{Api, ApiError};

/// The metaserver's routes: `api`'s, read-only.
pub fn router(api: &Api) -> Router {
    api.router().layer(middleware::from_fn(read_only))
}

async fn read_only(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    ApiError::with(
        403,
        "Forbidden",
        format!(
            "the edge metaserver is read-only: {} {} must go to the cloud",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}
