//! edgecore's configuration file: YAML in upstream's shape (`edgecore.config.kubeedge.io/v1alpha2`,
//! kind `EdgeCore`), the keys kubeedge-rs honours, so that a file written for upstream edgecore
//! keeps its meaning here and `keadm join` writes one that looks familiar.
//!
//! ```yaml
//! apiVersion: edgecore.config.kubeedge.io/v1alpha2
//! kind: EdgeCore
//! dataDir: /var/lib/kubeedge-rs          # kubeedge-rs: certificates and the metastore
//! modules:
//!   edgeHub:
//!     heartbeat: 15                      # keepalive interval, seconds
//!     httpServer: https://10.0.0.1:10002 # the certificate server
//!     token: ""                          # join token, needed until the node has a certificate
//!     websocket:
//!       server: 10.0.0.1:10000           # cloudhub (wss://… also accepted; replicas: a:p,b:p)
//!   edged:
//!     hostnameOverride: edge-1           # the node's name
//!     nodeIP: 10.0.0.2
//!     runtime: cri                       # kubeedge-rs: cri | process | none
//!     tailoredKubeletConfig:
//!       containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
//!   metaManager:
//!     metaServer:
//!       server: 127.0.0.1:10550
//!   deviceTwin:
//!     dmiSockPath: /etc/kubeedge/dmi.sock  # where mappers register (default: dataDir/dmi.sock)
//!   eventBus:
//!     mqttMode: 0                        # 0: the embedded broker (default), 2: an external one
//!     mqttServerInternal: tcp://127.0.0.1:1884
//!     mqttServerExternal: tcp://127.0.0.1:1883
//! ```
//!
//! Every key is optional, and upstream's own default file (`edgecore --defaultconfig`) is read as
//! it is: without `dataDir`, the data directory is the one of `database.dataSource` (upstream's
//! `/var/lib/kubeedge`); certificates are at `edgeHub.tlsCaFile`, `tlsCertFile` and
//! `tlsPrivateKeyFile` when given (else `ca/rootCA.crt` and `certs/server.{crt,key}` under the
//! data directory); a `dmiSockPath` naming a directory (upstream's `/etc/kubeedge/`) holds
//! `dmi.sock`. Honoured switches: `edgeHub.rotateCertificates`, `metaManager.metaServer.enable`,
//! `edged.enable` (off: no pods), `deviceTwin.enable` and `eventBus.enable`. Refused:
//! `edgeHub.quic.enable: true` and `edgeHub.websocket.enable: false` (only the WebSocket
//! transport is built). Enabled modules kubeedge-rs does not have (`edgeStream`, `serviceBus`,
//! `taskManager`) are named at start ([`EdgeCoreFile::unsupported`]); other upstream keys (the
//! kubelet's tuning, the database driver, rate limits) are accepted and ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Config, Error, PodRuntime};

/// `apiVersion` of the file.
pub const API_VERSION: &str = "edgecore.config.kubeedge.io/v1alpha2";
/// `kind` of the file.
pub const KIND: &str = "EdgeCore";
/// Upstream's default CRI endpoint.
pub const DEFAULT_CRI_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The file's content. See the module docs for the layout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EdgeCoreFile {
    /// `edgecore.config.kubeedge.io/v1alpha2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `EdgeCore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Data directory (kubeedge-rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `database` (upstream's SQLite file: its directory is the data directory when `dataDir`
    /// is not given).
    #[serde(default, skip_serializing_if = "DatabaseSection::is_empty")]
    pub database: DatabaseSection,
    /// The modules' settings.
    #[serde(default)]
    pub modules: Modules,
}

/// `database`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DatabaseSection {
    /// Upstream's SQLite file (`/var/lib/kubeedge/edgecore.db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<PathBuf>,
}

impl DatabaseSection {
    fn is_empty(&self) -> bool {
        self.data_source.is_none()
    }
}

/// Upstream's data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/kubeedge";

