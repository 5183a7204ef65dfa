//! Pod streams from the cloud: the edges' stream tunnels ([`Tunnels`], accepted on cloudhub's
//! HTTPS port, see [`kubeedge_core::streaming::tunnel`]) and what the embedded control plane
//! serves through them ([`CloudStreams`]): `kubectl logs` (follow, previous, tailLines,
//! sinceSeconds, timestamps, limitBytes), `exec` and `attach` (WebSocket v5/v4 and SPDY/3.1) and
//! `port-forward` (SPDY/3.1, directly or tunnelled in WebSocket).
//!
//! A node reaches the tunnel only with its own certificate and only under its own name; the
//! cloud opens every stream (an edge cannot ask for anything through its tunnel), and the edge
//! serves only pods bound to it. Each session is logged when it ends: who, which pod, how long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use kubeedge_core::kubeapi::{PodStreamRequest, PodStreams};
use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::{self, StreamOptions};
use kubeedge_core::streaming::tunnel::{self, CONNECTION_WINDOW, STREAM_WINDOW};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a request waits for the edge's answer before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The node has no tunnel open.
    #[error(
        "node {0:?} is not connected: its stream tunnel is down (the edge is offline or unreachable)"
    )]
    NotConnected(String),
    /// The tunnel failed.
    #[error("stream tunnel to node {node:?}: {message}")]
    Broken {
        /// The node.
        node: String,
        /// What happened.
        message: String,
    },
}

struct Entry {
    sender: h2::client::SendRequest<Bytes>,
    generation: u64,
}

/// The open tunnels, by node name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tunnels {
    open: Arc<Mutex<HashMap<String, Entry>>>,
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("nodes", &self.nodes())
            .finish()
    }
}

impl Tunnels {
    /// No tunnels yet.
    pub fn new() -> Tunnels {
        Tunnels::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The nodes with a tunnel open.
    pub fn nodes(&self) -> Vec<String> {
        let mut n: Vec<String> = self.lock().keys().cloned().collect();
        n.sort();
        n
    }

    /// Whether `node` has a tunnel open.
    pub fn is_open(&self, node: &str) -> bool {
        self.lock().contains_key(node)
    }

    /// Runs the HTTP/2 client side of `node`'s tunnel over `io` (the upgraded connection) until
    /// it ends; a newer tunnel of the same node replaces it.
    pub async fn serve<IO>(&self, node: String, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await;
        let (sender, mut connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(node, error = %e, "stream tunnel: HTTP/2 handshake failed");
                return;
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        self.lock()
            .insert(node.clone(), Entry { sender, generation });
        tracing::info!(node, "stream tunnel open");
        // Keepalive: a tunnel whose edge stopped answering pings is dropped.
        let mut pinger = connection.ping_pong();
        let watchdog = async move {
            let Some(pinger) = pinger.as_mut() else {
                return std::future::pending::<()>().await;
            };
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                match tokio::time::timeout(Duration::from_secs(15), pinger.ping(h2::Ping::opaque()))
                    .await
                {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
            }
        };
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    tracing::info!(node, error = %e, "stream tunnel ended");
                }
            }
            () = watchdog => tracing::info!(node, "stream tunnel: the edge stopped answering pings"),
        }
        let mut open = self.lock();
        if open.get(&node).is_some_and(|e| e.generation == generation) {
            open.remove(&node);
        }
        drop(open);
        tracing::info!(node, "stream tunnel closed");
    }

    /// Sends `request` to `node`'s edge: the edge's answer (head and body) and the request's
    /// body stream (`end` sends none).
    pub async fn request(
        &self,
        node: &str,
        request: http::Request<()>,
        end: bool,
    ) -> Result<
        (
            http::Response<h2::RecvStream>,
            Option<h2::SendStream<Bytes>>,
        ),
        TunnelError,
    > {
        let sender = self
            .lock()
            .get(node)
            .map(|e| e.sender.clone())
            .ok_or_else(|| TunnelError::NotConnected(node.to_owned()))?;
        let broken = |message: String| TunnelError::Broken {
            node: node.to_owned(),
            message,
        };
        let mut ready = tokio::time::timeout(ANSWER_TIMEOUT, sender.ready())
            .await
            .map_err(|_| broken("no room for a new stream".into()))?
            .map_err(|e| broken(e.to_string()))?;
        let (answer, body) = ready
            .send_request(request, end)
            .map_err(|e| broken(e.to_string()))?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| broken(format!("no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(|e| broken(e.to_string()))?;
        Ok((answer, (!end).then_some(body)))
    }
}

/// The embedded control plane's pod streams, through the tunnels.
#[derive(Debug, Clone)]
pub struct CloudStreams {
    tunnels: Tunnels,
}

impl CloudStreams {
    /// Through `tunnels`.
    pub fn new(tunnels: Tunnels) -> CloudStreams {
        CloudStreams { tunnels }
    }
}

fn api_error(code: StatusCode, reason: &str, message: &str) -> Response {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    let mut r = Response::new(Body::from(status.to_string()));
    *r.status_mut() = code;
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn tunnel_error(e: &TunnelError) -> Response {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &e.to_string(),
    )
}

/// A body read from a tunnel stream.
fn body_of(recv: h2::RecvStream) -> Body {
    let stream = futures_util::stream::unfold(recv, |mut recv| async move {
        match tunnel::recv(&mut recv).await? {
            Ok(b) => Some((Ok::<_, std::io::Error>(b), recv)),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), recv)),
        }
    });
    Body::from_stream(stream)
}

