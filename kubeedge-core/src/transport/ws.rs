//! The WebSocket link over TLS, as upstream cloudhub and edgehub speak it.
//!
//! * The edge dials `wss://<cloud>/<projectID>/<nodeName>/events` with the upgrade headers
//!   `node_id`, `project_id` and `ConnectionUse: msg`; the server accepts any path and reads the
//!   headers case-insensitively (Go canonicalises them to `Node_id`, `Project_id`, `Connectionuse`).
//! * One JSON beehive message per data frame. We write text frames; we read text or binary.
//! * Frames above the configured maximum are refused before they are buffered whole
//!   ([`Error::FrameTooLarge`]).
//! * Our edge offers the sync extensions with [`SYNC_EXTENSION_HEADER`]; our server echoes it when it
//!   accepts. Upstream peers ignore it.
//!
//! Buffers are sized for many idle connections (4 KiB read buffer, no write buffer), which costs
//! ≈ 21 KB per idle TLS connection here instead of ≈ 135 KB with tungstenite's defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as Frame, protocol::WebSocketConfig};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};

use crate::message::{DecodeError, Message, names};
use crate::sync::{SYNC_EXTENSION_HEADER, SYNC_EXTENSION_VERSION};

/// Default largest frame accepted: 8 MiB (a large Secret or ConfigMap fits with room to spare).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Upgrade header carrying the node name.
pub const NODE_ID_HEADER: &str = "node_id";
/// Upgrade header carrying the project id.
pub const PROJECT_ID_HEADER: &str = "project_id";
/// Upgrade header selecting the connection mode; upstream cloudhub only serves `msg`.
pub const CONNECTION_USE_HEADER: &str = "ConnectionUse";

/// Transport errors. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (for example: no client certificate, one from another CA, a
    /// server certificate that does not match the dialled name).
    #[error("TLS handshake with {peer}")]
    Tls {
        /// The peer address.
        peer: String,
        /// The cause (a `rustls::Error` inside an `io::Error`).
        #[source]
        source: std::io::Error,
    },
    /// The WebSocket upgrade failed or was refused.
    #[error("WebSocket upgrade: {0}")]
    Upgrade(String),
    /// A required upgrade header is missing or wrong.
    #[error("upgrade header {header}: {problem}")]
    Header {
        /// The header name.
        header: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A frame exceeded the maximum size. The connection is unusable afterwards.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared or received size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A frame was not a beehive message. The connection stays usable.
    #[error("undecodable frame")]
    Decode(#[source] DecodeError),
    /// The WebSocket protocol failed.
    #[error("WebSocket")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// A step took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The URL could not be used.
    #[error("invalid URL {0:?}")]
    Url(String),
}

impl Error {
    pub(crate) fn from_ws(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                size,
                max_size,
            }) => Error::FrameTooLarge {
                size,
                max: max_size,
            },
            other => Error::WebSocket(Box::new(other)),
        }
    }
}

/// The read buffer is allocated whole for every connection's life: 1 KiB keeps an idle edge cheap
/// on a cloud holding tens of thousands (it reads from TLS's decrypted records, not the socket, so
/// a small buffer costs copies, not system calls; a long frame still grows it).
fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// Remote socket address.
    pub addr: SocketAddr,
    /// `node_id` from the upgrade request (server side) or the node we dialled as (client side).
    pub node_id: String,
    /// `project_id` from the upgrade request.
    pub project_id: String,
    /// Whether both sides agreed on the sync extensions.
    pub negotiated: bool,
    /// The peer's certificate chain (end entity first), as verified by TLS.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// One established link: send and receive beehive messages.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    max_frame: usize,
    peer: Peer,
}

impl Connection {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Sends one message as a text frame and flushes.
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        self.ws
            .send(Frame::text(message.to_json_string()))
            .await
            .map_err(Error::from_ws)
    }

    /// Receives the next message. `Ok(None)` when the peer closed the connection. A frame that is not
    /// a beehive message gives [`Error::Decode`] and the connection stays usable; any other error
    /// ends it.
    pub async fn recv(&mut self) -> Result<Option<Message>, Error> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(Error::from_ws(e)),
                Some(Ok(frame)) => {
                    if let Some(msg) = decode_frame(frame, self.max_frame)? {
                        return Ok(Some(msg));
                    }
                }
            }
        }
    }

    /// Closes the connection with a WebSocket close frame.
    pub async fn close(mut self) -> Result<(), Error> {
        self.ws.close(None).await.map_err(Error::from_ws)
    }

    pub(crate) fn into_parts(self) -> (WebSocketStream<TlsStream<TcpStream>>, usize, Peer) {
        (self.ws, self.max_frame, self.peer)
    }
}

