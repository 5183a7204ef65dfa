//! cloudcore and edgecore together on loopback: the only place both sides meet.
#![allow(clippy::unwrap_used, missing_docs)]

mod pods;
mod sync;