/// The edge's answer as the client's response (refusals keep their code and Status).
fn relay(answer: http::Response<h2::RecvStream>) -> Response {
    let (parts, recv) = answer.into_parts();
    let mut r = Response::new(body_of(recv));
    *r.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        r.headers_mut().insert(k, v.clone());
    }
    r
}

fn query_get<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The container a request names, or the pod's only one.
#[allow(clippy::result_large_err)] // the refusal is the response, handed straight back
fn container_of(pod: &Value, query: &str) -> Result<String, Response> {
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    match (
        query_get(query, "container").filter(|c| !c.is_empty()),
        names.as_slice(),
    ) {
        (Some(c), _) if names.contains(&c) => Ok(c.to_owned()),
        (Some(c), _) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {c} is not valid for pod {name}"),
        )),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => {
            // kubectl picks the default container annotation itself; without it, ask.
            if let Some(c) =
                pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                    .as_str()
                    .filter(|c| names.contains(c))
            {
                return Ok(c.to_owned());
            }
            Err(api_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                ),
            ))
        }
    }
}

impl PodStreams for CloudStreams {
    fn serve(
        &self,
        request: PodStreamRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
        let tunnels = self.tunnels.clone();
        Box::pin(async move { serve(tunnels, request).await })
    }
}

async fn serve(tunnels: Tunnels, r: PodStreamRequest) -> Response {
    let PodStreamRequest {
        pod,
        subresource,
        user,
        request,
    } = r;
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let Some(node) = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("pod {name} does not have a host assigned"),
        );
    };
    let who = user.map(|u| u.name).unwrap_or_else(|| "anonymous".into());
    let query = request.uri().query().unwrap_or("").to_owned();
    if !tunnels.is_open(&node) {
        return tunnel_error(&TunnelError::NotConnected(node));
    }
    match subresource.as_str() {
        "log" => {
            let container = match container_of(&pod, &query) {
                Ok(c) => c,
                Err(r) => return r,
            };
            let rest: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("container="))
                .collect();
            let uri = format!("/containerLogs/{ns}/{name}/{container}?{}", rest.join("&"));
            relay_get(&tunnels, &node, uri).await
        }
        "exec" | "attach" => {
            let container = match container_of(&pod, &query) {
                Ok(c) => c,
                Err(r) => return r,
            };
            let options = StreamOptions::from_query(&query);
            let has_command = query.split('&').any(|p| p.starts_with("command="));
            if subresource == "exec" && !has_command {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "you must specify at least 1 command",
                );
            }
            let mut edge_query: Vec<&str> = query
                .split('&')
                .filter(|p| p.starts_with("command="))
                .collect();
            let flags = format!(
                "stdin={}&stdout={}&stderr={}&tty={}",
                options.stdin, options.stdout, options.stderr, options.tty
            );
            edge_query.push(&flags);
            let uri = format!(
                "/{subresource}/{ns}/{name}/{container}?{}",
                edge_query.join("&")
            );
            let what = format!("{subresource} {ns}/{name}/{container}");
            bridge_command(&tunnels, &node, uri, request, options, who, what).await
        }
        "portforward" => bridge_port_forward(&tunnels, &node, &ns, &name, request, who),
        other => api_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods/{other} is not served"),
        ),
    }
}

