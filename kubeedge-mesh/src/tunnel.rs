//! The tunnel between edges: mutually authenticated TLS with the nodes' certificates, yamux
//! streams inside, straight to the peer when it can be reached, else through a relay.
//!
//! - **Identity.** Every agent presents its node certificate (`CN=system:node:<name>`, issued by
//!   the cluster's CA) and checks the peer's: both must chain to the same CA, and a dialled peer
//!   must be the node that was asked for. A certificate of another cluster fails the handshake.
//! - **Direct.** An agent with a listener announces its addresses to its relays; a peer asks a
//!   relay for them ([`Kind::Whois`]) and dials them first.
//! - **Hole punching.** Failing that, both ends dial each other at once through their NATs
//!   ([`Kind::Punch`]): a listening node makes its outbound connections from its listening port
//!   (SO_REUSEPORT), so the relay sees the address its NAT maps that port to; the relay gives
//!   each side the other's, and both connect from their listening port at the same time, which a
//!   NAT with endpoint-independent mapping lets through (TCP simultaneous open). The dialling
//!   side runs TLS as the client.
//! - **Relayed.** Otherwise it asks a relay for a circuit ([`Kind::Circuit`]): the relay opens a
//!   stream on the target's own connection to it (the target dialled out, so NAT in front of it
//!   does not matter) and splices the two. The two nodes then run their own TLS session through
//!   the circuit, so a relay sees only ciphertext and cannot pose as either.
//! - **Streams.** Each proxied connection is one yamux stream that opens with upstream EdgeMesh's
//!   `proxy.Proxy` request ([`crate::wire`]); the far agent dials the backend, but only a backend
//!   of a Service its own table knows.
//!
//! Connections to relays are kept up with backoff (1 s doubling to 8 s); peer connections live
//! while used and die with their TCP connection (keepalive finds a silent one in ~30 s).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::mux::{self, Mux, MuxStream};
use crate::table::Protocol;
use crate::wire::{self, Hop, Kind, Proxy, Type};

/// Upstream EdgeMesh's tunnel port.
pub const DEFAULT_PORT: u16 = 20006;

/// How long a TCP connect to a peer may take before the next address (or the relay) is tried.
const DIAL_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a TLS handshake or a request's answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a backend connect may take at the far end.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the two ends of a hole punch keep dialling each other.
const PUNCH_TIME: Duration = Duration::from_secs(3);
/// How long one dial of a hole punch waits (a NAT that drops unsolicited packets leaves the
/// first SYN unanswered until the far side's SYN opens the way).
const PUNCH_ATTEMPT: Duration = Duration::from_millis(1500);
/// After a direct connection and a hole punch to a node both failed, how long it goes straight
/// to the relay.
const DIRECT_RETRY: Duration = Duration::from_secs(60);
/// A relayed UDP flow with no datagram either way for this long ends.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Longest wait between attempts to reach a relay.
const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// A relay: its node name (its certificate's) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    /// The relay's node name.
    pub node: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl std::str::FromStr for RelayAddr {
    type Err = crate::Error;

    /// `name@ip:port` (port defaults to [`DEFAULT_PORT`]).
    fn from_str(s: &str) -> Result<RelayAddr, crate::Error> {
        let bad = || crate::Error::Config(format!("relay {s:?}: expected NAME@IP[:PORT]"));
        let (node, addr) = s.split_once('@').ok_or_else(bad)?;
        let addr = addr
            .parse::<SocketAddr>()
            .or_else(|_| {
                addr.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
            })
            .map_err(|_| bad())?;
        if node.is_empty() {
            return Err(bad());
        }
        Ok(RelayAddr {
            node: node.to_owned(),
            addr,
        })
    }
}

/// How an agent takes part in the tunnel.
#[derive(Debug)]
pub struct TunnelConfig {
    /// This node's name (must be its certificate's).
    pub node: String,
    /// The cluster CA.
    pub ca: CertificateDer<'static>,
    /// This node's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
    /// Where to accept peers (none: this node only dials out, e.g. behind NAT).
    pub listen: Option<SocketAddr>,
    /// Addresses to announce for direct connections (default: the listen address, when it is not
    /// a wildcard; relays add the address they see the node connect from).
    pub advertise: Vec<SocketAddr>,
    /// Relays to stay connected to.
    pub relays: Vec<RelayAddr>,
    /// Whether this node relays circuits for others.
    pub relay: bool,
}

