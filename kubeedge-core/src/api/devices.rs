//! `devices.kubeedge.io/v1beta1`: Device and DeviceModel, and their CustomResourceDefinitions.
//!
//! ```
//! use kubeedge_core::api::devices::Device;
//!
//! let device: Device = serde_json::from_value(serde_json::json!({
//!     "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
//!     "metadata": {"name": "thermo", "namespace": "default"},
//!     "spec": {"deviceModelRef": {"name": "thermo-model"}, "nodeName": "edge-1",
//!              "protocol": {"protocolName": "modbus", "configData": {"ip": "127.0.0.1", "port": 502}},
//!              "properties": [{"name": "temperature", "collectCycle": 1000, "reportCycle": 1000,
//!                              "visitors": {"protocolName": "modbus",
//!                                           "configData": {"register": "HoldingRegister", "offset": 0}}}]}
//! })).unwrap();
//! assert_eq!(device.spec.node_name, "edge-1");
//! assert_eq!(device.spec.properties[0].collect_cycle, 1000);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group.
pub const GROUP: &str = "devices.kubeedge.io";
/// The version.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` of both kinds.
pub const API_VERSION: &str = "devices.kubeedge.io/v1beta1";

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A Device: an instance of a [`DeviceModel`] bound to a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// `devices.kubeedge.io/v1beta1`.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    /// `Device`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Object metadata (as the API server returns it).
    #[serde(default)]
    pub metadata: Value,
    /// What the device is and how to reach it.
    #[serde(default)]
    pub spec: DeviceSpec,
    /// What was reported (twins, state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

/// `Device.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// The model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model_ref: Option<ModelRef>,
    /// The node the device is attached to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// How to reach the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolConfig>,
    /// Properties (twins) to collect, report and set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<DeviceProperty>,
    /// Methods the device offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<DeviceMethod>,
    /// Whether and how often the device state is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_report: Option<StateReport>,
}

/// `deviceModelRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The DeviceModel's name (same namespace).
    #[serde(default)]
    pub name: String,
}

/// `protocol` of a Device, `visitors` of a property: a protocol name and free-form settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolConfig {
    /// `modbus`, `opcua`, `bluetooth`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_name: String,
    /// The protocol's settings (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_data: Option<Value>,
}

/// One property of a Device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperty {
    /// Its name (matches a model property).
    pub name: String,
    /// The value the device should have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinProperty>,
    /// Where the value lives on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<ProtocolConfig>,
    /// Milliseconds between reports.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub report_cycle: i64,
    /// Milliseconds between reads of the device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub collect_cycle: i64,
    /// Whether reported values go to the cloud.
    #[serde(default, skip_serializing_if = "is_false")]
    pub report_to_cloud: bool,
    /// Where else values are pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_method: Option<PushMethod>,
}

/// A twin value with string metadata (`desired`, `reported`, `observedDesired`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinProperty {
    /// The value, as a string.
    #[serde(default)]
    pub value: String,
    /// `timestamp`, `type`, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `pushMethod`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushMethod {
    /// POST each value to an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<PushHttp>,
    /// Publish each value on an MQTT topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<PushMqtt>,
    /// OpenTelemetry export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel: Option<PushOtel>,
    /// Database sinks (influxdb2, redis, TDEngine, mysql), free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_method: Option<Value>,
}

/// `pushMethod.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushHttp {
    /// `http://host` (scheme optional).
    #[serde(default)]
    pub host_name: String,
    /// Port.
    #[serde(default)]
    pub port: i64,
    /// Path.
    #[serde(default)]
    pub request_path: String,
    /// Timeout in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
}

/// `pushMethod.mqtt`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushMqtt {
    /// `tcp://host:port`.
    #[serde(default)]
    pub address: String,
    /// Topic.
    #[serde(default)]
    pub topic: String,
    /// QoS 0, 1 or 2.
    #[serde(default)]
    pub qos: i32,
    /// Retain flag.
    #[serde(default)]
    pub retained: bool,
}

/// `pushMethod.otel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushOtel {
    /// The collector's URL.
    #[serde(rename = "endpointURL", default)]
    pub endpoint_url: String,
}

/// One method of a Device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMethod {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The properties it touches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub property_names: Vec<String>,
}

/// `stateReport`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// Whether the state goes to the cloud.
    #[serde(default)]
    pub report_to_cloud: bool,
    /// Milliseconds between state reports.
    #[serde(default)]
    pub report_cycle: i64,
}

/// `Device.status` (the v1.22 layout: twins, state and last online time on the Device).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Reported and observed desired values, one per property.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub twins: Vec<Twin>,
    /// `online`, `offline`, `ok`, `unknown`, `unhealthy`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// When the device was last seen online.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online_time: String,
    /// Whether values go to the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_to_cloud: Option<bool>,
    /// Milliseconds between reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_cycle: Option<i64>,
    /// kubeedge-rs: a `Ready` condition saying why a device is not well (an unknown protocol, a
    /// property that cannot be read, an unreachable device); upstream has no conditions here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Value>,
}

