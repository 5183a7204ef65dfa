//! # kubeedge-mesh
//!
//! Service reachability across edges, for kubeedge-rs.
//!
//! What it is (its scope, filled in by the mesh work): service discovery from Services and
//! EndpointSlices through list/watch, edge DNS, an L4 TCP/UDP proxy, L7 HTTP routing, and a
//! cross-edge tunnel.
//!
//! What it is not: no cloud or edge logic; it depends on [`kubeedge_core`] only.
//!
//! This release contains no public items yet: the crate marks its place in the workspace.
