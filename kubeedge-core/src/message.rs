//! The beehive message: the unit that crosses the cloud–edge link.
//!
//! Upstream KubeEdge moves every piece of cloud–edge traffic as a JSON object with three keys,
//! `header`, `route` and `content` (note: `route`, not `router`). This module reproduces that shape
//! byte for byte where it matters:
//!
//! * `header.msg_id` and `header.timestamp` (milliseconds since the Unix epoch) are always present;
//!   `parent_msg_id`, `resourceversion` and `type` are omitted when empty, `sync` when false;
//! * every `route` key is omitted when empty;
//! * `content` is any JSON value: a Kubernetes object, a string such as `"OK"`, the base64 text of a
//!   byte slice, an array, or `null`.
//!
//! Upstream strings live only at the serde edge: [`Operation`] and [`ResourceType`] are enums with an
//! `Other(String)` variant, so an unknown value round-trips unchanged and never panics.
//!
//! ```
//! use kubeedge_core::message::{Message, Operation};
//!
//! let json = r#"{"header":{"msg_id":"m1","timestamp":1718000000000},
//!   "route":{"source":"websocket","group":"resource","operation":"keepalive","resource":"node"},
//!   "content":"ping"}"#;
//! let msg = Message::from_json(json.as_bytes(), 1 << 20).unwrap();
//! assert_eq!(msg.route.operation, Operation::Keepalive);
//! assert_eq!(msg.content_bytes().as_ref(), b"ping");
//! ```

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A complete beehive message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Identity, correlation and versioning.
    pub header: Header,
    /// Where the message comes from and what it is about.
    #[serde(default)]
    pub route: Route,
    /// The payload; `null` when absent.
    #[serde(default)]
    pub content: serde_json::Value,
}

/// The `header` object of a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Header {
    /// Unique id of this message (a UUID v4 upstream).
    #[serde(rename = "msg_id", default)]
    pub id: String,
    /// Id of the message this one answers; empty when it answers none.
    #[serde(
        rename = "parent_msg_id",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub parent_id: String,
    /// Creation time in milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
    /// Kubernetes resourceVersion of the object in `content`; empty when none.
    #[serde(
        rename = "resourceversion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_version: String,
    /// Beehive's in-process synchronous flag; never set between cloud and edge upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
    /// Beehive context type (`channel`, `unixpacket`); empty on the wire.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub message_type: String,
}

/// The `route` object of a [`Message`]. Every key is omitted when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Route {
    /// Sending module, e.g. `edgecontroller`, `websocket`, `twin`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Receiving module; set by neither hub upstream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// Module group, e.g. `resource`, `twin`, `user`, `meta`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// What to do with the resource.
    #[serde(default, skip_serializing_if = "Operation::is_empty")]
    pub operation: Operation,
    /// The resource string (see [`crate::resource`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

/// Errors from decoding a message off the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than the configured maximum; it was not parsed.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the frame in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame is not a JSON beehive message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

// === impl Message ===

impl Message {
    /// A new message with the given id, timestamp (ms since the epoch) and route, and `null` content.
    pub fn new(id: impl Into<String>, timestamp_ms: i64, route: Route) -> Self {
        Message {
            header: Header {
                id: id.into(),
                timestamp: timestamp_ms,
                ..Header::default()
            },
            route,
            content: serde_json::Value::Null,
        }
    }

    /// Builder-style: sets the content.
    pub fn with_content(mut self, content: serde_json::Value) -> Self {
        self.content = content;
        self
    }

    /// Builder-style: sets the parent message id.
    pub fn with_parent(mut self, parent_id: impl Into<String>) -> Self {
        self.header.parent_id = parent_id.into();
        self
    }

    /// Builder-style: sets the resourceVersion header.
    pub fn with_resource_version(mut self, rv: impl Into<String>) -> Self {
        self.header.resource_version = rv.into();
        self
    }

    /// The response to `self`, as upstream's `NewRespByMessage` builds it: a new id, `parent_msg_id` =
    /// this message's id, source, group and resource copied unchanged (not swapped), operation
    /// `response`, the header `type` copied.
    pub fn response(
        &self,
        id: impl Into<String>,
        timestamp_ms: i64,
        content: serde_json::Value,
    ) -> Self {
        Message {
            header: Header {
                id: id.into(),
                parent_id: self.header.id.clone(),
                timestamp: timestamp_ms,
                message_type: self.header.message_type.clone(),
                ..Header::default()
            },
            route: Route {
                source: self.route.source.clone(),
                destination: String::new(),
                group: self.route.group.clone(),
                operation: Operation::Response,
                resource: self.route.resource.clone(),
            },
            content,
        }
    }

