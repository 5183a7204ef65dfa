//! Integration tests of kubeedge-core: one binary, one module per area.
#![allow(clippy::unwrap_used, missing_docs)]

mod admission;
mod kubectl;
mod message_golden;
mod pki;
mod resource_props;
mod store;
mod sync_session;
mod sync_sim;
mod transport;
mod watch_bookmarks;
