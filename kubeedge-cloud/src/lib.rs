//! # kubeedge-cloud
//!
//! The cloud side of kubeedge-rs: what `cloudcore` runs, as a library.
//!
//! * [`controlplane`]: the embedded control plane, a Kubernetes-compatible API server over redb
//!   (HTTPS, client certificates, an admin kubeconfig), for setups with no cluster.
//! * [`controller`]: kube-rs watchers feeding the [`index`], which decides each node's share of
//!   objects (its pods, the ConfigMaps and Secrets they use, Services, EndpointSlices, its
//!   Devices). The same code runs against a real cluster or the embedded control plane.
//! * [`hub`]: cloudhub, the mTLS WebSocket server edges dial, one reliable sync session per node
//!   ([`kubeedge_core::sync::cloud`]), last connection wins, node limit, keepalive timeout.
//! * [`certserver`]: cloudhub's HTTPS side, `/ca.crt` and token-authorized `/edge.crt` CSR signing.
//! * [`uplink`]: what edges send up (node registration and status, pod status, leases, events),
//!   applied under node authorization: a node reads and writes only its own objects.
//! * [`lifecycle`]: nodes silent past a grace period (no frame, even on a half-open link) turn
//!   `Ready=Unknown`.
//! * [`workloads`]: the embedded control plane's controllers: scheduler, Deployments,
//!   ReplicaSets, DaemonSets, Jobs, garbage collection, Service endpoints, taint eviction.
//! * [`CloudCore`]: all of it wired together, as the `cloudcore` binary runs it.
//!
//! The crate picks no Kubernetes version feature of `k8s-openapi` (libraries must not); the final
//! binary does, e.g. `k8s-openapi = { version = "0.29", features = ["v1_37"] }`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, SystemTime};
//! // The embedded control plane, cloudhub and its certificate server, on free ports.
//! let mut config = kubeedge_cloud::Config::new("/var/lib/kubeedge-cloud");
//! config.api_addr = "127.0.0.1:0".parse()?;
//! let cloud = kubeedge_cloud::CloudCore::start(config).await?;
//! println!("edges dial wss://{}", cloud.hub_addr());
//! // A token an edge joins with (as `keadm gettoken` prints it).
//! let token = cloud.ca().token(Duration::from_secs(3600), SystemTime::now());
//! // kube-rs against the cloud's API, as any Kubernetes client.
//! let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cloud.client().clone());
//! # let _ = (token, nodes);
//! cloud.stop().await;
//! # Ok(()) }
//! ```

// docs.rs (nightly, `--cfg docsrs`) marks what each feature-gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod certserver;
pub mod controller;
#[cfg(feature = "control-plane")]
pub mod controlplane;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod hub;
pub mod index;
pub mod kubelet;
pub mod leader;
pub mod lifecycle;
pub mod streams;
pub mod uplink;
#[cfg(feature = "control-plane")]
pub mod workloads;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubeedge_core::kubeapi::tls::TlsListener;
use kubeedge_core::pki::{self, Ca};
use kubeedge_core::transport::{tls, ws};

#[cfg(feature = "control-plane")]
pub use controlplane::ControlPlane;
pub use hub::{Hub, HubConfig};
pub use index::Index;
/// The crates this one's public API is written in (the Kubernetes client and types, and the shared
/// core), re-exported so that an application names the very versions it was built with.
pub use {k8s_openapi, kube, kubeedge_core};

/// The label that makes a Node an edge node (upstream: the only mark the cloud looks for).
pub const EDGE_NODE_LABEL: &str = "node-role.kubernetes.io/edge";

