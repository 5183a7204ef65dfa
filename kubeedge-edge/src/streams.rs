//! The edge's end of the stream tunnel (see [`kubeedge_core::streaming::tunnel`]): edgecore dials
//! cloudhub's HTTPS port with the node certificate, upgrades the connection, and serves the
//! cloud's HTTP/2 requests for this node's pods: logs (from the runtime's log files), `exec` and
//! `attach` (CRI streaming for containerd, a process with pipes or a terminal for the process
//! runtime) and port-forward (a TCP connection to the pod's address). It reconnects like
//! edgehub, with a jittered backoff. Nothing listens at the edge.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kubeedge_core::kubeapi::Api;
use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::StreamOptions;
use kubeedge_core::streaming::tunnel::{
    self, CONNECTION_WINDOW, STREAM_WINDOW, TUNNEL_PATH, TUNNEL_UPGRADE,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::edgehub::EdgeHub;
use crate::runtime::{ContainerState, Runtime, RuntimeError, Usage};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the tunnel needs of the pod runtime (object-safe).
trait PodRuntime: Send + Sync {
    fn container(&self, uid: String, name: String) -> BoxFuture<Result<String, String>>;
    fn exec(
        &self,
        id: String,
        cmd: Vec<String>,
        o: StreamOptions,
    ) -> BoxFuture<Result<Duplex, RuntimeError>>;
    fn attach(&self, id: String, o: StreamOptions) -> BoxFuture<Result<Duplex, RuntimeError>>;
    fn forward_url(&self, uid: String) -> BoxFuture<Result<Option<String>, String>>;
    fn usage(&self, uid: String) -> BoxFuture<Vec<(String, Usage)>>;
}

impl<R: Runtime + Clone> PodRuntime for R {
    fn container(&self, uid: String, name: String) -> BoxFuture<Result<String, String>> {
        let rt = self.clone();
        Box::pin(async move {
            let sandboxes = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
            let mut best: Option<(u32, String)> = None;
            for s in sandboxes
                .iter()
                .filter(|s| s.labels.get(crate::pods::UID_LABEL) == Some(&uid))
            {
                for c in rt.list_containers(&s.id).await.map_err(|e| e.to_string())? {
                    let running = matches!(
                        rt.container_state(&c.id).await,
                        Ok(ContainerState::Running { .. })
                    );
                    if c.name == name && running && best.as_ref().is_none_or(|b| b.0 <= c.attempt) {
                        best = Some((c.attempt, c.id));
                    }
                }
            }
            best.map(|b| b.1)
                .ok_or_else(|| format!("container {name} is not running"))
        })
    }

    fn exec(
        &self,
        id: String,
        cmd: Vec<String>,
        o: StreamOptions,
    ) -> BoxFuture<Result<Duplex, RuntimeError>> {
        let rt = self.clone();
        Box::pin(async move { rt.exec_stream(&id, &cmd, o).await })
    }

    fn attach(&self, id: String, o: StreamOptions) -> BoxFuture<Result<Duplex, RuntimeError>> {
        let rt = self.clone();
        Box::pin(async move { rt.attach_stream(&id, o).await })
    }

    fn usage(&self, uid: String) -> BoxFuture<Vec<(String, Usage)>> {
        let rt = self.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            let sandboxes = rt.list_sandboxes().await.unwrap_or_default();
            for s in sandboxes
                .iter()
                .filter(|s| s.ready && s.labels.get(crate::pods::UID_LABEL) == Some(&uid))
            {
                for c in rt.list_containers(&s.id).await.unwrap_or_default() {
                    if !matches!(c.state, ContainerState::Running { .. }) {
                        continue;
                    }
                    if let Ok(u) = rt.container_usage(&c.id).await {
                        out.push((c.name, u));
                    }
                }
            }
            out
        })
    }

    fn forward_url(&self, uid: String) -> BoxFuture<Result<Option<String>, String>> {
        let rt = self.clone();
        Box::pin(async move {
            let sandboxes = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
            let Some(sandbox) = sandboxes
                .iter()
                .find(|s| s.ready && s.labels.get(crate::pods::UID_LABEL) == Some(&uid))
            else {
                return Err("the pod's sandbox is not running".into());
            };
            rt.port_forward_url(&sandbox.id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Serves the tunnel's requests for one node.
#[derive(Clone)]
pub struct StreamServer {
    node: String,
    api: Api,
    hub: EdgeHub,
    data_dir: PathBuf,
    runtime: Option<Arc<dyn PodRuntime>>,
    /// The CPU counters of the last summary, to give rates: key → (when, CPU nanoseconds).
    samples: Arc<std::sync::Mutex<HashMap<String, (Instant, u64)>>>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// For `node`'s pods as `api` (the metastore's) holds them, with logs under `data_dir`.
    pub fn new(node: &str, api: Api, hub: EdgeHub, data_dir: PathBuf) -> StreamServer {
        StreamServer {
            node: node.to_owned(),
            api,
            hub,
            data_dir,
            runtime: None,
            samples: Arc::default(),
        }
    }

    /// Runs `exec` and `attach` on `runtime`.
    pub fn with_runtime<R: Runtime + Clone>(mut self, runtime: R) -> StreamServer {
        self.runtime = Some(Arc::new(runtime));
        self
    }

    async fn handle(
        self,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let parts: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let body = req.into_body();
        let result = match parts.as_slice() {
            ["containerLogs", ns, pod, container] => {
                self.logs(ns, pod, container, &query, &mut respond).await
            }
            ["exec", ns, pod, container] => {
                let cmd = query_values(&query, "command");
                let o = StreamOptions::from_query(&query);
                self.command(ns, pod, container, Some(cmd), o, body, &mut respond)
                    .await
            }
            ["attach", ns, pod, container] => {
                let o = StreamOptions::from_query(&query);
                self.command(ns, pod, container, None, o, body, &mut respond)
                    .await
            }
            ["portForward", ns, pod] => {
                let port = query_values(&query, "port")
                    .first()
                    .and_then(|p| p.parse::<u16>().ok());
                match port {
                    Some(port) => self.port_forward(ns, pod, port, body, &mut respond).await,
                    None => Err((StatusCode::BAD_REQUEST, "a port is required".to_owned())),
                }
            }
            ["stats", "summary"] => {
                let summary = self.summary().await;
                reply(
                    &mut respond,
                    StatusCode::OK,
                    "application/json",
                    summary.to_string(),
                );
                Ok(())
            }
            ["metrics", "resource"] => {
                let summary = self.summary().await;
                reply(
                    &mut respond,
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    resource_metrics(&summary),
                );
                Ok(())
            }
            _ => Err((StatusCode::NOT_FOUND, format!("{path} is not served"))),
        };
        if let Err((code, message)) = result {
            refuse(&mut respond, code, &message);
        }
    }

    fn own_pod(&self, ns: &str, name: &str) -> Result<Value, (StatusCode, String)> {
        let pod = self
            .api
            .store()
            .get("pods", Some(ns), name)
            .map_err(|_| (StatusCode::NOT_FOUND, format!("pods \"{name}\" not found")))?;
        if pod["spec"]["nodeName"].as_str() != Some(self.node.as_str()) {
            return Err((
                StatusCode::FORBIDDEN,
                format!("pod {ns}/{name} does not run on node {}", self.node),
            ));
        }
        Ok(pod)
    }

    async fn logs(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        query: &str,
        respond: &mut h2::server::SendResponse<Bytes>,
    ) -> Result<(), (StatusCode, String)> {
        self.own_pod(ns, pod)?;
        let node = crate::metaserver::Node {
            node: self.node.clone(),
            hub: self.hub.clone(),
            data_dir: self.data_dir.clone(),
        };
        let query = format!("{query}&container={container}");
        let answer = crate::metaserver::pod_log(&self.api, &node, ns, pod, &query).await;
        let (parts, body) = answer.into_parts();
        let mut head = Response::builder().status(parts.status);
        for (k, v) in &parts.headers {
            head = head.header(k, v);
        }
        let head = head
            .body(())
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let Ok(mut send) = respond.send_response(head, false) else {
            return Ok(());
        };
        use futures_util::StreamExt;
        use futures_util::future::Either;
        let mut stream = body.into_data_stream();
        loop {
            // A followed log waits for more; the cloud's reset (its client went away) ends it.
            let chunk = {
                let next = stream.next();
                let reset = std::future::poll_fn(|cx| send.poll_reset(cx));
                futures_util::pin_mut!(next, reset);
                match futures_util::future::select(next, reset).await {
                    Either::Left((chunk, _)) => chunk,
                    Either::Right(_) => None,
                }
            };
            let Some(Ok(chunk)) = chunk else { break };
            if tunnel::send(&mut send, chunk).await.is_err() {
                return Ok(());
            }
        }
        let _ = send.send_data(Bytes::new(), true);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn command(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        cmd: Option<Vec<String>>,
        o: StreamOptions,
        body: h2::RecvStream,
        respond: &mut h2::server::SendResponse<Bytes>,
    ) -> Result<(), (StatusCode, String)> {
        let p = self.own_pod(ns, pod)?;
        let Some(rt) = &self.runtime else {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                format!("node {} runs no pods (no runtime)", self.node),
            ));
        };
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        let id = rt
            .container(uid, container.to_owned())
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let session = match cmd {
            Some(cmd) if cmd.is_empty() => {
                return Err((StatusCode::BAD_REQUEST, "no command given".into()));
            }
            Some(cmd) => rt.exec(id, cmd, o).await,
            None => rt.attach(id, o).await,
        }
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let send = accept(respond)?;
        let Duplex { tx, rx } = session;
        tokio::spawn(tunnel::frames_in(body, tx));
        tunnel::frames_out(rx, send).await;
        Ok(())
    }

    async fn port_forward(
        &self,
        ns: &str,
        pod: &str,
        port: u16,
        body: h2::RecvStream,
        respond: &mut h2::server::SendResponse<Bytes>,
    ) -> Result<(), (StatusCode, String)> {
        let p = self.own_pod(ns, pod)?;
        if let Some(rt) = &self.runtime {
            let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            let url = rt
                .forward_url(uid)
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, e))?;
            if let Some(url) = url {
                return self.forward_cri(&url, port, body, respond).await;
            }
        }
        let host_network = p["spec"]["hostNetwork"].as_bool().unwrap_or(false);
        let ip = match p["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) {
            _ if host_network => "127.0.0.1".to_owned(),
            Some(ip) => ip.to_owned(),
            // Never the node's own loopback for a pod that has no address yet.
            None => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("pod {ns}/{pod} has no IP address yet"),
                ));
            }
        };
        let addr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| {
            (
                StatusCode::BAD_GATEWAY,
                format!("dial tcp {addr}: timed out"),
            )
        })?
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("dial tcp {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let send = accept(respond)?;
        let (r, w) = tcp.into_split();
        tokio::spawn(tunnel::copy_in(body, w));
        tunnel::copy_out(r, send).await;
        Ok(())
    }
}

