//! The OPC-UA driver (async-opcua client), with upstream's OPC-UA mapper settings.
//!
//! Device `spec.protocol.configData`:
//! * `url`: the server's endpoint (`opc.tcp://host:4840/path`);
//! * `securityPolicy`: `None` (default), `Basic256Sha256`, `Aes128Sha256RsaOaep` or
//!   `Aes256Sha256RsaPss`; `securityMode`: `None` (default with policy `None`), `Sign` or
//!   `SignAndEncrypt` (default otherwise). A secured endpoint needs the client's certificate and
//!   key: `certificate` and `privateKey` (paths, DER certificate and PEM key), or else a
//!   self-signed pair is made once under the driver's PKI directory; the server's certificate
//!   is trusted only when `trustServerCertificate` is true or after an operator moves it from
//!   `rejected/` to `trusted/` there;
//! * `userName` and `password`: a user identity (anonymous without them);
//! * `timeout`: milliseconds for a request (default 5000).
//!
//! Property `visitors.configData`:
//! * `nodeID`: the variable's node id in OPC-UA's string form (`ns=2;s=Temperature`,
//!   `ns=3;i=1001`, `i=2258`).
//!
//! Values are the twin's strings both ways: a read gives the variant as text (`true`, `21.5`,
//! `42`, the string itself); a write converts the desired string to the variable's own data type
//! (read from the server once per connection), so `"30.25"` becomes a Double for a Double
//! variable and `"1"` an Int32 for an Int32 one.
//!
//! Subscriptions: every property read once is then monitored (one subscription per connection,
//! sampling at the server's fastest rate), and later reads take the latest notification instead
//! of asking the server again; a property just written is read from the server directly. A
//! broken connection ends the session (no silent reconnect inside the client), the device is
//! reported `offline`, and the framework connects again, recreating the subscription.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataValue, EndpointDescription, MessageSecurityMode, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, NumericRange, ReadValueId, StatusCode,
    TimestampsToReturn, Variant, VariantScalarTypeId, WriteValue,
};
use serde_json::Value;

use super::{DeviceInfo, Driver, DriverError, PropertyInfo};

/// The OPC-UA driver (protocol name `opcua`).
#[derive(Debug, Clone)]
pub struct OpcUa {
    pki_dir: PathBuf,
}

impl OpcUa {
    /// A driver keeping its certificates (own key pair, trusted and rejected server
    /// certificates) under `pki_dir`; nothing is written there for unsecured endpoints.
    pub fn new(pki_dir: impl Into<PathBuf>) -> OpcUa {
        OpcUa {
            pki_dir: pki_dir.into(),
        }
    }
}

/// Notifications from the subscription, by node id.
type Latest = Arc<Mutex<HashMap<NodeId, DataValue>>>;

/// One session with a server.
pub struct OpcUaConn {
    session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<StatusCode>,
    subscription: Option<u32>,
    latest: Latest,
    /// Nodes whose monitoring was asked for (whether or not the server agreed).
    monitored: HashSet<NodeId>,
    /// Written since the last notification: read from the server.
    written: HashSet<NodeId>,
    types: HashMap<NodeId, VariantScalarTypeId>,
}

impl std::fmt::Debug for OpcUaConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaConn")
            .field("subscription", &self.subscription)
            .field("monitored", &self.monitored.len())
            .finish()
    }
}

impl Drop for OpcUaConn {
    fn drop(&mut self) {
        // Close the session politely (it deletes the subscription on the server), and make sure
        // the event loop ends even if the server does not answer.
        let session = self.session.clone();
        let event_loop = self.event_loop.abort_handle();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                event_loop.abort();
            });
        } else {
            event_loop.abort();
        }
    }
}

fn security(config: &Value) -> Result<(&'static str, MessageSecurityMode), DriverError> {
    let policy = match config["securityPolicy"].as_str().unwrap_or("None") {
        "" | "None" | "none" => "None",
        "Basic256Sha256" => "Basic256Sha256",
        "Aes128Sha256RsaOaep" | "Aes128_Sha256_RsaOaep" => "Aes128-Sha256-RsaOaep",
        "Aes256Sha256RsaPss" | "Aes256_Sha256_RsaPss" => "Aes256-Sha256-RsaPss",
        other => {
            return Err(DriverError::Config(format!(
                "securityPolicy {other:?} is not one of None, Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss"
            )));
        }
    };
    let default_mode = if policy == "None" {
        "None"
    } else {
        "SignAndEncrypt"
    };
    let mode = match config["securityMode"].as_str().unwrap_or(default_mode) {
        "" | "None" | "none" => MessageSecurityMode::None,
        "Sign" | "sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" | "signAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        other => {
            return Err(DriverError::Config(format!(
                "securityMode {other:?} is not one of None, Sign, SignAndEncrypt"
            )));
        }
    };
    if (policy == "None") != (mode == MessageSecurityMode::None) {
        return Err(DriverError::Config(format!(
            "securityPolicy {policy} does not go with securityMode {mode:?}"
        )));
    }
    Ok((policy, mode))
}