/// One entry of `status.twins`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// The property.
    pub property_name: String,
    /// The desired value the device was last seen with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_desired: Option<TwinProperty>,
    /// The value the device reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<TwinProperty>,
}

/// A DeviceModel: the properties a kind of device has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// `devices.kubeedge.io/v1beta1`.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    /// `DeviceModel`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Object metadata.
    #[serde(default)]
    pub metadata: Value,
    /// The model.
    #[serde(default)]
    pub spec: DeviceModelSpec,
}

/// `DeviceModel.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceModelSpec {
    /// The protocol its devices speak.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Protocol settings shared by its devices (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_config_data: Option<Value>,
    /// The properties.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<ModelProperty>,
}

/// One property of a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperty {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `INT`, `FLOAT`, `DOUBLE`, `STRING`, `BOOLEAN`, `BYTES`, `STREAM`.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `ReadWrite` or `ReadOnly`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_mode: String,
    /// Lowest value (as a string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub minimum: String,
    /// Highest value (as a string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub maximum: String,
    /// Unit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// Default visitor settings, overridable per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<Value>,
}

/// `metadata.<field>` of an object as a string ("" when missing).
pub fn meta_str<'a>(metadata: &'a Value, field: &str) -> &'a str {
    metadata[field].as_str().unwrap_or("")
}

impl Device {
    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        meta_str(&self.metadata, "namespace")
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        meta_str(&self.metadata, "name")
    }
    /// The upstream device id, `<namespace>/<name>`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }
    /// The protocol: the Device's own, else the one its property visitors name.
    pub fn protocol_name(&self) -> &str {
        self.spec
            .protocol
            .as_ref()
            .map(|p| p.protocol_name.as_str())
            .filter(|p| !p.is_empty())
            .or_else(|| {
                self.spec
                    .properties
                    .iter()
                    .filter_map(|p| p.visitors.as_ref())
                    .map(|v| v.protocol_name.as_str())
                    .find(|p| !p.is_empty())
            })
            .unwrap_or("")
    }
}

impl DeviceModel {
    /// `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        meta_str(&self.metadata, "namespace")
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        meta_str(&self.metadata, "name")
    }
}

/// The CRDs of Device, DeviceModel and DeviceStatus as upstream defines them (versions
/// `v1alpha2` and `v1beta1`, both served, `v1beta1` stored; structural schemas, so that a Device
/// whose `nodeName` is a number is refused with the field named; no status subresource, as
/// upstream has none), as the embedded control plane installs them. Generated from upstream's
/// CRD files without their descriptions by `devices_crds.py`.
pub fn crds() -> Vec<Value> {
    // The file is compiled in and checked by the tests: it parses.
    serde_json::from_str(include_str!("devices_crds.json")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_objects_round_trip_unchanged() {
        let device = json!({
            "apiVersion": API_VERSION, "kind": "Device",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {
                "deviceModelRef": {"name": "m"}, "nodeName": "n1",
                "protocol": {"protocolName": "modbus", "configData": {"ip": "10.0.0.2", "port": 502, "slaveID": 1}},
                "properties": [{
                    "name": "temperature",
                    "desired": {"value": "30", "metadata": {"type": "int"}},
                    "visitors": {"protocolName": "modbus",
                                 "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 0.1}},
                    "reportCycle": 2000, "collectCycle": 1000, "reportToCloud": true,
                    "pushMethod": {"mqtt": {"address": "tcp://127.0.0.1:1883", "topic": "t", "qos": 1, "retained": false},
                                   "dbMethod": {"TDEngine": {"TDEngineClientConfig": {"addr": "x", "dbName": "y"}}}}
                }],
                "methods": [{"name": "set", "propertyNames": ["temperature"]}],
            },
            "status": {"twins": [{"propertyName": "temperature",
                                  "reported": {"value": "25", "metadata": {"timestamp": "1", "type": "int"}}}],
                       "state": "online"},
        });
        let parsed: Device = serde_json::from_value(device.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), device);
        assert_eq!(parsed.id(), "default/d");
        assert_eq!(parsed.protocol_name(), "modbus");

        let model = json!({
            "apiVersion": API_VERSION, "kind": "DeviceModel",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"protocol": "modbus",
                     "properties": [{"name": "temperature", "type": "INT", "accessMode": "ReadWrite",
                                     "minimum": "0", "maximum": "100", "unit": "C"}]},
        });
        let parsed: DeviceModel = serde_json::from_value(model.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), model);
    }

    #[test]
    fn crds_name_group_and_plural() {
        let names: Vec<String> = crds()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "devices.devices.kubeedge.io",
                "devicemodels.devices.kubeedge.io",
                "devicestatuses.devices.kubeedge.io"
            ]
        );
        for crd in crds() {
            let versions: Vec<&str> = crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect();
            assert_eq!(versions, ["v1alpha2", "v1beta1"]);
            assert!(
                crd["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                    .is_object()
            );
        }
    }
}
