//! The protocols kubectl speaks for `exec`, `attach` and `port-forward`, on both ends:
//!
//! * serving them (the API server's side): an HTTP/1.1 upgrade to WebSocket with the channel
//!   protocols `v5.channel.k8s.io` / `v4.channel.k8s.io` (kubectl 1.30+), to SPDY/3.1 with
//!   `X-Stream-Protocol-Version: v4.channel.k8s.io` (older kubectl, and any kubectl's fallback),
//!   and port-forward as `portforward.k8s.io` over SPDY, or SPDY tunnelled in WebSocket binary
//!   messages (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+);
//! * dialling them (the kubelet's side of a CRI runtime): SPDY to the streaming URL that a CRI
//!   `Exec` or `Attach` call answers.
//!
//! Each session is presented as a [`Duplex`] of channel [`Frame`]s, whatever the protocol.

// The refusals below are HTTP responses handed straight back to the server; boxing them buys
// nothing.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use super::channel::{self, CLOSE, Duplex, ERROR, Frame, RESIZE, STDERR, STDIN, STDOUT};
use super::spdy::{self, Role};

/// Why a pod stream could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The HTTP upgrade did not complete.
    #[error("upgrading the connection: {0}")]
    Upgrade(String),
    /// The peer did not open the streams the request asked for in time.
    #[error("the client did not open its streams within {0:?}")]
    StreamsTimeout(Duration),
    /// SPDY failed.
    #[error(transparent)]
    Spdy(#[from] spdy::SpdyError),
    /// Connecting to a streaming server failed.
    #[error("connecting to {url}: {message}")]
    Dial {
        /// Where.
        url: String,
        /// What happened.
        message: String,
    },
}

/// Which standard streams a command session has (the `stdin`, `stdout`, `stderr` and `tty` query
/// parameters of `exec` and `attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOptions {
    /// The client sends input.
    pub stdin: bool,
    /// The client wants output.
    pub stdout: bool,
    /// The client wants errors apart (never with a terminal).
    pub stderr: bool,
    /// A terminal: stdout and stderr are one, and the client sends its size.
    pub tty: bool,
}

impl StreamOptions {
    /// From a query string (`stdin=true&tty=1...`; absent means false, as kubectl sends them).
    pub fn from_query(query: &str) -> StreamOptions {
        let mut o = StreamOptions::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let on = matches!(v, "true" | "1" | "True");
            match k {
                "stdin" | "input" => o.stdin = on,
                "stdout" | "output" => o.stdout = on,
                "stderr" | "error" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if o.tty {
            o.stderr = false;
        }
        o
    }
}

/// A session that starts once the HTTP upgrade completes.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, StreamError>> + Send>>;

const WS_V5: &str = "v5.channel.k8s.io";
const WS_V4: &str = "v4.channel.k8s.io";
const SPDY_V4: &str = "v4.channel.k8s.io";
const PORT_FORWARD: &str = "portforward.k8s.io";
const WS_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// A plain-text refusal of an upgrade (kubectl shows the body).
pub fn refuse(code: StatusCode, message: &str) -> Response {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "code": code.as_u16(),
        "reason": if code == StatusCode::BAD_REQUEST { "BadRequest" } else { "InternalError" }});
    let mut r = Response::new(Body::from(status.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn switching(upgrade: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    r
}

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

fn upgraded(
    req: &mut Request,
) -> Pin<Box<dyn Future<Output = Result<Upgraded, StreamError>> + Send>> {
    let on = hyper::upgrade::on(req);
    Box::pin(async move {
        on.await
            .map(TokioIo::new)
            .map_err(|e| StreamError::Upgrade(e.to_string()))
    })
}

fn websocket_answer(req: &Request, protocol: &'static str) -> Result<Response, Response> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return Err(refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = switching("websocket");
    if let Ok(v) = HeaderValue::from_str(&accept) {
        r.headers_mut().insert("sec-websocket-accept", v);
    }
    r.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    Ok(r)
}

/// Answers an `exec` or `attach` upgrade: the response to send, and the client's session once
/// the connection is switched. An error response when no offered protocol is served.
pub fn accept_command(
    mut req: Request,
    options: StreamOptions,
) -> Result<(Response, Pending<Duplex>), Response> {
    match command_protocol(req.headers())? {
        CommandProtocol::WebSocket(protocol) => {
            let response = websocket_answer(&req, protocol)?;
            let io = upgraded(&mut req);
            let pending: Pending<Duplex> = Box::pin(async move {
                let ws =
                    WebSocketStream::from_raw_socket(io.await?, WsRole::Server, Some(ws_config()))
                        .await;
                Ok(websocket_command(ws, protocol == WS_V5))
            });
            Ok((response, pending))
        }
        CommandProtocol::Spdy => {
            let mut response = switching("SPDY/3.1");
            response.headers_mut().insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(SPDY_V4),
            );
            let io = upgraded(&mut req);
            let pending: Pending<Duplex> = Box::pin(async move {
                let (conn, incoming) = spdy::Connection::start(io.await?, Role::Server);
                spdy_command_server(conn, incoming, options).await
            });
            Ok((response, pending))
        }
    }
}

enum CommandProtocol {
    WebSocket(&'static str),
    Spdy,
}

/// Which protocol an `exec` or `attach` upgrade request gets, or the refusal: checked before
/// anything is started for it (see [`check_command_upgrade`]).
fn command_protocol(headers: &HeaderMap) -> Result<CommandProtocol, Response> {
    if is_websocket(headers) {
        let offered = header_list(headers, "sec-websocket-protocol");
        let protocol = if offered.iter().any(|p| p == WS_V5) {
            WS_V5
        } else if offered.iter().any(|p| p == WS_V4) {
            WS_V4
        } else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "none of the offered WebSocket protocols {offered:?} is served ({WS_V5}, {WS_V4})"
                ),
            ));
        };
        if headers.get("sec-websocket-key").is_none() {
            return Err(refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
        }
        return Ok(CommandProtocol::WebSocket(protocol));
    }
    if is_spdy(headers) {
        let offered = header_list(headers, "x-stream-protocol-version");
        if !offered.iter().any(|p| p == SPDY_V4) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!("none of the offered stream protocols {offered:?} is served ({SPDY_V4})"),
            ));
        }
        return Ok(CommandProtocol::Spdy);
    }
    Err(refuse(
        StatusCode::BAD_REQUEST,
        "upgrade to SPDY/3.1 or WebSocket is required",
    ))
}

