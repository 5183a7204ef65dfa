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
//! Container logs are served too (`GET pods/<name>/log`, so `kubectl logs` works on the edge, also
//! offline): `container`, `previous`, `tailLines`, `timestamps`, `limitBytes` and `follow` (which
//! ends when the container restarts), read from the runtime's log files (see [`crate::logs`]).
//!
//! Every other write gets `403 Forbidden` with a `Status` saying why: the objects are the cloud's,
//! and a local change would be overwritten or, worse, silently diverge.

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use kubeedge_core::kubeapi::{Api, ApiError};
use kubeedge_core::message::Operation;
use serde_json::{Value, json};

use crate::edgehub::{EdgeHub, status_message};

/// Largest status write accepted (the API's own body limit applies first).
const MAX_STATUS_RESPONSE: usize = 8 << 20;

/// What the metaserver needs beyond the store: the node, its edgehub (status writes go to its
/// durable queue) and the data directory (container logs).
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's name.
    pub node: String,
    /// The link whose durable queue carries the writes to the cloud.
    pub hub: EdgeHub,
    /// edgecore's data directory (`pods/<uid>/logs/` holds container logs).
    pub data_dir: PathBuf,
}

/// The metaserver's routes: `api`'s, read-only except the node's own status, plus container logs,
/// when `node` is given (without it every write is refused and there are no logs).
pub fn router(api: &Api, status: Option<Node>) -> Router {
    api.router()
        .layer(middleware::from_fn_with_state((api.clone(), status), guard))
}

/// The paths the metaserver handles beyond the API's reads.
enum Target {
    PodStatus { namespace: String, name: String },
    NodeStatus { name: String },
    PodLog { namespace: String, name: String },
}

fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => Some(Target::PodStatus {
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => Some(Target::PodLog {
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        ["api", "v1", "nodes", name, "status"] => Some(Target::NodeStatus {
            name: (*name).to_owned(),
        }),
        _ => None,
    }
}

fn forbidden(message: String) -> Response {
    ApiError::with(403, "Forbidden", message).into_response()
}

async fn guard(
    State((api, status)): State<(Api, Option<Node>)>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let target = target(&path);
    if method == Method::GET
        && let Some(node) = &status
        && let Some(Target::PodLog { namespace, name }) = &target
    {
        return pod_log(
            &api,
            node,
            namespace,
            name,
            request.uri().query().unwrap_or(""),
        )
        .await;
    }
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let refused = || {
        forbidden(format!(
            "the edge metaserver is read-only except the node's own status: {method} {path} must go to the cloud"
        ))
    };
    let (Some(writes), Some(target)) = (&status, target) else {
        return refused();
    };
    if !matches!(method, Method::PUT | Method::PATCH) {
        return refused();
    }
    let (resource, key) = match &target {
        Target::PodLog { .. } => return refused(),
        Target::NodeStatus { name } => {
            if *name != writes.node {
                return forbidden(format!(
                    "node {} may not write the status of node {name}",
                    writes.node
                ));
            }
            ("nodepatch", format!("null/nodepatch/{name}"))
        }
        Target::PodStatus { namespace, name } => {
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
    let message = status_message(Operation::Patch, key, json!(patch.to_string()));
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

/// How many leading bytes of `bytes` are complete lines.
fn complete_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

fn bad_request(message: String) -> Response {
    ApiError::with(400, "BadRequest", message).into_response()
}

/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub(crate) async fn pod_log(
    api: &Api,
    node: &Node,
    namespace: &str,
    name: &str,
    query: &str,
) -> Response {
    let pod = match api.store().get("pods", Some(namespace), name) {
        Ok(p) => p,
        Err(_) => {
            return ApiError::with(404, "NotFound", format!("pods \"{name}\" not found"))
                .into_response();
        }
    };
    let mut options = crate::logs::LogOptions::default();
    let (mut container, mut follow) = (None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || v.parse::<usize>().ok();
        match k {
            "container" => container = Some(v.to_owned()),
            "previous" => options.previous = v == "true",
            "timestamps" => options.timestamps = v == "true",
            "follow" => follow = v == "true",
            "tailLines" => options.tail_lines = number(),
            "limitBytes" => options.limit_bytes = number(),
            "sinceSeconds" => {
                options.since = v
                    .parse()
                    .ok()
                    .map(|n| crate::logs::since_seconds(std::time::SystemTime::now(), n));
            }
            // `kubectl logs --since-time`: RFC 3339 in UTC (`%3A` as the query escapes it).
            "sinceTime" => {
                let t = v.replace("%3A", ":").replace("%3a", ":");
                if t.ends_with('Z') || t.ends_with("%2B00:00") {
                    options.since = t.get(..19).map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match (container, names.as_slice()) {
        (Some(c), _) if !c.is_empty() => c,
        (_, [only]) => (*only).to_owned(),
        _ => {
            return bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            ));
        }
    };
    if !names.contains(&container.as_str()) {
        return bad_request(format!("container {container} is not valid for pod {name}"));
    }
    if pod["spec"]["nodeName"].as_str() != Some(node.node.as_str()) {
        return bad_request(format!("pod {name} does not run on node {}", node.node));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let dir = node.data_dir.join("pods").join(uid).join("logs");
    let Some(file) = crate::logs::select(&dir, &container, &options) else {
        let which = if options.previous {
            "previous terminated"
        } else {
            ""
        };
        return bad_request(format!(
            "no {which} log of container \"{container}\" in pod \"{name}\" on this node yet"
        ));
    };
    let end = match tokio::fs::metadata(&file).await {
        Ok(m) => m.len(),
        Err(e) => {
            return ApiError::with(
                500,
                "InternalError",
                format!("reading {}: {e}", file.display()),
            )
            .into_response();
        }
    };
    // The log is read in chunks from where the selection starts, never whole: logs may be
    // far larger than the edge's memory.
    let start = match options.tail_lines {
        Some(n) => tail_start(&file, end, n).await,
        None => 0,
    };
    let follow = follow && !options.previous;
    let state = LogRead {
        file,
        dir,
        container,
        at: start,
        end,
        first: true,
        emitted: 0,
        options,
        follow,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), st))
    });
    let mut response = Response::new(Body::from_stream(stream));
    if let Ok(v) = "text/plain".parse() {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, v);
    }
    response
}

/// Bytes read per chunk of a log.
const LOG_CHUNK: u64 = 256 * 1024;

/// Where the last `n` lines of the first `end` bytes of `path` start (read backwards in chunks).
async fn tail_start(path: &std::path::Path, end: u64, n: usize) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    if n == 0 {
        return end;
    }
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return 0;
    };
    let mut pos = end;
    let mut newlines = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    // The last byte is a line's end unless the line is unfinished.
    let mut skip_last = true;
    while pos > 0 {
        let len = (pos.min(buf.len() as u64)) as usize;
        pos -= len as u64;
        if f.seek(std::io::SeekFrom::Start(pos)).await.is_err()
            || f.read_exact(&mut buf[..len]).await.is_err()
        {
            return 0;
        }
        for i in (0..len).rev() {
            if buf[i] != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return pos + i as u64 + 1;
            }
        }
    }
    0
}

