//! The L4 proxy: a listener per Service port (TCP and UDP, as kube-proxy's userspace proxier and
//! upstream EdgeMesh have it), ClusterIP traffic redirected to it by [`crate::capture`], each new
//! connection or UDP flow sent to a ready backend: straight to it when it is on this node (or its
//! node is unknown), through the [`Tunnel`] to its node otherwise. A backend that refuses is
//! skipped and the next one tried.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::discovery::Tables;
use crate::lb::{Balancer, Client};
use crate::table::{Backend, Frontend, Protocol};
use crate::tunnel::Tunnel;
use crate::wire;

/// How long a connect to a local backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the proxy waits for an HTTP request head when a policy hashes a header.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read for header hashing.
const HEAD_MAX: usize = 16 * 1024;
/// A UDP flow with no datagram either way for this long is dropped.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Bytes copied per read in each direction of a proxied connection: large reads cut the number
/// of system calls per byte (tokio's default, 8 KiB, gave a fifth of loopback's throughput).
const PIPE_BUFFER: usize = 256 * 1024;

/// Copies both ways between two connections until both ends have closed (each end's close is
/// passed on as a half-close).
pub(crate) async fn pipe<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, PIPE_BUFFER, PIPE_BUFFER).await
}

/// Bytes a spliced direction moves per system call (the pipe between the sockets is sized to it).
const SPLICE_CHUNK: usize = 1 << 20;

/// Moves one direction of a TCP-to-TCP connection in the kernel with splice(2), through a pipe,
/// without copying into user space; at the end of `from`, half-closes `to`.
async fn splice_one(from: &TcpStream, to: &TcpStream) -> std::io::Result<u64> {
    use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
    use tokio::io::Interest;
    let (pr, pw) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    let chunk = rustix::pipe::fcntl_setpipe_size(&pw, SPLICE_CHUNK).unwrap_or(64 * 1024);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || {
            splice(from, None, &pw, None, chunk, flags).map_err(std::io::Error::from)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pr, None, to, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
    Ok(total)
}

/// Both directions between two TCP connections spliced in the kernel (see [`splice_one`]);
/// ends when both have ended, or at the first error.
async fn splice_both(a: &TcpStream, b: &TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::try_join!(splice_one(a, b), splice_one(b, a))
}

/// Where the proxy sends a connection: this node's name (to tell local backends from remote) and
/// the tunnel for remote ones (none: every backend is dialled directly).
#[derive(Clone)]
pub struct Router {
    node: String,
    tunnel: Option<Arc<Tunnel>>,
    balancer: Arc<Balancer>,
    tables: Tables,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("node", &self.node).finish()
    }
}

/// A connection made to a backend, local or through the tunnel.
pub enum Upstream {
    /// A direct TCP connection.
    Direct(TcpStream),
    /// A tunnel stream.
    Tunnel(crate::mux::MuxStream),
}

impl Router {
    /// A router for `node`.
    pub fn new(node: String, tunnel: Option<Arc<Tunnel>>, tables: Tables) -> Router {
        Router {
            node,
            tunnel,
            balancer: Arc::new(Balancer::new()),
            tables,
        }
    }

    fn is_local(&self, b: &Backend) -> bool {
        self.tunnel.is_none() || b.node.as_deref().is_none_or(|n| n == self.node)
    }

    /// A TCP connection for `client` to the Service port at `frontend`, to the first backend that
    /// takes it.
    pub async fn connect_tcp(
        &self,
        frontend: &Frontend,
        client: IpAddr,
        header: Option<&str>,
    ) -> Result<(Upstream, Backend), crate::Error> {
        let (order, policy_affinity) = {
            let snap = self.tables.borrow();
            let Some((svc, port)) = snap.table.frontend(frontend) else {
                return Err(crate::Error::NoService(frontend.0, frontend.1));
            };
            let order = self.balancer.order(
                frontend,
                &port.backends,
                &svc.policy,
                svc.affinity,
                Client { ip: client, header },
                Instant::now(),
            );
            (order, svc.affinity.is_some())
        };
        if order.is_empty() {
            return Err(crate::Error::NoEndpoints(frontend.0, frontend.1));
        }
        let mut errors = Vec::new();
        for b in order {
            let target = SocketAddr::new(b.ip, b.port);
            let got = if self.is_local(&b) {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        Ok(Upstream::Direct(s))
                    }
                    Ok(Err(e)) => Err(crate::Error::Backend(target, e)),
                    Err(_) => Err(crate::Error::Backend(
                        target,
                        std::io::ErrorKind::TimedOut.into(),
                    )),
                }
            } else {
                match (&self.tunnel, b.node.as_deref()) {
                    (Some(t), Some(node)) => t
                        .open(node, Protocol::Tcp, b.ip, b.port)
                        .await
                        .map(Upstream::Tunnel),
                    _ => Err(crate::Error::NoTunnel),
                }
            };
            match got {
                Ok(u) => {
                    if policy_affinity {
                        self.balancer.served(frontend, client, &b, Instant::now());
                    }
                    return Ok((u, b));
                }
                Err(e) => {
                    tracing::info!(%target, node = ?b.node, error = %e, "mesh proxy: backend refused, trying the next");
                    errors.push(format!("{target}: {e}"));
                }
            }
        }
        Err(crate::Error::AllRefused(errors.join("; ")))
    }

    /// The backends for a new UDP flow, in the order to use them.
    fn order_udp(&self, frontend: &Frontend, client: IpAddr) -> Vec<Backend> {
        let snap = self.tables.borrow();
        let Some((svc, port)) = snap.table.frontend(frontend) else {
            return Vec::new();
        };
        self.balancer.order(
            frontend,
            &port.backends,
            &svc.policy,
            svc.affinity,
            Client {
                ip: client,
                header: None,
            },
            Instant::now(),
        )
    }

    /// The HTTP header the Service at `frontend` hashes on, if any.
    fn hashed_header(&self, frontend: &Frontend) -> Option<String> {
        let snap = self.tables.borrow();
        let (svc, _) = snap.table.frontend(frontend)?;
        svc.policy.header().map(str::to_owned)
    }
}

