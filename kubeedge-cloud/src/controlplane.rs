//! The embedded control plane: the Kubernetes API ([`kubeedge_core::kubeapi`]) over a redb store
//! in the data directory, served on HTTPS with client-certificate authentication, for one-machine
//! setups with no cluster.
//!
//! Files under the data directory `D`:
//! * `D/controlplane.redb`: every object (survives restarts; resourceVersions stay monotonic),
//!   with the `devices.kubeedge.io` CRDs (Device, DeviceModel) installed at the first start;
//! * `D/certs/apiserver.{crt,key}`: the serving certificate (127.0.0.1, `localhost`, the bind
//!   address), issued by the KubeEdge CA at every start;
//! * `D/certs/admin.{crt,key}` and `D/admin.kubeconfig`: the administrator (`CN=kubernetes-admin`,
//!   `O=system:masters`), for kubectl, kube-rs and the Python client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubeedge_core::kubeapi::Api;
use kubeedge_core::kubeapi::tls::{MASTERS_GROUP, TlsListener, kubeconfig};
use kubeedge_core::pki::{self, Ca};
use kubeedge_core::store::{self, Store};
use kubeedge_core::transport::tls;
use tokio::sync::oneshot;

use crate::Error;

/// The administrator's user name.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The admin kubeconfig's file name in the data directory.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
/// The ClusterIP of the `default/kubernetes` Service: the first address of the service range
/// ([`SERVICE_RANGE`](kubeedge_core::kubeapi::services::SERVICE_RANGE), so 10.96.0.1).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr =
    Ipv4Addr::from_bits(kubeedge_core::kubeapi::services::SERVICE_RANGE.0.to_bits() + 1);
/// How long the admin certificate is valid.
const ADMIN_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The certificates.k8s.io signers the control plane signs for, with the KubeEdge CA: client
/// certificates for the API (the requester's CN and O as user and groups).
pub const CLIENT_SIGNERS: [&str; 2] = [
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/kube-apiserver-client-kubelet",
];

const CSR_RESOURCE: &str = "certificatesigningrequests.certificates.k8s.io";

fn has_condition(csr: &serde_json::Value, kind: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] != "False")
        })
}

/// Signs every approved, not yet signed request for one of [`CLIENT_SIGNERS`] (the
/// controller-manager's signing controller); a request that cannot be signed gets a `Failed`
/// condition saying why. Returns how many were signed.
pub fn sign_approved(api: &Api, ca: &Ca) -> Result<usize, store::Error> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let csrs = api.store().list_all(CSR_RESOURCE, None)?;
    let mut signed = 0;
    for csr in csrs {
        let signer = csr
            .pointer("/spec/signerName")
            .and_then(serde_json::Value::as_str);
        if !signer.is_some_and(|s| CLIENT_SIGNERS.contains(&s))
            || !has_condition(&csr, "Approved")
            || has_condition(&csr, "Denied")
            || has_condition(&csr, "Failed")
            || csr.pointer("/status/certificate").is_some()
        {
            continue;
        }
        let name = csr["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let seconds = csr
            .pointer("/spec/expirationSeconds")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(365 * 86_400)
            .clamp(600, 365 * 86_400);
        let result = csr
            .pointer("/spec/request")
            .and_then(serde_json::Value::as_str)
            .and_then(|r| b64.decode(r).ok())
            .and_then(|pem| String::from_utf8(pem).ok())
            .ok_or_else(|| "spec.request is not a base64 PEM block".to_owned())
            .and_then(|pem| pki::pem_block(&pem, "CERTIFICATE REQUEST"))
            .and_then(|der| {
                ca.sign_client_csr(&der, Duration::from_secs(seconds), SystemTime::now())
                    .map_err(|e| e.to_string())
            });
        let mut next = csr.clone();
        let now = store::rfc3339(SystemTime::now());
        match result {
            Ok(der) => {
                next["status"]["certificate"] =
                    serde_json::json!(b64.encode(pki::pem("CERTIFICATE", &der)));
                signed += 1;
            }
            Err(why) => {
                let mut conditions = next
                    .pointer("/status/conditions")
                    .and_then(serde_json::Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                conditions.push(serde_json::json!({"type": "Failed", "status": "True",
                    "reason": "SigningFailed", "message": why, "lastUpdateTime": now,
                    "lastTransitionTime": now}));
                next["status"]["conditions"] = serde_json::Value::Array(conditions);
            }
        }
        match api.store().update(CSR_RESOURCE, None, &name, next) {
            // Changed meanwhile: looked at again on the next round.
            Ok(_) | Err(store::Error::Conflict { .. } | store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(signed)
}

/// A running embedded control plane.
#[derive(Debug)]
pub struct ControlPlane {
    api: Api,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    work: Work,
    /// The etcd client, when the objects are in etcd.
    #[cfg(feature = "etcd")]
    feed: Option<crate::etcd::EtcdFeed>,
}

/// The control plane's own controllers: namespaces being deleted go once their content is gone;
/// every namespace keeps its default ServiceAccount and CA bundle; approved client certificate
/// requests are signed by the CA; and the workloads (scheduler, workload controllers, garbage
/// collection, endpoints).
#[derive(Debug)]
struct Controllers {
    housekeeping: tokio::task::JoinHandle<()>,
    /// `None` once stopped.
    workloads: Option<crate::workloads::Manager>,
}

impl Controllers {
    fn start(api: &Api, signer: Arc<Ca>) -> Result<Controllers, Error> {
        let housekeeping = {
            let api = api.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (api, signer) = (api.clone(), signer.clone());
                    // Store writes block: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = api.finalize_namespaces() {
                            tracing::warn!(error = %e, "finalizing deleted namespaces");
                        }
                        if let Err(e) = api.publish_namespace_defaults() {
                            tracing::warn!(error = %e, "publishing namespace defaults");
                        }
                        if let Err(e) = sign_approved(&api, &signer) {
                            tracing::warn!(error = %e, "signing certificate requests");
                        }
                        // Control planes sharing a datastore reserve Service addresses there.
                        if let Err(e) =
                            kubeedge_core::kubeapi::services::release_unheld(api.store())
                        {
                            tracing::warn!(error = %e, "giving back unheld Service addresses");
                        }
                    })
                    .await;
                }
            })
        };
        let workloads = crate::workloads::Manager::start(api, crate::workloads::standard())?;
        Ok(Controllers {
            housekeeping,
            workloads: Some(workloads),
        })
    }

    async fn stop(mut self) {
        self.housekeeping.abort();
        let _ = (&mut self.housekeeping).await;
        if let Some(w) = self.workloads.take() {
            w.stop().await;
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        // Dropped without stop() (the supervisor aborted): nothing may go on writing.
        self.housekeeping.abort();
    }
}

