//! The thin async driver: runs a sans-IO sync session over one [`Connection`].
//!
//! The session is borrowed, not owned, so it outlives the connection: what it learned (acks,
//! queued changes) carries over to the next one, and so does the [`Pump`] (the command receiver
//! and any event not yet delivered). The application talks to the session through two channels:
//! commands (closures run against the session, e.g. `enqueue` or `persisted`) and events (what
//! the session reports). The event channel is bounded; when it is full the driver stops reading
//! from the peer (and pauses the session's timers, so that the application's own slowness never
//! reads as a dead peer) until the application catches up, so memory stays bounded. Writing runs
//! in its own task, so a peer that is slow to read never stops us from reading.
//!
//! ```no_run
//! # async fn f(conn: kubeedge_core::transport::ws::Connection,
//! #            mut session: kubeedge_core::sync::edge::Session) {
//! use kubeedge_core::transport::driver;
//! let (handle, mut pump) = driver::channel(64);
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         // persist, then: handle.exec(move |s, now| s.persisted(now, [token])).await
//!         let _ = event;
//!     }
//! });
//! let end = pump.drive(conn, &mut session, &events_tx).await;
//! # let _ = end;
//! # }
//! ```

use std::time::Instant;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::ws::{Connection, Error, decode_frame};
use crate::sync::ProtocolError;
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// A closure run against the session by the driver, with the current time.
pub type Command<S> = Box<dyn FnOnce(&mut S, Instant) + Send>;

/// Sends commands to a running driver. Cheap to clone.
#[derive(Debug)]
pub struct Handle<S> {
    tx: mpsc::Sender<Command<S>>,
}

impl<S> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
        }
    }
}

/// The driver is gone (its [`Pump`] was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session driver has stopped")]
pub struct Stopped;

impl<S: 'static> Handle<S> {
    /// Runs `f` against the session, waiting for room in the command queue.
    pub async fn exec(
        &self,
        f: impl FnOnce(&mut S, Instant) + Send + 'static,
    ) -> Result<(), Stopped> {
        self.tx.send(Box::new(f)).await.map_err(|_| Stopped)
    }
}

/// A command channel of `capacity` slots: the handle for the application, the [`Pump`] that drives
/// the session over one connection after another.
pub fn channel<S: crate::sync::Endpoint>(capacity: usize) -> (Handle<S>, Pump<S>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        Handle { tx },
        Pump {
            commands: rx,
            stash: None,
            heard: LastHeard::default(),
        },
    )
}

/// When the peer was last heard from: the start of a connection, then every frame read from it
/// (keepalives included). Shared between a [`Pump`] and whoever watches the peer's liveness (a
/// half-open link shows as silence here long before the session's keepalive timeout ends it).
#[derive(Debug, Clone, Default)]
pub struct LastHeard(std::sync::Arc<std::sync::Mutex<Option<Instant>>>);

impl LastHeard {
    /// The last time, `None` if never.
    pub fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `at`.
    pub fn mark(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

/// Why [`Pump::drive`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// The peer closed the connection.
    PeerClosed,
    /// The application went away (every [`Handle`] or the event receiver was dropped).
    Shutdown,
}

/// Why [`Pump::drive`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The link failed.
    #[error("transport")]
    Transport(#[from] Error),
    /// The peer broke the sync protocol.
    #[error("protocol")]
    Protocol(#[from] ProtocolError),
    /// The session declared the peer dead (keepalive or inventory timeout).
    #[error("peer silent too long")]
    Timeout,
}

/// The current time as sessions take it: tokio's clock, so that paused time in tests reaches them.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A wall clock for session message timestamps, anchored at [`now`].
pub fn wall_clock() -> crate::sync::stamp::WallClock {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    crate::sync::stamp::WallClock::new(now(), unix_ms)
}

pub use crate::sync::stamp::random_seed;

/// How long a graceful end waits for the last frames to be written.
const FLUSH_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

type Sink = SplitSink<WebSocketStream<TlsStream<TcpStream>>, Frame>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TlsStream<TcpStream>>>;

/// The writer task, aborted when the drive ends in any way, its future dropped included (a writer
/// stuck on a half-open socket must not outlive the connection).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection taken apart before it is driven (see [`Pump::drive`]).
struct Split {
    negotiated: bool,
    sink: Sink,
    stream: Stream,
    max_frame: usize,
    peer: super::ws::Peer,
}

/// The parts of one connection while it is driven.
struct Link {
    stream: Stream,
    max_frame: usize,
    peer: super::ws::Peer,
    batches: mpsc::Sender<Vec<Frame>>,
    writer: AbortOnDrop,
    /// Frames taken from the session and not yet handed to the writer.
    outgoing: Vec<Frame>,
}

/// Drives a session over one connection after another; keeps what must survive a connection.
pub struct Pump<S: crate::sync::Endpoint> {
    commands: mpsc::Receiver<Command<S>>,
    /// An event that did not fit in the event channel; delivered before anything else is read.
    stash: Option<S::Event>,
    heard: LastHeard,
}

impl<S: crate::sync::Endpoint> std::fmt::Debug for Pump<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("stashed_event", &self.stash.is_some())
            .finish()
    }
}

impl<S: crate::sync::Endpoint> Pump<S> {
    /// Records when the peer was last heard from in `heard` (instead of a record of its own).
    pub fn with_last_heard(mut self, heard: LastHeard) -> Self {
        self.heard = heard;
        self
    }

    /// When the peer was last heard from (see [`LastHeard`]).
    pub fn last_heard(&self) -> LastHeard {
        self.heard.clone()
    }

