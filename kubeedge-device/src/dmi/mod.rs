//! DMI, the Device Management Interface (upstream `v1beta1`): gRPC over unix sockets between
//! edgecore (`DeviceManagerService`) and mappers (`DeviceMapperService`).
//!
//! [`v1beta1`] is generated from `proto/dmi.v1beta1.proto` (package, services, messages and field
//! numbers as upstream's) and committed, so building needs no protoc; regenerate it with
//! `tonic-prost-build` (client and server, no transport) when the proto changes.
//!
//! The conversions here turn the `devices.kubeedge.io` objects into their DMI form and back.
//! Free-form `configData` travels as `map<string, google.protobuf.Any>`: strings as
//! `StringValue`, integers as `Int64Value`, other numbers as `DoubleValue`, booleans as
//! `BoolValue`, objects and arrays as `StringValue` holding their JSON. Decoding also accepts
//! `Int32Value`, `UInt32Value`, `UInt64Value` and `FloatValue`.

#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v1beta1 {
    //! Generated DMI v1beta1 messages, clients and servers.
    include!("v1beta1.rs");
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use kubeedge_core::api::devices as api;
use prost::Message as _;
use serde_json::{Map, Value};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// Socket file name edgecore serves DMI on, in its DMI directory (upstream `dmi.sock`).
pub const MANAGER_SOCKET: &str = "dmi.sock";
/// The DMI API version mappers register with.
pub const API_VERSION: &str = "v1beta1";

const TYPE_PREFIX: &str = "type.googleapis.com/google.protobuf.";

/// A JSON value as `google.protobuf.Any` (see the module docs).
pub fn to_any(v: &Value) -> prost_types::Any {
    let (ty, bytes) = match v {
        Value::String(s) => ("StringValue", s.clone().encode_to_vec()),
        Value::Bool(b) => ("BoolValue", b.encode_to_vec()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ("Int64Value", i.encode_to_vec()),
            None => ("DoubleValue", n.as_f64().unwrap_or(0.0).encode_to_vec()),
        },
        Value::Null => ("StringValue", String::new().encode_to_vec()),
        other => ("StringValue", other.to_string().encode_to_vec()),
    };
    prost_types::Any {
        type_url: format!("{TYPE_PREFIX}{ty}"),
        value: bytes,
    }
}

/// A `google.protobuf.Any` wrapper value as JSON (`Null` for types it does not know).
pub fn from_any(any: &prost_types::Any) -> Value {
    let ty = any.type_url.rsplit('/').next().unwrap_or("");
    let ty = ty.strip_prefix("google.protobuf.").unwrap_or(ty);
    let b = any.value.as_slice();
    let number = |f: f64| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    match ty {
        "StringValue" => match String::decode(b) {
            // Objects and arrays travel as their JSON.
            Ok(s) if s.starts_with('{') || s.starts_with('[') => {
                serde_json::from_str(&s).unwrap_or(Value::String(s))
            }
            Ok(s) => Value::String(s),
            Err(_) => Value::Null,
        },
        "BoolValue" => bool::decode(b).map_or(Value::Null, Value::Bool),
        "Int64Value" => i64::decode(b).map_or(Value::Null, Value::from),
        "Int32Value" => i32::decode(b).map_or(Value::Null, Value::from),
        "UInt64Value" => u64::decode(b).map_or(Value::Null, Value::from),
        "UInt32Value" => u32::decode(b).map_or(Value::Null, Value::from),
        "DoubleValue" => f64::decode(b).map_or(Value::Null, number),
        "FloatValue" => f32::decode(b).map_or(Value::Null, |f| number(f64::from(f))),
        _ => Value::Null,
    }
}

/// A JSON object as a `CustomizedValue` (non-objects give an empty one).
pub fn to_customized(v: Option<&Value>) -> Option<v1beta1::CustomizedValue> {
    let obj = v?.as_object()?;
    Some(v1beta1::CustomizedValue {
        data: obj.iter().map(|(k, v)| (k.clone(), to_any(v))).collect(),
    })
}

