//! Entries for traffic that iptables does not redirect: a SOCKS5 server (RFC 1928, no
//! authentication, CONNECT only) that reaches Services by name or ClusterIP, and the gateway, which
//! exposes a Service port on a port of this node to clients outside the mesh.
//!
//! Only Services are reachable: a SOCKS5 request for any other address is answered "connection
//! not allowed by ruleset" and logged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agent::GatewayRule;
use crate::discovery::Tables;
use crate::proxy::{self, Router, Upstream};
use crate::table::{Frontend, Protocol};

/// How long a client may take to send its greeting and request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// SOCKS5 reply codes used here.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Reply {
    Succeeded = 0,
    NotAllowed = 2,
    HostUnreachable = 4,
    CommandNotSupported = 7,
    AddressNotSupported = 8,
}

/// Serves SOCKS5 clients on `listener`.
pub async fn serve(listener: TcpListener, router: Router, tables: Tables, domain: String) {
    loop {
        let (s, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mesh socks: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (router, tables, domain) = (router.clone(), tables.clone(), domain.clone());
        tokio::spawn(async move {
            if let Err(e) = session(s, from, router, tables, &domain).await {
                tracing::info!(client = %from, error = %e, "mesh socks: refused");
            }
        });
    }
}

/// The requested destination.
#[derive(Debug, PartialEq)]
enum Dest {
    Ip(IpAddr),
    Name(String),
}

/// Reads the greeting and the request; answers the greeting.
async fn handshake(s: &mut TcpStream) -> Result<(u8, Dest, u16), String> {
    let ver = s.read_u8().await.map_err(|e| e.to_string())?;
    if ver != 5 {
        return Err(format!("not SOCKS5 (version {ver})"));
    }
    let n = s.read_u8().await.map_err(|e| e.to_string())?;
    let mut methods = vec![0u8; usize::from(n)];
    s.read_exact(&mut methods)
        .await
        .map_err(|e| e.to_string())?;
    if !methods.contains(&0) {
        let _ = s.write_all(&[5, 0xff]).await;
        return Err("no acceptable authentication method".into());
    }
    s.write_all(&[5, 0]).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    if head[0] != 5 {
        return Err("bad request version".into());
    }
    let dest = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.map_err(|e| e.to_string())?;
            Dest::Ip(IpAddr::from(a))
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await.map_err(|e| e.to_string())?;
            Dest::Ip(IpAddr::from(a))
        }
        3 => {
            let len = s.read_u8().await.map_err(|e| e.to_string())?;
            let mut name = vec![0u8; usize::from(len)];
            s.read_exact(&mut name).await.map_err(|e| e.to_string())?;
            Dest::Name(String::from_utf8(name).map_err(|_| "a name that is not UTF-8")?)
        }
        t => {
            reply(s, Reply::AddressNotSupported).await;
            return Err(format!("address type {t}"));
        }
    };
    let port = s.read_u16().await.map_err(|e| e.to_string())?;
    Ok((head[1], dest, port))
}

async fn reply(s: &mut TcpStream, code: Reply) {
    let _ = s.write_all(&[5, code as u8, 0, 1, 0, 0, 0, 0, 0, 0]).await;
}

/// The Service frontend a destination names: a ClusterIP, or `svc.ns`, `svc.ns.svc` or
/// `svc.ns.svc.<domain>`.
fn frontend(tables: &Tables, domain: &str, dest: &Dest, port: u16) -> Option<Frontend> {
    let snap = tables.borrow();
    let ip = match dest {
        Dest::Ip(ip) => *ip,
        Dest::Name(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let short = name
                .strip_suffix(&format!(".{}", domain.trim_end_matches('.')))
                .unwrap_or(&name);
            let short = short.strip_suffix(".svc").unwrap_or(short);
            let (svc, ns) = short.split_once('.')?;
            if ns.contains('.') {
                return None;
            }
            *snap.table.service(ns, svc)?.cluster_ips.first()?
        }
    };
    let f = (ip, port, Protocol::Tcp);
    snap.table.frontend(&f).map(|_| f)
}

async fn session(
    mut s: TcpStream,
    from: SocketAddr,
    router: Router,
    tables: Tables,
    domain: &str,
) -> Result<(), String> {
    let (cmd, dest, port) = tokio::time::timeout(REQUEST_TIMEOUT, handshake(&mut s))
        .await
        .map_err(|_| "no request in time".to_owned())??;
    if cmd != 1 {
        reply(&mut s, Reply::CommandNotSupported).await;
        return Err(format!("command {cmd} (only CONNECT)"));
    }
    let Some(f) = frontend(&tables, domain, &dest, port) else {
        reply(&mut s, Reply::NotAllowed).await;
        return Err(format!("{dest:?}:{port} is not a Service"));
    };
    let (upstream, _) = match router.connect_tcp(&f, from.ip(), None).await {
        Ok(u) => u,
        Err(e) => {
            reply(&mut s, Reply::HostUnreachable).await;
            return Err(e.to_string());
        }
    };
    reply(&mut s, Reply::Succeeded).await;
    let _ = match upstream {
        Upstream::Direct(mut u) => crate::proxy::pipe(&mut s, &mut u).await,
        Upstream::Tunnel(mut u) => crate::proxy::pipe(&mut s, &mut u).await,
    };
    Ok(())
}

/// Serves the gateway rule `rule` on `listener`.
pub async fn gateway(listener: TcpListener, router: Router, tables: Tables, rule: GatewayRule) {
    loop {
        let (s, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mesh gateway: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let f = {
            let snap = tables.borrow();
            snap.table
                .service(&rule.namespace, &rule.service)
                .and_then(|svc| svc.cluster_ips.first().copied())
                .map(|ip| (ip, rule.port, Protocol::Tcp))
        };
        match f {
            Some(f) => {
                tokio::spawn(proxy::serve_tcp(router.clone(), f, s, from));
            }
            None => {
                tracing::warn!(client = %from, service = %format!("{}/{}", rule.namespace, rule.service), "mesh gateway: no such Service")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Snapshot;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn names_and_cluster_ips_find_services_and_nothing_else() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 8080}]}
        }))
        .unwrap();
        let table = crate::table::Table::build([&svc], [], &HashMap::new());
        let (_tx, rx) = tokio::sync::watch::channel(Snapshot {
            table: Arc::new(table),
            synced: true,
        });
        let want = Some(("10.96.0.10".parse().unwrap(), 8080, Protocol::Tcp));
        for name in [
            "web.default",
            "web.default.svc",
            "web.default.svc.cluster.local.",
        ] {
            assert_eq!(
                frontend(&rx, "cluster.local", &Dest::Name(name.into()), 8080),
                want,
                "{name}"
            );
        }
        assert_eq!(
            frontend(
                &rx,
                "cluster.local",
                &Dest::Ip("10.96.0.10".parse().unwrap()),
                8080
            ),
            want
        );
        assert_eq!(
            frontend(
                &rx,
                "cluster.local",
                &Dest::Ip("10.0.0.1".parse().unwrap()),
                8080
            ),
            None
        );
        assert_eq!(
            frontend(&rx, "cluster.local", &Dest::Name("example.com".into()), 80),
            None
        );
        assert_eq!(
            frontend(&rx, "cluster.local", &Dest::Name("web.default".into()), 9),
            None
        );
    }
}