/// `scheme://authority` and the path (`/...`, or empty) of an endpoint URL.
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

/// The server endpoint with the wanted security: the one at `url`'s path if there is one, else
/// the first; its address replaced by `url`'s (servers often advertise a host name the client
/// cannot resolve).
fn choose_endpoint(
    endpoints: &[EndpointDescription],
    url: &str,
    policy: &str,
    mode: MessageSecurityMode,
) -> Result<EndpointDescription, DriverError> {
    let wanted = SecurityPolicy::from_str(policy).unwrap_or(SecurityPolicy::Unknown);
    let (base, path) = split_url(url);
    let candidates: Vec<&EndpointDescription> = endpoints
        .iter()
        .filter(|e| {
            e.security_mode == mode
                && SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == wanted
        })
        .collect();
    let chosen = candidates
        .iter()
        .find(|e| {
            split_url(e.endpoint_url.as_ref()).1.trim_end_matches('/') == path.trim_end_matches('/')
        })
        .or(candidates.first())
        .ok_or_else(|| {
            DriverError::Config(format!(
                "{url} offers no endpoint with security policy {policy} and mode {mode:?}"
            ))
        })?;
    let mut endpoint = (*chosen).clone();
    let advertised_path = split_url(endpoint.endpoint_url.as_ref()).1.to_owned();
    endpoint.endpoint_url = format!("{base}{advertised_path}").into();
    Ok(endpoint)
}

/// A property's node id.
pub fn node_id(visitor: &Value) -> Result<NodeId, DriverError> {
    let raw = ["nodeID", "nodeId", "nodeid"]
        .iter()
        .find_map(|k| visitor[*k].as_str())
        .ok_or_else(|| DriverError::Config("visitor has no nodeID".into()))?;
    NodeId::from_str(raw.trim())
        .map_err(|_| DriverError::Config(format!("nodeID {raw:?} is not an OPC-UA node id")))
}

/// The twin's string form of a value.
pub fn to_text(v: &Variant) -> Result<String, DriverError> {
    Ok(match v {
        Variant::Boolean(b) => b.to_string(),
        Variant::SByte(n) => n.to_string(),
        Variant::Byte(n) => n.to_string(),
        Variant::Int16(n) => n.to_string(),
        Variant::UInt16(n) => n.to_string(),
        Variant::Int32(n) => n.to_string(),
        Variant::UInt32(n) => n.to_string(),
        Variant::Int64(n) => n.to_string(),
        Variant::UInt64(n) => n.to_string(),
        Variant::Float(n) => n.to_string(),
        Variant::Double(n) => n.to_string(),
        Variant::String(s) => s.as_ref().to_owned(),
        Variant::LocalizedText(t) => t.text.as_ref().to_owned(),
        Variant::Empty => return Err(DriverError::Property("the variable has no value".into())),
        other => other.to_string(),
    })
}

/// `text` as a value of type `kind`.
pub fn from_text(text: &str, kind: VariantScalarTypeId) -> Result<Variant, DriverError> {
    use VariantScalarTypeId as T;
    let t = text.trim();
    let bad = || DriverError::Property(format!("{text:?} is not a valid {kind}"));
    Ok(match kind {
        T::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "1" => Variant::Boolean(true),
            "false" | "0" => Variant::Boolean(false),
            _ => return Err(bad()),
        },
        T::SByte => Variant::SByte(t.parse().map_err(|_| bad())?),
        T::Byte => Variant::Byte(t.parse().map_err(|_| bad())?),
        T::Int16 => Variant::Int16(t.parse().map_err(|_| bad())?),
        T::UInt16 => Variant::UInt16(t.parse().map_err(|_| bad())?),
        T::Int32 => Variant::Int32(t.parse().map_err(|_| bad())?),
        T::UInt32 => Variant::UInt32(t.parse().map_err(|_| bad())?),
        T::Int64 => Variant::Int64(t.parse().map_err(|_| bad())?),
        T::UInt64 => Variant::UInt64(t.parse().map_err(|_| bad())?),
        T::Float => Variant::Float(t.parse().map_err(|_| bad())?),
        T::Double => Variant::Double(t.parse().map_err(|_| bad())?),
        T::String => Variant::String(text.into()),
        other => {
            return Err(DriverError::Property(format!(
                "writing a {other} variable is not supported"
            )));
        }
    })
}

