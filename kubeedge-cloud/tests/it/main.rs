//! kubeedge-cloud's integration tests, one binary: the embedded control plane with real clients
//! (kubectl, kube-rs, the Python `kubernetes` client), cloudhub with test edges over mTLS
//! WebSockets, and the certificate server.
#![allow(clippy::unwrap_used, missing_docs)]

mod certserver;
mod common;
mod conformance;
mod controlplane;
#[cfg(feature = "etcd")]
mod etcd;
mod hub;
mod workloads;
