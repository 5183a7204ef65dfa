//! The mesh agent: discovery, DNS, proxy, capture and tunnel composed, as `bins/edgemesh` and
//! `edgecore --mesh` run it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UdpSocket};

use crate::capture::{self, Capture};
use crate::discovery::{self, Tables};
use crate::dns::DnsServer;
use crate::proxy::{self, Router};
use crate::table::{Frontend, Protocol};
use crate::tunnel::{Tunnel, TunnelConfig};

/// The proxy's listeners: the local port and task serving each Service port.
type Listeners = Arc<Mutex<HashMap<Frontend, (u16, tokio::task::JoinHandle<()>)>>>;

/// What the agent runs.
#[derive(Debug)]
pub struct MeshConfig {
    /// This node's name (tells local endpoints from remote ones).
    pub node: String,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Where the DNS server listens (none: no DNS). Upstream's is `169.254.96.16:53`.
    pub dns: Option<SocketAddr>,
    /// Put the DNS address on the `edgemesh0` dummy interface first (needs CAP_NET_ADMIN).
    pub dns_dummy: bool,
    /// The resolv.conf-style file naming the resolvers for other names.
    pub resolv_conf: PathBuf,
    /// The address the proxy's listeners bind (their ports are picked by the system).
    pub proxy_bind: IpAddr,
    /// Redirect ClusterIP traffic to the proxy with iptables (needs CAP_NET_ADMIN).
    pub capture: bool,
    /// The tunnel to other nodes (none: every endpoint is dialled directly).
    pub tunnel: Option<TunnelConfig>,
    /// A SOCKS5 entry for applications that cannot be redirected (upstream: port 10800).
    pub socks: Option<SocketAddr>,
    /// Gateway: Services exposed to clients outside the mesh, each on a port of this node.
    pub gateway: Vec<GatewayRule>,
}

impl MeshConfig {
    /// Defaults for `node`: DNS off, proxy on 0.0.0.0 without capture, no tunnel, no SOCKS5.
    pub fn new(node: impl Into<String>) -> MeshConfig {
        MeshConfig {
            node: node.into(),
            domain: "cluster.local".into(),
            dns: None,
            dns_dummy: false,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            proxy_bind: IpAddr::from([0, 0, 0, 0]),
            capture: false,
            tunnel: None,
            socks: None,
            gateway: Vec::new(),
        }
    }
}

/// A Service port exposed by the gateway: clients connecting to `listen` reach
/// `namespace/service:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRule {
    /// Where outside clients connect.
    pub listen: SocketAddr,
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port (its number).
    pub port: u16,
}

impl std::str::FromStr for GatewayRule {
    type Err = crate::Error;

    /// `LISTEN_ADDR=NAMESPACE/SERVICE:PORT`, e.g. `0.0.0.0:8080=default/web:8080`.
    fn from_str(s: &str) -> Result<GatewayRule, crate::Error> {
        let bad = || crate::Error::Config(format!("gateway {s:?}: expected ADDR:PORT=NS/SVC:PORT"));
        let (listen, target) = s.split_once('=').ok_or_else(bad)?;
        let (ns, rest) = target.split_once('/').ok_or_else(bad)?;
        let (svc, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        Ok(GatewayRule {
            listen: listen.parse().map_err(|_| bad())?,
            namespace: ns.to_owned(),
            service: svc.to_owned(),
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

/// A running agent; [`Agent::stop`] (or drop) ends it and removes its iptables rules.
pub struct Agent {
    tables: Tables,
    tunnel: Option<Arc<Tunnel>>,
    dns: Option<DnsServer>,
    socks: Option<SocketAddr>,
    listeners: Listeners,
    capture: Arc<Mutex<Option<Capture>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("dns", &self.dns)
            .field("tunnel", &self.tunnel)
            .finish()
    }
}

impl Agent {
    /// Starts the agent against the Kubernetes API `client` (edgecore's metaserver at the edge).
    pub async fn start(config: MeshConfig, client: kube::Client) -> Result<Agent, crate::Error> {
        let (tables, discovery_task) = discovery::spawn(client).await;
        let mut tasks = vec![discovery_task];
        let tunnel = match config.tunnel {
            Some(tc) => {
                let t = tables.clone();
                let allow: crate::tunnel::Allow = Arc::new(move |proto, ip, port| {
                    let snap = t.borrow();
                    snap.table.services().any(|s| {
                        s.ports.iter().any(|p| {
                            p.protocol == proto
                                && p.backends.iter().any(|b| b.ip == ip && b.port == port)
                        })
                    })
                });
                Some(Arc::new(Tunnel::start(tc, allow).await?))
            }
            None => None,
        };
        let dns = match config.dns {
            Some(addr) => {
                if config.dns_dummy {
                    capture::dummy_address(addr.ip())?;
                }
                let text = std::fs::read_to_string(&config.resolv_conf).unwrap_or_default();
                let upstreams = crate::dns::upstreams(&text, &addr);
                Some(DnsServer::start(addr, &config.domain, tables.clone(), upstreams).await?)
            }
            None => None,
        };
        let capture = Arc::new(Mutex::new(if config.capture {
            Some(Capture::install(capture::CHAIN)?)
        } else {
            None
        }));
        let router = Router::new(config.node.clone(), tunnel.clone(), tables.clone());
        let listeners = Arc::new(Mutex::new(HashMap::new()));
        tasks.push(tokio::spawn(sync_listeners(
            router.clone(),
            tables.clone(),
            config.proxy_bind,
            listeners.clone(),
            capture.clone(),
        )));
        let socks = match config.socks {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| crate::Error::Bind(addr, e))?;
                let bound = l.local_addr().map_err(|e| crate::Error::Bind(addr, e))?;
                tasks.push(tokio::spawn(crate::socks::serve(
                    l,
                    router.clone(),
                    tables.clone(),
                    config.domain.clone(),
                )));
                Some(bound)
            }
            None => None,
        };
        for rule in config.gateway {
            let l = TcpListener::bind(rule.listen)
                .await
                .map_err(|e| crate::Error::Bind(rule.listen, e))?;
            tasks.push(tokio::spawn(crate::socks::gateway(
                l,
                router.clone(),
                tables.clone(),
                rule,
            )));
        }
        Ok(Agent {
            tables,
            tunnel,
            dns,
            socks,
            listeners,
            capture,
            tasks,
        })
    }

    /// Waits until discovery has listed every Service and EndpointSlice once.
    pub async fn synced(&self) {
        let mut rx = self.tables.clone();
        let _ = rx.wait_for(|s| s.synced).await;
    }

    /// The newest service table.
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }

    /// The DNS server's address.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(DnsServer::addr)
    }

