//! # kubeedge-edge
//!
//! The edge side of kubeedge-rs: what `edgecore` is made of, as a library.
//!
//! * [`bootstrap`]: the first start with a join token (CA by hash, CSR signed by the cloud).
//! * [`edgehub`]: dials cloudhub over mTLS WebSocket, reconnects with jittered backoff, drives one
//!   [`kubeedge_core::sync::edge::Session`], persists before acking (group commit), carries status
//!   up through a durable queue.
//! * [`metastore`]: every synced object in a redb store, with the sync inventory and the upstream
//!   queue beside it, committed together.
//! * [`metaserver`]: [`kubeedge_core::kubeapi`] over the metastore, a Kubernetes-compatible API
//!   on 127.0.0.1 that serves what the edge holds, online and offline; the node's own status may
//!   be written there (stored, and queued for the cloud), nothing else.
//! * [`node`]: node registration, lease renewal and status reports.
//! * [`rotation`]: node certificate renewal before expiry.
//! * [`process`] (feature `process`): pods as host processes, for appliances without a container
//!   runtime ([`cri`], feature `cri`, runs them on containerd).
//! * [`config_file`] and [`join`]: the `edgecore.yaml` file and `keadm join`.
//! * [`EdgeCore`]: all of it wired together, as the `edgecore` binary runs it.
//!
//! What it is not: no wire format or protocol logic of its own (see [`kubeedge_core`]), and no
//! dependency on the cloud, device or mesh crates.
//!
//! ```no_run
//! # async fn run(token: String) -> Result<(), Box<dyn std::error::Error>> {
//! use kubeedge_core::address::CloudAddress;
//! use kubeedge_edge::{Config, EdgeCore, PodRuntime};
//! // cloudhub at wss://cloud.example:10000, its certificate server at https://cloud.example:10002
//! let cloud = CloudAddress::with_default_ports("cloud.example")?;
//! let mut config = Config::join("/var/lib/kubeedge", "edge-1", &cloud);
//! config.token = Some(token); // the first start only
//! config.runtime = PodRuntime::Process; // pods as host processes, no container runtime
//! let edge = EdgeCore::start(config).await?;
//! edge.wait_connected(std::time::Duration::from_secs(30)).await;
//! println!("kubectl --server http://{} get pods -A", edge.metaserver_addr());
//! edge.stop().await; // the store is closed and the ports free when this returns
//! # Ok(()) }
//! ```

// docs.rs (nightly, `--cfg docsrs`) marks what each feature-gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bootstrap;
#[cfg(feature = "yaml")]
pub mod config_file;
#[cfg(feature = "cri")]
pub mod cri;
pub mod edgehub;
#[cfg(feature = "yaml")]
pub mod join;
pub mod logs;
pub mod metaserver;
pub mod metastore;
pub mod node;
pub mod pods;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "process")]
mod process_exec;
pub mod rotation;
pub mod runtime;
pub mod streams;
#[cfg(feature = "test-util")]
pub mod test_util;

use std::net::SocketAddr;
use std::path::PathBuf;

use kubeedge_core::kubeapi::Api;

pub use bootstrap::CertFiles;
pub use edgehub::{EdgeHub, EdgeHubConfig};
/// The shared core (messages, store, API types), re-exported so that an application names the very
/// version this crate was built with; its `reexports` has redb, rustls and the rest.
pub use kubeedge_core;
pub use metastore::MetaStore;

