//! The device twin's MQTT payloads and topics, as upstream's DeviceTwin and mappers exchange them
//! (`$hw/events/device/<namespace>/<name>/twin/...`).
//!
//! ```
//! use kubeedge_core::api::twin::{DeviceTwinUpdate, Topic};
//!
//! let t = Topic::parse("$hw/events/device/default/thermo/twin/update").unwrap();
//! assert_eq!(t, Topic::Device { namespace: "default".into(), name: "thermo".into(),
//!                               action: "twin/update".into() });
//! let update: DeviceTwinUpdate = serde_json::from_str(r#"{"event_id":"","timestamp":1718000000000,
//!     "twin":{"temperature":{"actual":{"value":"25.3","metadata":{"timestamp":1718000000000}},
//!                            "metadata":{"type":"float"}}}}"#).unwrap();
//! assert_eq!(update.twin["temperature"].actual_value(), Some("25.3"));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of every device topic.
pub const DEVICE_PREFIX: &str = "$hw/events/device/";
/// Prefix of every node topic.
pub const NODE_PREFIX: &str = "$hw/events/node/";

/// The topics the edge subscribes to for mappers and apps.
pub const SUBSCRIPTIONS: [&str; 4] = [
    "$hw/events/device/+/+/twin/+",
    "$hw/events/device/+/+/state/update",
    "$hw/events/node/+/membership/get",
    "$hw/events/upload/#",
];

/// `$hw/events/device/<ns>/<name>/<suffix>`.
pub fn device_topic(namespace: &str, name: &str, suffix: &str) -> String {
    format!("{DEVICE_PREFIX}{namespace}/{name}/{suffix}")
}

/// `$hw/events/node/<node>/<suffix>`.
pub fn node_topic(node: &str, suffix: &str) -> String {
    format!("{NODE_PREFIX}{node}/{suffix}")
}

/// A twin or membership topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `$hw/events/device/<namespace>/<name>/<action>` (`twin/update`, `twin/get`, `state/update`, ...).
    Device {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What follows the two id segments.
        action: String,
    },
    /// `$hw/events/node/<node>/<action>` (`membership/get`).
    Node {
        /// Node name.
        node: String,
        /// What follows the node.
        action: String,
    },
}

impl Topic {
    /// Parses a `$hw/events/device/...` or `$hw/events/node/...` topic; `None` for others.
    pub fn parse(topic: &str) -> Option<Topic> {
        if let Some(rest) = topic.strip_prefix(DEVICE_PREFIX) {
            let mut parts = rest.splitn(3, '/');
            let (ns, name, action) = (parts.next()?, parts.next()?, parts.next()?);
            if ns.is_empty() || name.is_empty() || action.is_empty() {
                return None;
            }
            return Some(Topic::Device {
                namespace: ns.into(),
                name: name.into(),
                action: action.into(),
            });
        }
        let rest = topic.strip_prefix(NODE_PREFIX)?;
        let (node, action) = rest.split_once('/')?;
        (!node.is_empty() && !action.is_empty()).then(|| Topic::Node {
            node: node.into(),
            action: action.into(),
        })
    }
}

/// `{"timestamp": ms}` of a twin value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMetadata {
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timestamp: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `expected` or `actual` of a twin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinValue {
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ValueMetadata>,
}

impl TwinValue {
    /// `value` set at `timestamp` (ms).
    pub fn at(value: impl Into<String>, timestamp: i64) -> TwinValue {
        TwinValue {
            value: Some(value.into()),
            metadata: Some(ValueMetadata { timestamp }),
        }
    }

    /// The timestamp (0 when absent).
    pub fn timestamp(&self) -> i64 {
        self.metadata.as_ref().map_or(0, |m| m.timestamp)
    }
}