/// Why cloudcore could not start.
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
    /// Certificates or keys.
    #[error("PKI")]
    Pki(#[from] pki::Error),
    /// TLS settings.
    #[error("TLS settings")]
    Tls(#[from] tls::Error),
    /// The embedded control plane's store.
    #[error("the control plane's store")]
    Store(#[from] kubeedge_core::store::Error),
    /// The kubeconfig could not be read.
    #[error("reading the kubeconfig")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The Kubernetes client could not be built.
    #[error("building the Kubernetes client")]
    Kube(#[from] kube::Error),
    /// The settings do not work together.
    #[error("{0}")]
    Config(String),
}

/// cloudcore's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Data directory: CA (`ca/`), certificates (`certs/`), the control plane's store and kubeconfig.
    pub data_dir: PathBuf,
    /// A real cluster's kubeconfig; `None` runs the embedded control plane.
    pub kubeconfig: Option<PathBuf>,
    /// The embedded API server's address. Default `127.0.0.1:6443`.
    pub api_addr: SocketAddr,
    /// cloudhub's WebSocket address. Default `0.0.0.0:10000`.
    pub hub_addr: SocketAddr,
    /// cloudhub's HTTPS address (CA and certificate signing). Default `0.0.0.0:10002`.
    pub https_addr: SocketAddr,
    /// With an external cluster (`kubeconfig`): where the kubelet API for edge nodes is served
    /// (see [`kubelet`]). Default `0.0.0.0:10003` (upstream's stream port).
    pub stream_addr: SocketAddr,
    /// Addresses edges dial (IP SANs of cloudhub's certificate; 127.0.0.1 is always included).
    pub advertise: Vec<IpAddr>,
    /// DNS names edges dial (DNS SANs; `localhost` is always included).
    pub dns: Vec<String>,
    /// cloudhub settings.
    pub hub: HubConfig,
    /// How long a node may be disconnected before it turns `Ready=Unknown`. Default 40 s (the
    /// Kubernetes node monitor grace period).
    pub node_grace: Duration,
    /// Validity of signed node certificates. Default 365 days (upstream).
    pub edge_cert_validity: Duration,
    /// The Kubernetes minor version the embedded control plane reports on `/version` (kubectl's
    /// version dispatcher picks its client by it). Default [`kubeapi::KUBE_MINOR`](kubeedge_core::kubeapi::KUBE_MINOR).
    pub kube_minor: String,
    /// Run as one of several replicas sharing the Kubernetes API: elect a leader for the work done
    /// once ([`leader`]), and share one CA through Secret `kubeedge/casecret` (the first replica
    /// stores its own; the others take it). Default `None`: the only cloudcore.
    pub replica: Option<leader::LeaderConfig>,
    /// The embedded control plane's objects in etcd instead of `data_dir`'s redb file, shared by
    /// every cloudcore given the same etcd (see [`etcd`]): they share one CA through it and elect
    /// a leader (with [`replica`](Self::replica)'s settings, or defaults and a random identity).
    /// Default `None`.
    #[cfg(feature = "etcd")]
    pub etcd: Option<etcd::EtcdConfig>,
}

impl Config {
    /// Defaults for data directory `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            kubeconfig: None,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 6443)),
            hub_addr: SocketAddr::from(([0, 0, 0, 0], 10000)),
            https_addr: SocketAddr::from(([0, 0, 0, 0], 10002)),
            stream_addr: SocketAddr::from(([0, 0, 0, 0], 10003)),
            advertise: Vec::new(),
            dns: Vec::new(),
            hub: HubConfig::default(),
            node_grace: Duration::from_secs(40),
            edge_cert_validity: Duration::from_secs(365 * 86_400),
            kube_minor: kubeedge_core::kubeapi::KUBE_MINOR.to_owned(),
            replica: None,
            #[cfg(feature = "etcd")]
            etcd: None,
        }
    }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let step = step.into();
    move |source| Error::Io { step, source }
}

/// Secret `kubeedge/casecret` (upstream's name and keys: `cadata` certificate DER, `cakeydata`
/// SEC1 key DER), where replicas share the CA.
const CA_SECRET: (&str, &str) = ("kubeedge", "casecret");