/// The refusal [`accept_command`] would answer `headers` with, if any: for checking a request
/// before starting the command it asks for.
pub fn check_command_upgrade(headers: &HeaderMap) -> Result<(), Response> {
    command_protocol(headers).map(|_| ())
}

/// One forwarded connection of a port-forward session.
#[derive(Debug)]
pub struct ForwardedConnection {
    /// The pod's port.
    pub port: u16,
    /// The connection's bytes (both ways).
    pub data: spdy::Stream,
    /// Where errors are reported (text), if the client opened the error stream.
    pub error: Option<spdy::StreamWriter>,
}

/// Answers a `portforward` upgrade: the response, and the client's connections as they come.
pub fn accept_port_forward(
    mut req: Request,
) -> Result<(Response, Pending<mpsc::Receiver<ForwardedConnection>>), Response> {
    let headers = req.headers().clone();
    if is_websocket(&headers) {
        let offered = header_list(&headers, "sec-websocket-protocol");
        if !offered.iter().any(|p| p == WS_PORT_FORWARD) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "none of the offered WebSocket protocols {offered:?} is served ({WS_PORT_FORWARD})"
                ),
            ));
        }
        let response = websocket_answer(&req, WS_PORT_FORWARD)?;
        let io = upgraded(&mut req);
        let pending: Pending<_> = Box::pin(async move {
            let ws = WebSocketStream::from_raw_socket(io.await?, WsRole::Server, Some(ws_config()))
                .await;
            let (conn, incoming) = spdy::Connection::start(websocket_bytes(ws), Role::Server);
            Ok(port_forward_server(conn, incoming))
        });
        return Ok((response, pending));
    }
    if is_spdy(&headers) {
        let offered = header_list(&headers, "x-stream-protocol-version");
        if !offered.iter().any(|p| p == PORT_FORWARD) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "none of the offered stream protocols {offered:?} is served ({PORT_FORWARD})"
                ),
            ));
        }
        let mut response = switching("SPDY/3.1");
        response.headers_mut().insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(PORT_FORWARD),
        );
        let io = upgraded(&mut req);
        let pending: Pending<_> = Box::pin(async move {
            let (conn, incoming) = spdy::Connection::start(io.await?, Role::Server);
            Ok(port_forward_server(conn, incoming))
        });
        return Ok((response, pending));
    }
    Err(refuse(
        StatusCode::BAD_REQUEST,
        "upgrade to SPDY/3.1 or WebSocket is required",
    ))
}

