//! The cloud–edge link: TLS WebSocket with mutual authentication, and the async driver that runs a
//! [`crate::sync`] session over it.
//!
//! * [`tls`]: rustls configurations (ring only, client certificates required by the server).
//! * [`ws`]: dial and accept with upstream's upgrade headers, one JSON message per frame, a frame
//!   size limit.
//! * [`driver`]: runs a sans-IO session over a connection, with command and event channels.
//!
//! Keepalive (spec §2.3) is part of the sync sessions: the edge session emits a `keepalive` every
//! 15 s and the cloud session declares a node dead after 30 s of silence; the driver then ends the
//! connection with [`driver::DriveError::Timeout`].

pub mod driver;
pub mod tls;
pub mod ws;