    /// Runs `session` over `conn` until the connection ends. Calls `connected` first and
    /// `disconnected` last, whatever the outcome.
    ///
    /// The connection is split before the returned future is built, so that the future holds
    /// only the halves' handles: an async function keeps its arguments for its whole life, and a
    /// connection (TLS and WebSocket state) is several kilobytes, paid again by every connected
    /// peer.
    pub fn drive<'a>(
        &'a mut self,
        conn: Connection,
        session: &'a mut S,
        events: &'a mpsc::Sender<S::Event>,
    ) -> impl Future<Output = Result<End, DriveError>> + 'a {
        let negotiated = conn.peer().negotiated;
        let (ws, max_frame, peer) = conn.into_parts();
        let (sink, stream) = ws.split();
        let split = Split {
            negotiated,
            sink,
            stream,
            max_frame,
            peer,
        };
        self.drive_split(split, session, events)
    }

    async fn drive_split(
        &mut self,
        split: Split,
        session: &mut S,
        events: &mpsc::Sender<S::Event>,
    ) -> Result<End, DriveError> {
        let Split {
            negotiated,
            sink,
            stream,
            max_frame,
            peer,
        } = split;
        let t = now();
        self.heard.mark(t);
        session.connected(t, negotiated);
        // One batch in the channel, one being written: reading never waits on the peer reading.
        let (batches, batches_rx) = mpsc::channel::<Vec<Frame>>(1);
        let mut link = Link {
            stream,
            max_frame,
            peer,
            batches,
            writer: AbortOnDrop(tokio::spawn(write_batches(sink, batches_rx))),
            outgoing: Vec::new(),
        };
        let result = self.run(session, events, &mut link).await;
        let Link {
            batches,
            mut writer,
            mut outgoing,
            ..
        } = link;
        if let Ok(End::Shutdown) = result {
            // The application is gone, the link is fine: write what the session still has to say
            // (acks of what was just persisted among it) before closing.
            let t = now();
            while let Some(m) = session.poll_transmit(t) {
                outgoing.push(Frame::text(m.to_json_string()));
            }
            if !outgoing.is_empty() {
                let _ = batches.send(outgoing).await;
            }
            drop(batches);
            let _ = tokio::time::timeout(FLUSH_ON_SHUTDOWN, &mut writer.0).await;
        } else {
            drop(batches);
        }
        writer.0.abort();
        session.disconnected();
        result
    }

    async fn run(
        &mut self,
        session: &mut S,
        events: &mpsc::Sender<S::Event>,
        link: &mut Link,
    ) -> Result<End, DriveError> {
        let Link {
            stream,
            max_frame,
            peer,
            batches,
            writer,
            outgoing,
        } = link;
        let max_frame = *max_frame;
        loop {
            let t = now();
            while let Some(m) = session.poll_transmit(t) {
                outgoing.push(Frame::text(m.to_json_string()));
            }
            if !outgoing.is_empty()
                && let Ok(permit) = batches.try_reserve()
            {
                permit.send(std::mem::take(outgoing));
            }
            loop {
                let Some(ev) = self.stash.take().or_else(|| session.poll_event()) else {
                    break;
                };
                match events.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(ev)) => {
                        self.stash = Some(ev);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(End::Shutdown),
                }
            }
            if session.is_dead() {
                return Err(DriveError::Timeout);
            }
            let backpressure = self.stash.is_some();
            // While the application is behind, the session's timers wait too.
            let wake = if backpressure {
                None
            } else {
                session.poll_timeout().map(tokio::time::Instant::from_std)
            };
            tokio::select! {
                // Frames first: after a pause for back-pressure, what the peer sent meanwhile (its
                // keepalives among it) is read before any timer may call it dead.
                biased;
                frame = stream.next(), if !backpressure => match frame {
                    None => return Ok(End::PeerClosed),
                    Some(Err(e)) => return Err(Error::from_ws(e).into()),
                    Some(Ok(frame)) => {
                        let t = now();
                        self.heard.mark(t);
                        match decode_frame(frame, max_frame) {
                            Ok(Some(msg)) => session.handle_frame(t, msg)?,
                            Ok(None) => {}
                            Err(Error::Decode(e)) => {
                                tracing::warn!(peer = %peer.addr, node = %peer.node_id, error = %e, "dropping an undecodable frame");
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                },
                permit = events.reserve(), if backpressure => match (permit, self.stash.take()) {
                    (Ok(permit), Some(ev)) => permit.send(ev),
                    (Ok(_), None) => {}
                    (Err(_), stash) => {
                        self.stash = stash;
                        return Ok(End::Shutdown);
                    }
                },
                permit = batches.reserve(), if !outgoing.is_empty() => match permit {
                    Ok(permit) => permit.send(std::mem::take(outgoing)),
                    Err(_) => {
                        return Err(DriveError::Transport(Error::Io {
                            step: "handing frames to the writer",
                            source: std::io::Error::other("the writer task stopped"),
                        }));
                    }
                },
                done = &mut writer.0 => {
                    return match done {
                        Ok(Err(e)) => Err(e.into()),
                        Ok(Ok(())) | Err(_) => Ok(End::PeerClosed),
                    };
                },
                cmd = self.commands.recv() => match cmd {
                    Some(f) => f(session, now()),
                    None => return Ok(End::Shutdown),
                },
                () = sleep_until(wake) => session.handle_timeout(now()),
            }
        }
    }
}

async fn write_batches(
    mut sink: Sink,
    mut batches: mpsc::Receiver<Vec<Frame>>,
) -> Result<(), Error> {
    while let Some(batch) = batches.recv().await {
        for frame in batch {
            sink.feed(frame).await.map_err(Error::from_ws)?;
        }
        sink.flush().await.map_err(Error::from_ws)?;
    }
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