fn status_error(what: &str, status: StatusCode) -> DriverError {
    DriverError::Property(format!("{what}: {status}"))
}

/// A failed service call: the connection's fault, or the request's.
fn call_error(e: opcua::types::Error) -> DriverError {
    let status = e.status();
    if matches!(
        status,
        StatusCode::BadNotConnected
            | StatusCode::BadConnectionClosed
            | StatusCode::BadCommunicationError
            | StatusCode::BadTimeout
            | StatusCode::BadSecureChannelClosed
            | StatusCode::BadSessionClosed
            | StatusCode::BadSessionIdInvalid
            | StatusCode::BadServerNotConnected
    ) {
        DriverError::Unreachable(e.to_string())
    } else {
        DriverError::Property(e.to_string())
    }
}

impl OpcUaConn {
    fn alive(&self) -> Result<(), DriverError> {
        if self.event_loop.is_finished() {
            Err(DriverError::Unreachable("the OPC-UA session ended".into()))
        } else {
            Ok(())
        }
    }

    async fn read_value(&self, node: &NodeId) -> Result<DataValue, DriverError> {
        self.alive()?;
        let mut values = self
            .session
            .read(&[node.clone().into()], TimestampsToReturn::Source, 0.0)
            .await
            .map_err(call_error)?;
        let value = values
            .pop()
            .ok_or_else(|| DriverError::Property("the server returned no value".into()))?;
        match value.status {
            Some(s) if !s.is_good() => Err(status_error(&format!("reading {node}"), s)),
            _ => Ok(value),
        }
    }

    /// Starts monitoring `node` on this connection's subscription (made on first use).
    async fn monitor(&mut self, node: &NodeId) -> Result<(), DriverError> {
        let subscription = match self.subscription {
            Some(id) => id,
            None => {
                let latest = self.latest.clone();
                let id = self
                    .session
                    .create_subscription(
                        Duration::from_millis(100),
                        100,
                        10,
                        0,
                        0,
                        true,
                        DataChangeCallback::new(move |value, item| {
                            if let Ok(mut l) = latest.lock() {
                                l.insert(item.item_to_monitor().node_id.clone(), value);
                            }
                        }),
                    )
                    .await
                    .map_err(call_error)?;
                self.subscription = Some(id);
                id
            }
        };
        let request = MonitoredItemCreateRequest::new(
            ReadValueId {
                node_id: node.clone(),
                attribute_id: AttributeId::Value as u32,
                index_range: NumericRange::None,
                ..Default::default()
            },
            MonitoringMode::Reporting,
            MonitoringParameters {
                sampling_interval: 0.0,
                queue_size: 1,
                discard_oldest: true,
                ..Default::default()
            },
        );
        let created = self
            .session
            .create_monitored_items(subscription, TimestampsToReturn::Source, vec![request])
            .await
            .map_err(call_error)?;
        match created.first().map(|c| c.result.status_code) {
            Some(s) if s.is_good() => Ok(()),
            Some(s) => Err(status_error(&format!("monitoring {node}"), s)),
            None => Err(DriverError::Property(format!(
                "the server did not monitor {node}"
            ))),
        }
    }

    async fn kind_of(&mut self, node: &NodeId) -> Result<VariantScalarTypeId, DriverError> {
        if let Some(k) = self.types.get(node) {
            return Ok(*k);
        }
        let value = self.read_value(node).await?;
        let kind = value
            .value
            .as_ref()
            .and_then(Variant::scalar_type_id)
            .ok_or_else(|| {
                DriverError::Property(format!("{node} holds no scalar value to take a type from"))
            })?;
        self.types.insert(node.clone(), kind);
        Ok(kind)
    }
}

impl Driver for OpcUa {
    type Conn = OpcUaConn;

    fn protocol(&self) -> &str {
        "opcua"
    }