/// Where the controllers run.
#[derive(Debug)]
enum Work {
    /// Here, always (the only control plane over its store).
    Running(Controllers),
    /// Here while this replica leads (control planes sharing one datastore).
    Supervised(Supervisor),
    /// Stopped.
    Stopped,
}

/// Runs the controllers while this replica leads, and stops them when it no longer does.
#[derive(Debug)]
struct Supervisor {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    fn spawn(api: Api, signer: Arc<Ca>, mut leadership: crate::leader::Leadership) -> Supervisor {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                while !leadership.is_leader() {
                    tokio::select! {
                        _ = leadership.changed() => {}
                        _ = &mut stopped => return,
                    }
                }
                let controllers = match Controllers::start(&api, signer.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "starting the controllers; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = &mut stopped => return,
                        }
                    }
                };
                tracing::info!("leading: the control plane's controllers run here");
                let stopping = loop {
                    tokio::select! {
                        _ = leadership.changed() => {
                            if !leadership.is_leader() {
                                break false;
                            }
                        }
                        _ = &mut stopped => break true,
                    }
                };
                controllers.stop().await;
                if stopping {
                    return;
                }
                tracing::info!("no longer leading: the control plane's controllers stopped here");
            }
        });
        Supervisor {
            stop: Some(stop),
            task,
        }
    }
}

impl ControlPlane {
    /// Opens the store under `data_dir`, issues certificates from `ca`, writes the admin
    /// kubeconfig and serves on `bind` (port 0 picks one).
    /// `kube_minor` is the minor version `/version` reports.
    pub async fn start(
        data_dir: &Path,
        bind: SocketAddr,
        ca: &Ca,
        kube_minor: &str,
    ) -> Result<ControlPlane, Error> {
        let store = Store::open(
            &data_dir.join("controlplane.redb"),
            store::Config::default(),
        )?;
        ControlPlane::serve(store, data_dir, bind, ca, kube_minor, None).await
    }

    /// Like [`start`](Self::start), over a store mirroring etcd (opened with
    /// [`Etcd::open`](crate::etcd::Etcd::open)) that other control planes share: the
    /// controllers run only while `leadership` says this replica leads. Stopping the control
    /// plane stops `feed` too.
    #[cfg(feature = "etcd")]
    pub async fn start_shared(
        store: Store,
        feed: crate::etcd::EtcdFeed,
        data_dir: &Path,
        bind: SocketAddr,
        ca: &Ca,
        kube_minor: &str,
        leadership: crate::leader::Leadership,
    ) -> Result<ControlPlane, Error> {
        let mut cp =
            ControlPlane::serve(store, data_dir, bind, ca, kube_minor, Some(leadership)).await?;
        cp.feed = Some(feed);
        Ok(cp)
    }

