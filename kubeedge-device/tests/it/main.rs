//! Integration tests of kubeedge-device against real peers.
#![allow(clippy::unwrap_used, missing_docs)]
mod broker;