/// The CA replicas share: the one in [`CA_SECRET`] if there is one (then also written to
/// `dir/ca`, and a serving certificate issued by another CA is dropped to be issued again), else
/// `local`, stored there for the others. `None`: `local` is the shared one.
///
/// A replica whose own CA predates this start (`had_local`: it may have signed edges'
/// certificates) and differs from the shared one is refused rather than switched: switching would
/// leave the edges it signed unable to connect (upstream's replicas diverged that way, silently).
async fn share_ca(
    client: &kube::Client,
    local: &Ca,
    had_local: bool,
    dir: &Path,
) -> Result<Option<Ca>, Error> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    let (ns, name) = CA_SECRET;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut stored = secrets.get_opt(name).await?;
    if stored.is_none() {
        leader::ensure_namespace(&Api::all(client.clone()), ns).await?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                [
                    ("cadata".to_owned(), ByteString(local.cert_der().to_vec())),
                    (
                        "cakeydata".to_owned(),
                        ByteString(local.key_sec1().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!("replicas: this CA is now the shared one ({ns}/{name})");
                return Ok(None);
            }
            // Another replica stored its CA first: take that one.
            Err(kube::Error::Api(s)) if s.code == 409 => stored = secrets.get_opt(name).await?,
            Err(e) => return Err(e.into()),
        }
    }
    let data = stored.and_then(|s| s.data).unwrap_or_default();
    let (Some(cert), Some(key)) = (data.get("cadata"), data.get("cakeydata")) else {
        return Err(Error::Config(format!(
            "Secret {ns}/{name} has no cadata and cakeydata: the replicas' CA cannot be read"
        )));
    };
    adopt_ca(
        local,
        had_local,
        dir,
        &cert.0,
        &key.0,
        &format!("Secret {ns}/{name}"),
    )
}

/// Takes the replicas' shared CA (`cert`, `key`, kept in `place`) unless it is `local`: see
/// [`share_ca`].
fn adopt_ca(
    local: &Ca,
    had_local: bool,
    dir: &Path,
    cert: &[u8],
    key: &[u8],
    place: &str,
) -> Result<Option<Ca>, Error> {
    if cert == local.cert_der() {
        return Ok(None);
    }
    if had_local {
        return Err(Error::Config(format!(
            "this replica's CA ({}) is not the replicas' shared CA ({place}): edges it signed would be refused by the others and the others' by it; move {} away to take the shared CA, or store this one there if it is the one edges trust",
            dir.join("ca").display(),
            dir.join("ca").display()
        )));
    }
    let shared = Ca::from_der(cert, key)?;
    let ca_dir = dir.join("ca");
    pki::write(&ca_dir.join(pki::CA_CERT_FILE), &shared.cert_pem(), false)?;
    pki::write(&ca_dir.join(pki::CA_KEY_FILE), &shared.key_pem(), true)?;
    for file in ["server.crt", "server.key"] {
        let path = dir.join("certs").join(file);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
        }
    }
    tracing::info!("replicas: using the shared CA from {place}");
    Ok(Some(shared))
}

/// The datastore's record of the replicas' CA ([`Store::aux_init`](kubeedge_core::store::Store::aux_init)).
#[cfg(feature = "etcd")]
const CA_RECORD: &str = "kubeedge/ca";

/// [`share_ca`] through the datastore itself (before the API serves: its serving certificate
/// and client authentication need the CA): the first replica's CA is everyone's.
#[cfg(feature = "etcd")]
fn share_ca_in_store(
    store: &kubeedge_core::store::Store,
    local: &Ca,
    had_local: bool,
    dir: &Path,
) -> Result<Option<Ca>, Error> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mine = serde_json::json!({"cert": b64.encode(local.cert_der()), "key": b64.encode(local.key_sec1())});
    let stored = store.aux_init(CA_RECORD, mine.to_string().into_bytes())?;
    let record: serde_json::Value = serde_json::from_slice(&stored)
        .map_err(|e| Error::Config(format!("the datastore's CA record is not JSON: {e}")))?;
    let field = |f: &str| {
        record[f]
            .as_str()
            .and_then(|v| b64.decode(v).ok())
            .ok_or_else(|| Error::Config(format!("the datastore's CA record has no {f}")))
    };
    adopt_ca(
        local,
        had_local,
        dir,
        &field("cert")?,
        &field("key")?,
        "the datastore",
    )
}