/// Decodes a data frame; `Ok(None)` for control frames (tungstenite answers pings itself) and a close
/// frame (the stream ends right after it).
pub(crate) fn decode_frame(frame: Frame, max_frame: usize) -> Result<Option<Message>, Error> {
    let bytes: &[u8] = match &frame {
        Frame::Text(t) => t.as_bytes(),
        Frame::Binary(b) => b,
        Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_) | Frame::Frame(_) => return Ok(None),
    };
    Message::from_json(bytes, max_frame)
        .map(Some)
        .map_err(Error::Decode)
}

// === client ===

/// How the edge dials the cloud.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `wss://host:port` of cloudhub; the path `/<projectID>/<nodeName>/events` is added.
    pub url: String,
    /// This node's name (`node_id` header).
    pub node_id: String,
    /// Project id (`project_id` header). Default: upstream's default project id.
    pub project_id: String,
    /// TLS settings (see [`super::tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// Largest frame accepted. Default [`DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
    /// Offer the sync extensions. Default true.
    pub offer_extensions: bool,
    /// Limit for TCP connect, TLS and upgrade together. Default 30 s (upstream's handshake timeout).
    pub handshake_timeout: Duration,
    /// Local address to dial from (port chosen by the OS). Default: the OS picks. Many edges
    /// simulated on one machine spread over 127.0.0.0/8 this way, so ephemeral ports last.
    pub local_ip: Option<std::net::IpAddr>,
}

impl ClientConfig {
    /// Settings with defaults for `url`, `node_id` and `tls`.
    pub fn new(
        url: impl Into<String>,
        node_id: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        ClientConfig {
            url: url.into(),
            node_id: node_id.into(),
            project_id: names::DEFAULT_PROJECT_ID.into(),
            tls,
            max_frame: DEFAULT_MAX_FRAME,
            offer_extensions: true,
            handshake_timeout: Duration::from_secs(30),
            local_ip: None,
        }
    }
}

/// Dials cloudhub. See the module docs.
pub async fn connect(config: &ClientConfig) -> Result<Connection, Error> {
    tokio::time::timeout(config.handshake_timeout, connect_inner(config))
        .await
        .map_err(|_| Error::Timeout("connecting to cloudhub"))?
}

async fn connect_inner(config: &ClientConfig) -> Result<Connection, Error> {
    let rest = config
        .url
        .strip_prefix("wss://")
        .ok_or_else(|| Error::Url(config.url.clone()))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, _port) = split_host_port(authority).ok_or_else(|| Error::Url(config.url.clone()))?;
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|_| Error::Url(config.url.clone()))?;
    let io = |source| Error::Io {
        step: "connecting to cloudhub",
        source,
    };
    let tcp = match config.local_ip {
        None => TcpStream::connect(authority).await.map_err(io)?,
        Some(ip) => {
            let remote = tokio::net::lookup_host(authority)
                .await
                .map_err(io)?
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| Error::Url(config.url.clone()))?;
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(io)?;
            socket.bind(std::net::SocketAddr::new(ip, 0)).map_err(io)?;
            socket.connect(remote).await.map_err(io)?
        }
    };
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().map_err(|source| Error::Io {
        step: "reading the peer address",
        source,
    })?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|source| Error::Tls {
            peer: addr.to_string(),
            source,
        })?;
    let certificates = owned_chain(tls.get_ref().1.peer_certificates());

    let url = format!(
        "wss://{authority}/{}/{}/events",
        config.project_id, config.node_id
    );
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
        .map_err(|e| Error::Url(e.to_string()))?;
    let headers = request.headers_mut();
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| Error::Url(v.to_owned()));
    headers.insert(NODE_ID_HEADER, value(&config.node_id)?);
    headers.insert(PROJECT_ID_HEADER, value(&config.project_id)?);
    headers.insert(CONNECTION_USE_HEADER, HeaderValue::from_static("msg"));
    if config.offer_extensions {
        headers.insert(
            SYNC_EXTENSION_HEADER,
            HeaderValue::from_static(SYNC_EXTENSION_VERSION),
        );
    }
    let (ws, response) = tokio_tungstenite::client_async_with_config(
        request,
        TlsStream::Client(tls),
        Some(ws_config(config.max_frame)),
    )
    .await
    .map_err(|e| Error::Upgrade(e.to_string()))?;
    let negotiated = config.offer_extensions
        && response
            .headers()
            .get(SYNC_EXTENSION_HEADER)
            .is_some_and(|v| v.as_bytes() == SYNC_EXTENSION_VERSION.as_bytes());
    Ok(Connection {
        ws,
        max_frame: config.max_frame,
        peer: Peer {
            addr,
            node_id: config.node_id.clone(),
            project_id: config.project_id.clone(),
            negotiated,
            certificates,
        },
    })
}