/// Small buffers: an idle session holds little (tungstenite reads 128 KiB at a time by default).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(channel::MAX_FRAME + 1))
}

/// The WebSocket channel protocol: each binary message is a channel byte and data.
fn websocket_command<S>(ws: WebSocketStream<S>, v5: bool) -> Duplex
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = channel::duplex(16);
    let Duplex { tx, mut rx } = theirs;
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                WsMessage::Binary(b) if !b.is_empty() => {
                    let frame = Frame::new(b[0], b.slice(1..));
                    if frame.channel == CLOSE && !v5 {
                        continue;
                    }
                    if tx.send(frame).await.is_err() {
                        break;
                    }
                }
                WsMessage::Close(_) => break,
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let mut msg = Vec::with_capacity(1 + frame.data.len());
            msg.push(frame.channel);
            msg.extend_from_slice(&frame.data);
            if sink.send(WsMessage::Binary(msg.into())).await.is_err() {
                return;
            }
        }
        // A normal closure: client-go takes any other as an error.
        let _ = sink.send(WsMessage::Close(Some(normal_close()))).await;
        let _ = sink.close().await;
    });
    ours
}

fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

/// Waits for the streams a command session needs, by their `streamType` header.
async fn collect_streams(
    incoming: &mut mpsc::Receiver<spdy::Stream>,
    wanted: &[&str],
) -> Result<Vec<(String, spdy::Stream)>, StreamError> {
    let mut got: Vec<(String, spdy::Stream)> = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
    while !wanted.iter().all(|w| got.iter().any(|(t, _)| t == w)) {
        let stream = tokio::time::timeout_at(deadline, incoming.recv())
            .await
            .map_err(|_| StreamError::StreamsTimeout(STREAMS_TIMEOUT))?
            .ok_or(StreamError::Spdy(spdy::SpdyError::Closed))?;
        let kind = stream.header("streamtype").unwrap_or("").to_owned();
        if wanted.contains(&kind.as_str()) {
            got.push((kind, stream));
        } else {
            stream.writer().reset().await;
        }
    }
    Ok(got)
}

fn take(streams: &mut Vec<(String, spdy::Stream)>, kind: &str) -> Option<spdy::Stream> {
    let i = streams.iter().position(|(t, _)| t == kind)?;
    Some(streams.swap_remove(i).1)
}