/// cloudhub's serving identity: `D/certs/server.{crt,key}` if present (e.g. from `keadm
/// init-pki`), else issued now for the advertised addresses and written there.
fn hub_identity(
    data_dir: &Path,
    ca: &Ca,
    config: &Config,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    Error,
> {
    let cert_path = data_dir.join("certs").join("server.crt");
    let key_path = data_dir.join("certs").join("server.key");
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)
            .map_err(io_err(format!("reading {}", cert_path.display())))?;
        let key = std::fs::read_to_string(&key_path)
            .map_err(io_err(format!("reading {}", key_path.display())))?;
        return Ok((tls::certs_from_pem(&cert)?, tls::key_from_pem(&key)?));
    }
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for ip in config
        .advertise
        .iter()
        .chain([config.hub_addr.ip(), config.https_addr.ip()].iter())
    {
        if !ip.is_unspecified() && !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    let mut dns = vec!["localhost".to_owned()];
    dns.extend(config.dns.iter().cloned());
    let id = ca.issue_server(&dns, &ips, SystemTime::now())?;
    pki::write(&cert_path, &id.cert_pem(), false)?;
    pki::write(&key_path, &id.key_pem()?, true)?;
    Ok((id.chain(), id.private_key()))
}

/// Everything cloudcore runs, started. Dropping it stops the background tasks; [`CloudCore::stop`]
/// stops them and waits.
///
/// Against an existing cluster instead of the embedded control plane: the controllers watch it,
/// and the kubelet API for its edge nodes (logs, exec, metrics) is served on `stream_addr`:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = kubeedge_cloud::Config::new("/var/lib/kubeedge-cloud");
/// config.kubeconfig = Some("/etc/kubernetes/admin.conf".into());
/// config.advertise = vec!["203.0.113.10".parse()?]; // what edges dial, in cloudhub's certificate
/// let cloud = kubeedge_cloud::CloudCore::start(config).await?;
/// assert!(cloud.control_plane().is_none());
/// println!("kubelet API for edge nodes on {:?}", cloud.stream_addr());
/// cloud.stop().await;
/// # Ok(()) }
/// ```
pub struct CloudCore {
    #[cfg(feature = "control-plane")]
    control_plane: Option<ControlPlane>,
    client: kube::Client,
    index: Arc<Index>,
    hub: Hub,
    tunnels: streams::Tunnels,
    hub_addr: SocketAddr,
    https_addr: SocketAddr,
    stream_addr: Option<SocketAddr>,
    ca: Arc<Ca>,
    leadership: leader::Leadership,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for CloudCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("CloudCore");
        d.field("hub_addr", &self.hub_addr)
            .field("https_addr", &self.https_addr);
        #[cfg(feature = "control-plane")]
        d.field("control_plane", &self.control_plane);
        d.finish_non_exhaustive()
    }
}