    /// The cloud's answer to `self`, a request from an edge, routed as upstream cloudcore routes
    /// its answers, since upstream edgehub hands a reply to the waiting caller only for groups
    /// `resource`, `func`, `twin`, `user` and `taskmanager`: group `resource` and source
    /// `edgecontroller` (`cloudhub` for `k8s/ca.crt`); group `twin` and source `devicecontroller`
    /// for the device twin's requests; for a metaserver application, source `dynamiccontroller`,
    /// operation `applicationResponse` and resource `ignore/Application/ignore` (`watchapp/sync`
    /// keeps its own). Otherwise as [`Message::response`].
    pub fn cloud_response(
        &self,
        id: impl Into<String>,
        timestamp_ms: i64,
        content: serde_json::Value,
    ) -> Self {
        let mut reply = self.response(id, timestamp_ms, content);
        reply.header.message_type = String::new();
        let route = &mut reply.route;
        route.group = names::RESOURCE_GROUP.into();
        route.source = names::EDGECONTROLLER.into();
        if self.route.resource == names::CLUSTER_CA_RESOURCE {
            route.source = names::CLOUDHUB.into();
        } else if self.route.source == names::TWIN_MODULE {
            route.source = names::DEVICECONTROLLER.into();
            route.group = names::TWIN_GROUP.into();
        } else if self.route.source == names::METASERVER
            || self.route.operation == Operation::ApplicationRequest
        {
            route.source = names::DYNAMICCONTROLLER.into();
            route.operation = Operation::ApplicationResponse;
            if self.route.resource != names::WATCHAPP_SYNC_RESOURCE {
                route.resource = names::APPLICATION_RESPONSE_RESOURCE.into();
            }
        }
        reply
    }

    /// The error answer to `self`, as upstream's `NewErrorMessage` builds it: parent = this id, resource
    /// copied, operation `error`, content = the error text, source and group empty.
    pub fn error_response(&self, id: impl Into<String>, timestamp_ms: i64, reason: &str) -> Self {
        Message {
            header: Header {
                id: id.into(),
                parent_id: self.header.id.clone(),
                timestamp: timestamp_ms,
                ..Header::default()
            },
            route: Route {
                operation: Operation::Error,
                resource: self.route.resource.clone(),
                ..Route::default()
            },
            content: serde_json::Value::String(reason.to_owned()),
        }
    }

    /// Sets the content to a byte slice the way Go marshals `[]byte`: standard base64 in a JSON string.
    pub fn set_content_bytes(&mut self, bytes: &[u8]) {
        self.content =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }

    /// The content as bytes, as upstream's `GetContentData` gives them after a JSON round trip: a string
    /// as its UTF-8 bytes, anything else JSON-encoded (`null` becomes `null`).
    pub fn content_bytes(&self) -> Cow<'_, [u8]> {
        match &self.content {
            serde_json::Value::String(s) => Cow::Borrowed(s.as_bytes()),
            other => Cow::Owned(other.to_string().into_bytes()),
        }
    }

    /// Decodes content that the sender set with [`set_content_bytes`](Self::set_content_bytes)
    /// (a Go `[]byte`): the base64 string decoded, or `None` if the content is not base64 text.
    pub fn content_base64(&self) -> Option<Vec<u8>> {
        match &self.content {
            serde_json::Value::String(s) => {
                base64::engine::general_purpose::STANDARD.decode(s).ok()
            }
            _ => None,
        }
    }

    /// Encodes the message as one JSON document (the payload of one WebSocket text frame).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_string().into_bytes()
    }

    /// [`to_json`](Self::to_json) as a `String`.
    pub fn to_json_string(&self) -> String {
        // Serialising a `Message` cannot fail: every field is a string, integer, bool or a
        // `serde_json::Value`, whose map keys are strings.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one message, refusing frames above `max_len` bytes before parsing them.
    ///
    /// Trailing whitespace (upstream's encoder adds a newline) is accepted; anything else after the
    /// JSON object is an error.
    pub fn from_json(bytes: &[u8], max_len: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: max_len,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    /// The node id carried by a cloud-side resource string (see [`crate::resource::node_id`]).
    pub fn node_id(&self) -> Option<&str> {
        crate::resource::node_id(&self.route.resource)
    }

    /// `true` for a delete: operation `delete`, or content that is an object carrying
    /// `metadata.deletionTimestamp` (upstream's rule for the ack queue).
    pub fn is_delete(&self) -> bool {
        self.route.operation == Operation::Delete
            || self
                .content
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
    }
}

// === impl Route ===

impl Route {
    /// A route with source, group, operation and resource set.
    pub fn new(
        source: impl Into<String>,
        group: impl Into<String>,
        operation: Operation,
        resource: impl Into<String>,
    ) -> Self {
        Route {
            source: source.into(),
            destination: String::new(),
            group: group.into(),
            operation,
            resource: resource.into(),
        }
    }
}

/// Declares a string enum whose unknown values are kept in `Other(String)`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $s:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            /// The upstream string for this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $s, )*
                    $name::Other(s) => s,
                }
            }

            /// Parses an upstream string; unknown strings become `Other`.
            pub fn parse(s: &str) -> Self {
                match s {
                    $( $s => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(deserializer)?;
                Ok($name::parse(&s))
            }
        }
    };
}