/// Why the edge could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metastore failed.
    #[error("metastore")]
    Store(#[from] kubeedge_core::store::Error),
    /// Certificates or keys.
    #[error("PKI")]
    Pki(#[from] kubeedge_core::pki::Error),
    /// The join token is malformed or does not match the CA.
    #[error("join token")]
    Token(#[from] kubeedge_core::pki::TokenError),
    /// TLS settings.
    #[error("TLS settings")]
    Tls(#[from] kubeedge_core::transport::tls::Error),
    /// The link to the cloud.
    #[error("link to the cloud")]
    Transport(#[from] kubeedge_core::transport::ws::Error),
    /// The certificate server answered with an error.
    #[error("{step}: HTTP {status}: {body}")]
    Http {
        /// What was being done.
        step: &'static str,
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// The container runtime.
    #[error("container runtime")]
    Runtime(#[from] runtime::RuntimeError),
    /// Settings or input are unusable.
    #[error("{0}")]
    Config(String),
}

/// An error and its causes, on one line (see [`kubeedge_core::error_chain`]).
pub use kubeedge_core::error_chain as chain;

/// Where an edge node runs its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PodRuntime {
    /// No pods: the node syncs and serves its objects only.
    None,
    /// A CRI runtime at this endpoint (`unix:///run/containerd/containerd.sock`).
    Cri(String),
    /// Host processes ([`process::ProcessRuntime`]), records under `<data dir>/process`.
    Process,
    /// A runtime of the application's own ([`PodRuntime::custom`]).
    Custom(CustomRuntime),
}

impl PodRuntime {
    /// Pods on `runtime`, an implementation of [`runtime::Runtime`] of the application's own (see
    /// the trait's example): the pod lifecycle, `kubectl logs/exec/attach/port-forward` and the
    /// metrics run on it as on the built-in ones.
    pub fn custom<R: runtime::Runtime + Clone>(runtime: R) -> PodRuntime {
        let start: StartRuntime = std::sync::Arc::new(move |setup: RuntimeSetup| {
            Box::pin(start_pods(runtime.clone(), setup))
        });
        PodRuntime::Custom(CustomRuntime {
            name: std::any::type_name::<R>(),
            start,
        })
    }
}

/// What a runtime is started with: the stream server to give it to, and the pod controller's
/// parts.
struct RuntimeSetup {
    streams: streams::StreamServer,
    store: kubeedge_core::store::Store,
    hub: EdgeHub,
    pods: pods::PodConfig,
}

/// A started runtime: its version, the stream server serving on it, the pod controller's task
/// (none without a runtime).
type RuntimeStarted = (
    String,
    streams::StreamServer,
    Option<tokio::task::JoinHandle<()>>,
);

/// Starts a custom runtime (its type erased).
type StartRuntime = std::sync::Arc<
    dyn Fn(
            RuntimeSetup,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<RuntimeStarted, Error>> + Send>,
        > + Send
        + Sync,
>;

/// A pod runtime of the application's own, made by [`PodRuntime::custom`]. Two are equal when
/// they are clones of one.
#[derive(Clone)]
pub struct CustomRuntime {
    name: &'static str,
    start: StartRuntime,
}

impl std::fmt::Debug for CustomRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomRuntime({})", self.name)
    }
}

impl PartialEq for CustomRuntime {
    fn eq(&self, other: &CustomRuntime) -> bool {
        std::sync::Arc::ptr_eq(&self.start, &other.start)
    }
}

impl Eq for CustomRuntime {}

/// edgecore's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Data directory: certificates (`ca/`, `certs/`) and the metastore (`edge.redb`).
    pub data_dir: PathBuf,
    /// This node's name.
    pub node: String,
    /// cloudhub, `wss://host:port`.
    pub cloud_url: String,
    /// Further cloudhub URLs of the same cloud (cloudcore replicas). The node dials them in an
    /// order stable for its name ([`edgehub::replica_order`]), so a fleet spreads over the
    /// replicas, and fails over to the next when one cannot be reached. Default none.
    pub cloud_replicas: Vec<String>,
    /// cloudhub's certificate server, `https://host:port` (for the first start).
    pub https_url: Option<String>,
    /// The other cloudcore replicas' certificate servers. The stream tunnel (logs, exec,
    /// port-forward from the cloud) is opened to `https_url` and to each of these, so that every
    /// replica's API reaches this node's pods whichever replica holds its sync session. Default
    /// none.
    pub https_replicas: Vec<String>,
    /// A join token (needed once, when there is no certificate yet).
    pub token: Option<String>,
    /// The metaserver's address. Default `127.0.0.1:10550`.
    pub metaserver_addr: SocketAddr,
    /// The address this node reports. Default `127.0.0.1`.
    pub node_address: String,
    /// Sync session settings (keepalive, windows, ...).
    pub session: kubeedge_core::sync::edge::Config,
    /// Longest reconnect delay. Default 30 s.
    pub backoff_max: std::time::Duration,
    /// Where the node's pods run. Default [`PodRuntime::None`].
    pub runtime: PodRuntime,
    /// First crash-loop restart delay. Default 10 s.
    pub restart_backoff: std::time::Duration,
    /// Where the node's CA, certificate and key are. Default `None`: upstream's layout under
    /// the data directory ([`CertFiles::under`]).
    pub certs: Option<CertFiles>,
    /// Renew the node certificate before it expires. Default true.
    pub rotate_certificates: bool,
    /// Serve the metaserver (the local Kubernetes API). Default true.
    pub metaserver_enabled: bool,
}

impl Config {
    /// Defaults for `node` under `data_dir`, dialling `cloud_url`.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        node: impl Into<String>,
        cloud_url: impl Into<String>,
    ) -> Config {
        Config {
            data_dir: data_dir.into(),
            node: node.into(),
            cloud_url: cloud_url.into(),
            cloud_replicas: Vec::new(),
            https_url: None,
            https_replicas: Vec::new(),
            token: None,
            metaserver_addr: SocketAddr::from(([127, 0, 0, 1], 10550)),
            node_address: "127.0.0.1".into(),
            session: kubeedge_core::sync::edge::Config::default(),
            backoff_max: std::time::Duration::from_secs(30),
            runtime: PodRuntime::None,
            restart_backoff: pods::BACKOFF_START,
            certs: None,
            rotate_certificates: true,
            metaserver_enabled: true,
        }
    }

    /// Defaults for `node` under `data_dir`, joining the cloud at `cloud` (cloudhub and the
    /// certificate server; a [`Config::token`] is needed too on the first start).
    pub fn join(
        data_dir: impl Into<PathBuf>,
        node: impl Into<String>,
        cloud: &kubeedge_core::address::CloudAddress,
    ) -> Config {
        let mut config = Config::new(data_dir, node, cloud.hub_url());
        config.https_url = Some(cloud.https_url());
        config
    }

    /// The certificate files: [`Config::certs`], or upstream's layout under the data directory.
    pub fn cert_files(&self) -> CertFiles {
        self.certs
            .clone()
            .unwrap_or_else(|| CertFiles::under(&self.data_dir))
    }
}

/// Gives `rt` to the stream server and starts the pod controller on it; returns the runtime's
/// version (for the node's status) with both.
async fn start_pods<R: runtime::Runtime + Clone>(
    rt: R,
    setup: RuntimeSetup,
) -> Result<RuntimeStarted, Error> {
    let streams = setup.streams.with_runtime(rt.clone());
    let version = rt.version().await?;
    let pods = pods::PodManager::new(rt, setup.store, setup.hub, setup.pods);
    Ok((version, streams, Some(tokio::spawn(pods.run()))))
}

/// Longest [`EdgeCore::stop`] waits for the store's last users after stopping its tasks.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(6);

/// Everything edgecore runs, started. Dropping it stops the background tasks; [`EdgeCore::stop`]
/// stops them, waits, and closes the store.
///
/// What an application beside it uses: readiness, the objects the node holds (also offline), and
/// the durable path of its own reports to the cloud:
///
/// ```no_run
/// # async fn run(config: kubeedge_edge::Config) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let edge = kubeedge_edge::EdgeCore::start(config).await?;
/// if !edge.wait_connected(Duration::from_secs(30)).await {
///     println!("offline: serving what the node holds");
/// }
/// // The local API, as kubectl and kube-rs see it (plain HTTP on loopback).
/// println!("kubectl --server http://{} get configmaps -A", edge.metaserver_addr());
/// // In-process modules read the store and queue reports that survive a restart.
/// let (_store, _reports) = (edge.store().clone(), edge.reports());
/// edge.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EdgeCore {
    hub: EdgeHub,
    api: Api,
    metaserver_addr: SocketAddr,
    metaserver: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    reports: tokio::sync::mpsc::Sender<kubeedge_core::message::Message>,
}

/// How many reports of in-process modules may wait for the durable queue.
const REPORTS_BACKLOG: usize = 256;

impl EdgeCore {
    /// Bootstraps the node's identity if needed, opens the metastore, and starts edgehub, the
    /// metaserver and the node reporter.
    pub async fn start(config: Config) -> Result<EdgeCore, Error> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            step: format!("creating {}", dir.display()),
            source,
        })?;
        let certs = config.cert_files();
        if !certs.exist() {
            let (Some(https), Some(token)) = (&config.https_url, &config.token) else {
                return Err(Error::Config(
                    "no node certificate yet: give the certificate server (--https) and a join token (--token)".into(),
                ));
            };
            bootstrap::bootstrap(&certs, &config.node, https, token).await?;
        }
        let store = MetaStore::open(&dir.join("edge.redb"))?;
        let api = Api::new(store.store().clone())?;
        // The metaserver serves the Devices and DeviceModels the node holds, so their
        // definitions live in the node's store too (local objects: the cloud does not sync CRDs).
        api.install_crds(&kubeedge_core::api::devices::crds())?;
        let mut hub_config = EdgeHubConfig::new(&config.node, &config.cloud_url, certs);
        hub_config.session = config.session.clone();
        hub_config.cloud_replicas = config.cloud_replicas.clone();
        hub_config.backoff_max = config.backoff_max.max(hub_config.backoff_min);
        let (hub, mut tasks) = EdgeHub::start(hub_config, store)?;
        let (metaserver_addr, metaserver) = if config.metaserver_enabled {
            let listener = tokio::net::TcpListener::bind(config.metaserver_addr)
                .await
                .map_err(|source| Error::Io {
                    step: format!("binding the metaserver to {}", config.metaserver_addr),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| Error::Io {
                step: "reading the metaserver's address".into(),
                source,
            })?;
            let served = api.clone();
            let writes = metaserver::Node {
                node: config.node.clone(),
                hub: hub.clone(),
                data_dir: dir.clone(),
            };
            let (stop_metaserver, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                let routes = metaserver::router(&served, Some(writes));
                if let Err(e) = served.serve_router(listener, routes, shutdown).await {
                    tracing::error!(error = %e, "metaserver stopped");
                }
            });
            (addr, Some((stop_metaserver, task)))
        } else {
            tracing::info!("metaserver disabled (metaServer.enable: false)");
            (config.metaserver_addr, None)
        };
        let setup = RuntimeSetup {
            streams: streams::StreamServer::new(
                &config.node,
                api.clone(),
                hub.clone(),
                dir.clone(),
            ),
            store: hub.store().store().clone(),
            hub: hub.clone(),
            pods: pods::PodConfig {
                node: config.node.clone(),
                node_ip: config.node_address.clone(),
                data_dir: dir.clone(),
                backoff_start: config.restart_backoff,
            },
        };
        let (runtime_version, streams, pod_task) = match &config.runtime {
            PodRuntime::None => (String::new(), setup.streams, None),
            PodRuntime::Custom(custom) => (custom.start)(setup).await?,
            #[cfg(not(feature = "cri"))]
            PodRuntime::Cri(endpoint) => {
                return Err(Error::Config(format!(
                    "runtime cri ({endpoint}): this edge was built without the `cri` feature"
                )));
            }
            #[cfg(feature = "cri")]
            PodRuntime::Cri(endpoint) => {
                start_pods(cri::CriRuntime::connect(endpoint).await?, setup).await?
            }
            #[cfg(not(feature = "process"))]
            PodRuntime::Process => {
                return Err(Error::Config(
                    "runtime process: this edge was built without the `process` feature".into(),
                ));
            }
            #[cfg(feature = "process")]
            PodRuntime::Process => {
                let rt = process::ProcessRuntime::new(dir.join("process"), &config.node_address)?;
                start_pods(rt, setup).await?
            }
        };
        tasks.extend(pod_task);
        // The stream tunnel (logs, exec, attach, port-forward from the cloud) goes to the
        // certificate server's address, and to every other replica's.
        if let Some(https) = &config.https_url {
            let tls = config.cert_files().client_config()?;
            for url in std::iter::once(https).chain(&config.https_replicas) {
                let tunnel = streams::TunnelConfig {
                    node: config.node.clone(),
                    https_url: url.clone(),
                    tls: tls.clone(),
                    backoff_max: config.backoff_max,
                };
                tasks.push(tokio::spawn(streams::run(tunnel, streams.clone())));
            }
        } else {
            tracing::info!(
                "no certificate server configured: no stream tunnel (kubectl logs/exec from the cloud)"
            );
        }
        if let Some(https) = config
            .https_url
            .as_ref()
            .filter(|_| config.rotate_certificates)
        {
            tasks.push(tokio::spawn(rotation::run(
                config.cert_files(),
                config.node.clone(),
                https.clone(),
                hub.clone(),
            )));
        }
        tasks.push(tokio::spawn(node::run(
            hub.clone(),
            config.node.clone(),
            config.node_address.clone(),
            runtime_version,
        )));
        let (reports, mut queued) = tokio::sync::mpsc::channel(REPORTS_BACKLOG);
        let reporter = hub.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                if let Err(e) = reporter.report(message).await {
                    tracing::warn!(error = %chain(&e), "cannot queue a module's report");
                }
            }
        }));
        tracing::info!(node = %config.node, metaserver = %metaserver_addr, "edgecore started");
        Ok(EdgeCore {
            hub,
            api,
            metaserver_addr,
            metaserver,
            tasks,
            reports,
        })
    }

    /// The metastore: what the edge holds, for modules in the same process (the device twin
    /// module keeps its twins there).
    pub fn store(&self) -> &kubeedge_core::store::Store {
        self.hub.store().store()
    }

    /// Where modules in the same process send their cloud-bound messages (the device twin's twin
    /// and state reports): each is queued durably and delivered as [`EdgeHub::report`] does, also
    /// after hours offline. The forwarding stops with the edge.
    pub fn reports(&self) -> tokio::sync::mpsc::Sender<kubeedge_core::message::Message> {
        self.reports.clone()
    }

    /// Waits until edgehub is connected to the cloud, at most `timeout`; whether it is.
    pub async fn wait_connected(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut connections = self.hub.connections();
        while !self.hub.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = connections.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// edgehub.
    pub fn hub(&self) -> &EdgeHub {
        &self.hub
    }

    /// Whether the metaserver is served ([`Config::metaserver_enabled`]).
    pub fn metaserver_enabled(&self) -> bool {
        self.metaserver.is_some()
    }

    /// The local API (what the metaserver serves), for in-process clients.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Where the metaserver listens (the configured address, not listened on, when it is
    /// disabled: see [`EdgeCore::metaserver_enabled`]).
    pub fn metaserver_addr(&self) -> SocketAddr {
        self.metaserver_addr
    }

    /// Stops everything and waits for the tasks to end; the metastore is closed when this returns
    /// (open metaserver connections get up to 5 s, watches are ended), unless something outside
    /// edgecore still holds a handle to it (a device twin module, a clone of the store): that is
    /// waited for up to 6 s.
    pub async fn stop(mut self) {
        if let Some((stop, mut task)) = self.metaserver.take() {
            let _ = stop.send(());
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let store = self.hub.store().store().clone();
        drop(self);
        // Work the tasks started on their way may still hold the store for a moment (a status
        // update's retry timer, a write finishing on a blocking thread): wait for it (bounded),
        // so that the file is closed when this returns and the next open finds it free.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while store.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EdgeCore {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.metaserver {
            task.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
