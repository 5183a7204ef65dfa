//! # kubeedge-edge
//!
//! The edge side of kubeedge-rs: what `edgecore` is made of.
//!
//! What it is (its scope, filled in by the edge work): edgehub (dials the cloud, reconnects with
//! jittered backoff, drives one [`kubeedge_core::sync::edge::Session`]), the metastore that persists
//! every object before it is acked, the durable upstream queue for status, the metaserver
//! (a Kubernetes-compatible list/watch API on loopback, online and offline), and pod lifecycle over
//! CRI or a process runtime.
//!
//! What it is not: no wire format or protocol logic of its own (see [`kubeedge_core`]), and no
//! dependency on the cloud, device or mesh crates.
//!
//! This release contains no public items yet: the crate marks its place in the workspace so that
//! the dependency rules (edge → core only) hold from the start.