fn owned_chain(certs: Option<&[CertificateDer<'_>]>) -> Vec<CertificateDer<'static>> {
    certs
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port));
    }
    authority.rsplit_once(':')
}

// === server ===

/// How cloudhub accepts edges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// TLS settings (see [`super::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Largest frame accepted. Default [`DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
    /// Accept the sync extensions when an edge offers them. Default true.
    pub accept_extensions: bool,
    /// Limit for TLS and upgrade together. Default 30 s.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Settings with defaults for `tls`.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        ServerConfig {
            tls,
            max_frame: DEFAULT_MAX_FRAME,
            accept_extensions: true,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Accepts one edge on a TCP stream from the listener: TLS with a required client certificate, then
/// the upgrade with upstream's headers.
pub async fn accept(tcp: TcpStream, config: &ServerConfig) -> Result<Connection, Error> {
    tokio::time::timeout(config.handshake_timeout, accept_inner(tcp, config))
        .await
        .map_err(|_| Error::Timeout("accepting an edge"))?
}

#[derive(Default)]
struct Upgrade {
    node_id: Option<String>,
    project_id: String,
    negotiated: bool,
    problem: Option<(&'static str, &'static str)>,
}

async fn accept_inner(tcp: TcpStream, config: &ServerConfig) -> Result<Connection, Error> {
    let _ = tcp.set_nodelay(true);
    let addr = tcp.peer_addr().map_err(|source| Error::Io {
        step: "reading the peer address",
        source,
    })?;
    let tls = TlsAcceptor::from(config.tls.clone())
        .accept(tcp)
        .await
        .map_err(|source| Error::Tls {
            peer: addr.to_string(),
            source,
        })?;
    let certificates = owned_chain(tls.get_ref().1.peer_certificates());
    let mut upgrade = Upgrade::default();
    let accept_ext = config.accept_extensions;
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let h = req.headers();
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        upgrade.project_id = get(PROJECT_ID_HEADER).unwrap_or_default();
        match get(NODE_ID_HEADER) {
            Some(id) if !id.is_empty() => upgrade.node_id = Some(id),
            _ => upgrade.problem = Some((NODE_ID_HEADER, "missing")),
        }
        match get(CONNECTION_USE_HEADER) {
            Some(v) if v.eq_ignore_ascii_case("msg") => {}
            Some(_) => upgrade.problem = Some((CONNECTION_USE_HEADER, "only \"msg\" is served")),
            None => upgrade.problem = Some((CONNECTION_USE_HEADER, "missing")),
        }
        if let Some((header, problem)) = upgrade.problem {
            let mut err = ErrorResponse::new(Some(format!("{header}: {problem}")));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        }
        if accept_ext && get(SYNC_EXTENSION_HEADER).as_deref() == Some(SYNC_EXTENSION_VERSION) {
            upgrade.negotiated = true;
            resp.headers_mut().insert(
                SYNC_EXTENSION_HEADER,
                HeaderValue::from_static(SYNC_EXTENSION_VERSION),
            );
        }
        Ok(resp)
    };
    let result = tokio_tungstenite::accept_hdr_async_with_config(
        TlsStream::Server(tls),
        callback,
        Some(ws_config(config.max_frame)),
    )
    .await;
    if let Some((header, problem)) = upgrade.problem {
        return Err(Error::Header { header, problem });
    }
    let ws = result.map_err(|e| Error::Upgrade(e.to_string()))?;
    Ok(Connection {
        ws,
        max_frame: config.max_frame,
        peer: Peer {
            addr,
            node_id: upgrade.node_id.unwrap_or_default(),
            project_id: upgrade.project_id,
            negotiated: upgrade.negotiated,
            certificates,
        },
    })
}