/// A GET through `node`'s tunnel, its answer relayed as it streams.
pub(crate) async fn relay_get(tunnels: &Tunnels, node: &str, uri: String) -> Response {
    let Ok(req) = http::Request::get(uri).body(()) else {
        return api_error(StatusCode::BAD_REQUEST, "BadRequest", "malformed request");
    };
    match tunnels.request(node, req, true).await {
        Ok((answer, _)) => relay(answer),
        Err(e) => tunnel_error(&e),
    }
}

/// An exec or attach: the edge starts the session at `uri`; the client's upgrade (`request`)
/// is answered once it did, and the two are bridged until either ends. Logged with `who`.
pub(crate) async fn bridge_command(
    tunnels: &Tunnels,
    node: &str,
    uri: String,
    request: axum::extract::Request,
    options: StreamOptions,
    who: String,
    what: String,
) -> Response {
    // Nothing is started at the edge for a request whose upgrade would be refused.
    if let Err(refusal) = remote::check_command_upgrade(request.headers()) {
        return refusal;
    }
    let Ok(req) = http::Request::post(uri).body(()) else {
        return api_error(StatusCode::BAD_REQUEST, "BadRequest", "malformed request");
    };
    let (answer, send) = match tunnels.request(node, req, false).await {
        Ok(pair) => pair,
        Err(e) => return tunnel_error(&e),
    };
    if answer.status() != StatusCode::OK {
        return relay(answer);
    }
    let Some(send) = send else {
        return api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "no stream",
        );
    };
    let (response, pending) = match remote::accept_command(request, options) {
        Ok(pair) => pair,
        Err(refusal) => return refusal,
    };
    let recv = answer.into_body();
    let node = node.to_owned();
    tokio::spawn(async move {
        let began = Instant::now();
        let client = match pending.await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(user = %who, session = %what, node, error = %e, "pod stream: upgrade failed");
                return;
            }
        };
        tracing::info!(user = %who, session = %what, node, "pod stream started");
        let Duplex { tx, rx } = client;
        let inbound = tokio::spawn(tunnel::frames_in(recv, tx));
        tunnel::frames_out(rx, send).await;
        let _ = inbound.await;
        tracing::info!(user = %who, session = %what, node,
            seconds = began.elapsed().as_secs_f64(), "pod stream ended");
    });
    response
}

/// A port-forward session: each of the client's connections becomes a tunnel stream to the
/// pod's port. Logged with `who`.
pub(crate) fn bridge_port_forward(
    tunnels: &Tunnels,
    node: &str,
    ns: &str,
    name: &str,
    request: axum::extract::Request,
    who: String,
) -> Response {
    let (response, pending) = match remote::accept_port_forward(request) {
        Ok(pair) => pair,
        Err(refusal) => return refusal,
    };
    let what = format!("portforward {ns}/{name}");
    let (tunnels, node, ns, name) = (
        tunnels.clone(),
        node.to_owned(),
        ns.to_owned(),
        name.to_owned(),
    );
    tokio::spawn(async move {
        let began = Instant::now();
        let mut conns = match pending.await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(user = %who, session = %what, node, error = %e, "pod stream: upgrade failed");
                return;
            }
        };
        tracing::info!(user = %who, session = %what, node, "pod stream started");
        while let Some(conn) = conns.recv().await {
            let tunnels = tunnels.clone();
            let (node, ns, name) = (node.clone(), ns.clone(), name.clone());
            tokio::spawn(forward(tunnels, node, ns, name, conn));
        }
        tracing::info!(user = %who, session = %what, node,
            seconds = began.elapsed().as_secs_f64(), "pod stream ended");
    });
    response
}