    async fn serve(
        store: Store,
        data_dir: &Path,
        bind: SocketAddr,
        ca: &Ca,
        kube_minor: &str,
        leadership: Option<crate::leader::Leadership>,
    ) -> Result<ControlPlane, Error> {
        let now = SystemTime::now();
        let api = Api::new(store)?
            .with_reported_minor(kube_minor)
            .control_plane(&ca.cert_pem())?;
        // Devices and their models are served from the start, as upstream installs their CRDs.
        api.install_crds(&kubeedge_core::api::devices::crds())?;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !bind.ip().is_unspecified() && !ips.contains(&bind.ip()) {
            ips.push(bind.ip());
        }
        let server = ca.issue_server(&["localhost".to_owned()], &ips, now)?;
        let admin = ca.issue_client(ADMIN_USER, MASTERS_GROUP, ADMIN_VALIDITY, now)?;
        let certs = data_dir.join("certs");
        pki::write(&certs.join("apiserver.crt"), &server.cert_pem(), false)?;
        pki::write(&certs.join("apiserver.key"), &server.key_pem()?, true)?;
        pki::write(&certs.join("admin.crt"), &admin.cert_pem(), false)?;
        pki::write(&certs.join("admin.key"), &admin.key_pem()?, true)?;

        let (server_tls, auth) =
            tls::server_config_optional_client(&ca.cert(), server.chain(), server.private_key())?;
        let tcp = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| Error::Io {
                step: format!("binding the API server to {bind}"),
                source,
            })?;
        let listener =
            TlsListener::new("apiserver", tcp, server_tls, auth).map_err(|source| Error::Io {
                step: "reading the API server's address".into(),
                source,
            })?;
        let addr = listener.local_addr();
        let host = if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        };
        let url = format!("https://{}", SocketAddr::new(host, addr.port()));
        // In-cluster clients find the API as the `default/kubernetes` Service.
        api.kubernetes_service(
            IpAddr::V4(KUBERNETES_SERVICE_IP),
            SocketAddr::new(host, addr.port()),
        )?;
        let kubeconfig_path = data_dir.join(ADMIN_KUBECONFIG);
        pki::write(
            &kubeconfig_path,
            &kubeconfig(&url, &ca.cert_pem(), &admin.cert_pem(), &admin.key_pem()?),
            true,
        )?;
        let signer = Arc::new(Ca::from_der(ca.cert_der(), ca.key_sec1())?);
        let work = match leadership {
            None => Work::Running(Controllers::start(&api, signer)?),
            Some(leadership) => {
                Work::Supervised(Supervisor::spawn(api.clone(), signer, leadership))
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let served = api.clone();
        let task = tokio::spawn(async move {
            served
                .serve_tls(listener, vec![MASTERS_GROUP.to_owned()], async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, kubeconfig = %kubeconfig_path.display(), "embedded control plane serving");
        Ok(ControlPlane {
            api,
            addr,
            kubeconfig: kubeconfig_path,
            stop: Some(stop),
            task,
            work,
            #[cfg(feature = "etcd")]
            feed: None,
        })
    }

    /// The API (and through it the store).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stops serving: open requests get up to 5 s (watches are cut), then the store is closed
    /// (waiting up to 5 s more for the last connection to let go of it).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match std::mem::replace(&mut self.work, Work::Stopped) {
            Work::Running(c) => c.stop().await,
            Work::Supervised(mut s) => {
                if let Some(stop) = s.stop.take() {
                    let _ = stop.send(());
                }
                let _ = (&mut s.task).await;
            }
            Work::Stopped => {}
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        // The server's connection tasks may still be dropping their handles on the store: wait
        // for the file to be closed, so a new control plane over the same directory can open it.
        let store = self.api.store().clone();
        #[cfg(feature = "etcd")]
        let feed = self.feed.take();
        drop(self);
        #[cfg(feature = "etcd")]
        if let Some(feed) = feed {
            feed.stop().await;
        }
        if !store.close(Duration::from_secs(5)).await {
            tracing::warn!("the control plane's store is still in use after stopping");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
        // Running controllers stop their housekeeping as they drop; a supervisor's task would
        // outlive its handle.
        if let Work::Supervised(s) = &self.work {
            s.task.abort();
        }
    }
}