/// `{"type": "int"}` of a twin; type `deleted` marks a deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeMetadata {
    /// `int`, `integer`, `string`, `double`, `float`, `boolean`, `bytes`, or `deleted` (left out
    /// when empty, as upstream does).
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// Twin versions (edge-internal; stripped from what mappers get).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVersion {
    /// Cloud-side version.
    #[serde(default)]
    pub cloud: i64,
    /// Edge-side version.
    #[serde(default)]
    pub edge: i64,
}

/// One twin (`MsgTwin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgTwin {
    /// The desired value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<TwinValue>,
    /// The reported value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<TwinValue>,
    /// Whether the twin may be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The value type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
    /// Version of `expected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<TwinVersion>,
    /// Version of `actual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<TwinVersion>,
}

impl MsgTwin {
    /// `expected.value`.
    pub fn expected_value(&self) -> Option<&str> {
        self.expected.as_ref().and_then(|v| v.value.as_deref())
    }
    /// `actual.value`.
    pub fn actual_value(&self) -> Option<&str> {
        self.actual.as_ref().and_then(|v| v.value.as_deref())
    }
    /// `metadata.type` ("" when absent).
    pub fn kind(&self) -> &str {
        self.metadata.as_ref().map_or("", |m| m.kind.as_str())
    }
    /// The twin without versions, as mappers get it.
    pub fn without_versions(&self) -> MsgTwin {
        MsgTwin {
            expected_version: None,
            actual_version: None,
            ..self.clone()
        }
    }
}

/// Twins by property name.
pub type Twins = BTreeMap<String, MsgTwin>;

/// Twins as upstream sends them: the map may be `null`, and so may an entry (dropped).
fn lenient_twins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Twins, D::Error> {
    let raw: Option<BTreeMap<String, Option<MsgTwin>>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// A value that upstream (Go) sends as `null` when empty: the default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `twin/update` (in), `update/result`, `get/result`, and the edge's report to the cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinUpdate {
    /// Correlation id chosen by the sender.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// The twins.
    #[serde(default, deserialize_with = "lenient_twins")]
    pub twin: Twins,
}

/// `twin/update/delta`: twins whose expected value differs from the actual one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinDelta {
    /// Correlation id.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Every twin of the device.
    #[serde(default, deserialize_with = "lenient_twins")]
    pub twin: Twins,
    /// Property → expected value, for those that differ.
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: BTreeMap<String, String>,
}

/// Last and current state of one twin in a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinDoc {
    /// Before the update (`null` when new).
    pub last: Option<MsgTwin>,
    /// After it (`null` when deleted).
    pub current: Option<MsgTwin>,
}

/// `twin/update/document`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinDocument {
    /// Correlation id.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Changed twins.
    #[serde(default, deserialize_with = "null_as_default")]
    pub twin: BTreeMap<String, TwinDoc>,
}

/// An error result (`code` 400, 404, 409 or 500).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResult {
    /// Correlation id of the request.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// HTTP-like code (0 when the sender gave none).
    #[serde(default)]
    pub code: u16,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `state/update` (in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateUpdate {
    /// Correlation id.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// `online`, `offline`, `ok`, `unknown`, `unhealthy` (any case).
    pub state: String,
}

/// The states a device may report.
pub const STATES: [&str; 5] = ["online", "offline", "ok", "unknown", "unhealthy"];

/// A device in membership messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDevice {
    /// `<namespace>/<name>`.
    pub id: String,
    /// Name (upstream may leave it out).
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// State.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// When the device was last online (upstream's `last_online`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online: String,
    /// Attributes, as upstream sends them (name → `{"value", "optional", "metadata"}`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Twins.
    #[serde(
        default,
        deserialize_with = "lenient_twins",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub twin: Twins,
}

/// `membership/get/result`: the devices bound to the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipDetail {
    /// Correlation id.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// The devices.
    #[serde(default, deserialize_with = "null_as_default")]
    pub devices: Vec<MemberDevice>,
}

