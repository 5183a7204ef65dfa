//! Pod streams: `exec`, `attach`, `port-forward` and logs, from kubectl through the cloud to a
//! pod on an edge.
//!
//! * [`channel`]: the numbered channels of a command session, and their frames.
//! * [`spdy`]: SPDY/3.1, as kubectl and CRI streaming servers speak it.
//! * [`remote`]: the upgrade handshakes (WebSocket channel protocols v5/v4, SPDY), served and
//!   dialled, each session presented as a [`channel::Duplex`].
//! * [`tunnel`]: the edge–cloud stream tunnel (HTTP/2 over a connection the edge dials out).

pub mod channel;
pub mod remote;
pub mod spdy;
pub mod tunnel;
