//! The API over HTTPS with client-certificate authentication, as the embedded control plane serves
//! it.
//!
//! Authentication follows the Kubernetes API server's x509 authenticator: the certificate's CN is
//! the user name, its O entries the groups. Without a certificate, a ServiceAccount token
//! (`Authorization: Bearer`, from the TokenRequest API) authenticates its account. A request
//! with neither, or with a certificate that does not chain to the CA or an invalid token, gets
//! `401 Unauthorized` (the TLS handshake itself succeeds, so that the client sees a `Status`, not a
//! handshake failure). Members of the superuser groups (`system:masters`) may do anything;
//! everyone else is authorized by RBAC ([`super::auth`]) and gets `403 Forbidden` where no role
//! allows the request. `/version`, `/healthz`, `/livez` and `/readyz` are public, as the
//! apiserver's default `system:public-info-viewer` role makes them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::auth::{Attributes, authorize};
use super::{Api, ApiError};
use crate::admission::{AdmissionConfig, Admitted, Gate};
use crate::pki;
use crate::transport::tls::ClientAuth;

pub use super::auth::{MASTERS_GROUP, User};

/// How long a client that spoke may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection: where it came from and who it authenticated as.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The user, or why the connection is not authenticated.
    pub user: Result<User, String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener that completes TLS handshakes (concurrently, each bounded in time, admitted
/// through a [`Gate`] so that silent connections hold no handshake slot) and authenticates each
/// connection's client certificate; an axum [`Listener`].
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Wraps `tcp`: handshakes with `tls` (see
    /// [`server_config_optional_client`](crate::transport::tls::server_config_optional_client)) and
    /// checks client certificates with `auth`. `server` names it in the admission counters.
    pub fn new(
        server: &str,
        tcp: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        auth: ClientAuth,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let gate = Gate::new(server, tcp, AdmissionConfig::default())?;
        let (tx, accepted) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(gate, TlsAcceptor::from(tls), auth, tx));
        Ok(TlsListener {
            local,
            accepted,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(
    mut gate: Gate,
    acceptor: TlsAcceptor,
    auth: ClientAuth,
    tx: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
) {
    while let Some(Admitted { stream, peer, slot }) = gate.accept().await {
        let acceptor = acceptor.clone();
        let auth = auth.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    slot.failed();
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    slot.failed();
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            drop(slot);
            let user = authenticate(&tls, &auth);
            let _ = tx.send((tls, TlsPeer { addr: peer, user })).await;
        });
    }
}

fn authenticate(tls: &TlsStream<TcpStream>, auth: &ClientAuth) -> Result<User, String> {
    let chain = match tls.get_ref().1.peer_certificates() {
        Some(chain) if !chain.is_empty() => chain.to_vec(),
        _ => return Err("no client certificate".into()),
    };
    auth.verify(&chain)
        .map_err(|e| format!("client certificate rejected: {e}"))?;
    let (name, groups) = pki::subject(&chain[0]).map_err(|e| e.to_string())?;
    if name.is_empty() {
        return Err("client certificate has no common name".into());
    }
    let mut groups = groups;
    groups.push("system:authenticated".into());
    Ok(User {
        name,
        groups,
        uid: None,
    })
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            user: Err("the listener itself".into()),
        })
    }
}

fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

/// The bearer token of a request, if it carries one.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The user a request impersonates (`Impersonate-User`, `Impersonate-Group`), if the requester
/// may impersonate them (superusers, or RBAC's `impersonate` verb on users, groups and
/// serviceaccounts).
fn impersonated(
    api: &Api,
    superusers: &[String],
    user: &User,
    request: &Request,
) -> Result<Option<User>, ApiError> {
    let headers = request.headers();
    let Some(name) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let superuser = user.groups.iter().any(|g| superusers.contains(g));
    let may = |resource: &str, namespace: &str, object: &str| {
        superuser
            || authorize(
                api.store(),
                user,
                &Attributes::resource("impersonate", "", resource, namespace, object),
            )
    };
    let sa = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let allowed = match sa {
        Some((ns, sa_name)) => may("serviceaccounts", ns, sa_name),
        None => may("users", "", name),
    } && groups.iter().all(|g| may("groups", "", g));
    if !allowed {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "users {name:?} is forbidden: User {:?} cannot impersonate",
                user.name
            ),
        ));
    }
    if let Some((ns, _)) = sa {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    groups.push("system:authenticated".into());
    Ok(Some(User {
        name: name.to_owned(),
        groups,
        uid: None,
    }))
}

async fn guard(api: Api, allowed: Arc<Vec<String>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<TlsPeer>>().cloned();
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let user = match (peer, bearer(&request)) {
        (Some(ConnectInfo(TlsPeer { user: Ok(user), .. })), _) => user,
        (_, Some(token)) => match api.authenticate_token(token) {
            Some(user) => user,
            None => return ApiError::new(401, "Unauthorized", "Unauthorized").into_response(),
        },
        (
            Some(ConnectInfo(TlsPeer {
                user: Err(why),
                addr,
            })),
            None,
        ) => {
            tracing::debug!(peer = %addr, reason = %why, "unauthenticated request");
            return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
        }
        (None, None) => return ApiError::new(401, "Unauthorized", "Unauthorized").into_response(),
    };
    let user = match impersonated(&api, &allowed, &user, &request) {
        Ok(Some(as_user)) => as_user,
        Ok(None) => user,
        Err(denied) => return denied.into_response(),
    };
    let attributes = Attributes::of_request(
        request.method().as_str(),
        request.uri().path(),
        super::is_watch(request.uri()),
    );
    let superuser = user.groups.iter().any(|g| allowed.contains(g));
    if superuser || authorize(api.store(), &user, &attributes) {
        request.extensions_mut().insert(user);
        next.run(request).await
    } else {
        let what = if attributes.resource_request {
            let mut w = format!("resource {:?}", attributes.resource);
            if !attributes.subresource.is_empty() {
                w = format!("{w}/{}", attributes.subresource);
            }
            w.push_str(&format!(" in API group {:?}", attributes.group));
            if attributes.namespace.is_empty() {
                w.push_str(" at the cluster scope");
            } else {
                w.push_str(&format!(" in the namespace {:?}", attributes.namespace));
            }
            w
        } else {
            format!("path {:?}", attributes.path)
        };
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} {:?} is forbidden: User {:?} cannot {} {what}",
                if attributes.resource_request {
                    attributes.resource.as_str()
                } else {
                    ""
                },
                attributes.name,
                user.name,
                attributes.verb,
            ),
        )
        .into_response()
    }
}

impl Api {
    /// Serves the API over HTTPS on `listener` until `shutdown` completes, to members of
    /// `allowed_groups` (see the module docs).
    pub async fn serve_tls(
        &self,
        listener: TlsListener,
        allowed_groups: Vec<String>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let allowed = Arc::new(allowed_groups);
        let api = self.clone();
        let router = self
            .router()
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                guard(api.clone(), allowed.clone(), req, next)
            }));
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .with_graceful_shutdown(self.closing_after(shutdown))
        .await
    }
}

/// A kubeconfig (YAML) for `server` trusting `ca_pem` and authenticating with a client certificate,
/// every file embedded as data, as kubectl, kube-rs and the Python client read it.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubeedge\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\ncontexts:\n- name: kubeedge-admin\n  context:\n    \
         cluster: kubeedge\n    user: admin\n    namespace: default\ncurrent-context: kubeedge-admin\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}