impl StreamServer {
    /// Port-forward through the runtime's streaming server (into the pod's network namespace).
    async fn forward_cri(
        &self,
        url: &str,
        port: u16,
        mut body: h2::RecvStream,
        respond: &mut h2::server::SendResponse<Bytes>,
    ) -> Result<(), (StatusCode, String)> {
        let (conn, mut data, mut error) =
            kubeedge_core::streaming::remote::dial_port_forward(url, port)
                .await
                .map_err(|e| (StatusCode::BAD_GATEWAY, kubeedge_core::error_chain(&e)))?;
        let mut send = accept(respond)?;
        let writer = data.writer();
        let inbound = tokio::spawn(async move {
            while let Some(Ok(b)) = tunnel::recv(&mut body).await {
                if writer.send(b).await.is_err() {
                    return;
                }
            }
            let _ = writer.finish().await;
        });
        let errors = tokio::spawn(async move {
            let mut text = Vec::new();
            while let Some(b) = error.recv().await {
                text.extend_from_slice(&b);
            }
            text
        });
        while let Some(b) = data.recv().await {
            if tunnel::send(&mut send, b).await.is_err() {
                break;
            }
        }
        let _ = send.send_data(Bytes::new(), true);
        inbound.abort();
        if let Ok(text) = errors.await
            && !text.is_empty()
        {
            tracing::info!(error = %String::from_utf8_lossy(&text), "port-forward: the runtime reported");
        }
        conn.shutdown().await;
        Ok(())
    }
}

