//! Device and DeviceModel as kube-rs resources (feature `kube`): `kube::Api<Device>` against any
//! Kubernetes API that has the CRDs (the embedded control plane, an edge's metaserver, a cluster
//! where [`crds`](super::devices::crds) are applied).
//!
//! The specs and status are the wire types of [`super::devices`]; only the metadata differs
//! (k8s-openapi's `ObjectMeta`, as kube-rs wants it).
//!
//! ```no_run
//! # async fn run(client: kube::Client) -> Result<(), kube::Error> {
//! use kube::api::{Api, PostParams};
//! use kubeedge_core::api::devices::{DeviceSpec, ModelRef};
//! use kubeedge_core::api::resource::Device;
//!
//! let devices: Api<Device> = Api::namespaced(client, "default");
//! let mut spec = DeviceSpec::default();
//! spec.device_model_ref = Some(ModelRef { name: "thermometer".into() });
//! spec.node_name = "edge-1".into();
//! devices.create(&PostParams::default(), &Device::new("thermo", spec)).await?;
//! let thermo = devices.get("thermo").await?;
//! for twin in thermo.status.map(|s| s.twins).unwrap_or_default() {
//!     println!("{}: {:?}", twin.property_name, twin.reported.map(|r| r.value));
//! }
//! # Ok(()) }
//! ```

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::{NamespaceResourceScope, Resource};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::devices::{API_VERSION, DeviceModelSpec, DeviceSpec, DeviceStatus, GROUP, VERSION};

/// A Device (`devices.kubeedge.io/v1beta1`), as a kube-rs resource.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Device {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// What the device is and how to reach it.
    #[serde(default)]
    pub spec: DeviceSpec,
    /// What was reported (twins, state).
    #[serde(default)]
    pub status: Option<DeviceStatus>,
}

impl Device {
    /// Device `name` (its namespace is the API's) with `spec`.
    pub fn new(name: &str, spec: DeviceSpec) -> Device {
        Device {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

/// A DeviceModel (`devices.kubeedge.io/v1beta1`), as a kube-rs resource.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DeviceModel {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The model.
    #[serde(default)]
    pub spec: DeviceModelSpec,
}

impl DeviceModel {
    /// DeviceModel `name` (its namespace is the API's) with `spec`.
    pub fn new(name: &str, spec: DeviceModelSpec) -> DeviceModel {
        DeviceModel {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

/// Serializes with `apiVersion` and `kind`, which the API needs in a request's body.
fn serialize<S: Serializer>(
    serializer: S,
    kind: &'static str,
    metadata: &ObjectMeta,
    spec: &impl Serialize,
    status: Option<&DeviceStatus>,
) -> Result<S::Ok, S::Error> {
    let mut s = serializer.serialize_struct(kind, 4 + usize::from(status.is_some()))?;
    s.serialize_field("apiVersion", API_VERSION)?;
    s.serialize_field("kind", kind)?;
    s.serialize_field("metadata", metadata)?;
    s.serialize_field("spec", spec)?;
    if let Some(status) = status {
        s.serialize_field("status", status)?;
    }
    s.end()
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(
            serializer,
            "Device",
            &self.metadata,
            &self.spec,
            self.status.as_ref(),
        )
    }
}

impl Serialize for DeviceModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(serializer, "DeviceModel", &self.metadata, &self.spec, None)
    }
}

macro_rules! resource {
    ($ty:ty, $kind:literal, $plural:literal) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(API_VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource!(Device, "Device", "devices");
resource!(DeviceModel, "DeviceModel", "devicemodels");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_with_api_version_and_kind() {
        let spec = DeviceSpec {
            node_name: "edge-1".into(),
            ..DeviceSpec::default()
        };
        let device = Device::new("thermo", spec);
        let json = serde_json::to_value(&device).unwrap();
        assert_eq!(json["apiVersion"], "devices.kubeedge.io/v1beta1");
        assert_eq!(json["kind"], "Device");
        assert_eq!(json["metadata"]["name"], "thermo");
        assert_eq!(json["spec"]["nodeName"], "edge-1");
        assert!(json.get("status").is_none());
        let back: Device = serde_json::from_value(json).unwrap();
        assert_eq!(back, device);
        assert_eq!(
            Device::url_path(&(), Some("default")),
            "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices"
        );
        let model =
            serde_json::to_value(DeviceModel::new("m", DeviceModelSpec::default())).unwrap();
        assert_eq!(model["kind"], "DeviceModel");
    }
}