impl TunnelConfig {
    /// The settings of `node` with the certificates in edgecore's (upstream's) layout under
    /// `dir`: `ca/rootCA.crt`, `certs/server.crt`, `certs/server.key`; no listener, no relays.
    pub fn from_cert_dir(node: &str, dir: &std::path::Path) -> Result<TunnelConfig, crate::Error> {
        use kubeedge_core::transport::tls;
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| crate::Error::Config(format!("reading {}: {e}", p.display())))
        };
        let pem = |e: tls::Error| crate::Error::Tls(e.to_string());
        let ca = tls::certs_from_pem(&read(dir.join("ca").join("rootCA.crt"))?)
            .map_err(pem)?
            .into_iter()
            .next()
            .ok_or_else(|| crate::Error::Tls("no CA certificate".into()))?;
        Ok(TunnelConfig {
            node: node.to_owned(),
            ca,
            chain: tls::certs_from_pem(&read(dir.join("certs").join("server.crt"))?)
                .map_err(pem)?,
            key: tls::key_from_pem(&read(dir.join("certs").join("server.key"))?).map_err(pem)?,
            listen: None,
            advertise: Vec::new(),
            relays: Vec::new(),
            relay: false,
        })
    }
}

/// Which backends a peer may reach through this node (the agent's service table decides).
pub type Allow = Arc<dyn Fn(Protocol, IpAddr, u16) -> bool + Send + Sync>;

#[derive(Debug)]
struct Peer {
    mux: Mux,
    announced: Vec<SocketAddr>,
    /// The address the node's connection to us came from (its NAT's mapping, for a relay).
    observed: Option<SocketAddr>,
}

struct Inner {
    node: String,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    peers: Mutex<HashMap<String, Peer>>,
    relays: Vec<RelayAddr>,
    relay_errors: Mutex<HashMap<String, String>>,
    is_relay: bool,
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    announce: Vec<SocketAddr>,
    allow: Allow,
    /// The listening address, which outbound connections also use (port reuse for punching).
    listen: Option<SocketAddr>,
    /// Hole punches under way: the far end's address, and who waits for its connection.
    punches: Mutex<HashMap<SocketAddr, tokio::sync::oneshot::Sender<TcpStream>>>,
    /// When a direct connection and a punch to a node last both failed.
    direct_failed: Mutex<HashMap<String, std::time::Instant>>,
}