/// Answers 200 and gives the response body to stream into.
fn accept(
    respond: &mut h2::server::SendResponse<Bytes>,
) -> Result<h2::SendStream<Bytes>, (StatusCode, String)> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let head = Response::builder()
        .status(StatusCode::OK)
        .body(())
        .map_err(|e| internal(e.to_string()))?;
    respond
        .send_response(head, false)
        .map_err(|e| internal(e.to_string()))
}

/// A whole answer (h2 buffers the body; these are small).
fn reply(
    respond: &mut h2::server::SendResponse<Bytes>,
    code: StatusCode,
    content_type: &str,
    body: String,
) {
    let Ok(head) = Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(())
    else {
        return;
    };
    if let Ok(mut send) = respond.send_response(head, false) {
        let _ = send.send_data(Bytes::from(body), true);
    }
}

/// The node's CPU time (nanoseconds, all CPUs) and memory (working set, available), from /proc.
fn node_usage() -> (u64, u64, u64) {
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: u64 = stat
        .lines()
        .next()
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system (idle iowait) irq softirq steal
            [0usize, 1, 2, 5, 6, 7]
                .iter()
                .filter_map(|i| f.get(*i))
                .sum::<u64>()
        })
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let (total, available) = (kb("MemTotal:"), kb("MemAvailable:"));
    (
        cpu * 1_000_000_000 / ticks,
        total.saturating_sub(available),
        available,
    )
}