/// `membership/updated`: devices added to or removed from the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipUpdate {
    /// Correlation id.
    #[serde(default)]
    pub event_id: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Devices bound since.
    #[serde(default, deserialize_with = "null_as_default")]
    pub added_devices: Vec<MemberDevice>,
    /// Devices gone since.
    #[serde(default, deserialize_with = "null_as_default")]
    pub removed_devices: Vec<MemberDevice>,
}

/// Whether a twin name is acceptable (`^[a-zA-Z0-9-_.,:/@#]{1,128}$`).
pub fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(allowed)
}

/// Whether a twin value is acceptable (`^[a-zA-Z0-9-_.,:/@#]{1,512}$`).
pub fn valid_value(value: &str) -> bool {
    (1..=512).contains(&value.len()) && value.bytes().all(allowed)
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.,:/@#".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn payloads_as_upstream_emits_them_decode() {
        let u: DeviceTwinUpdate = serde_json::from_str(
            r#"{"event_id":"e","timestamp":1,"twin":{"a":null,"b":{"actual":{"value":"1"}}}}"#,
        )
        .unwrap();
        assert_eq!(u.twin.keys().collect::<Vec<_>>(), ["b"]);
        let u: DeviceTwinUpdate = serde_json::from_str(r#"{"event_id":"e","twin":null}"#).unwrap();
        assert!(u.twin.is_empty());
        let m: MembershipUpdate = serde_json::from_str(
            r#"{"event_id":"","timestamp":0,"added_devices":[{"id":"ns/d","last_online":"2026-01-01","attributes":{"x":{"value":"1"}},"twin":null}],"removed_devices":null}"#,
        )
        .unwrap();
        assert_eq!(m.added_devices[0].name, "");
        assert_eq!(m.added_devices[0].last_online, "2026-01-01");
        assert_eq!(m.added_devices[0].attributes["x"]["value"], "1");
        assert!(m.removed_devices.is_empty());
        let e: ErrorResult = serde_json::from_str(r#"{"event_id":"e","reason":"bad"}"#).unwrap();
        assert_eq!((e.code, e.reason.as_str()), (0, "bad"));
        // An empty type is left out, as upstream leaves it out.
        let t = MsgTwin {
            metadata: Some(TypeMetadata::default()),
            ..MsgTwin::default()
        };
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"metadata":{}}"#);
    }
    use serde_json::json;

    #[test]
    fn topics_parse_with_two_id_segments() {
        assert_eq!(
            Topic::parse("$hw/events/device/ns/d/twin/update/result"),
            Some(Topic::Device {
                namespace: "ns".into(),
                name: "d".into(),
                action: "twin/update/result".into()
            })
        );
        assert_eq!(
            Topic::parse("$hw/events/node/n1/membership/get"),
            Some(Topic::Node {
                node: "n1".into(),
                action: "membership/get".into()
            })
        );
        assert_eq!(Topic::parse("$hw/events/device/legacy"), None);
        assert_eq!(Topic::parse("other/topic"), None);
    }

    #[test]
    fn delta_serializes_with_upstream_keys() {
        let mut d = DeviceTwinDelta {
            event_id: "e".into(),
            timestamp: 5,
            ..Default::default()
        };
        d.twin.insert(
            "t".into(),
            MsgTwin {
                expected: Some(TwinValue::at("30", 4)),
                actual: Some(TwinValue::at("25", 3)),
                metadata: Some(TypeMetadata { kind: "int".into() }),
                ..Default::default()
            },
        );
        d.delta.insert("t".into(), "30".into());
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"event_id": "e", "timestamp": 5,
                   "twin": {"t": {"expected": {"value": "30", "metadata": {"timestamp": 4}},
                                  "actual": {"value": "25", "metadata": {"timestamp": 3}},
                                  "metadata": {"type": "int"}}},
                   "delta": {"t": "30"}})
        );
    }

    #[test]
    fn keys_and_values_follow_upstream_patterns() {
        assert!(valid_key("temperature-1"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(valid_value("21.5"));
        assert!(!valid_value(&"x".repeat(513)));
    }
}