/// A node's end of the tunnel. Stops (listener, relay connections, peers) when dropped.
pub struct Tunnel {
    inner: Arc<Inner>,
    addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("node", &self.inner.node)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Checks a dialled peer as a node certificate of the cluster CA naming the node that was asked
/// for (node certificates are client certificates, so the CA's client verifier checks the chain).
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let ServerName::DnsName(want) = server_name else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        match kubeedge_core::pki::node_name(end_entity.as_ref()) {
            Ok(got) if got == want.as_ref() => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls(config: &TunnelConfig) -> Result<(TlsConnector, TlsAcceptor), crate::Error> {
    let bad = |e: &dyn std::fmt::Display| crate::Error::Tls(e.to_string());
    let provider = kubeedge_core::transport::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(config.ca.clone()).map_err(|e| bad(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(&e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            inner: verifier,
            provider,
        }))
        .with_client_auth_cert(config.chain.clone(), config.key.clone_key())
        .map_err(|e| bad(&e))?;
    let server = kubeedge_core::transport::tls::server_config(
        &config.ca,
        config.chain.clone(),
        config.key.clone_key(),
    )
    .map_err(|e| bad(&e))?;
    Ok((
        TlsConnector::from(Arc::new(client)),
        TlsAcceptor::from(server),
    ))
}

impl Tunnel {
    /// Starts this node's end: the listener (if any), and the connections to the relays.
    /// `allow` says which backends peers may reach through this node.
    pub async fn start(config: TunnelConfig, allow: Allow) -> Result<Tunnel, crate::Error> {
        let (connector, acceptor) = tls(&config)?;
        let listener = match config.listen {
            Some(addr) => Some(listen_reusable(addr).map_err(|e| crate::Error::Bind(addr, e))?),
            None => None,
        };
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut announce = config.advertise.clone();
        if announce.is_empty()
            && let Some(a) = addr.filter(|a| !a.ip().is_unspecified())
        {
            announce.push(a);
        }
        if announce.is_empty()
            && let Some(a) = addr
        {
            // A wildcard listener: relays fill in the address they see.
            announce.push(a);
        }
        let inner = Arc::new(Inner {
            node: config.node.clone(),
            connector,
            acceptor,
            peers: Mutex::new(HashMap::new()),
            relays: config.relays.clone(),
            relay_errors: Mutex::new(HashMap::new()),
            is_relay: config.relay,
            dialing: Mutex::new(HashMap::new()),
            announce,
            allow,
            listen: addr,
            punches: Mutex::new(HashMap::new()),
            direct_failed: Mutex::new(HashMap::new()),
        });
        let mut tasks = Vec::new();
        if let Some(l) = listener {
            tasks.push(tokio::spawn(accept_loop(inner.clone(), l)));
        }
        for relay in &config.relays {
            tasks.push(tokio::spawn(relay_loop(inner.clone(), relay.clone())));
        }
        Ok(Tunnel { inner, addr, tasks })
    }

    /// Where this node accepts peers.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The nodes connected now (peers and relays).
    pub fn peers(&self) -> Vec<String> {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = peers
            .iter()
            .filter(|(_, p)| !p.mux.is_closed())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// A bare stream to `node` (connecting as [`Tunnel::open`] does), for a protocol of one's own:
    /// the far side reads its first byte as a [`Kind`] and refuses any other.
    pub async fn raw_stream(&self, node: &str) -> Result<MuxStream, crate::Error> {
        let mux = self.inner.connect(node).await?;
        Ok(mux.open().await?)
    }

    /// A connection to `ip:port` (`protocol`) on `node`, through the tunnel. A UDP stream
    /// carries datagrams framed by [`wire::write_datagram`].
    pub async fn open(
        &self,
        node: &str,
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
    ) -> Result<MuxStream, crate::Error> {
        self.inner.open(node, protocol, ip, port).await
    }
}

impl Inner {
    fn peer(&self, node: &str) -> Option<Mux> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(node)
            .filter(|p| !p.mux.is_closed())
            .map(|p| p.mux.clone())
    }

    async fn open(
        self: &Arc<Self>,
        node: &str,
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
    ) -> Result<MuxStream, crate::Error> {
        let request = Proxy {
            r#type: Type::Connect as i32,
            protocol: protocol.as_str().to_owned(),
            node_name: node.to_owned(),
            ip: ip.to_string(),
            port: i32::from(port),
        };
        let target = SocketAddr::new(ip, port);
        for attempt in 0..2 {
            let mux = self.connect(node).await?;
            let mut s = match mux.open().await {
                Ok(s) => s,
                Err(e) if attempt == 0 => {
                    tracing::debug!(node, error = %e, "mesh tunnel: stale connection, redialling");
                    self.forget(node, mux.id());
                    continue;
                }
                Err(e) => return Err(crate::Error::Io(e)),
            };
            wire::write_msg(&mut s, Some(Kind::Proxy), &request).await?;
            let reply: Proxy = tokio::time::timeout(ANSWER_TIMEOUT, wire::read_msg(&mut s))
                .await
                .map_err(|_| crate::Error::Refused {
                    node: node.to_owned(),
                    target,
                    reason: "no answer".into(),
                })??;
            if reply.r#type != Type::Success as i32 {
                return Err(crate::Error::Refused {
                    node: node.to_owned(),
                    target,
                    reason: "the peer could not reach it".into(),
                });
            }
            return Ok(s);
        }
        Err(crate::Error::Unreachable {
            node: node.to_owned(),
            tried: "connection lost twice".into(),
        })
    }

    fn forget(&self, node: &str, id: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(node).is_some_and(|p| p.mux.id() == id) {
            peers.remove(node);
        }
    }

    /// A connection to `node`: the one there is, else direct, else through a relay.
    async fn connect(self: &Arc<Self>, node: &str) -> Result<Mux, crate::Error> {
        if let Some(m) = self.peer(node) {
            return Ok(m);
        }
        let lock = {
            let mut d = self.dialing.lock().unwrap_or_else(|e| e.into_inner());
            d.entry(node.to_owned()).or_default().clone()
        };
        let _held = lock.lock().await;
        if let Some(m) = self.peer(node) {
            return Ok(m);
        }
        let mut tried = Vec::new();
        let relays: Vec<(RelayAddr, Option<Mux>)> = self
            .relays
            .iter()
            .filter(|r| r.node != node)
            .map(|r| (r.clone(), self.peer(&r.node)))
            .collect();
        // Direct, at the addresses the relays know.
        let mut addrs: Vec<SocketAddr> = Vec::new();
        if let Some(r) = self.relays.iter().find(|r| r.node == node) {
            addrs.push(r.addr);
        }
        for (_, mux) in &relays {
            if let Some(mux) = mux
                && let Ok(found) = whois(mux, node).await
            {
                addrs.extend(found);
            }
        }
        addrs.dedup();
        let recently_failed = self
            .direct_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .is_some_and(|t| t.elapsed() < DIRECT_RETRY);
        if recently_failed {
            tried.push("direct and hole punching failed within the last minute".into());
        } else {
            for addr in addrs {
                match self.dial(addr, node).await {
                    Ok(m) => return Ok(m),
                    Err(e) => tried.push(format!("direct {addr}: {e}")),
                }
            }
            // Hole punching, through each relay that has both of us.
            if self.listen.is_some() {
                for (relay, mux) in &relays {
                    let Some(mux) = mux else { continue };
                    match self.punch(mux, node).await {
                        Ok(m) => return Ok(m),
                        Err(e) => tried.push(format!("hole punch via {}: {e}", relay.node)),
                    }
                }
            }
            self.direct_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.to_owned(), std::time::Instant::now());
        }
        // Through a relay.
        for (relay, mux) in relays {
            let Some(mux) = mux else {
                let why = self
                    .relay_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&relay.node)
                    .cloned()
                    .unwrap_or_else(|| "connecting".into());
                tried.push(format!("relay {} not connected ({why})", relay.node));
                continue;
            };
            match self.circuit(&mux, node).await {
                Ok(m) => {
                    if !tried.is_empty() {
                        tracing::info!(peer = %node, relay = %relay.node, before = %tried.join("; "), "mesh tunnel: relayed");
                    }
                    return Ok(m);
                }
                Err(e) => tried.push(format!("relay {}: {e}", relay.node)),
            }
        }
        if tried.is_empty() {
            tried.push("no address and no relay".into());
        }
        Err(crate::Error::Unreachable {
            node: node.to_owned(),
            tried: tried.join("; "),
        })
    }

    /// A direct connection to `node` at `addr`.
    async fn dial(self: &Arc<Self>, addr: SocketAddr, node: &str) -> Result<Mux, crate::Error> {
        // From any port: an unanswered attempt from the listening port would leave our NAT a
        // mapping that a later hole punch to the same peer then trips over.
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())??;
        self.client_handshake(tcp, node).await
    }

    /// A TCP connection to `addr`, made from the listening port when there is one (so that the
    /// far side sees the address our NAT maps that port to), else from any port: for relays and
    /// hole punches.
    async fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        if let Some(local) = self.listen.filter(|l| l.is_ipv4() == addr.is_ipv4()) {
            let socket = reusable_socket(local)?;
            match socket.bind(local) {
                Ok(()) => {
                    return tokio::time::timeout(timeout, socket.connect(addr))
                        .await
                        .map_err(|_| timed_out())?;
                }
                Err(e) => {
                    tracing::debug!(%local, error = %e, "mesh tunnel: dialling from any port");
                }
            }
        }
        tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())?
    }

    /// TLS as the client over `tcp` to `node`, then the multiplexer; registers the connection.
    async fn client_handshake(
        self: &Arc<Self>,
        tcp: TcpStream,
        node: &str,
    ) -> Result<Mux, crate::Error> {
        mux::keepalive(&tcp)?;
        self.tls_client(tcp, node).await
    }

    /// TLS as the client over `io` (a TCP connection or a relay's circuit) to `node`, then the
    /// multiplexer; registers the connection.
    async fn tls_client<IO>(self: &Arc<Self>, io: IO, node: &str) -> Result<Mux, crate::Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let name = ServerName::try_from(node.to_owned())
            .map_err(|e| crate::Error::Config(format!("node name {node:?}: {e}")))?;
        let tls = tokio::time::timeout(ANSWER_TIMEOUT, self.connector.connect(name, io))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| crate::Error::Tls(e.to_string()))?;
        let (mux, inbound, _) = mux::start(tls, true);
        self.register(node.to_owned(), mux.clone(), inbound, None);
        Ok(mux)
    }

    /// TLS as the server over `io` with a peer that must be `expected` (`what` says who vouched
    /// for it, in the error), then the multiplexer; registers the connection.
    async fn tls_server<IO>(
        self: &Arc<Self>,
        io: IO,
        expected: &str,
        what: &str,
        observed: Option<SocketAddr>,
    ) -> Result<(), crate::Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let tls = tokio::time::timeout(ANSWER_TIMEOUT, self.acceptor.accept(io))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| crate::Error::Tls(e.to_string()))?;
        let name = peer_name(tls.get_ref().1.peer_certificates())?;
        if name != expected {
            return Err(crate::Error::Tls(format!(
                "{what} announced {expected} but the peer is {name}"
            )));
        }
        let (mux, inbound, _) = mux::start(tls, false);
        self.register(name, mux, inbound, observed);
        Ok(())
    }

    /// A connection to `node` through the relay connection `relay`, with its own TLS inside.
    async fn circuit(self: &Arc<Self>, relay: &Mux, node: &str) -> Result<Mux, crate::Error> {
        let mut s = relay.open().await?;
        let hop = Hop {
            r#type: Type::Connect as i32,
            node_name: node.to_owned(),
            ..Hop::default()
        };
        wire::write_msg(&mut s, Some(Kind::Circuit), &hop).await?;
        let reply: Hop = tokio::time::timeout(ANSWER_TIMEOUT, wire::read_msg(&mut s))
            .await
            .map_err(|_| timed_out())??;
        if reply.r#type != Type::Success as i32 {
            return Err(crate::Error::Circuit(reply.reason));
        }
        self.tls_client(s, node).await
    }

    /// Hole punching to `node`, coordinated by the relay connection `relay`: this side dials and
    /// runs TLS as the client.
    async fn punch(self: &Arc<Self>, relay: &Mux, node: &str) -> Result<Mux, crate::Error> {
        let mut s = relay.open().await?;
        let hop = Hop {
            r#type: Type::Connect as i32,
            node_name: node.to_owned(),
            ..Hop::default()
        };
        wire::write_msg(&mut s, Some(Kind::Punch), &hop).await?;
        let reply: Hop = read(&mut s).await?;
        if reply.r#type != Type::Success as i32 {
            return Err(crate::Error::Circuit(reply.reason));
        }
        let Some(addr) = reply
            .addrs
            .first()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return Err(crate::Error::Circuit("the relay gave no address".into()));
        };
        let tcp = self.rendezvous(addr).await?;
        tracing::info!(peer = %node, %addr, "mesh tunnel: hole punched");
        self.client_handshake(tcp, node).await
    }

    /// Dials `addr` from the listening port again and again for [`PUNCH_TIME`], while also taking
    /// a connection from `addr` that arrives on the listener: the first TCP connection with it.
    async fn rendezvous(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.punches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, tx);
        let deadline = tokio::time::Instant::now() + PUNCH_TIME;
        let mut last = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let got = loop {
            if tokio::time::Instant::now() >= deadline {
                break Err(last);
            }
            tokio::select! {
                accepted = &mut rx => {
                    if let Ok(tcp) = accepted {
                        break Ok(tcp);
                    }
                }
                dialled = self.tcp_connect(addr, PUNCH_ATTEMPT) => match dialled {
                    Ok(tcp) => break Ok(tcp),
                    Err(e) => {
                        last = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        self.punches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        got
    }

    /// A punch request: from our relay (a node dials us: dial it back, as the TLS server), or to
    /// us as the relay (pass it on and give each side the other's address).
    async fn serve_punch(
        self: &Arc<Self>,
        from: &str,
        mut s: MuxStream,
    ) -> Result<(), crate::Error> {
        let hop: Hop = read(&mut s).await?;
        let refuse = |reason: String| Hop {
            r#type: Type::Failed as i32,
            node_name: hop.node_name.clone(),
            addrs: Vec::new(),
            reason,
        };
        if self.relays.iter().any(|r| r.node == from) {
            let source = hop.node_name.clone();
            let addr = hop.addrs.first().and_then(|a| a.parse::<SocketAddr>().ok());
            let (Some(addr), Some(_)) = (addr, self.listen) else {
                wire::write_msg(
                    &mut s,
                    None,
                    &refuse(format!("{} does not listen", self.node)),
                )
                .await?;
                return Ok(());
            };
            let ok = Hop {
                r#type: Type::Success as i32,
                ..Hop::default()
            };
            wire::write_msg(&mut s, None, &ok).await?;
            let tcp = self.rendezvous(addr).await.map_err(|e| {
                crate::Error::Circuit(format!("hole punch with {source} at {addr}: {e}"))
            })?;
            tracing::info!(peer = %source, %addr, "mesh tunnel: hole punched");
            mux::keepalive(&tcp)?;
            return self
                .tls_server(tcp, &source, "the hole punch", Some(addr))
                .await;
        }
        if !self.is_relay {
            wire::write_msg(
                &mut s,
                None,
                &refuse(format!("{} is not a relay", self.node)),
            )
            .await?;
            return Err(crate::Error::Circuit(format!(
                "{from} asked a non-relay to punch"
            )));
        }
        let target = hop.node_name.clone();
        let (to, target_addr, source_addr) = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            (
                peers
                    .get(&target)
                    .filter(|p| !p.mux.is_closed())
                    .map(|p| p.mux.clone()),
                peers.get(&target).and_then(|p| p.observed),
                peers.get(from).and_then(|p| p.observed),
            )
        };
        let (Some(to), Some(target_addr), Some(source_addr)) = (to, target_addr, source_addr)
        else {
            let why = format!("node {target} is not connected to relay {}", self.node);
            wire::write_msg(&mut s, None, &refuse(why.clone())).await?;
            return Err(crate::Error::Circuit(why));
        };
        let mut t = to.open().await?;
        let intro = Hop {
            r#type: Type::Connect as i32,
            node_name: from.to_owned(),
            addrs: vec![source_addr.to_string()],
            reason: String::new(),
        };
        wire::write_msg(&mut t, Some(Kind::Punch), &intro).await?;
        let answer: Hop = read(&mut t).await?;
        let reply = if answer.r#type == Type::Success as i32 {
            Hop {
                r#type: Type::Success as i32,
                node_name: target,
                addrs: vec![target_addr.to_string()],
                reason: String::new(),
            }
        } else {
            refuse(answer.reason)
        };
        wire::write_msg(&mut s, None, &reply).await?;
        Ok(())
    }

    /// Keeps `mux` as the connection to `node` and serves the streams it opens until it ends.
    fn register(
        self: &Arc<Self>,
        node: String,
        mux: Mux,
        mut inbound: tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
        observed: Option<SocketAddr>,
    ) {
        let id = mux.id();
        {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let announced = peers
                .get(&node)
                .map(|p| p.announced.clone())
                .unwrap_or_default();
            peers.insert(
                node.clone(),
                Peer {
                    mux,
                    announced,
                    observed,
                },
            );
        }
        tracing::info!(peer = %node, "mesh tunnel: connected");
        let inner = self.clone();
        tokio::spawn(async move {
            while let Some(stream) = inbound.recv().await {
                let inner = inner.clone();
                let from = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = inner.serve(&from, stream).await {
                        tracing::info!(peer = %from, error = %e, "mesh tunnel: refused a stream");
                    }
                });
            }
            inner.forget(&node, id);
            tracing::info!(peer = %node, "mesh tunnel: disconnected");
        });
    }

    /// A stream `from` opened to this node.
    async fn serve(self: &Arc<Self>, from: &str, mut s: MuxStream) -> Result<(), crate::Error> {
        let kind = tokio::time::timeout(ANSWER_TIMEOUT, wire::read_kind(&mut s))
            .await
            .map_err(|_| timed_out())??;
        match kind {
            Kind::Proxy => self.serve_proxy(from, s).await,
            Kind::Circuit => self.serve_circuit(from, s).await,
            Kind::Punch => self.serve_punch(from, s).await,
            Kind::Whois => {
                let hop: Hop = read(&mut s).await?;
                let addrs = self.addresses_of(&hop.node_name);
                let reply = Hop {
                    r#type: if addrs.is_empty() {
                        Type::Failed
                    } else {
                        Type::Success
                    } as i32,
                    node_name: hop.node_name,
                    addrs: addrs.iter().map(ToString::to_string).collect(),
                    reason: String::new(),
                };
                wire::write_msg(&mut s, None, &reply).await?;
                Ok(())
            }
            Kind::Announce => {
                let hop: Hop = read(&mut s).await?;
                let addrs: Vec<SocketAddr> =
                    hop.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = peers.get_mut(from) {
                    p.announced = addrs;
                }
                Ok(())
            }
        }
    }

    /// Where `node` may be dialled: what it announced, with wildcard addresses replaced by the
    /// address it connected from.
    fn addresses_of(&self, node: &str) -> Vec<SocketAddr> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = peers.get(node) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for a in &p.announced {
            if a.ip().is_unspecified() {
                if let Some(o) = p.observed {
                    out.push(SocketAddr::new(o.ip(), a.port()));
                }
            } else {
                out.push(*a);
            }
        }
        out.dedup();
        out
    }

    async fn serve_proxy(&self, from: &str, mut s: MuxStream) -> Result<(), crate::Error> {
        let req: Proxy = read(&mut s).await?;
        let protocol = match req.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                fail_proxy(&mut s, &req).await;
                return Err(crate::Error::Config(format!("unknown protocol {other:?}")));
            }
        };
        let (Ok(ip), Ok(port)) = (req.ip.parse::<IpAddr>(), u16::try_from(req.port)) else {
            fail_proxy(&mut s, &req).await;
            return Err(crate::Error::Config(format!(
                "bad target {}:{}",
                req.ip, req.port
            )));
        };
        let target = SocketAddr::new(ip, port);
        if !(self.allow)(protocol, ip, port) {
            fail_proxy(&mut s, &req).await;
            return Err(crate::Error::Refused {
                node: from.to_owned(),
                target,
                reason: "not an endpoint of a Service".into(),
            });
        }
        match protocol {
            Protocol::Tcp => {
                let backend =
                    match tokio::time::timeout(BACKEND_TIMEOUT, TcpStream::connect(target)).await {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            fail_proxy(&mut s, &req).await;
                            return Err(crate::Error::Backend(target, e));
                        }
                        Err(_) => {
                            fail_proxy(&mut s, &req).await;
                            return Err(crate::Error::Backend(
                                target,
                                std::io::ErrorKind::TimedOut.into(),
                            ));
                        }
                    };
                let _ = backend.set_nodelay(true);
                answer_proxy(&mut s, &req, Type::Success).await?;
                let mut backend = backend;
                let _ = crate::proxy::pipe(&mut s, &mut backend).await;
                Ok(())
            }
            Protocol::Udp => {
                let bind: SocketAddr = if ip.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(bind).await?;
                sock.connect(target).await?;
                answer_proxy(&mut s, &req, Type::Success).await?;
                relay_datagrams(s, sock).await;
                Ok(())
            }
        }
    }

    async fn serve_circuit(
        self: &Arc<Self>,
        from: &str,
        mut s: MuxStream,
    ) -> Result<(), crate::Error> {
        let hop: Hop = read(&mut s).await?;
        if self.relays.iter().any(|r| r.node == from) {
            // Our relay brings a peer: run TLS as the server, the peer must be who the relay says.
            let source = hop.node_name;
            let ok = Hop {
                r#type: Type::Success as i32,
                ..Hop::default()
            };
            wire::write_msg(&mut s, None, &ok).await?;
            return self
                .tls_server(s, &source, &format!("relay {from}"), None)
                .await;
        }
        let refuse = |reason: String| Hop {
            r#type: Type::Failed as i32,
            node_name: hop.node_name.clone(),
            addrs: Vec::new(),
            reason,
        };
        if !self.is_relay {
            wire::write_msg(
                &mut s,
                None,
                &refuse(format!("{} is not a relay", self.node)),
            )
            .await?;
            return Err(crate::Error::Circuit(format!("{from} asked a non-relay")));
        }
        let target = hop.node_name.clone();
        let Some(to) = self.peer(&target) else {
            let why = format!("node {target} is not connected to relay {}", self.node);
            wire::write_msg(&mut s, None, &refuse(why.clone())).await?;
            return Err(crate::Error::Circuit(why));
        };
        let mut t = to.open().await?;
        let intro = Hop {
            r#type: Type::Connect as i32,
            node_name: from.to_owned(),
            ..Hop::default()
        };
        wire::write_msg(&mut t, Some(Kind::Circuit), &intro).await?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, wire::read_msg::<Hop, _>(&mut t)).await;
        match answer {
            Ok(Ok(a)) if a.r#type == Type::Success as i32 => {}
            other => {
                let why = match other {
                    Ok(Ok(a)) => a.reason,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer".into(),
                };
                let why = format!("node {target} refused: {why}");
                wire::write_msg(&mut s, None, &refuse(why.clone())).await?;
                return Err(crate::Error::Circuit(why));
            }
        }
        let ok = Hop {
            r#type: Type::Success as i32,
            node_name: target.clone(),
            ..Hop::default()
        };
        wire::write_msg(&mut s, None, &ok).await?;
        tracing::debug!(from, to = %target, "mesh relay: circuit open");
        let _ = crate::proxy::pipe(&mut s, &mut t).await;
        Ok(())
    }
}

