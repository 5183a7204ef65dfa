//! The device twin as pure data: one [`DeviceTwin`] per device holds each property's desired
//! (`expected`) and reported (`actual`) value; updates come from the Device spec (desired), from
//! mappers over DMI or MQTT (reported, or desired set locally by an app). No I/O here.

use std::collections::BTreeMap;

use kubeedge_core::api::devices::{Device, DeviceModel};
use kubeedge_core::api::twin::{
    DeviceTwinDelta, DeviceTwinUpdate, MsgTwin, TwinDoc, TwinValue, Twins, TypeMetadata, valid_key,
    valid_value,
};
use serde::{Deserialize, Serialize};

/// The type name that marks a twin's deletion in an update.
pub const DELETED: &str = "deleted";

/// One device's twins and state, as persisted at the edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTwin {
    /// Twins by property name.
    #[serde(default)]
    pub twins: Twins,
    /// Last reported state (`online`, `offline`, `ok`, `unknown`, `unhealthy`; "" before any).
    #[serde(default)]
    pub state: String,
    /// Why the state is what it is, when it is not good.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the device was last seen online (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_online: String,
}

/// A rejected update: upstream's error `code` and a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Rejected {
    /// 400 (bad input), 404 (unknown device), 500.
    pub code: u16,
    /// Why.
    pub reason: String,
}

/// The twin type of a model property type (`INT` → `int`, `FLOAT` → `float`, ...).
pub fn twin_type(model_type: &str) -> String {
    model_type.to_ascii_lowercase()
}

impl DeviceTwin {
    /// Sets the desired values from the Device's spec (`properties[].desired`), typed from the
    /// desired metadata or the model; properties that left the spec lose their twin. Returns the
    /// changed twins as a document (last, current).
    pub fn set_desired(
        &mut self,
        device: &Device,
        model: Option<&DeviceModel>,
        now: i64,
    ) -> BTreeMap<String, TwinDoc> {
        let mut doc = BTreeMap::new();
        let mut seen = Vec::new();
        for p in &device.spec.properties {
            seen.push(p.name.clone());
            let kind = p
                .desired
                .as_ref()
                .and_then(|d| d.metadata.get("type").cloned())
                .or_else(|| {
                    model
                        .and_then(|m| m.spec.properties.iter().find(|mp| mp.name == p.name))
                        .map(|mp| twin_type(&mp.kind))
                })
                .unwrap_or_default();
            let last = self.twins.get(&p.name).cloned();
            let twin = self.twins.entry(p.name.clone()).or_default();
            let wanted = p
                .desired
                .as_ref()
                .map(|d| d.value.clone())
                .filter(|v| !v.is_empty());
            if twin.expected_value().map(str::to_owned) != wanted {
                twin.expected = wanted.map(|v| TwinValue::at(v, now));
            }
            if !kind.is_empty() && twin.kind() != kind {
                twin.metadata = Some(TypeMetadata { kind });
            }
            if last.as_ref() != Some(twin) {
                doc.insert(
                    p.name.clone(),
                    TwinDoc {
                        last,
                        current: Some(twin.without_versions()),
                    },
                );
            }
        }
        let gone: Vec<String> = self
            .twins
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in gone {
            let last = self.twins.remove(&k);
            doc.insert(
                k,
                TwinDoc {
                    last,
                    current: None,
                },
            );
        }
        doc
    }

    /// Applies a twin update from a mapper or an app: `actual` and `expected` values as given,
    /// type `deleted` removes a twin. Checked whole before anything changes. Returns the changed
    /// twins as a document.
    pub fn apply(
        &mut self,
        update: &DeviceTwinUpdate,
        now: i64,
    ) -> Result<BTreeMap<String, TwinDoc>, Rejected> {
        for (name, twin) in &update.twin {
            if !valid_key(name) {
                return Err(Rejected {
                    code: 400,
                    reason: format!("twin name {name:?} is not valid"),
                });
            }
            for v in [twin.actual_value(), twin.expected_value()]
                .into_iter()
                .flatten()
            {
                if !valid_value(v) {
                    return Err(Rejected {
                        code: 400,
                        reason: format!("value {v:?} of twin {name:?} is not valid"),
                    });
                }
            }
        }
        let mut doc = BTreeMap::new();
        for (name, twin) in &update.twin {
            let last = self.twins.get(name).cloned();
            if twin.kind() == DELETED {
                if last.is_some() {
                    self.twins.remove(name);
                    doc.insert(
                        name.clone(),
                        TwinDoc {
                            last,
                            current: None,
                        },
                    );
                }
                continue;
            }
            let slot = self.twins.entry(name.clone()).or_default();
            let stamp = |v: &TwinValue| {
                let mut v = v.clone();
                if v.timestamp() == 0 {
                    v.metadata = Some(kubeedge_core::api::twin::ValueMetadata { timestamp: now });
                }
                v
            };
            if let Some(actual) = twin.actual.as_ref().filter(|a| a.value.is_some()) {
                slot.actual = Some(stamp(actual));
            }
            if let Some(expected) = twin.expected.as_ref().filter(|e| e.value.is_some()) {
                slot.expected = Some(stamp(expected));
            }
            if let Some(m) = twin.metadata.as_ref().filter(|m| !m.kind.is_empty()) {
                slot.metadata = Some(m.clone());
            }
            if twin.optional.is_some() {
                slot.optional = twin.optional;
            }
            if last.as_ref() != Some(slot) {
                doc.insert(
                    name.clone(),
                    TwinDoc {
                        last,
                        current: Some(slot.without_versions()),
                    },
                );
            }
        }
        Ok(doc)
    }

