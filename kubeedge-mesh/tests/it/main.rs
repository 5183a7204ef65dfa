//! The mesh's parts against real sockets on 127.0.0.1: the tunnel through a relay and direct, its
//! refusals; discovery, DNS and the proxy against the embedded control plane's API are in
//! `bins/edgecore/tests/e2e/mesh.rs` (real edgecores in network namespaces).

#![allow(clippy::unwrap_used, missing_docs)]

mod tunnel;