/// A log being read for a client: the selected part in chunks, then (following) what is
/// appended, until the container runs again or the client goes away.
struct LogRead {
    file: PathBuf,
    dir: PathBuf,
    container: String,
    at: u64,
    end: u64,
    first: bool,
    emitted: usize,
    options: crate::logs::LogOptions,
    follow: bool,
    done: bool,
}

impl LogRead {
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.done {
                return None;
            }
            let limit = if self.follow {
                LOG_CHUNK
            } else if self.at < self.end {
                (self.end - self.at).min(LOG_CHUNK)
            } else {
                return None;
            };
            let bytes = read_range(&self.file, self.at, limit).await?;
            // A long line the runtime wrote as partial records (P…F) is rendered whole: the cut
            // goes before a trailing run of partial records, whose end comes with the next read.
            let lines = complete_lines(&bytes);
            let whole = crate::logs::before_partial_run(&bytes[..lines]);
            let complete = if whole == lines || whole > 0 {
                whole
            } else if bytes.len() as u64 >= LOG_CHUNK || !self.follow {
                // A run longer than a chunk, or the end of what was selected: as it is.
                lines
            } else {
                // Following: wait for the run's end.
                0
            };
            // An unfinished last line of what was selected is shown as it is (not when following:
            // it is shown once finished).
            let take =
                if complete == 0 && !self.follow && self.at + (bytes.len() as u64) >= self.end {
                    bytes.len()
                } else {
                    complete
                };
            if take == 0 {
                if !self.follow || bytes.len() as u64 >= LOG_CHUNK {
                    // A line longer than a chunk: give it as it is.
                    if !bytes.is_empty() {
                        self.at += bytes.len() as u64;
                        return self.render(&bytes);
                    }
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
                let latest = crate::logs::select(
                    &self.dir,
                    &self.container,
                    &crate::logs::LogOptions::default(),
                );
                if latest.as_ref() != Some(&self.file) {
                    return None;
                }
                continue;
            }
            self.at += take as u64;
            if let Some(out) = self.render(&bytes[..take]) {
                return Some(out);
            }
        }
    }

    /// Renders complete lines; `None` once the byte limit is reached.
    fn render(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let options = crate::logs::LogOptions {
            // The tail is where reading started; the limit applies across chunks.
            tail_lines: None,
            limit_bytes: None,
            previous: false,
            timestamps: self.options.timestamps,
            since: if self.first {
                self.options.since.clone()
            } else {
                None
            },
        };
        let mut out = crate::logs::render(bytes, &options);
        if let Some(limit) = self.options.limit_bytes {
            let room = limit.saturating_sub(self.emitted);
            if out.len() >= room {
                out.truncate(room);
                self.done = true;
            }
        }
        self.emitted += out.len();
        if self.at >= self.end {
            self.first = false;
        }
        if out.is_empty() && self.done {
            return None;
        }
        Some(out)
    }
}

/// Up to `len` bytes of `path` from offset `at`.
async fn read_range(path: &std::path::Path, at: u64, len: u64) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await.ok()?;
    f.seek(std::io::SeekFrom::Start(at)).await.ok()?;
    let mut out = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut out).await.ok()?;
    Some(out)
}