fn rfc3339_now() -> String {
    format!(
        "{}Z",
        crate::logs::since_seconds(std::time::SystemTime::now(), 0)
    )
}

impl StreamServer {
    /// CPU rate (nanocores) of `key` from `cpu` now against its previous sample.
    fn rate(&self, key: &str, now: Instant, cpu: u64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(then, before)) = samples.get(key) else {
            samples.insert(key.to_owned(), (now, cpu));
            return None;
        };
        let dt = now.duration_since(then).as_nanos() as u64;
        // Summaries asked close together share the baseline instead of resetting it.
        if dt >= 1_000_000_000 {
            samples.insert(key.to_owned(), (now, cpu));
        }
        (dt >= 100_000_000).then(|| cpu.saturating_sub(before) * 1_000_000_000 / dt)
    }

    /// The kubelet's `/stats/summary` (node, and each pod and container: CPU and memory).
    async fn summary(&self) -> Value {
        // The first summary (or one after a long pause) samples twice, a second apart.
        let stale = {
            let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples
                .get("")
                .is_none_or(|(t, _)| t.elapsed() > Duration::from_secs(120))
        };
        if stale {
            let _ = self.collect().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.collect().await
    }

    async fn collect(&self) -> Value {
        let now = Instant::now();
        let time = rfc3339_now();
        let (cpu, working, available) = node_usage();
        let cpu_json = |rate: Option<u64>, total: u64| {
            let mut v = json!({"time": time, "usageCoreNanoSeconds": total});
            if let Some(r) = rate {
                v["usageNanoCores"] = json!(r);
            }
            v
        };
        let node = json!({
            "nodeName": self.node,
            "startTime": time,
            "cpu": cpu_json(self.rate("", now, cpu), cpu),
            "memory": {"time": time, "workingSetBytes": working, "usageBytes": working,
                       "availableBytes": available},
        });
        let mut pods = Vec::new();
        if let Some(rt) = &self.runtime {
            let fields =
                kubeedge_core::store::FieldSelector::parse(&format!("spec.nodeName={}", self.node));
            let bound = match fields {
                Ok(f) => self
                    .api
                    .store()
                    .list("pods", None, &Default::default(), &f)
                    .map(|(items, _)| items)
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            for pod in bound {
                let meta = &pod["metadata"];
                let (ns, name) = (
                    meta["namespace"].as_str().unwrap_or(""),
                    meta["name"].as_str().unwrap_or(""),
                );
                let uid = meta["uid"].as_str().unwrap_or("").to_owned();
                let used = rt.usage(uid.clone()).await;
                if used.is_empty() {
                    continue;
                }
                let mut containers = Vec::new();
                let (mut pod_cpu, mut pod_mem) = (0u64, 0u64);
                let mut pod_rate: Option<u64> = Some(0);
                for (container, u) in &used {
                    let rate = self.rate(&format!("{uid}/{container}"), now, u.cpu_nanos);
                    pod_rate = pod_rate.zip(rate).map(|(a, b)| a + b);
                    pod_cpu += u.cpu_nanos;
                    pod_mem += u.memory_bytes;
                    containers.push(json!({"name": container, "startTime": time,
                        "cpu": cpu_json(rate, u.cpu_nanos),
                        "memory": {"time": time, "workingSetBytes": u.memory_bytes, "usageBytes": u.memory_bytes}}));
                }
                pods.push(json!({
                    "podRef": {"name": name, "namespace": ns, "uid": uid},
                    "startTime": time,
                    "containers": containers,
                    "cpu": cpu_json(pod_rate, pod_cpu),
                    "memory": {"time": time, "workingSetBytes": pod_mem, "usageBytes": pod_mem},
                }));
            }
        }
        // Counters of pods that are gone are dropped.
        {
            let seen: std::collections::HashSet<String> = pods
                .iter()
                .filter_map(|p| p["podRef"]["uid"].as_str().map(str::to_owned))
                .collect();
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.retain(|k, _| {
                k.is_empty() || k.split('/').next().is_some_and(|uid| seen.contains(uid))
            });
        }
        json!({"node": node, "pods": pods})
    }
}

/// The kubelet's `/metrics/resource` (Prometheus text) from a summary.
fn resource_metrics(summary: &Value) -> String {
    let mut out = String::new();
    let n = &summary["node"];
    let secs = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e9;
    out.push_str("# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
    out.push_str(&format!(
        "node_cpu_usage_seconds_total {}\n",
        secs(&n["cpu"]["usageCoreNanoSeconds"])
    ));
    out.push_str("# HELP node_memory_working_set_bytes Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
    out.push_str(&format!(
        "node_memory_working_set_bytes {}\n",
        n["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
    ));
    let pods = summary["pods"].as_array().cloned().unwrap_or_default();
    let mut cpu = String::new();
    let mut mem = String::new();
    let mut pod_cpu = String::new();
    let mut pod_mem = String::new();
    for p in &pods {
        let (ns, name) = (
            p["podRef"]["namespace"].as_str().unwrap_or(""),
            p["podRef"]["name"].as_str().unwrap_or(""),
        );
        pod_cpu.push_str(&format!(
            "pod_cpu_usage_seconds_total{{namespace=\"{ns}\",pod=\"{name}\"}} {}\n",
            secs(&p["cpu"]["usageCoreNanoSeconds"])
        ));
        pod_mem.push_str(&format!(
            "pod_memory_working_set_bytes{{namespace=\"{ns}\",pod=\"{name}\"}} {}\n",
            p["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
        ));
        for c in p["containers"].as_array().into_iter().flatten() {
            let cn = c["name"].as_str().unwrap_or("");
            cpu.push_str(&format!(
                "container_cpu_usage_seconds_total{{container=\"{cn}\",namespace=\"{ns}\",pod=\"{name}\"}} {}\n",
                secs(&c["cpu"]["usageCoreNanoSeconds"])
            ));
            mem.push_str(&format!(
                "container_memory_working_set_bytes{{container=\"{cn}\",namespace=\"{ns}\",pod=\"{name}\"}} {}\n",
                c["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
            ));
        }
    }
    for (name, kind, help, body) in [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
            cpu,
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
            mem,
        ),
        (
            "pod_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the pod in core-seconds",
            pod_cpu,
        ),
        (
            "pod_memory_working_set_bytes",
            "gauge",
            "Current working set of the pod in bytes",
            pod_mem,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{body}"
        ));
    }
    out
}

fn refuse(respond: &mut h2::server::SendResponse<Bytes>, code: StatusCode, message: &str) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "code": code.as_u16()});
    reply(respond, code, "application/json", status.to_string());
}

/// The values of `key` in a query string, percent-decoded.
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the edge reaches the cloud's tunnel endpoint.
#[derive(Clone)]
pub struct TunnelConfig {
    /// This node.
    pub node: String,
    /// cloudhub's HTTPS server, `https://host:port`.
    pub https_url: String,
    /// TLS with the node certificate (as for edgehub).
    pub tls: Arc<rustls::ClientConfig>,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("node", &self.node)
            .field("https_url", &self.https_url)
            .finish_non_exhaustive()
    }
}

