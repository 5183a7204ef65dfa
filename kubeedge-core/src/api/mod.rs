//! API types shared by the cloud, the edge and the device side: the `devices.kubeedge.io/v1beta1`
//! kinds ([`devices`]) and the device twin's MQTT payloads ([`twin`]), serde-exact to upstream
//! KubeEdge (field names as upstream's JSON tags, absent fields left out).
//!
//! Free-form upstream fields (`configData`, `protocolConfigData`, `dbMethod`,
//! `anomalyDetection`) are kept as JSON values, so an object read and written back loses nothing.

pub mod devices;
#[cfg(feature = "kube")]
pub mod resource;
pub mod twin;
