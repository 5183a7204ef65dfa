//! # kubeedge-cloud
//!
//! The cloud side of kubeedge-rs: what `cloudcore` is made of.
//!
//! What it is (its scope, filled in by the cloud work): cloudhub (the `wss://` server with mutual TLS,
//! one [`kubeedge_core::sync::cloud::Session`] per node, and the `https://` bootstrap server that
//! serves the CA and signs node certificates), the controllers that pick each node's share of
//! Kubernetes objects, node authorization (a node only ever receives and may only write its own
//! objects), and the embedded control plane for one-machine setups.
//!
//! What it is not: it holds no wire format or protocol logic of its own; those live in
//! [`kubeedge_core`], which this crate builds on. It never depends on the edge, device or mesh crates.
//!
//! This release contains no public items yet: the crate marks its place in the workspace so that
//! the dependency rules (cloud → core only) hold from the start.