/// One forwarded connection: a tunnel stream to the pod's port, bytes both ways.
async fn forward(
    tunnels: Tunnels,
    node: String,
    ns: String,
    name: String,
    conn: remote::ForwardedConnection,
) {
    let remote::ForwardedConnection { port, data, error } = conn;
    let report = |message: String| {
        let error = error.clone();
        async move {
            if let Some(e) = error {
                let _ = e.send(Bytes::from(message)).await;
                let _ = e.finish().await;
            }
        }
    };
    let uri = format!("/portForward/{ns}/{name}?port={port}");
    let Ok(req) = http::Request::post(uri).body(()) else {
        return;
    };
    let (answer, send) = match tunnels.request(&node, req, false).await {
        Ok(pair) => pair,
        Err(e) => {
            report(e.to_string()).await;
            data.writer().reset().await;
            return;
        }
    };
    if answer.status() != StatusCode::OK {
        let mut body = answer.into_body();
        let mut text = Vec::new();
        while let Some(Ok(b)) = tunnel::recv(&mut body).await {
            text.extend_from_slice(&b);
        }
        let message = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|s| s["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
        report(format!(
            "error forwarding port {port} to pod {ns}/{name}: {message}"
        ))
        .await;
        data.writer().reset().await;
        return;
    }
    let Some(mut send) = send else { return };
    let writer = data.writer();
    let mut recv = answer.into_body();
    let outbound = tokio::spawn(async move {
        while let Some(Ok(b)) = tunnel::recv(&mut recv).await {
            if writer.send(b).await.is_err() {
                return;
            }
        }
        let _ = writer.finish().await;
    });
    let mut data = data;
    while let Some(b) = data.recv().await {
        if tunnel::send(&mut send, b).await.is_err() {
            break;
        }
    }
    let _ = send.send_data(Bytes::new(), true);
    let _ = outbound.await;
    if let Some(e) = error {
        let _ = e.finish().await;
    }
}

/// The resource metrics API (`kubectl top`) from the edges' `/stats/summary`, asked through
/// their tunnels when a client asks (no polling in between).
#[derive(Debug, Clone)]
pub struct CloudMetrics {
    tunnels: Tunnels,
}

impl CloudMetrics {
    /// Through `tunnels`.
    pub fn new(tunnels: Tunnels) -> CloudMetrics {
        CloudMetrics { tunnels }
    }

    /// Each connected node's summary, with the node's name (as its tunnel is registered, not as
    /// the summary says).
    async fn summaries(&self) -> Vec<(String, Value)> {
        let asks = self.tunnels.nodes().into_iter().map(|node| {
            let tunnels = self.tunnels.clone();
            async move {
                let req = http::Request::get("/stats/summary").body(()).ok()?;
                let (answer, _) = tunnels.request(&node, req, true).await.ok()?;
                if answer.status() != StatusCode::OK {
                    return None;
                }
                let mut body = answer.into_body();
                let mut bytes = Vec::new();
                let read = async {
                    while let Some(Ok(b)) = tunnel::recv(&mut body).await {
                        bytes.extend_from_slice(&b);
                        if bytes.len() > 16 << 20 {
                            return false;
                        }
                    }
                    true
                };
                if !tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .unwrap_or(false)
                {
                    return None;
                }
                serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .map(|summary| (node, summary))
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

fn usage(v: &Value) -> Value {
    let cpu = v["cpu"]["usageNanoCores"].as_u64().unwrap_or(0);
    let memory = v["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    serde_json::json!({"cpu": format!("{cpu}n"), "memory": format!("{}Ki", memory / 1024)})
}

impl kubeedge_core::kubeapi::MetricsSource for CloudMetrics {
    fn nodes(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Value>> + Send>> {
        let this = self.clone();
        Box::pin(async move {
            this.summaries()
                .await
                .iter()
                .map(|(node, s)| {
                    let n = &s["node"];
                    let time = n["cpu"]["time"].clone();
                    serde_json::json!({"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                        "metadata": {"name": node, "creationTimestamp": time},
                        "timestamp": time, "window": "1s", "usage": usage(n)})
                })
                .collect()
        })
    }

    fn pods(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, Value)>> + Send>> {
        let this = self.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            for (node, s) in this.summaries().await {
                for p in s["pods"].as_array().into_iter().flatten() {
                    let (ns, name) = (
                        p["podRef"]["namespace"].as_str().unwrap_or(""),
                        p["podRef"]["name"].as_str().unwrap_or(""),
                    );
                    let time = p["cpu"]["time"].clone();
                    let containers: Vec<Value> = p["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| serde_json::json!({"name": c["name"], "usage": usage(c)}))
                        .collect();
                    out.push((node.clone(), serde_json::json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                        "metadata": {"name": name, "namespace": ns, "creationTimestamp": time},
                        "timestamp": time, "window": "1s", "containers": containers})));
                }
            }
            out
        })
    }
}