/// A `CustomizedValue` as a JSON object.
pub fn from_customized(c: Option<&v1beta1::CustomizedValue>) -> Value {
    let mut out = Map::new();
    for (k, v) in c.map(|c| &c.data).into_iter().flatten() {
        out.insert(k.clone(), from_any(v));
    }
    Value::Object(out)
}

fn twin_property(p: &api::TwinProperty) -> v1beta1::TwinProperty {
    v1beta1::TwinProperty {
        value: p.value.clone(),
        metadata: p
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A Device in its DMI form.
pub fn device(d: &api::Device) -> v1beta1::Device {
    let properties = d
        .spec
        .properties
        .iter()
        .map(|p| v1beta1::DeviceProperty {
            name: p.name.clone(),
            desired: p.desired.as_ref().map(twin_property),
            visitors: p.visitors.as_ref().map(|v| v1beta1::VisitorConfig {
                protocol_name: v.protocol_name.clone(),
                config_data: to_customized(v.config_data.as_ref()),
            }),
            report_cycle: p.report_cycle,
            collect_cycle: p.collect_cycle,
            report_to_cloud: p.report_to_cloud,
            push_method: p.push_method.as_ref().map(|m| v1beta1::PushMethod {
                http: m.http.as_ref().map(|h| v1beta1::PushMethodHttp {
                    hostname: h.host_name.clone(),
                    port: h.port,
                    requestpath: h.request_path.clone(),
                    timeout: h.timeout,
                }),
                mqtt: m.mqtt.as_ref().map(|q| v1beta1::PushMethodMqtt {
                    address: q.address.clone(),
                    topic: q.topic.clone(),
                    qos: q.qos,
                    retained: q.retained,
                }),
                otel: m.otel.as_ref().map(|o| v1beta1::PushMethodOtel {
                    endpoint_url: o.endpoint_url.clone(),
                }),
                ..Default::default()
            }),
        })
        .collect();
    v1beta1::Device {
        name: d.name().to_owned(),
        namespace: d.namespace().to_owned(),
        spec: Some(v1beta1::DeviceSpec {
            device_model_reference: d
                .spec
                .device_model_ref
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            protocol: d.spec.protocol.as_ref().map(|p| v1beta1::ProtocolConfig {
                protocol_name: p.protocol_name.clone(),
                config_data: to_customized(p.config_data.as_ref()),
            }),
            properties,
            methods: d
                .spec
                .methods
                .iter()
                .map(|m| v1beta1::DeviceMethod {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    property_names: m.property_names.clone(),
                })
                .collect(),
        }),
        status: None,
    }
}

fn metadata(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A DMI Device back as a `devices.kubeedge.io` Device (what a mapper works from).
pub fn device_from_dmi(d: &v1beta1::Device) -> api::Device {
    let spec = d.spec.clone().unwrap_or_default();
    api::Device {
        api_version: api::API_VERSION.into(),
        kind: "Device".into(),
        metadata: serde_json::json!({"name": d.name, "namespace": d.namespace}),
        spec: api::DeviceSpec {
            device_model_ref: Some(api::ModelRef {
                name: spec.device_model_reference.clone(),
            })
            .filter(|m| !m.name.is_empty()),
            node_name: String::new(),
            protocol: spec.protocol.as_ref().map(|p| api::ProtocolConfig {
                protocol_name: p.protocol_name.clone(),
                config_data: Some(from_customized(p.config_data.as_ref())),
            }),
            properties: spec
                .properties
                .iter()
                .map(|p| api::DeviceProperty {
                    name: p.name.clone(),
                    desired: p.desired.as_ref().map(|t| api::TwinProperty {
                        value: t.value.clone(),
                        metadata: metadata(&t.metadata),
                    }),
                    visitors: p.visitors.as_ref().map(|v| api::ProtocolConfig {
                        protocol_name: v.protocol_name.clone(),
                        config_data: Some(from_customized(v.config_data.as_ref())),
                    }),
                    report_cycle: p.report_cycle,
                    collect_cycle: p.collect_cycle,
                    report_to_cloud: p.report_to_cloud,
                    push_method: p.push_method.as_ref().map(|m| api::PushMethod {
                        http: m.http.as_ref().map(|h| api::PushHttp {
                            host_name: h.hostname.clone(),
                            port: h.port,
                            request_path: h.requestpath.clone(),
                            timeout: h.timeout,
                        }),
                        mqtt: m.mqtt.as_ref().map(|q| api::PushMqtt {
                            address: q.address.clone(),
                            topic: q.topic.clone(),
                            qos: q.qos,
                            retained: q.retained,
                        }),
                        otel: m.otel.as_ref().map(|o| api::PushOtel {
                            endpoint_url: o.endpoint_url.clone(),
                        }),
                        db_method: None,
                    }),
                })
                .collect(),
            methods: spec
                .methods
                .iter()
                .map(|m| api::DeviceMethod {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    property_names: m.property_names.clone(),
                })
                .collect(),
            state_report: None,
        },
        status: None,
    }
}

/// A DeviceModel in its DMI form (no protocol and no visitors: DMI's model has neither).
pub fn model(m: &api::DeviceModel) -> v1beta1::DeviceModel {
    v1beta1::DeviceModel {
        name: m.name().to_owned(),
        namespace: m.namespace().to_owned(),
        spec: Some(v1beta1::DeviceModelSpec {
            properties: m
                .spec
                .properties
                .iter()
                .map(|p| v1beta1::ModelProperty {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    r#type: p.kind.clone(),
                    access_mode: p.access_mode.clone(),
                    minimum: p.minimum.clone(),
                    maximum: p.maximum.clone(),
                    unit: p.unit.clone(),
                })
                .collect(),
            commands: Vec::new(),
        }),
    }
}

/// A DMI DeviceModel back as a `devices.kubeedge.io` DeviceModel.
pub fn model_from_dmi(m: &v1beta1::DeviceModel) -> api::DeviceModel {
    api::DeviceModel {
        api_version: api::API_VERSION.into(),
        kind: "DeviceModel".into(),
        metadata: serde_json::json!({"name": m.name, "namespace": m.namespace}),
        spec: api::DeviceModelSpec {
            protocol: String::new(),
            protocol_config_data: None,
            properties: m
                .spec
                .iter()
                .flat_map(|s| &s.properties)
                .map(|p| api::ModelProperty {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    kind: p.r#type.clone(),
                    access_mode: p.access_mode.clone(),
                    minimum: p.minimum.clone(),
                    maximum: p.maximum.clone(),
                    unit: p.unit.clone(),
                    visitors: None,
                })
                .collect(),
        },
    }
}

/// A gRPC channel to a unix socket (`unix:///path` or a plain path).
pub async fn connect(socket: &str) -> Result<Channel, Error> {
    let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
    let shown = path.display().to_string();
    // The URI is not used: the connector dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| Error::Dmi {
            step: format!("connecting to {shown}"),
            message: kubeedge_core::error_chain(&e),
        })
}

/// Binds a unix socket at `path`, replacing a stale socket file left by an earlier run (creating
/// the directory if needed).
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    let io = |step: String| move |source| Error::Io { step, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing the old {}", path.display()))(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(io(format!("binding {}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn config_data_survives_the_trip_through_any() {
        let data = json!({"register": "HoldingRegister", "offset": 3, "scale": 0.5,
                          "isSwap": true, "nested": {"a": [1, 2]}});
        let back = from_customized(to_customized(Some(&data)).as_ref());
        assert_eq!(back, data);
    }

    #[test]
    fn a_device_survives_the_trip_through_dmi() {
        let d: api::Device = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"deviceModelRef": {"name": "m"},
                     "protocol": {"protocolName": "modbus", "configData": {"ip": "127.0.0.1", "port": 5020}},
                     "properties": [{"name": "t", "desired": {"value": "7", "metadata": {"type": "int"}},
                                     "visitors": {"protocolName": "modbus", "configData": {"offset": 1}},
                                     "collectCycle": 500, "reportCycle": 1000, "reportToCloud": true,
                                     "pushMethod": {"mqtt": {"address": "tcp://127.0.0.1:1883", "topic": "x", "qos": 1}}}]}
        }))
        .unwrap();
        let back = device_from_dmi(&device(&d));
        assert_eq!(back.spec.properties, d.spec.properties);
        assert_eq!(back.spec.protocol, d.spec.protocol);
        assert_eq!(back.id(), "ns/d");
    }
}