string_enum! {
    /// The `route.operation` of a message (upstream spec §1.3).
    ///
    /// An absent operation reads as `Other("")` and is omitted again when written.
    pub enum Operation {
        /// Create an object (`insert`).
        Insert = "insert",
        /// Update an object (`update`).
        Update = "update",
        /// Delete an object (`delete`).
        Delete = "delete",
        /// Query objects (`query`).
        Query = "query",
        /// Patch an object (`patch`).
        Patch = "patch",
        /// Upload bus data to the cloud (`upload`).
        Upload = "upload",
        /// Answer to a message (`response`), the ack of reliable sync.
        Response = "response",
        /// Error answer (`error`).
        Error = "error",
        /// Heartbeat from the edge (`keepalive`).
        Keepalive = "keepalive",
        /// Edge-internal connection event (`connect`).
        Connect = "connect",
        /// Node connected, published by cloudhub (`connected`).
        Connected = "connected",
        /// Node disconnected, published by cloudhub (`disconnected`).
        Disconnected = "disconnected",
        /// Subscribe to a bus topic (`subscribe`).
        Subscribe = "subscribe",
        /// Unsubscribe from a bus topic (`unsubscribe`).
        Unsubscribe = "unsubscribe",
        /// Bus message (`message`).
        Message = "message",
        /// Bus publish (`publish`).
        Publish = "publish",
        /// Get (`get`).
        Get = "get",
        /// Get answer (`get_result`).
        GetResult = "get_result",
        /// List (`list`).
        List = "list",
        /// Detail (`detail`).
        Detail = "detail",
        /// Twin delta (`delta`).
        Delta = "delta",
        /// Twin document (`document`).
        Document = "document",
        /// Twin updated (`updated`).
        Updated = "updated",
        /// Deleted notification (`deleted`).
        Deleted = "deleted",
        /// Start (`start`).
        Start = "start",
        /// Stop (`stop`).
        Stop = "stop",
        /// Metaserver application answer (`applicationResponse`).
        ApplicationResponse = "applicationResponse",
        /// Metaserver application request (the literal `null`).
        ApplicationRequest = "null",
        /// Release a held pod upgrade (`unhold-upgrade`).
        UnholdUpgrade = "unhold-upgrade",
        /// Node upgrade task (`upgrade`).
        Upgrade = "upgrade",
        /// Node rollback task (`rollback`).
        Rollback = "rollback",
        /// Node backup task (`backup`).
        Backup = "backup",
        /// Image pre-pull task (`prepull`).
        Prepull = "prepull",
        /// Task status report (`UpdateNodeActionStatus`).
        UpdateNodeActionStatus = "UpdateNodeActionStatus",
        /// Viaduct control: transport config (`config`).
        Config = "config",
        /// Viaduct control: ping (`ping`).
        Ping = "ping",
        /// Viaduct control: pong (`pong`).
        Pong = "pong",
        /// kubeedge-rs extension: the edge's inventory for resync (`x-inventory`).
        Inventory = "x-inventory",
    }
}