/// A module's `enable` switch and nothing else (`edgeStream`, `serviceBus`, `taskManager`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Switch {
    /// `enable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

/// `modules`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Modules {
    /// `edgeHub`.
    #[serde(default)]
    pub edge_hub: EdgeHubSection,
    /// `edged`.
    #[serde(default)]
    pub edged: EdgedSection,
    /// `metaManager`.
    #[serde(default)]
    pub meta_manager: MetaManagerSection,
    /// `deviceTwin`.
    #[serde(default)]
    pub device_twin: DeviceTwinSection,
    /// `eventBus`.
    #[serde(default)]
    pub event_bus: EventBusSection,
    /// `edgeStream` (not built here: see [`EdgeCoreFile::unsupported`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_stream: Option<Switch>,
    /// `serviceBus` (not built here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_bus: Option<Switch>,
    /// `taskManager` (not built here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_manager: Option<Switch>,
}

/// `modules.deviceTwin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeviceTwinSection {
    /// Whether the device module runs (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// The DMI socket mappers register on, or a directory that holds it as `dmi.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmi_sock_path: Option<PathBuf>,
}

/// `modules.eventBus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EventBusSection {
    /// Whether the event bus (and so the device module, which needs it) runs (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// 0: the embedded broker; 1 (upstream: both) is taken as 0; 2: the external broker.
    #[serde(default, rename = "mqttMode", skip_serializing_if = "Option::is_none")]
    pub mqtt_mode: Option<u8>,
    /// The embedded broker's address, `tcp://HOST:PORT`.
    #[serde(
        default,
        rename = "mqttServerInternal",
        skip_serializing_if = "Option::is_none"
    )]
    pub mqtt_server_internal: Option<String>,
    /// The external broker, `tcp://HOST:PORT`.
    #[serde(
        default,
        rename = "mqttServerExternal",
        skip_serializing_if = "Option::is_none"
    )]
    pub mqtt_server_external: Option<String>,
}

/// Upstream's internal broker address.
pub const DEFAULT_MQTT_INTERNAL: &str = "tcp://127.0.0.1:1884";
/// Upstream's external broker address.
pub const DEFAULT_MQTT_EXTERNAL: &str = "tcp://127.0.0.1:1883";

/// Which MQTT broker the device event bus uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBusMode {
    /// Run the embedded broker on this address.
    Internal(SocketAddr),
    /// Connect to this broker (`tcp://HOST:PORT`).
    External(String),
}

/// `modules.edgeHub`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EdgeHubSection {
    /// Keepalive interval in seconds (upstream default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<u64>,
    /// The certificate server, `https://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_server: Option<String>,
    /// A join token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `websocket`.
    #[serde(default)]
    pub websocket: WebSocketSection,
    /// `quic`: refused when enabled (only the WebSocket transport is built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<Switch>,
    /// The KubeEdge CA's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// The node certificate's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The node key's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Renew the node certificate before it expires (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_certificates: Option<bool>,
}

/// `modules.edgeHub.websocket`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WebSocketSection {
    /// Refused when false (only the WebSocket transport is built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// cloudhub, `host:port` (upstream's form) or `wss://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// `modules.edged`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EdgedSection {
    /// Whether pods run here (default true; false: no runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// The node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<String>,
    /// The address the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<String>,
    /// `cri`, `process` or `none` (kubeedge-rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// `tailoredKubeletConfig`.
    #[serde(default)]
    pub tailored_kubelet_config: KubeletSection,
}

/// `modules.edged.tailoredKubeletConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct KubeletSection {
    /// The CRI socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime_endpoint: Option<String>,
}

/// `modules.metaManager`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MetaManagerSection {
    /// `metaServer`.
    #[serde(default)]
    pub meta_server: MetaServerSection,
}

/// `modules.metaManager.metaServer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MetaServerSection {
    /// Whether the metaserver (the local Kubernetes API) is served (default true; upstream's
    /// default file says false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// `host:port` the metaserver listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

fn bad(path: &str, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{path}: {message}"))
}