impl CloudCore {
    /// Starts the control plane (unless a kubeconfig is given), the controllers, cloudhub and its
    /// HTTPS server, and the node lifecycle check.
    pub async fn start(config: Config) -> Result<CloudCore, Error> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let had_ca = dir.join("ca").join(pki::CA_CERT_FILE).exists();
        #[allow(unused_mut)]
        let mut ca = Arc::new(Ca::load_or_create(&dir.join("ca"), SystemTime::now())?);
        #[allow(unused_mut)]
        let mut replica = config.replica.clone();
        // Control planes sharing etcd elect a leader for their controllers: the election's
        // outcome reaches them once the API it runs on serves.
        #[cfg(feature = "etcd")]
        let mut elect = None;
        #[cfg(feature = "control-plane")]
        let (control_plane, kubeconfig) = match &config.kubeconfig {
            Some(path) => (None, path.clone()),
            #[cfg(feature = "etcd")]
            None if config.etcd.is_some() => {
                let etcd = config
                    .etcd
                    .as_ref()
                    .ok_or_else(|| Error::Config("no etcd".into()))?;
                let (store, feed) = etcd::Etcd::open(
                    etcd,
                    &dir.join("etcd-mirror.redb"),
                    kubeedge_core::store::Config::default(),
                )
                .await?;
                if let Some(shared) = share_ca_in_store(&store, &ca, had_ca, dir)? {
                    ca = Arc::new(shared);
                }
                let replica = replica.get_or_insert_with(|| {
                    leader::LeaderConfig::new(format!(
                        "cloudcore-{:016x}",
                        kubeedge_core::sync::stamp::random_seed()
                    ))
                });
                let (tx, leadership) = leader::pending();
                elect = Some((tx, leadership.clone(), replica.clone()));
                let cp = ControlPlane::start_shared(
                    store,
                    feed,
                    dir,
                    config.api_addr,
                    &ca,
                    &config.kube_minor,
                    leadership,
                )
                .await?;
                let path = cp.kubeconfig().to_owned();
                (Some(cp), path)
            }
            None => {
                let cp = ControlPlane::start(dir, config.api_addr, &ca, &config.kube_minor).await?;
                let path = cp.kubeconfig().to_owned();
                (Some(cp), path)
            }
        };
        #[cfg(not(feature = "control-plane"))]
        let kubeconfig = config.kubeconfig.clone().ok_or_else(|| {
            Error::Config(
                "no kubeconfig given, and this cloud was built without the `control-plane` feature (the embedded control plane)".into(),
            )
        })?;
        let embedded = config.kubeconfig.is_none();
        let client = client_from(&kubeconfig).await?;
        // Replicas trust one CA: the one stored in the shared API, else this one (stored there).
        let ca = match &replica {
            Some(_) => match share_ca(&client, &ca, had_ca, dir).await? {
                Some(shared) => Arc::new(shared),
                None => ca,
            },
            None => ca,
        };
        #[cfg(feature = "etcd")]
        let elected = elect.map(|(tx, leadership, replica)| {
            (
                leadership,
                Some(leader::spawn_with(client.clone(), replica, tx)),
            )
        });
        #[cfg(not(feature = "etcd"))]
        let elected = None;
        let (leadership, election) = match (elected, &replica) {
            (Some(elected), _) => elected,
            (None, Some(replica)) => {
                let (leadership, task) = leader::spawn(client.clone(), replica.clone());
                (leadership, Some(task))
            }
            (None, None) => (leader::Leadership::always(), None),
        };

        let index = Index::new();
        let mut tasks = controller::start(&client, &index);
        tasks.extend(election);
        let uplink = uplink::Uplink::new(client.clone(), index.clone(), &cluster_ca(&kubeconfig)?);

        let (chain, key) = hub_identity(dir, &ca, &config)?;
        let hub_tls = tls::server_config(&ca.cert(), chain.clone(), key.clone_key())?;
        let hub = Hub::new(
            config.hub.clone(),
            ws::ServerConfig::new(hub_tls),
            index.clone(),
            uplink,
        );
        let hub_listener = tokio::net::TcpListener::bind(config.hub_addr)
            .await
            .map_err(io_err(format!("binding cloudhub to {}", config.hub_addr)))?;
        let hub_addr = hub_listener
            .local_addr()
            .map_err(io_err("reading cloudhub's address"))?;
        let serving = hub.clone();
        tasks.push(tokio::spawn(
            async move { serving.serve(hub_listener).await },
        ));