string_enum! {
    /// The resource type token of a resource string (upstream spec §1.4), e.g. `pod` in
    /// `default/pod/nginx`.
    pub enum ResourceType {
        /// `pod`
        Pod = "pod",
        /// `podlist`
        PodList = "podlist",
        /// `podstatus` (legacy status request)
        PodStatus = "podstatus",
        /// `podpatch` (strategic-merge status patch)
        PodPatch = "podpatch",
        /// `event`
        Event = "event",
        /// `configmap`
        ConfigMap = "configmap",
        /// `secret`
        Secret = "secret",
        /// `serviceaccounttoken`
        ServiceAccountToken = "serviceaccounttoken",
        /// `serviceaccountaccess`
        ServiceAccountAccess = "serviceaccountaccess",
        /// `node`
        Node = "node",
        /// `nodestatus` (legacy status request)
        NodeStatus = "nodestatus",
        /// `nodepatch` (strategic-merge status patch)
        NodePatch = "nodepatch",
        /// `lease`
        Lease = "lease",
        /// `rule`
        Rule = "rule",
        /// `ruleendpoint`
        RuleEndpoint = "ruleendpoint",
        /// `rulestatus`
        RuleStatus = "rulestatus",
        /// `certificatesigningrequest`
        CertificateSigningRequest = "certificatesigningrequest",
        /// `service`
        Service = "service",
        /// `endpoints`
        Endpoints = "endpoints",
        /// `endpointslice`
        EndpointSlice = "endpointslice",
        /// `persistentvolume`
        PersistentVolume = "persistentvolume",
        /// `persistentvolumeclaim`
        PersistentVolumeClaim = "persistentvolumeclaim",
        /// `volumeattachment`
        VolumeAttachment = "volumeattachment",
        /// `volume`
        Volume = "volume",
        /// `device`
        Device = "device",
        /// `devicemodel`
        DeviceModel = "devicemodel",
        /// `devicemapper`
        DeviceMapper = "devicemapper",
        /// `membership` (device helper form)
        Membership = "membership",
        /// `twin` (device helper form)
        Twin = "twin",
    }
}

impl Operation {
    /// `true` for the empty operation (absent on the wire).
    pub fn is_empty(&self) -> bool {
        matches!(self, Operation::Other(s) if s.is_empty())
    }
}

impl Default for Operation {
    fn default() -> Self {
        Operation::Other(String::new())
    }
}

/// Well-known module and group names (upstream spec §1.5).
pub mod names {
    /// Edge hub module name, whatever the transport.
    pub const EDGEHUB_MODULE: &str = "websocket";
    /// Edge hub group.
    pub const HUB_GROUP: &str = "hub";
    /// Group of almost all Kubernetes object traffic.
    pub const RESOURCE_GROUP: &str = "resource";
    /// Group of function traffic.
    pub const FUNC_GROUP: &str = "func";
    /// Group of twin traffic.
    pub const TWIN_GROUP: &str = "twin";
    /// Group of bus/router traffic.
    pub const USER_GROUP: &str = "user";
    /// Group of node tasks.
    pub const TASKMANAGER_GROUP: &str = "taskmanager";
    /// Edge meta manager group.
    pub const META_GROUP: &str = "meta";
    /// Cloud module that syncs Kubernetes objects to edges.
    pub const EDGECONTROLLER: &str = "edgecontroller";
    /// Cloud module that syncs devices.
    pub const DEVICECONTROLLER: &str = "devicecontroller";
    /// Cloud hub module.
    pub const CLOUDHUB: &str = "cloudhub";
    /// Cloud metaserver application controller.
    pub const DYNAMICCONTROLLER: &str = "dynamiccontroller";
    /// Edge meta manager module.
    pub const METAMANAGER: &str = "metamanager";
    /// Edge device twin module.
    pub const TWIN_MODULE: &str = "twin";
    /// Resource of the keepalive message.
    pub const KEEPALIVE_RESOURCE: &str = "node";
    /// Content of the keepalive message.
    pub const KEEPALIVE_CONTENT: &str = "ping";
    /// Content of an ack.
    pub const ACK_CONTENT: &str = "OK";
    /// The edge's request for the cluster's CA (answered by cloudhub).
    pub const CLUSTER_CA_RESOURCE: &str = "k8s/ca.crt";
    /// The source of an edge metaserver's requests (applications).
    pub const METASERVER: &str = "metaserver";
    /// The resource of an edge metaserver's watch list.
    pub const WATCHAPP_SYNC_RESOURCE: &str = "watchapp/sync";
    /// The resource of an application answer, as the edge sees it.
    pub const APPLICATION_RESPONSE_RESOURCE: &str = "ignore/Application/ignore";
    /// The device twin's request for its node's device list.
    pub const MEMBERSHIP_DETAIL_RESOURCE: &str = "membership/detail";
    /// Default project id used in the edge's dial URL.
    pub const DEFAULT_PROJECT_ID: &str = "e632aba927ea4ac2b575ec1603d56f10";
}
