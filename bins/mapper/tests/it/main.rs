//! The mapper binary against real peers.
#![allow(clippy::unwrap_used, missing_docs)]

mod ble;
