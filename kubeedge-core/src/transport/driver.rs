//! The thin async driver: runs a sans-IO sync session over one [`Connection`].
//!
//! The session is borrowed, not owned, so it outlives the connection: what it learned (acks,
//! queued changes) carries over to the next one. The application talks to it through two
//! channels: commands (closures run against the session, e.g. `enqueue` or `persisted`) and
//! events (what the session reports). The event channel is bounded; when it is full the driver
//! stops reading from the peer until the application catches up, so memory stays bounded.
//!
//! ```no_run
//! # async fn f(conn: kubeedge_core::transport::ws::Connection,
//! #            mut session: kubeedge_core::sync::edge::Session) {
//! use kubeedge_core::transport::driver;
//! let (handle, mut commands) = driver::channel(64);
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         // persist, then: handle.exec(move |s, now| s.persisted(now, [token])).await
//!         let _ = event;
//!     }
//! });
//! let end = driver::drive(conn, &mut session, &mut commands, &events_tx).await;
//! # let _ = end;
//! # }
//! ```

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::ws::{Connection, Error, decode_frame};
use crate::sync::{Endpoint, ProtocolError};

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

/// The driver is gone (its command receiver was dropped).
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

/// A command channel of `capacity` slots: the handle for the application, the receiver for
/// [`drive`]. The receiver can serve several connections in turn.
pub fn channel<S>(capacity: usize) -> (Handle<S>, mpsc::Receiver<Command<S>>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Handle { tx }, rx)
}

/// Why [`drive`] returned without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// The peer closed the connection.
    PeerClosed,
    /// The application went away (every [`Handle`] or the event receiver was dropped).
    Shutdown,
}

/// Why [`drive`] failed.
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

/// A fresh seed for session message ids, from the standard library's per-process random keys.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Runs `session` over `conn` until the connection ends. Calls `connected` first and `disconnected`
/// last, whatever the outcome.
pub async fn drive<S: Endpoint>(
    conn: Connection,
    session: &mut S,
    commands: &mut mpsc::Receiver<Command<S>>,
    events: &mpsc::Sender<S::Event>,
) -> Result<End, DriveError> {
    let negotiated = conn.peer().negotiated;
    session.connected(now(), negotiated);
    let result = run(conn, session, commands, events).await;
    session.disconnected();
    result
}

async fn run<S: Endpoint>(
    conn: Connection,
    session: &mut S,
    commands: &mut mpsc::Receiver<Command<S>>,
    events: &mpsc::Sender<S::Event>,
) -> Result<End, DriveError> {
    let (ws, max_frame, peer) = conn.into_parts();
    let (mut sink, mut stream) = ws.split();
    // An event that did not fit in the channel; nothing is read until it is delivered.
    let mut stash: Option<S::Event> = None;
    loop {
        let t = now();
        let mut wrote = false;
        while let Some(m) = session.poll_transmit(t) {
            sink.feed(Frame::text(m.to_json_string()))
                .await
                .map_err(ws_error)?;
            wrote = true;
        }
        if wrote {
            sink.flush().await.map_err(ws_error)?;
        }
        loop {
            let Some(ev) = stash.take().or_else(|| session.poll_event()) else {
                break;
            };
            match events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    stash = Some(ev);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(End::Shutdown),
            }
        }
        if session.is_dead() {
            return Err(DriveError::Timeout);
        }
        let wake = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            frame = stream.next(), if stash.is_none() => match frame {
                None => return Ok(End::PeerClosed),
                Some(Err(e)) => return Err(ws_error(e).into()),
                Some(Ok(frame)) => match decode_frame(frame, max_frame) {
                    Ok(Some(msg)) => session.handle_frame(now(), msg)?,
                    Ok(None) => {}
                    Err(Error::Decode(e)) => {
                        tracing::warn!(peer = %peer.addr, node = %peer.node_id, error = %e, "dropping an undecodable frame");
                    }
                    Err(e) => return Err(e.into()),
                },
            },
            permit = events.reserve(), if stash.is_some() => match (permit, stash.take()) {
                (Ok(permit), Some(ev)) => permit.send(ev),
                (Ok(_), None) => {}
                (Err(_), _) => return Ok(End::Shutdown),
            },
            cmd = commands.recv() => match cmd {
                Some(f) => f(session, now()),
                None => return Ok(End::Shutdown),
            },
            () = sleep_until(wake) => session.handle_timeout(now()),
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> Error {
    Error::from_ws(e)
}