/// The error of a step that did not finish in time.
fn timed_out() -> crate::Error {
    crate::Error::Io(std::io::ErrorKind::TimedOut.into())
}

fn peer_name(certs: Option<&[CertificateDer<'static>]>) -> Result<String, crate::Error> {
    let cert = certs
        .and_then(|c| c.first())
        .ok_or_else(|| crate::Error::Tls("no peer certificate".into()))?;
    kubeedge_core::pki::node_name(cert.as_ref())
        .map_err(|e| crate::Error::Tls(format!("peer certificate: {e}")))
}

async fn read<M: prost::Message + Default>(s: &mut MuxStream) -> Result<M, crate::Error> {
    Ok(tokio::time::timeout(ANSWER_TIMEOUT, wire::read_msg(s))
        .await
        .map_err(|_| timed_out())??)
}

async fn answer_proxy(s: &mut MuxStream, req: &Proxy, t: Type) -> Result<(), crate::Error> {
    let reply = Proxy {
        r#type: t as i32,
        ..req.clone()
    };
    wire::write_msg(s, None, &reply).await?;
    Ok(())
}

async fn fail_proxy(s: &mut MuxStream, req: &Proxy) {
    let _ = answer_proxy(s, req, Type::Failed).await;
    let _ = s.shutdown().await;
}

/// Datagrams between a stream (framed) and a connected UDP socket, until either side ends or the
/// flow is idle for [`UDP_IDLE`].
pub(crate) async fn relay_datagrams(s: MuxStream, sock: UdpSocket) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut from_stream = Vec::new();
    let mut from_sock = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = tokio::time::timeout(UDP_IDLE, wire::read_datagram(&mut rd, &mut from_stream)) => {
                match r {
                    Ok(Ok(())) => { let _ = sock.send(&from_stream).await; }
                    _ => break,
                }
            }
            r = sock.recv(&mut from_sock) => match r {
                Ok(n) => {
                    if wire::write_datagram(&mut wr, &from_sock[..n]).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    let _ = wr.shutdown().await;
}

async fn whois(relay: &Mux, node: &str) -> Result<Vec<SocketAddr>, crate::Error> {
    let mut s = relay.open().await?;
    let hop = Hop {
        r#type: Type::Connect as i32,
        node_name: node.to_owned(),
        ..Hop::default()
    };
    wire::write_msg(&mut s, Some(Kind::Whois), &hop).await?;
    let reply: Hop = read(&mut s).await?;
    Ok(reply.addrs.iter().filter_map(|a| a.parse().ok()).collect())
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mesh tunnel: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let Some(tcp) = claim(&inner, tcp, from).await else {
                return;
            };
            if let Err(e) = mux::keepalive(&tcp) {
                tracing::debug!(%from, error = %e, "mesh tunnel: keepalive not set");
            }
            let tls = match tokio::time::timeout(ANSWER_TIMEOUT, inner.acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "mesh tunnel: refused a peer");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%from, "mesh tunnel: refused a peer: no handshake in time");
                    return;
                }
            };
            let name = match peer_name(tls.get_ref().1.peer_certificates()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%from, error = %e, "mesh tunnel: refused a peer");
                    return;
                }
            };
            let (mux, inbound, _) = mux::start(tls, false);
            inner.register(name, mux, inbound, Some(from));
        });
    }
}

