//! Streams over one connection, opened from either side: a [`yamux`] connection (libp2p's
//! multiplexer, the one upstream EdgeMesh's tunnel negotiates) driven by one task.
//!
//! yamux flow-controls each stream on its own (windows from 256 KiB, grown while a stream is
//! busy), so one busy stream does not stall the others. It has no keepalive: the sockets under it
//! get TCP keepalive instead ([`keepalive`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use yamux::{Config, Connection, ConnectionError, Mode};

/// A stream of a multiplexed connection, as tokio I/O.
pub type MuxStream = Compat<yamux::Stream>;

/// Most streams open at once on one connection (both directions).
pub const MAX_STREAMS: usize = 1024;

type OpenReply = oneshot::Sender<Result<yamux::Stream, Arc<ConnectionError>>>;

/// The task driving a connection; it ends with the connection.
pub type Driver = tokio::task::JoinHandle<Result<(), Arc<ConnectionError>>>;

static IDS: AtomicU64 = AtomicU64::new(1);

/// Opens streams on a connection; clones share it. The connection closes when every clone is
/// dropped or the far side goes away.
#[derive(Clone, Debug)]
pub struct Mux {
    tx: mpsc::Sender<OpenReply>,
    id: u64,
}

impl Mux {
    /// A new stream. The far side learns of it with its first bytes, so the opener writes first.
    pub async fn open(&self) -> std::io::Result<MuxStream> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let closed = || std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed");
        self.tx.send(reply_tx).await.map_err(|_| closed())?;
        match reply_rx.await {
            Ok(Ok(s)) => Ok(s.compat()),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(closed()),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// This connection's identity (distinguishes two connections to the same peer).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Runs a multiplexed connection over `io`. `dialer` is true on the side that connected (the two
/// sides must differ). Returns the opener, the streams the far side opens, and the task that
/// ends with the connection.
pub fn start<T>(io: T, dialer: bool) -> (Mux, mpsc::UnboundedReceiver<MuxStream>, Driver)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut cfg = Config::default();
    cfg.set_max_num_streams(MAX_STREAMS);
    let mode = if dialer { Mode::Client } else { Mode::Server };
    let conn = Connection::new(io.compat(), cfg, mode);
    let (tx, cmd_rx) = mpsc::channel(32);
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(drive(conn, cmd_rx, inbound_tx));
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    (Mux { tx, id }, inbound_rx, task)
}

async fn drive<T>(
    mut conn: Connection<T>,
    mut cmd_rx: mpsc::Receiver<OpenReply>,
    inbound_tx: mpsc::UnboundedSender<MuxStream>,
) -> Result<(), Arc<ConnectionError>>
where
    T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<OpenReply> = VecDeque::new();
    let mut handles_gone = false;
    let result = std::future::poll_fn(|cx| {
        loop {
            while !handles_gone {
                match cmd_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => waiting.push_back(reply),
                    Poll::Ready(None) => handles_gone = true,
                    Poll::Pending => break,
                }
            }
            while let Some(reply) = waiting.pop_front() {
                if reply.is_closed() {
                    continue;
                }
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = reply.send(Ok(stream));
                    }
                    Poll::Ready(Err(e)) => {
                        let _ = reply.send(Err(Arc::new(e)));
                    }
                    Poll::Pending => {
                        waiting.push_front(reply);
                        break;
                    }
                }
            }
            if handles_gone && waiting.is_empty() {
                return conn.poll_close(cx).map_err(Arc::new);
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let _ = inbound_tx.send(stream.compat());
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Arc::new(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    cmd_rx.close();
    while let Ok(reply) = cmd_rx.try_recv() {
        waiting.push_back(reply);
    }
    for reply in waiting {
        let _ = reply.send(Err(Arc::new(ConnectionError::Closed)));
    }
    result
}

/// TCP keepalive on a tunnel socket: a silent peer is found dead in about 30 s (idle 15 s, then 5
/// probes 3 s apart).
pub fn keepalive(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(15))
        .with_interval(std::time::Duration::from_secs(3))
        .with_retries(5);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)?;
    stream.set_nodelay(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_sides_open_streams() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ma, mut ina, _ta) = start(a, true);
        let (mb, mut inb, tb) = start(b, false);
        let mut s = ma.open().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut r = inb.recv().await.unwrap();
        let mut buf = [0; 4];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let mut s2 = mb.open().await.unwrap();
        s2.write_all(b"back").await.unwrap();
        s2.shutdown().await.unwrap();
        let mut got = Vec::new();
        ina.recv()
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert_eq!(got, b"back");
        drop((ma, s, r, ina));
        // The far side's driver ends (cleanly, or with a broken pipe if it was still writing).
        tokio::time::timeout(std::time::Duration::from_secs(5), tb)
            .await
            .expect("the far side ends with the connection")
            .unwrap()
            .ok();
        assert!(mb.open().await.is_err());
    }
}