/// `host:port` → `wss://host:port`; a URL is kept.
fn hub_url(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("wss://{server}")
    }
}

impl EdgeCoreFile {
    /// Parses a file's text.
    pub fn parse(text: &str) -> Result<EdgeCoreFile, Error> {
        let file: EdgeCoreFile =
            serde_saphyr::from_str(text).map_err(|e| bad("edgecore configuration", e))?;
        if let Some(v) = &file.api_version
            && v != API_VERSION
        {
            return Err(bad("apiVersion", format!("{v:?} is not {API_VERSION:?}")));
        }
        if let Some(k) = &file.kind
            && k != KIND
        {
            return Err(bad("kind", format!("{k:?} is not {KIND:?}")));
        }
        Ok(file)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<EdgeCoreFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            step: format!("reading {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The file as YAML, with `apiVersion` and `kind` set.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut out = self.clone();
        out.api_version = Some(API_VERSION.into());
        out.kind = Some(KIND.into());
        serde_saphyr::to_string(&out).map_err(|e| bad("edgecore configuration", e))
    }

    /// Writes the file to `path`, readable by its owner only (it may hold a token).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        kubeedge_core::pki::write(path, &self.to_yaml()?, true)?;
        Ok(())
    }

    /// Settings from the file. The data directory, the node's name and cloudhub's address are
    /// required (here or, for the binary, as flags laid over with [`EdgeCoreFile::merge`]).
    pub fn to_config(&self) -> Result<Config, Error> {
        let data_dir = self.data_dir();
        let edged = &self.modules.edged;
        let hub = &self.modules.edge_hub;
        let node = edged
            .hostname_override
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad(
                    "modules.edged.hostnameOverride",
                    "missing (the node's name)",
                )
            })?;
        let server = hub
            .websocket
            .server
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                bad(
                    "modules.edgeHub.websocket.server",
                    "missing (cloudhub's address)",
                )
            })?;
        if hub.websocket.enable == Some(false) {
            return Err(bad(
                "modules.edgeHub.websocket.enable",
                "false, but the WebSocket transport is the only one kubeedge-rs has",
            ));
        }
        if hub.quic.as_ref().and_then(|q| q.enable) == Some(true) {
            return Err(bad(
                "modules.edgeHub.quic.enable",
                "true, but kubeedge-rs has no QUIC transport: enable websocket instead",
            ));
        }
        // Several cloudcore replicas: `server: a:10000,b:10000` (kubeedge-rs; upstream takes one).
        let mut servers = server.split(',').map(str::trim).filter(|s| !s.is_empty());
        let first = servers.next().unwrap_or_default();
        let mut config = Config::new(data_dir.clone(), node, hub_url(first));
        config.cloud_replicas = servers.map(hub_url).collect();
        let defaults = crate::bootstrap::CertFiles::under(&data_dir);
        let pick = |p: &Option<PathBuf>, default: PathBuf| {
            p.clone()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(default)
        };
        config.certs = Some(crate::bootstrap::CertFiles {
            ca: pick(&hub.tls_ca_file, defaults.ca),
            cert: pick(&hub.tls_cert_file, defaults.cert),
            key: pick(&hub.tls_private_key_file, defaults.key),
        });
        config.rotate_certificates = hub.rotate_certificates.unwrap_or(true);
        config.metaserver_enabled = self.modules.meta_manager.meta_server.enable.unwrap_or(true);
        // Each replica's certificate server (`httpServer: https://a:10002,https://b:10002`,
        // kubeedge-rs): the first signs, every one gets a stream tunnel.
        let mut https = hub
            .http_server
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        config.https_url = https.next();
        config.https_replicas = https.collect();
        config.token = hub.token.clone().filter(|s| !s.is_empty());
        if let Some(secs) = hub.heartbeat {
            if secs == 0 {
                return Err(bad(
                    "modules.edgeHub.heartbeat",
                    "must be at least 1 second",
                ));
            }
            config.session.keepalive_interval = Duration::from_secs(secs);
        }
        if let Some(ip) = edged.node_ip.clone().filter(|s| !s.is_empty()) {
            config.node_address = ip;
        }
        if let Some(server) = &self.modules.meta_manager.meta_server.server {
            config.metaserver_addr = server.parse::<SocketAddr>().map_err(|e| {
                bad(
                    "modules.metaManager.metaServer.server",
                    format!("{server:?}: {e}"),
                )
            })?;
        }
        let endpoint = edged
            .tailored_kubelet_config
            .container_runtime_endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_CRI_ENDPOINT.into());
        let runtime = if edged.enable == Some(false) {
            "none"
        } else {
            edged.runtime.as_deref().unwrap_or("cri")
        };
        config.runtime = match runtime {
            "cri" => PodRuntime::Cri(endpoint),
            "process" => PodRuntime::Process,
            "none" => PodRuntime::None,
            other => {
                return Err(bad(
                    "modules.edged.runtime",
                    format!("{other:?} is not cri, process or none"),
                ));
            }
        };
        Ok(config)
    }

    /// The event bus the file asks for (`modules.eventBus`): the embedded broker unless
    /// `mqttMode` is 2.
    pub fn event_bus(&self) -> Result<EventBusMode, Error> {
        let bus = &self.modules.event_bus;
        match bus.mqtt_mode.unwrap_or(0) {
            0 | 1 => {
                let url = bus
                    .mqtt_server_internal
                    .as_deref()
                    .unwrap_or(DEFAULT_MQTT_INTERNAL);
                let addr = url
                    .strip_prefix("tcp://")
                    .unwrap_or(url)
                    .trim_end_matches('/');
                addr.parse::<SocketAddr>()
                    .map(EventBusMode::Internal)
                    .map_err(|e| {
                        bad(
                            "modules.eventBus.mqttServerInternal",
                            format!("{url:?}: {e} (an IP address and port)"),
                        )
                    })
            }
            2 => Ok(EventBusMode::External(
                bus.mqtt_server_external
                    .clone()
                    .unwrap_or_else(|| DEFAULT_MQTT_EXTERNAL.into()),
            )),
            other => Err(bad(
                "modules.eventBus.mqttMode",
                format!("{other} is not 0 (internal), 1 (both) or 2 (external)"),
            )),
        }
    }

    /// The data directory: `dataDir`, else the directory of `database.dataSource`, else
    /// upstream's [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| {
                self.database
                    .data_source
                    .as_ref()
                    .and_then(|f| f.parent())
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(Path::to_owned)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The DMI socket: `modules.deviceTwin.dmiSockPath` (`dmi.sock` in it when it names a
    /// directory: ends with `/` or is one), or `dmi.sock` in the data directory.
    pub fn dmi_socket(&self) -> Option<PathBuf> {
        let path = self
            .modules
            .device_twin
            .dmi_sock_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        match path {
            Some(p) if p.as_os_str().to_string_lossy().ends_with('/') || p.is_dir() => {
                Some(p.join("dmi.sock"))
            }
            Some(p) => Some(p),
            None => Some(self.data_dir().join("dmi.sock")),
        }
    }

    /// Whether the device module runs: `deviceTwin.enable` and `eventBus.enable` (it needs the
    /// bus) both not false.
    pub fn devices_enabled(&self) -> bool {
        self.modules.device_twin.enable != Some(false)
            && self.modules.event_bus.enable != Some(false)
    }

    /// Modules the file enables that kubeedge-rs does not have, each with what to do instead:
    /// for edgecore to say at start (they are not an error: the rest works without them).
    pub fn unsupported(&self) -> Vec<String> {
        let m = &self.modules;
        [
            (
                &m.edge_stream,
                "edgeStream",
                "kubectl logs/exec through the cloud are not built yet",
            ),
            (
                &m.service_bus,
                "serviceBus",
                "no HTTP bus to edge apps; use the MQTT event bus",
            ),
            (
                &m.task_manager,
                "taskManager",
                "no node upgrade or image pre-pull tasks",
            ),
        ]
        .into_iter()
        .filter(|(switch, _, _)| switch.as_ref().and_then(|s| s.enable) == Some(true))
        .map(|(_, name, why)| {
            format!("modules.{name}.enable is true, but kubeedge-rs has no {name}: {why}")
        })
        .collect()
    }

    /// Lays `other`'s keys over this file's (what is set in `other` wins).
    pub fn merge(&mut self, other: &EdgeCoreFile) {
        fn over<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        over(&mut self.data_dir, &other.data_dir);
        let (m, o) = (&mut self.modules, &other.modules);
        over(&mut m.edge_hub.heartbeat, &o.edge_hub.heartbeat);
        over(&mut m.edge_hub.http_server, &o.edge_hub.http_server);
        over(&mut m.edge_hub.token, &o.edge_hub.token);
        over(
            &mut m.edge_hub.websocket.server,
            &o.edge_hub.websocket.server,
        );
        over(&mut m.edged.hostname_override, &o.edged.hostname_override);
        over(&mut m.edged.node_ip, &o.edged.node_ip);
        over(&mut m.edged.runtime, &o.edged.runtime);
        over(
            &mut m.edged.tailored_kubelet_config.container_runtime_endpoint,
            &o.edged.tailored_kubelet_config.container_runtime_endpoint,
        );
        over(
            &mut m.meta_manager.meta_server.server,
            &o.meta_manager.meta_server.server,
        );
        over(
            &mut m.device_twin.dmi_sock_path,
            &o.device_twin.dmi_sock_path,
        );
        over(&mut m.event_bus.mqtt_mode, &o.event_bus.mqtt_mode);
        over(
            &mut m.event_bus.mqtt_server_internal,
            &o.event_bus.mqtt_server_internal,
        );
        over(
            &mut m.event_bus.mqtt_server_external,
            &o.event_bus.mqtt_server_external,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_comma_separated() {
        let file = EdgeCoreFile::parse(
            "modules:\n  edgeHub:\n    httpServer: https://a:10002, https://b:10002\n    websocket:\n      server: a:10000,b:10000\n  edged:\n    hostnameOverride: edge-1\n",
        )
        .unwrap();
        let c = file.to_config().unwrap();
        assert_eq!(c.cloud_url, "wss://a:10000");
        assert_eq!(c.cloud_replicas, ["wss://b:10000"]);
        assert_eq!(c.https_url.as_deref(), Some("https://a:10002"));
        assert_eq!(c.https_replicas, ["https://b:10002"]);
    }

    #[test]
    fn an_upstream_shaped_file_gives_settings() {
        let file = EdgeCoreFile::parse(
            "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\ndataDir: /d\ndatabase:\n  dataSource: /var/lib/kubeedge/edgecore.db\nmodules:\n  edgeHub:\n    heartbeat: 5\n    httpServer: https://10.0.0.1:10002\n    tlsCaFile: /etc/kubeedge/ca/rootCA.crt\n    websocket:\n      enable: true\n      server: 10.0.0.1:10000\n  edged:\n    hostnameOverride: edge-1\n    nodeIP: 10.0.0.2\n    tailoredKubeletConfig:\n      containerRuntimeEndpoint: unix:///run/c.sock\n      maxPods: 110\n  metaManager:\n    metaServer:\n      enable: true\n      server: 127.0.0.1:10999\n",
        )
        .unwrap();
        let c = file.to_config().unwrap();
        assert_eq!(c.node, "edge-1");
        assert_eq!(c.cloud_url, "wss://10.0.0.1:10000");
        assert_eq!(c.https_url.as_deref(), Some("https://10.0.0.1:10002"));
        assert_eq!(c.token, None);
        assert_eq!(c.node_address, "10.0.0.2");
        assert_eq!(c.metaserver_addr.port(), 10999);
        assert_eq!(c.session.keepalive_interval, Duration::from_secs(5));
        assert_eq!(c.runtime, PodRuntime::Cri("unix:///run/c.sock".into()));
        // What it writes reads back the same.
        assert_eq!(
            EdgeCoreFile::parse(&file.to_yaml().unwrap())
                .unwrap()
                .modules,
            file.modules
        );
    }

    #[test]
    fn device_keys_pick_the_event_bus_and_the_dmi_socket() {
        let parse = |text: &str| EdgeCoreFile::parse(text).unwrap();
        let none = parse("dataDir: /d\n");
        assert_eq!(
            none.event_bus().unwrap(),
            EventBusMode::Internal("127.0.0.1:1884".parse().unwrap())
        );
        assert_eq!(none.dmi_socket(), Some(PathBuf::from("/d/dmi.sock")));
        let external = parse(
            "modules:\n  deviceTwin:\n    dmiSockPath: /etc/kubeedge/dmi.sock\n  eventBus:\n    mqttMode: 2\n    mqttServerExternal: tcp://10.0.0.5:1883\n",
        );
        assert_eq!(
            external.event_bus().unwrap(),
            EventBusMode::External("tcp://10.0.0.5:1883".into())
        );
        assert_eq!(
            external.dmi_socket(),
            Some(PathBuf::from("/etc/kubeedge/dmi.sock"))
        );
        let internal = parse(
            "modules:\n  eventBus:\n    mqttMode: 0\n    mqttServerInternal: tcp://127.0.0.1:0\n",
        );
        assert_eq!(
            internal.event_bus().unwrap(),
            EventBusMode::Internal("127.0.0.1:0".parse().unwrap())
        );
        let err = |text: &str| parse(text).event_bus().unwrap_err().to_string();
        assert!(err("modules:\n  eventBus:\n    mqttMode: 7\n").contains("mqttMode"));
        assert!(
            err("modules:\n  eventBus:\n    mqttServerInternal: tcp://localhost:1884\n")
                .contains("mqttServerInternal")
        );
        // Flags laid over the file win.
        let mut file = external.clone();
        let mut flags = EdgeCoreFile::default();
        flags.modules.event_bus.mqtt_mode = Some(0);
        file.merge(&flags);
        assert!(matches!(
            file.event_bus().unwrap(),
            EventBusMode::Internal(_)
        ));
        assert_eq!(
            EdgeCoreFile::parse(&external.to_yaml().unwrap())
                .unwrap()
                .modules,
            external.modules
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str| {
            EdgeCoreFile::parse(text)
                .and_then(|f| f.to_config())
                .unwrap_err()
                .to_string()
        };
        assert!(err("kind: CloudCore\n").contains("kind"));
        assert!(
            err("dataDir: /d\nmodules:\n  edged:\n    hostnameOverride: n\n")
                .contains("websocket.server")
        );
        assert!(
            err("dataDir: /d\nmodules:\n  edgeHub:\n    websocket:\n      server: h:1\n")
                .contains("hostnameOverride")
        );
        assert!(
            err("dataDir: /d\nmodules:\n  edgeHub:\n    websocket: {server: 'h:1'}\n  edged:\n    hostnameOverride: n\n    runtime: docker\n")
                .contains("docker")
        );
        assert!(err("modules: [1, 2\n").contains("edgecore configuration"));
    }

    #[test]
    fn flags_laid_over_a_file_win() {
        let mut file = EdgeCoreFile::parse(
            "dataDir: /d\nmodules:\n  edged:\n    hostnameOverride: a\n    runtime: none\n",
        )
        .unwrap();
        let mut flags = EdgeCoreFile::default();
        flags.modules.edged.hostname_override = Some("b".into());
        flags.modules.edge_hub.websocket.server = Some("wss://h:1".into());
        file.merge(&flags);
        let c = file.to_config().unwrap();
        assert_eq!((c.node.as_str(), c.cloud_url.as_str()), ("b", "wss://h:1"));
        assert_eq!(c.runtime, PodRuntime::None);
    }
}
