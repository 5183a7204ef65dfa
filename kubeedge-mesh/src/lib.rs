//! # kubeedge-mesh
//!
//! Service reachability across edges, for kubeedge-rs: what upstream KubeEdge ships as EdgeMesh.
//!
//! - [`discovery`]: Services, EndpointSlices and Istio DestinationRules by list/watch on the local
//!   Kubernetes API (edgecore's metaserver at the edge, so it keeps working while the cloud is
//!   away), folded into a [`table::Table`].
//! - [`dns`]: `<svc>.<ns>.svc.<domain>` A/AAAA/SRV/PTR answered from the table; other names
//!   forwarded to the host's resolvers.
//! - [`proxy`] and [`capture`]: a listener per Service port, ClusterIP traffic redirected to it
//!   with iptables, each connection sent to a ready backend chosen by [`lb`] (round robin,
//!   random, consistent hash by source IP or HTTP header, ClientIP affinity); a refusing backend
//!   is skipped.
//! - [`tunnel`]: backends on other nodes reached over mutually authenticated TLS (the nodes'
//!   certificates) with yamux streams: direct when possible, through a hole punched in both NATs
//!   where they allow it, through a relay otherwise.
//! - [`socks`]: a SOCKS5 entry and the gateway for clients outside the mesh.
//! - [`agent`]: all of it composed, as `bins/edgemesh` and `edgecore --mesh` run it.
//!
//! It depends on [`kubeedge_core`] only, never on the cloud or edge crates: it reaches the edge
//! through the local Kubernetes API, as upstream EdgeMesh does.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kubeedge_mesh::agent::{Agent, MeshConfig};
//! let config = kube::Config::new("http://127.0.0.1:10550".parse()?);
//! let client = kube::Client::try_from(config)?;
//! let mut mesh = MeshConfig::new("edge-1");
//! mesh.dns = Some("127.0.0.1:5353".parse()?);
//! let agent = Agent::start(mesh, client).await?;
//! agent.synced().await;
//! # Ok(()) }
//! ```

// docs.rs (nightly, `--cfg docsrs`) marks what each feature-gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod agent;
pub mod capture;
pub mod discovery;
pub mod dns;
pub mod lb;
pub mod mux;
pub mod proxy;
pub mod socks;
pub mod table;
pub mod tunnel;
pub mod wire;

/// The crates this one's public API is written in, re-exported so that an application names the
/// very versions it was built with.
pub use {kube, kubeedge_core};

use std::net::{IpAddr, SocketAddr};

/// What can go wrong in the mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot work.
    #[error("mesh configuration: {0}")]
    Config(String),
    /// A listener could not bind.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// TLS setup or a handshake failed.
    #[error("tunnel TLS: {0}")]
    Tls(String),
    /// No way to a node: what was tried, and why each failed.
    #[error("node {node} is unreachable: {tried}")]
    Unreachable {
        /// The node.
        node: String,
        /// Each attempt and its failure.
        tried: String,
    },
    /// A relay would not make a circuit.
    #[error("relay circuit: {0}")]
    Circuit(String),
    /// The far node would not connect to a backend.
    #[error("node {node} refused the connection to {target}: {reason}")]
    Refused {
        /// The node asked.
        node: String,
        /// The backend.
        target: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A backend refused a connection.
    #[error("backend {0}: {1}")]
    Backend(SocketAddr, #[source] std::io::Error),
    /// No Service has this ClusterIP and port.
    #[error("no Service at {0}:{1}")]
    NoService(IpAddr, u16),
    /// The Service has no ready endpoint.
    #[error("the Service at {0}:{1} has no ready endpoints")]
    NoEndpoints(IpAddr, u16),
    /// Every backend was tried and refused.
    #[error("every backend refused: {0}")]
    AllRefused(String),
    /// An endpoint on another node, and no tunnel.
    #[error("the endpoint is on another node and the tunnel is off")]
    NoTunnel,
    /// iptables or iproute2 failed.
    #[error("traffic capture: {0}")]
    Capture(String),
    /// A malformed tunnel stream.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