        let (https_tls, auth) = tls::server_config_optional_client(&ca.cert(), chain, key)?;
        let https_tcp = tokio::net::TcpListener::bind(config.https_addr)
            .await
            .map_err(io_err(format!(
                "binding the HTTPS server to {}",
                config.https_addr
            )))?;
        let https = TlsListener::new("cloudhub-https", https_tcp, https_tls, auth)
            .map_err(io_err("reading the HTTPS server's address"))?;
        let https_addr = https.local_addr();
        let tunnels = streams::Tunnels::new();
        #[cfg(feature = "control-plane")]
        if let Some(cp) = &control_plane {
            cp.api()
                .serve_pod_streams(Arc::new(streams::CloudStreams::new(tunnels.clone())));
            cp.api()
                .serve_metrics(Arc::new(streams::CloudMetrics::new(tunnels.clone())));
        }
        let routes = certserver::router(
            ca.clone(),
            config.edge_cert_validity,
            index.clone(),
            tunnels.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = certserver::serve(https, routes, std::future::pending()).await {
                tracing::error!(error = %e, "cloudhub HTTPS server stopped");
            }
        }));
        // Against an external cluster, its API server reaches edge pods through the kubelet API
        // served here (the embedded control plane goes to the tunnels directly).
        let stream_addr = if !embedded {
            let cluster_pem = cluster_ca(&kubeconfig)?;
            let cluster_ca = tls::certs_from_pem(&cluster_pem)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{} names no cluster CA: the kubelet API for edge nodes needs it to check the API server's client certificate",
                        kubeconfig.display()
                    ))
                })?;
            let (chain, key) = hub_identity(dir, &ca, &config)?;
            let (stream_tls, stream_auth) =
                tls::server_config_optional_client(&cluster_ca, chain, key)?;
            let tcp = tokio::net::TcpListener::bind(config.stream_addr)
                .await
                .map_err(io_err(format!(
                    "binding the kubelet API to {}",
                    config.stream_addr
                )))?;
            let listener = TlsListener::new("kubelet-api", tcp, stream_tls, stream_auth)
                .map_err(io_err("reading the kubelet API's address"))?;
            let addr = listener.local_addr();
            let routes = kubelet::router(index.clone(), tunnels.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = certserver::serve(listener, routes, std::future::pending()).await {
                    tracing::error!(error = %e, "kubelet API server stopped");
                }
            }));
            Some(addr)
        } else {
            None
        };
        tasks.push(tokio::spawn(lifecycle::run(
            client.clone(),
            index.clone(),
            hub.clone(),
            config.node_grace,
            leadership.clone(),
            replica.clone(),
        )));
        tracing::info!(%hub_addr, %https_addr, "cloudhub serving");
        Ok(CloudCore {
            #[cfg(feature = "control-plane")]
            control_plane,
            client,
            index,
            hub,
            tunnels,
            hub_addr,
            https_addr,
            stream_addr,
            ca,
            leadership,
            tasks,
        })
    }

    /// Where edges on this machine reach this cloud: cloudhub and its certificate server (a
    /// wildcard listening address given as loopback). Edges elsewhere dial an advertised address
    /// at the same ports.
    pub fn address(&self) -> kubeedge_core::address::CloudAddress {
        kubeedge_core::address::CloudAddress::new(self.hub_addr.into(), self.https_addr.into())
    }

    /// Whether this replica leads (always, without [`Config::replica`]).
    pub fn leadership(&self) -> &leader::Leadership {
        &self.leadership
    }

    /// The Kubernetes client the controllers use.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The embedded control plane, when running one.
    #[cfg(feature = "control-plane")]
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.control_plane.as_ref()
    }

    /// The index of what each node gets.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// cloudhub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The edges' stream tunnels.
    pub fn tunnels(&self) -> &streams::Tunnels {
        &self.tunnels
    }

    /// cloudhub's WebSocket address.
    pub fn hub_addr(&self) -> SocketAddr {
        self.hub_addr
    }

    /// Where the kubelet API for edge nodes is served (with an external cluster only).
    pub fn stream_addr(&self) -> Option<SocketAddr> {
        self.stream_addr
    }

    /// cloudhub's HTTPS address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The KubeEdge CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Stops everything; the embedded control plane's store is closed when this returns.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.hub.close().await;
        #[cfg(feature = "control-plane")]
        if let Some(cp) = self.control_plane.take() {
            cp.stop().await;
        }
    }
}

impl Drop for CloudCore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.hub.abort();
    }
}

/// The cluster CA of `kubeconfig`'s current context (PEM; empty when it names none): what an edge
/// asking for `k8s/ca.crt` gets, as from upstream's cloudhub.
pub fn cluster_ca(kubeconfig: &Path) -> Result<String, Error> {
    use base64::Engine as _;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let context = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kc
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .or(kc.clusters.first())
        .and_then(|c| c.cluster.as_ref());
    let Some(cluster) = cluster else {
        return Ok(String::new());
    };
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| Error::Io {
                step: format!(
                    "{}: reading certificate-authority-data",
                    kubeconfig.display()
                ),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
        return Ok(String::from_utf8_lossy(&pem).into_owned());
    }
    match &cluster.certificate_authority {
        Some(path) => {
            std::fs::read_to_string(path).map_err(io_err(format!("reading the cluster CA {path}")))
        }
        None => Ok(String::new()),
    }
}

/// A Kubernetes client from a kubeconfig file (its current context).
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
