//! # kubeedge-core
//!
//! The shared language and plumbing of kubeedge-rs, KubeEdge reimagined in Rust: what the cloud
//! (`kubeedge-cloud`) and the edge (`kubeedge-edge`) both speak, wire-compatible with upstream
//! KubeEdge.
//!
//! What it is:
//!
//! * [`api`]: `devices.kubeedge.io/v1beta1` Device and DeviceModel, and the device twin's MQTT
//!   payloads, serde-exact to upstream.
//! * [`message`]: the beehive message (`header` / `route` / `content`), serde-exact to upstream, with
//!   typed [`message::Operation`] and [`message::ResourceType`] enums.
//! * [`resource`]: the resource-string grammar (`<ns>/<type>/<name>`, `node/<id>/...`).
//! * [`address`]: where edges reach a cloud (cloudhub and its certificate server), typed.
//! * [`sync`]: the reliable sync protocol as **sans-IO** state machines (no sockets, no clock), and a
//!   deterministic simulation harness behind the `test-util` feature.
//! * [`transport`] (feature `transport`): the TLS WebSocket client and server with mutual
//!   authentication, upstream's upgrade headers, a frame size limit, and an async driver that runs a
//!   sync session over a connection.
//! * [`pki`] (feature `pki`): the certificate authority, CSR signing and upstream's bootstrap token.
//! * [`kubeapi`] (feature `kubeapi`): the Kubernetes REST API over a store (axum), for kubectl,
//!   kube-rs and client-go.
//! * [`store`] (feature `store`): a redb-backed versioned object store with watch, for the
//!   embedded control plane and the edge metastore.
//! * [`admission`] (feature `admission`): connection admission that idle-connection floods cannot
//!   starve, for every listening server; [`metrics`]: Prometheus counters.
//! * [`streaming`] (feature `streaming`): pod streams (`exec`, `attach`, `port-forward`, logs)
//!   as kubectl and CRI runtimes speak them (SPDY/3.1, the WebSocket channel protocols), and the
//!   edge–cloud stream tunnel (HTTP/2) that carries them.
//!
//! What it is not: no Kubernetes client and no controllers; those live in the cloud and edge crates. With `--no-default-features` it builds without tokio, sockets or a clock, for embedding the
//! protocol in any runtime.
//!
//! # Example: encode and decode a message
//!
//! ```
//! use kubeedge_core::message::{Message, Operation, Route};
//!
//! let msg = Message::new("6f1c", 1_718_000_000_123,
//!         Route::new("edgecontroller", "resource", Operation::Insert, "default/pod/nginx"))
//!     .with_resource_version("48211")
//!     .with_content(serde_json::json!({"kind": "Pod"}));
//! let bytes = msg.to_json();
//! assert_eq!(Message::from_json(&bytes, 1 << 20).unwrap(), msg);
//! ```

// docs.rs (nightly, `--cfg docsrs`) marks what each feature-gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod address;
#[cfg(feature = "admission")]
pub mod admission;
pub mod api;
#[cfg(feature = "kubeapi")]
pub mod kubeapi;
pub mod message;
pub mod metrics;
#[cfg(feature = "pki")]
pub mod pki;
pub mod resource;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "streaming")]
pub mod streaming;
pub mod sync;
#[cfg(all(feature = "test-util", feature = "pki", feature = "transport"))]
pub mod test_util;
#[cfg(feature = "transport")]
pub mod transport;

/// Crates whose types appear in this crate's public API, re-exported so that an application names
/// the very versions this crate was built with.
pub mod reexports {
    #[cfg(feature = "kubeapi")]
    pub use axum;
    #[cfg(feature = "streaming")]
    pub use h2;
    #[cfg(feature = "pki")]
    pub use rcgen;
    #[cfg(feature = "store")]
    pub use redb;
    #[cfg(feature = "transport")]
    pub use rustls;
    pub use serde_json;
}

/// An error and its causes (`source()` chain) on one line, `: `-separated, as the binaries and
/// logs print them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