    /// Property → desired value, for each twin whose desired value differs from the reported one.
    pub fn delta(&self) -> BTreeMap<String, String> {
        self.twins
            .iter()
            .filter_map(|(k, t)| {
                let want = t.expected_value()?;
                (t.actual_value() != Some(want)).then(|| (k.clone(), want.to_owned()))
            })
            .collect()
    }

    /// The twins without versions, as mappers and the cloud get them.
    pub fn plain(&self) -> Twins {
        self.twins
            .iter()
            .map(|(k, t)| (k.clone(), t.without_versions()))
            .collect()
    }

    /// The delta message, if some desired value is not reported yet.
    pub fn delta_message(&self, event_id: &str, now: i64) -> Option<DeviceTwinDelta> {
        let delta = self.delta();
        (!delta.is_empty()).then(|| DeviceTwinDelta {
            event_id: event_id.to_owned(),
            timestamp: now,
            twin: self.plain(),
            delta,
        })
    }
}

/// Reported twins from a mapper's DMI status report (`reported` → `actual`, `observedDesired` →
/// `expected`, metadata `type` → the twin's type), as a twin update.
pub fn from_reported(
    twins: &[crate::dmi::v1beta1::Twin],
    event_id: &str,
    now: i64,
) -> DeviceTwinUpdate {
    let value = |p: &crate::dmi::v1beta1::TwinProperty| {
        let ts = p
            .metadata
            .get("timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(now);
        TwinValue::at(p.value.clone(), ts)
    };
    let mut out = DeviceTwinUpdate {
        event_id: event_id.to_owned(),
        timestamp: now,
        twin: Twins::new(),
    };
    for t in twins {
        let reported = t.reported.as_ref().filter(|r| !r.value.is_empty());
        let kind = t
            .reported
            .as_ref()
            .and_then(|r| r.metadata.get("type"))
            .cloned()
            .unwrap_or_default();
        out.twin.insert(
            t.property_name.clone(),
            MsgTwin {
                actual: reported.map(value),
                expected: None,
                metadata: (!kind.is_empty()).then_some(TypeMetadata { kind }),
                ..MsgTwin::default()
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn device(desired: &str) -> Device {
        serde_json::from_value(json!({"metadata": {"name": "d", "namespace": "ns"},
            "spec": {"properties": [{"name": "t", "desired": {"value": desired}}, {"name": "u"}]}}))
        .unwrap()
    }

    fn model() -> DeviceModel {
        serde_json::from_value(json!({"spec": {"properties": [{"name": "t", "type": "INT"}]}}))
            .unwrap()
    }

    #[test]
    fn desired_against_reported_gives_the_delta() {
        let mut twin = DeviceTwin::default();
        let doc = twin.set_desired(&device("30"), Some(&model()), 1);
        assert_eq!(doc.len(), 2);
        assert_eq!(twin.twins["t"].kind(), "int");
        assert_eq!(twin.delta(), BTreeMap::from([("t".into(), "30".into())]));
        let update: DeviceTwinUpdate =
            serde_json::from_value(json!({"twin": {"t": {"actual": {"value": "30"}}}})).unwrap();
        let doc = twin.apply(&update, 2).unwrap();
        assert_eq!(
            doc["t"].current.as_ref().unwrap().actual_value(),
            Some("30")
        );
        assert!(twin.delta().is_empty());
        assert!(twin.delta_message("e", 3).is_none());
        // The same desired value again changes nothing.
        assert!(
            twin.set_desired(&device("30"), Some(&model()), 4)
                .is_empty()
        );
    }

    #[test]
    fn bad_updates_change_nothing() {
        let mut twin = DeviceTwin::default();
        twin.set_desired(&device("1"), None, 1);
        let before = twin.clone();
        let bad: DeviceTwinUpdate = serde_json::from_value(json!({"twin": {
            "t": {"actual": {"value": "2"}}, "u": {"actual": {"value": "not ok"}}}}))
        .unwrap();
        assert_eq!(twin.apply(&bad, 2).unwrap_err().code, 400);
        assert_eq!(twin, before);
        let delete: DeviceTwinUpdate =
            serde_json::from_value(json!({"twin": {"u": {"metadata": {"type": "deleted"}}}}))
                .unwrap();
        twin.apply(&delete, 3).unwrap();
        assert!(!twin.twins.contains_key("u"));
    }
}