/// Serves one proxied TCP connection from `client` for `frontend`.
pub async fn serve_tcp(
    router: Router,
    frontend: Frontend,
    mut client: TcpStream,
    from: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    let mut head = Vec::new();
    let header = match router.hashed_header(&frontend) {
        Some(name) => {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut head)).await;
            header_value(&head, &name)
        }
        None => None,
    };
    let (upstream, backend) = match router
        .connect_tcp(&frontend, from.ip(), header.as_deref())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(client = %from, service = %format!("{}:{}", frontend.0, frontend.1), error = %e, "mesh proxy: no backend took the connection");
            return;
        }
    };
    tracing::debug!(client = %from, backend = %format!("{}:{}", backend.ip, backend.port), "mesh proxy: connected");
    match upstream {
        Upstream::Direct(mut s) => {
            if s.write_all(&head).await.is_ok() {
                let _ = splice_both(&client, &s).await;
            }
        }
        Upstream::Tunnel(mut s) => {
            if s.write_all(&head).await.is_ok() {
                let _ = pipe(&mut client, &mut s).await;
            }
        }
    }
}

async fn read_head(s: &mut TcpStream, head: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while head.len() < HEAD_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// The value of header `name` (lowercase) in an HTTP/1 request head.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Accepts connections for one Service port.
pub async fn tcp_listener(router: Router, frontend: Frontend, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, from)) => {
                tokio::spawn(serve_tcp(router.clone(), frontend, s, from));
            }
            Err(e) => {
                tracing::warn!(error = %e, "mesh proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one Service port's UDP flows: each client address is a flow with its own backend.
pub async fn udp_listener(router: Router, frontend: Frontend, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "mesh proxy: UDP receive failed");
                continue;
            }
        };
        flows.retain(|_, tx| !tx.is_closed());
        let datagram = buf[..n].to_vec();
        if let Some(tx) = flows.get(&from) {
            let _ = tx.try_send(datagram);
            continue;
        }
        let (tx, rx) = mpsc::channel(256);
        let _ = tx.try_send(datagram);
        flows.insert(from, tx);
        tokio::spawn(udp_flow(router.clone(), frontend, sock.clone(), from, rx));
    }
}

async fn udp_flow(
    router: Router,
    frontend: Frontend,
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let order = router.order_udp(&frontend, client.ip());
    // UDP has no refusal to see: a local backend is taken as it is; a remote one must at least
    // take the tunnel stream.
    for b in order {
        let target = SocketAddr::new(b.ip, b.port);
        if router.is_local(&b) {
            let bind: SocketAddr = if b.ip.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(up) = UdpSocket::bind(bind).await else {
                continue;
            };
            if up.connect(target).await.is_err() {
                continue;
            }
            let mut reply = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    d = tokio::time::timeout(UDP_IDLE, rx.recv()) => match d {
                        Ok(Some(d)) => { let _ = up.send(&d).await; }
                        _ => return,
                    },
                    r = up.recv(&mut reply) => match r {
                        Ok(n) => { let _ = sock.send_to(&reply[..n], client).await; }
                        Err(_) => return,
                    }
                }
            }
        }
        let (Some(t), Some(node)) = (&router.tunnel, b.node.as_deref()) else {
            continue;
        };
        let s = match t.open(node, Protocol::Udp, b.ip, b.port).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%target, error = %e, "mesh proxy: UDP backend refused, trying the next");
                continue;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(s);
        let mut reply = Vec::new();
        loop {
            tokio::select! {
                d = tokio::time::timeout(UDP_IDLE, rx.recv()) => match d {
                    Ok(Some(d)) => {
                        if wire::write_datagram(&mut wr, &d).await.is_err() { return; }
                    }
                    _ => { let _ = wr.shutdown().await; return; }
                },
                r = wire::read_datagram(&mut rd, &mut reply) => match r {
                    Ok(()) => { let _ = sock.send_to(&reply, client).await; }
                    Err(_) => return,
                }
            }
        }
    }
    tracing::warn!(client = %client, "mesh proxy: no UDP backend for the flow");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_case_insensitively() {
        let head = b"GET / HTTP/1.1\r\nHost: web\r\nX-User: alice \r\n\r\n";
        assert_eq!(header_value(head, "x-user").as_deref(), Some("alice"));
        assert_eq!(header_value(head, "x-other"), None);
    }
}