/// An accepted connection is either a peer's TLS handshake (its ClientHello comes at once) or the
/// far end of a hole punch, which waits silently for this side's ClientHello: handed to the punch
/// that waits for its address (which may register a moment after the connection arrived).
/// `None` when a punch took it.
async fn claim(inner: &Inner, tcp: TcpStream, from: SocketAddr) -> Option<TcpStream> {
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let waiting = inner
            .punches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&from);
        if let Some(tx) = waiting {
            return tx.send(tcp).err();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(100), tcp.readable())
            .await
            .is_err();
        if !quiet || tokio::time::Instant::now() >= deadline {
            return Some(tcp);
        }
    }
}

async fn relay_loop(inner: Arc<Inner>, relay: RelayAddr) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let dialled = match inner.tcp_connect(relay.addr, DIAL_TIMEOUT).await {
            Ok(tcp) => {
                let local = tcp.local_addr().ok();
                inner
                    .client_handshake(tcp, &relay.node)
                    .await
                    .map(|m| (m, local))
            }
            Err(e) => Err(crate::Error::Io(e)),
        };
        match dialled {
            Ok((mux, local)) => {
                backoff = Duration::from_secs(1);
                inner
                    .relay_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&relay.node);
                if !inner.announce.is_empty() {
                    // A wildcard listener also announces the address this host reached the
                    // relay from (a peer on the same network dials that).
                    let mut addrs = inner.announce.clone();
                    if let Some(local) = local {
                        for a in inner.announce.iter().filter(|a| a.ip().is_unspecified()) {
                            addrs.push(SocketAddr::new(local.ip(), a.port()));
                        }
                    }
                    let hop = Hop {
                        r#type: Type::Connect as i32,
                        node_name: inner.node.clone(),
                        addrs: addrs.iter().map(ToString::to_string).collect(),
                        reason: String::new(),
                    };
                    if let Ok(mut s) = mux.open().await {
                        let _ = wire::write_msg(&mut s, Some(Kind::Announce), &hop).await;
                    }
                }
                mux.closed().await;
                tracing::warn!(relay = %relay.node, addr = %relay.addr, "mesh tunnel: lost the relay, reconnecting");
            }
            Err(e) => {
                tracing::warn!(relay = %relay.node, addr = %relay.addr, error = %e, "mesh tunnel: cannot reach the relay");
                inner
                    .relay_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(relay.node.clone(), e.to_string());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RELAY_BACKOFF_MAX);
    }
}

/// A TCP socket for `local`'s family with SO_REUSEADDR and SO_REUSEPORT: the listener and the
/// outbound connections made from its port share it.
fn reusable_socket(local: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// A listener on `addr` whose port outbound connections may share.
fn listen_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = reusable_socket(addr)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
