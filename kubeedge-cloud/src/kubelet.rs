//! The kubelet API for edge nodes, served by cloudcore when it works against an external cluster
//! (`--kubeconfig`): the kube-apiserver calls a node's kubelet for `kubectl logs`, `exec`,
//! `attach` and `port-forward`, and metrics-server for `/stats/summary` and
//! `/metrics/resource`; edge nodes have no reachable kubelet, so these calls are pointed at
//! cloudcore (upstream's recipe: an iptables DNAT rule on the API server's host sending
//! `<edge node IP>:10350` to cloudcore's stream port, 10003), which finds the node by the address
//! the request was made to (its `Host`) among the edge nodes' reported addresses, and goes
//! through that node's stream tunnel.
//!
//! Only clients with a certificate from the cluster's CA are served (the kube-apiserver's
//! `--kubelet-client-certificate`), never a node's own (`O=system:nodes`: a node cannot reach
//! another node's pods through here), and each request is authorized by the cluster as a kubelet
//! authorizes it: a SubjectAccessReview for `nodes/proxy` (logs, exec, attach, port-forward),
//! `nodes/stats` or `nodes/metrics` on that node. Requests for a pod go to the node the pod is
//! bound to; the `Host` picks the node only for the node's own stats and metrics.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kubeedge_core::kubeapi::tls::TlsPeer;
use kubeedge_core::pki::NODES_ORG;
use kubeedge_core::streaming::remote::StreamOptions;

use crate::index::Index;
use crate::streams::{Tunnels, bridge_command, bridge_port_forward, relay_get};

struct Ctx {
    index: Arc<Index>,
    tunnels: Tunnels,
    client: kube::Client,
}

/// The routes (everything under `/`, dispatched by path); requests are authorized through
/// `client`'s cluster.
pub fn router(index: Arc<Index>, tunnels: Tunnels, client: kube::Client) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(Ctx {
        index,
        tunnels,
        client,
    }))
}

/// Whether the cluster allows `user` (with `groups`) `verb` on `nodes/<sub>` of `node`.
async fn allowed(
    client: &kube::Client,
    user: &str,
    groups: &[String],
    verb: &str,
    sub: &str,
    node: &str,
) -> Result<bool, String> {
    let review = serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups,
                 "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": sub, "name": node}}});
    let request = http::Request::post("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(review.to_string().into_bytes())
        .map_err(|e| e.to_string())?;
    let answer: serde_json::Value = client.request(request).await.map_err(|e| e.to_string())?;
    Ok(answer["status"]["allowed"] == true)
}

/// The edge node a pod is bound to.
#[allow(clippy::result_large_err)] // the refusal is the response, handed straight back
fn node_of_pod(index: &Index, ns: &str, pod: &str) -> Result<String, Response> {
    index
        .get(crate::index::Kind::Pod, ns, pod)
        .and_then(|p| crate::index::bound_node(&p).map(str::to_owned))
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("pod {ns}/{pod} is not bound to an edge node"),
            )
        })
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// The edge node a request is for: the one whose reported addresses hold the request's host.
#[allow(clippy::result_large_err)] // the refusal is the response, handed straight back
fn node_of(index: &Index, request: &Request) -> Result<String, Response> {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<IpAddr> = host.parse().ok();
    let found: Vec<String> = index
        .edge_nodes()
        .iter()
        .filter(|n| {
            n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| {
                    let addr = a["address"].as_str().unwrap_or("");
                    addr == host || (ip.is_some() && addr.parse::<IpAddr>().ok() == ip)
                })
        })
        .map(|n| crate::index::meta(n, "name").to_owned())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no edge node reports the address {host:?}"),
        )),
        many => Err(refuse(
            StatusCode::CONFLICT,
            format!("edge nodes {many:?} all report the address {host:?}"),
        )),
    }
}

async fn handle(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    request: Request,
) -> Response {
    let (user, groups) = match &peer.user {
        Ok(u) if u.groups.iter().any(|g| g == NODES_ORG) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{} is a node: nodes do not reach pods through cloudcore",
                    u.name
                ),
            );
        }
        Ok(u) => (u.name.clone(), u.groups.clone()),
        Err(why) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("a client certificate of the cluster is required: {why}"),
            );
        }
    };
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // As a kubelet authorizes: which subresource of the node, which verb.
    let (sub, node) = match parts.as_slice() {
        ["stats", ..] | ["metrics", ..] => {
            let sub = if parts[0] == "stats" {
                "stats"
            } else {
                "metrics"
            };
            match node_of(&ctx.index, &request) {
                Ok(n) => (sub, n),
                Err(r) => return r,
            }
        }
        ["containerLogs" | "exec" | "attach", ns, pod, _] | ["portForward", ns, pod] => {
            match node_of_pod(&ctx.index, ns, pod) {
                Ok(n) => ("proxy", n),
                Err(r) => return r,
            }
        }
        _ => return refuse(StatusCode::NOT_FOUND, format!("{path} is not served")),
    };
    let verb = if request.method() == http::Method::POST {
        "create"
    } else {
        "get"
    };
    match allowed(&ctx.client, &user, &groups, verb, sub, &node).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("{user} may not {verb} nodes/{sub} of node {node}"),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("authorizing the request: {e}"),
            );
        }
    }
    let uri = |p: &str| {
        if query.is_empty() {
            p.to_owned()
        } else {
            format!("{p}?{query}")
        }
    };
    match parts.as_slice() {
        ["containerLogs", _, _, _] | ["stats", "summary"] | ["metrics", "resource"] => {
            relay_get(&ctx.tunnels, &node, uri(&path)).await
        }
        [sub @ ("exec" | "attach"), ns, pod, container] => {
            let options = StreamOptions::from_query(&query);
            let commands: Vec<&str> = query
                .split('&')
                .filter(|p| p.starts_with("command="))
                .collect();
            let edge_uri = format!(
                "/{sub}/{ns}/{pod}/{container}?{}{}stdin={}&stdout={}&stderr={}&tty={}",
                commands.join("&"),
                if commands.is_empty() { "" } else { "&" },
                options.stdin,
                options.stdout,
                options.stderr,
                options.tty
            );
            let what = format!("{sub} {ns}/{pod}/{container} (kubelet API)");
            bridge_command(&ctx.tunnels, &node, edge_uri, request, options, user, what).await
        }
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            bridge_port_forward(&ctx.tunnels, &node, &ns, &pod, request, user)
        }
        _ => refuse(StatusCode::NOT_FOUND, format!("{path} is not served")),
    }
}
