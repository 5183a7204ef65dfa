//! cloudcore and edgecore together on loopback: the only place both sides meet.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
mod crash;
mod devices;
mod devices_opcua;
mod edgesite;
mod faults;
mod join;
mod mesh;
mod netfaults;
mod pods;
mod process;
mod replicas;
mod streams;
mod sync;
mod upstream;
mod workloads;
