//! # kubeedge-device
//!
//! Devices as Kubernetes objects, for kubeedge-rs.
//!
//! What it is (its scope, filled in by the device work): the device twin (desired vs reported
//! state), the MQTT event bus with upstream's `$hw/events/...` topics, the DMI gRPC services between
//! edgecore and mappers, and the mapper framework with Modbus, OPC-UA and BLE drivers.
//!
//! What it is not: no cloud or edge logic; it depends on [`kubeedge_core`] only.
//!
//! This release contains no public items yet: the crate marks its place in the workspace.