/// Server side of a SPDY command session (v4 channel semantics).
async fn spdy_command_server(
    conn: spdy::Connection,
    mut incoming: mpsc::Receiver<spdy::Stream>,
    o: StreamOptions,
) -> Result<Duplex, StreamError> {
    let mut wanted = vec!["error"];
    if o.stdin {
        wanted.push("stdin");
    }
    if o.stdout {
        wanted.push("stdout");
    }
    if o.stderr {
        wanted.push("stderr");
    }
    if o.tty {
        wanted.push("resize");
    }
    let mut streams = collect_streams(&mut incoming, &wanted).await?;
    let (ours, theirs) = channel::duplex(16);
    let Duplex { tx, mut rx } = theirs;
    if let Some(mut stdin) = take(&mut streams, "stdin") {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(data) = stdin.recv().await {
                if tx.send(Frame::new(STDIN, data)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Frame::close(STDIN)).await;
        });
    }
    if let Some(mut resize) = take(&mut streams, "resize") {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(data) = resize.recv().await {
                for size in channel::terminal_sizes(&mut rest, &data) {
                    let json = serde_json::to_vec(&size).unwrap_or_default();
                    if tx.send(Frame::new(RESIZE, json)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let writers: Vec<(u8, spdy::StreamWriter)> =
        [("stdout", STDOUT), ("stderr", STDERR), ("error", ERROR)]
            .into_iter()
            .filter_map(|(kind, ch)| take(&mut streams, kind).map(|s| (ch, s.writer())))
            .collect();
    tokio::spawn(async move {
        // Streams opened later (none are expected) are refused. The client's side of the
        // session lasts as long as its connection: it ends when the connection does.
        let conn2 = conn.clone();
        let refuser = tokio::spawn(async move {
            let _client = tx;
            while let Some(s) = incoming.recv().await {
                s.writer().reset().await;
            }
        });
        while let Some(frame) = rx.recv().await {
            if let Some((_, w)) = writers.iter().find(|(ch, _)| *ch == frame.channel)
                && w.send(frame.data).await.is_err()
            {
                break;
            }
        }
        for (_, w) in &writers {
            let _ = w.finish().await;
        }
        conn2.shutdown().await;
        refuser.abort();
    });
    Ok(ours)
}

/// Pairs port-forward streams (`streamType` error and data, matched by `requestID`).
fn port_forward_server(
    conn: spdy::Connection,
    mut incoming: mpsc::Receiver<spdy::Stream>,
) -> mpsc::Receiver<ForwardedConnection> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut errors: std::collections::HashMap<String, spdy::StreamWriter> = Default::default();
        while let Some(stream) = incoming.recv().await {
            let request = stream.header("requestid").unwrap_or("").to_owned();
            let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
            match (stream.header("streamtype"), port) {
                (Some("error"), _) if errors.len() < 1000 => {
                    errors.insert(request, stream.writer());
                }
                (Some("data"), Some(port)) => {
                    let error = errors.remove(&request);
                    if tx
                        .send(ForwardedConnection {
                            port,
                            data: stream,
                            error,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                _ => stream.writer().reset().await,
            }
        }
        conn.shutdown().await;
    });
    rx
}

/// A byte stream carried in WebSocket binary messages (SPDY tunnelled through WebSocket).
fn websocket_bytes<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut theirs_r, mut theirs_w) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                WsMessage::Binary(b) if theirs_w.write_all(&b).await.is_err() => break,
                WsMessage::Close(_) => break,
                _ => {}
            }
        }
        let _ = theirs_w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match theirs_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = WsMessage::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(WsMessage::Close(Some(normal_close()))).await;
    });
    ours
}