/// Keeps the tunnel open, forever: connects, serves until the connection ends, waits (1 s
/// doubling to `backoff_max`, jittered; back to 1 s after a connection that lasted a minute),
/// and connects again.
pub async fn run(config: TunnelConfig, server: StreamServer) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let began = Instant::now();
        match serve_once(&config, &server).await {
            Ok(()) => tracing::info!(node = %config.node, "stream tunnel closed by the cloud"),
            Err(e) => tracing::info!(node = %config.node, error = %e, "stream tunnel down"),
        }
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        let jitter = 0.5 + (began.elapsed().subsec_nanos() % 1000) as f64 / 1000.0;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(config.backoff_max.max(Duration::from_secs(1)));
    }
}

async fn serve_once(config: &TunnelConfig, server: &StreamServer) -> Result<(), String> {
    let authority = config
        .https_url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{} is not an https:// URL", config.https_url))?
        .trim_end_matches('/');
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| format!("connecting to {authority}: timed out"))?
    .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // A dead link is noticed within a minute even when nothing is sent.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(20))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("server name {host}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(config.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {authority}: {e}"))?;
    let request = format!(
        "GET {TUNNEL_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: {TUNNEL_UPGRADE}\r\nNodeName: {}\r\n\r\n",
        config.node
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the upgrade: {e}"))?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let head = tunnel::read_head(&mut tls).await?;
    let status = head.lines().next().unwrap_or("").to_owned();
    if !status.contains(" 101 ") {
        let reason = head.split("\r\n\r\n").nth(1).unwrap_or("");
        return Err(format!("the cloud refused the tunnel: {status} {reason}"));
    }
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(1024)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tracing::info!(node = %config.node, cloud = %authority, "stream tunnel open");
    while let Some(next) = conn.accept().await {
        let (req, respond) = next.map_err(|e| format!("tunnel: {e}"))?;
        tokio::spawn(server.clone().handle(req, respond));
    }
    Ok(())
}