    async fn connect(&self, device: &DeviceInfo) -> Result<OpcUaConn, DriverError> {
        let c = &device.config;
        let url = c["url"]
            .as_str()
            .filter(|u| u.starts_with("opc.tcp://"))
            .ok_or_else(|| {
                DriverError::Config("configData.url must be an opc.tcp:// endpoint".into())
            })?;
        let (policy, mode) = security(c)?;
        let secured = policy != "None";
        let timeout = match &c["timeout"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5));
        let mut builder = ClientBuilder::new()
            .application_name("kubeedge-rs mapper")
            .application_uri("urn:kubeedge-rs:mapper")
            .product_uri("urn:kubeedge-rs")
            .pki_dir(self.pki_dir.clone())
            .create_sample_keypair(secured)
            .trust_server_certs(c["trustServerCertificate"].as_bool().unwrap_or(false))
            .session_retry_limit(0)
            .request_timeout(timeout)
            .session_timeout(60_000);
        if let (Some(cert), Some(key)) = (c["certificate"].as_str(), c["privateKey"].as_str()) {
            builder = builder.certificate_path(cert).private_key_path(key);
        }
        let mut client = builder
            .client()
            .map_err(|errors| DriverError::Config(errors.join("; ")))?;
        let identity = match (c["userName"].as_str(), c["password"].as_str()) {
            (Some(user), Some(password)) if !user.is_empty() => {
                IdentityToken::new_user_name(user, password)
            }
            _ => IdentityToken::Anonymous,
        };
        // The server's own description of the endpoint (with its certificate and token
        // policies): same security, same path if it has one, reached at the configured host.
        let endpoints = client
            .get_server_endpoints_from_url(url)
            .await
            .map_err(|e| DriverError::Unreachable(format!("{url}: {e}")))?;
        let endpoint = choose_endpoint(&endpoints, url, policy, mode)?;
        let (session, event_loop) = client
            .connect_to_endpoint_directly(endpoint, identity)
            .map_err(|e| DriverError::Config(format!("{url}: {e}")))?;
        session.disable_reconnects();
        let mut event_loop = tokio::spawn(event_loop.run());
        let connected = tokio::select! {
            ok = session.wait_for_connection() => ok,
            status = &mut event_loop => {
                let status = status.unwrap_or(StatusCode::BadUnexpectedError);
                return Err(DriverError::Unreachable(format!("{url}: {status}")));
            }
        };
        if !connected {
            event_loop.abort();
            return Err(DriverError::Unreachable(format!(
                "{url}: the session did not open"
            )));
        }
        Ok(OpcUaConn {
            session,
            event_loop,
            subscription: None,
            latest: Latest::default(),
            monitored: HashSet::new(),
            written: HashSet::new(),
            types: HashMap::new(),
        })
    }

    async fn read(
        &self,
        conn: &mut OpcUaConn,
        property: &PropertyInfo,
    ) -> Result<String, DriverError> {
        let node = node_id(&property.visitor)?;
        conn.alive()?;
        if conn.monitored.contains(&node) && !conn.written.contains(&node) {
            let latest = conn.latest.lock().ok().and_then(|l| l.get(&node).cloned());
            if let Some(value) = latest {
                return match value.status {
                    Some(s) if !s.is_good() => Err(status_error(&format!("reading {node}"), s)),
                    _ => value
                        .value
                        .as_ref()
                        .map(to_text)
                        .unwrap_or_else(|| Err(DriverError::Property("no value".into()))),
                };
            }
        }
        let value = conn.read_value(&node).await?;
        if let Some(kind) = value.value.as_ref().and_then(Variant::scalar_type_id) {
            conn.types.insert(node.clone(), kind);
        }
        let text = value
            .value
            .as_ref()
            .map(to_text)
            .unwrap_or_else(|| Err(DriverError::Property("no value".into())))?;
        if conn.written.remove(&node) {
            // The subscription's next notification is newer than this read.
            if let Ok(mut l) = conn.latest.lock() {
                l.remove(&node);
            }
        }
        if conn.monitored.insert(node.clone())
            && let Err(e) = conn.monitor(&node).await
        {
            tracing::debug!(%node, error = %e, "not monitored, polling instead");
        }
        Ok(text)
    }

    async fn write(
        &self,
        conn: &mut OpcUaConn,
        property: &PropertyInfo,
        value: &str,
    ) -> Result<(), DriverError> {
        let node = node_id(&property.visitor)?;
        let kind = conn.kind_of(&node).await?;
        let variant = from_text(value, kind)?;
        conn.alive()?;
        let results = conn
            .session
            .write(&[WriteValue {
                node_id: node.clone(),
                attribute_id: AttributeId::Value as u32,
                index_range: NumericRange::None,
                value: DataValue::value_only(variant),
            }])
            .await
            .map_err(call_error)?;
        conn.written.insert(node.clone());
        match results.first() {
            Some(s) if s.is_good() => Ok(()),
            Some(s) => Err(status_error(&format!("writing {node}"), *s)),
            None => Err(DriverError::Property(format!(
                "the server did not answer the write of {node}"
            ))),
        }
    }

    async fn health(&self, conn: &mut OpcUaConn) -> Result<(), DriverError> {
        // Server_ServerStatus_State: 0 is Running.
        let state = conn.read_value(&NodeId::new(0, 2259)).await?;
        match state.value {
            Some(Variant::Int32(0)) | None => Ok(()),
            Some(other) => Err(DriverError::Unreachable(format!(
                "the server is not running (state {other})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_ids_parse_in_their_string_forms() {
        assert_eq!(
            node_id(&json!({"nodeID": "ns=2;s=Temperature"})).unwrap(),
            NodeId::new(2, "Temperature")
        );
        assert_eq!(
            node_id(&json!({"nodeID": "ns=3;i=1001"})).unwrap(),
            NodeId::new(3, 1001u32)
        );
        assert!(matches!(
            node_id(&json!({"nodeID": "Temperature"})),
            Err(DriverError::Config(_))
        ));
        assert!(matches!(node_id(&json!({})), Err(DriverError::Config(_))));
    }

    #[test]
    fn values_convert_to_the_variables_type_and_back() {
        use VariantScalarTypeId as T;
        assert_eq!(
            from_text("30.25", T::Double).unwrap(),
            Variant::Double(30.25)
        );
        assert_eq!(from_text("42", T::Int32).unwrap(), Variant::Int32(42));
        assert_eq!(
            from_text("true", T::Boolean).unwrap(),
            Variant::Boolean(true)
        );
        assert!(from_text("1.5", T::Int32).is_err());
        assert!(from_text("70000", T::Int16).is_err());
        assert_eq!(to_text(&Variant::Double(21.5)).unwrap(), "21.5");
        assert_eq!(to_text(&Variant::Boolean(false)).unwrap(), "false");
        assert_eq!(to_text(&Variant::String("on".into())).unwrap(), "on");
        assert!(to_text(&Variant::Empty).is_err());
    }

    #[test]
    fn the_endpoint_is_chosen_by_security_and_path_and_reached_at_the_configured_host() {
        let e =
            |url: &str, policy: &str, mode| -> EndpointDescription { (url, policy, mode).into() };
        let none = "http://opcfoundation.org/UA/SecurityPolicy#None";
        let b256 = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256";
        let offered = [
            e("opc.tcp://plc-7:4840/a/", none, MessageSecurityMode::None),
            e("opc.tcp://plc-7:4840/b", none, MessageSecurityMode::None),
            e(
                "opc.tcp://plc-7:4840/b",
                b256,
                MessageSecurityMode::SignAndEncrypt,
            ),
        ];
        let got = |url, policy, mode| {
            choose_endpoint(&offered, url, policy, mode).map(|e| e.endpoint_url.as_ref().to_owned())
        };
        assert_eq!(
            got(
                "opc.tcp://10.0.0.9:4840/b",
                "None",
                MessageSecurityMode::None
            )
            .unwrap(),
            "opc.tcp://10.0.0.9:4840/b"
        );
        assert_eq!(
            got("opc.tcp://10.0.0.9:4840", "None", MessageSecurityMode::None).unwrap(),
            "opc.tcp://10.0.0.9:4840/a/"
        );
        assert_eq!(
            got(
                "opc.tcp://10.0.0.9:4840",
                "Basic256Sha256",
                MessageSecurityMode::SignAndEncrypt
            )
            .unwrap(),
            "opc.tcp://10.0.0.9:4840/b"
        );
        assert!(matches!(
            got(
                "opc.tcp://10.0.0.9:4840",
                "Basic256Sha256",
                MessageSecurityMode::Sign
            ),
            Err(DriverError::Config(_))
        ));
    }

    #[test]
    fn security_settings_must_agree() {
        assert_eq!(
            security(&json!({})).unwrap(),
            ("None", MessageSecurityMode::None)
        );
        assert_eq!(
            security(&json!({"securityPolicy": "Basic256Sha256"})).unwrap(),
            ("Basic256Sha256", MessageSecurityMode::SignAndEncrypt)
        );
        assert!(security(&json!({"securityPolicy": "Basic128"})).is_err());
        assert!(security(&json!({"securityPolicy": "None", "securityMode": "Sign"})).is_err());
    }
}