/// Upgrades a connection to a CRI streaming URL to SPDY with stream protocol `protocol`.
async fn dial_spdy(url: &str, protocol: &str) -> Result<spdy::Connection, StreamError> {
    let dial = |message: String| StreamError::Dial {
        url: url.to_owned(),
        message,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| dial("only http:// streaming URLs are served".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| dial("timed out".into()))?
    .map_err(|e| dial(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| dial(e.to_string()))?;
    let head = super::tunnel::read_head(&mut tcp).await.map_err(dial)?;
    let status_line = head.lines().next().unwrap_or("");
    if !status_line.contains(" 101 ") {
        return Err(dial(format!("the upgrade was refused: {status_line}")));
    }
    let (conn, mut incoming) = spdy::Connection::start(tcp, Role::Client);
    // The server opens no streams of its own in these protocols.
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    Ok(conn)
}

/// Dials a CRI port-forward URL (as containerd answers `PortForward`) and opens one connection
/// to the pod's `port`: its data stream and its error stream (the runtime's text on failure).
pub async fn dial_port_forward(
    url: &str,
    port: u16,
) -> Result<(spdy::Connection, spdy::Stream, spdy::Stream), StreamError> {
    let conn = dial_spdy(url, PORT_FORWARD).await?;
    let headers = |kind: &str| {
        vec![
            ("streamType".to_owned(), kind.to_owned()),
            ("port".to_owned(), port.to_string()),
            ("requestID".to_owned(), "0".to_owned()),
        ]
    };
    let error = conn.open(headers("error")).await?;
    error.writer().finish().await?;
    let data = conn.open(headers("data")).await?;
    Ok((conn, data, error))
}

/// Dials a CRI streaming URL (`http://HOST:PORT/exec/TOKEN`, as containerd answers `Exec` and
/// `Attach`) with SPDY and runs the client side of a command session with `options`. The
/// returned duplex takes [`STDIN`], [`RESIZE`] and close frames and gives [`STDOUT`], [`STDERR`]
/// and, last, the outcome on [`ERROR`] (`Success` when the runtime reported nothing).
pub async fn dial_command(url: &str, options: StreamOptions) -> Result<Duplex, StreamError> {
    let conn = dial_spdy(url, SPDY_V4).await?;
    // The error stream always; the others as asked for.
    let open = |kind: &str, wanted: bool| {
        let conn = conn.clone();
        let headers = vec![("streamType".to_owned(), kind.to_owned())];
        async move {
            if wanted {
                conn.open(headers).await.map(Some)
            } else {
                Ok(None)
            }
        }
    };
    let mut error = open("error", true).await?.ok_or(spdy::SpdyError::Closed)?;
    let stdin = open("stdin", options.stdin).await?;
    let stdout = open("stdout", options.stdout).await?;
    let stderr = open("stderr", options.stderr).await?;
    let resize = open("resize", options.tty).await?;
    let (ours, theirs) = channel::duplex(16);
    let Duplex { tx, mut rx } = theirs;
    // Input: stdin data, its end, terminal sizes.
    let stdin_w = stdin.as_ref().map(spdy::Stream::writer);
    let input_conn = conn.clone();
    let resize_w = resize.as_ref().map(spdy::Stream::writer);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            match (f.channel, &stdin_w, &resize_w) {
                (STDIN, Some(w), _) if w.send(f.data.clone()).await.is_err() => return,
                (CLOSE, Some(w), _) if f.data.first() == Some(&STDIN) => {
                    let _ = w.finish().await;
                }
                (RESIZE, _, Some(w)) => {
                    let _ = w.send(f.data).await;
                }
                _ => {}
            }
        }
        // The client went away: so does the session.
        if let Some(w) = &stdin_w {
            let _ = w.finish().await;
        }
        input_conn.shutdown().await;
    });
    // Output: stdout and stderr as they come, then the outcome once both ended.
    tokio::spawn(async move {
        let mut pumps = Vec::new();
        for (s, ch) in [(stdout, STDOUT), (stderr, STDERR)] {
            if let Some(mut s) = s {
                let tx = tx.clone();
                pumps.push(tokio::spawn(async move {
                    while let Some(d) = s.recv().await {
                        if tx.send(Frame::new(ch, d)).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        }
        let mut status = Vec::new();
        while let Some(d) = error.recv().await {
            status.extend_from_slice(&d);
        }
        for p in pumps {
            let _ = p.await;
        }
        let outcome = if status.iter().all(u8::is_ascii_whitespace) {
            channel::exit_status(0).to_string().into_bytes()
        } else if serde_json::from_slice::<serde_json::Value>(&status).is_ok() {
            status
        } else {
            channel::failure_status(&String::from_utf8_lossy(&status))
                .to_string()
                .into_bytes()
        };
        let _ = tx.send(Frame::new(ERROR, outcome)).await;
        conn.shutdown().await;
    });
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_query() {
        let o = StreamOptions::from_query("command=sh&stdin=true&stdout=true&stderr=true&tty=true");
        assert_eq!(
            o,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert_eq!(
            StreamOptions::from_query("stdout=1"),
            StreamOptions {
                stdout: true,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn a_spdy_command_session_runs_between_client_and_server_ends() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server_conn, incoming) = spdy::Connection::start(b, Role::Server);
        let options = StreamOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let server = tokio::spawn(spdy_command_server(server_conn, incoming, options));
        let (client, _in) = spdy::Connection::start(a, Role::Client);
        let mut opened = Vec::new();
        for kind in ["error", "stdin", "stdout", "stderr"] {
            opened.push(
                client
                    .open(vec![("streamType".into(), kind.into())])
                    .await
                    .unwrap(),
            );
        }
        let mut session = server.await.unwrap().unwrap();
        opened[1]
            .writer()
            .send(Bytes::from_static(b"ping"))
            .await
            .unwrap();
        opened[1].writer().finish().await.unwrap();
        assert_eq!(
            session.rx.recv().await,
            Some(Frame::new(STDIN, &b"ping"[..]))
        );
        assert_eq!(session.rx.recv().await, Some(Frame::close(STDIN)));
        session
            .tx
            .send(Frame::new(STDOUT, &b"pong"[..]))
            .await
            .unwrap();
        session
            .tx
            .send(Frame::new(ERROR, channel::exit_status(3).to_string()))
            .await
            .unwrap();
        drop(session);
        assert_eq!(opened[2].recv().await.as_deref(), Some(&b"pong"[..]));
        let status: serde_json::Value =
            serde_json::from_slice(&opened[0].recv().await.unwrap()).unwrap();
        assert_eq!(channel::exit_code(&status), Some(3));
    }
}