    /// The SOCKS5 entry's address.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.socks
    }

    /// The tunnel.
    pub fn tunnel(&self) -> Option<&Arc<Tunnel>> {
        self.tunnel.as_ref()
    }

    /// The local port serving each Service port now.
    pub fn listeners(&self) -> HashMap<Frontend, u16> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().map(|(f, (p, _))| (*f, *p)).collect()
    }

    /// Stops everything and removes the iptables rules.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in l.drain() {
            task.abort();
        }
        if let Some(mut c) = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            c.remove();
        }
    }
}

/// Keeps one listener per Service port and the redirects to them in step with the table.
async fn sync_listeners(
    router: Router,
    mut tables: Tables,
    bind: IpAddr,
    listeners: Listeners,
    capture: Arc<Mutex<Option<Capture>>>,
) {
    let mut last: Vec<(Frontend, u16)> = Vec::new();
    loop {
        let wanted: Vec<Frontend> = {
            let snap = tables.borrow_and_update();
            snap.table.frontends().copied().collect()
        };
        let mut started = Vec::new();
        {
            let l = listeners.lock().unwrap_or_else(|e| e.into_inner());
            for f in &wanted {
                if !l.contains_key(f) {
                    started.push(*f);
                }
            }
        }
        let mut new = Vec::new();
        for f in started {
            match listen(&router, f, bind).await {
                Ok(entry) => new.push((f, entry)),
                Err(e) => {
                    tracing::warn!(service = %format!("{}:{}", f.0, f.1), error = %e, "mesh proxy: cannot listen")
                }
            }
        }
        let redirects: Vec<(Frontend, u16)> = {
            let mut l = listeners.lock().unwrap_or_else(|e| e.into_inner());
            l.extend(new);
            l.retain(|f, (_, task)| {
                let keep = wanted.contains(f);
                if !keep {
                    task.abort();
                }
                keep
            });
            let mut r: Vec<_> = l.iter().map(|(f, (p, _))| (*f, *p)).collect();
            r.sort();
            r
        };
        if redirects != last {
            let mut c = capture.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = c.as_mut() {
                match c.sync(&redirects) {
                    Ok(()) => last = redirects,
                    Err(e) => tracing::warn!(error = %e, "mesh capture: rules not updated"),
                }
            } else {
                last = redirects;
            }
        }
        if tables.changed().await.is_err() {
            return;
        }
    }
}

async fn listen(
    router: &Router,
    f: Frontend,
    bind: IpAddr,
) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let addr = SocketAddr::new(bind, 0);
    match f.2 {
        Protocol::Tcp => {
            let l = TcpListener::bind(addr).await?;
            let port = l.local_addr()?.port();
            Ok((
                port,
                tokio::spawn(proxy::tcp_listener(router.clone(), f, l)),
            ))
        }
        Protocol::Udp => {
            let s = UdpSocket::bind(addr).await?;
            let port = s.local_addr()?.port();
            Ok((
                port,
                tokio::spawn(proxy::udp_listener(router.clone(), f, s)),
            ))
        }
    }
}
