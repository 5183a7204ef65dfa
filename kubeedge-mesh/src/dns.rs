//! Edge DNS: the cluster's names answered from the service table, everything else forwarded to
//! the host's resolvers.
//!
//! Names (as Kubernetes DNS defines them, under the cluster domain, TTL 30 s as upstream):
//! `<svc>.<ns>.svc.<domain>` A/AAAA (the ClusterIPs, or a headless Service's ready endpoint
//! addresses), `<hostname>.<svc>.<ns>.svc.<domain>` for headless endpoints with a hostname,
//! `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV (and SRV on the Service's own name for all its
//! ports), `<a-b-c-d>.<ns>.pod.<domain>` A, and PTR for ClusterIPs. A name under the domain that
//! no Service has is NXDOMAIN; other names go to the resolvers of a resolv.conf-style file.
//!
//! hickory's server does the DNS codec and the TCP side; UDP queries are read here so that a
//! malformed one is logged before it is answered FORMERR.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{PTR, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::discovery::Tables;
use crate::table::Table;

/// Upstream EdgeMesh's DNS address (on its `edgemesh0` dummy interface).
pub const DEFAULT_ADDR: &str = "169.254.96.16:53";

/// The TTL of every answer about the cluster (upstream's 30 s).
pub const TTL: u32 = 30;

/// Most UDP queries answered at once.
const MAX_IN_FLIGHT: usize = 256;

/// The DNS server's answers.
struct Handler {
    tables: Tables,
    domain: Name,
    upstreams: Vec<SocketAddr>,
}

/// What a name under the cluster domain asks for.
#[derive(Debug, PartialEq)]
enum Ask<'a> {
    Service(&'a str, &'a str),
    Endpoint(&'a str, &'a str, &'a str),
    Srv(&'a str, &'a str, &'a str, &'a str),
    Pod(IpAddr),
}

fn parse<'a>(labels: &'a [String]) -> Option<Ask<'a>> {
    match labels {
        [svc, ns, s] if s == "svc" => Some(Ask::Service(ns, svc)),
        [port, proto, svc, ns, s]
            if s == "svc" && port.starts_with('_') && proto.starts_with('_') =>
        {
            Some(Ask::Srv(ns, svc, &port[1..], &proto[1..]))
        }
        [host, svc, ns, s] if s == "svc" => Some(Ask::Endpoint(ns, svc, host)),
        [ip, _ns, p] if p == "pod" => ip
            .replace('-', ".")
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
            .or_else(|| ip.replace('-', ":").parse().ok())
            .map(Ask::Pod),
        _ => None,
    }
}

fn name(parts: &[&str], domain: &Name) -> Option<Name> {
    let mut n = Name::from_ascii(parts.join(".")).ok()?;
    n.set_fqdn(false);
    n.append_domain(domain).ok()
}

fn address_record(owner: &Name, ip: IpAddr) -> Record {
    Record::from_rdata(owner.clone(), TTL, RData::from(ip))
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

impl Handler {
    /// The answer for a name under the domain: `None` for NXDOMAIN, `Some(vec![])` for a name that
    /// exists without records of that type.
    fn answer(&self, table: &Table, qname: &Name, qtype: RecordType) -> Option<Vec<Record>> {
        if qtype == RecordType::PTR {
            return self.reverse(table, qname);
        }
        let depth = qname.num_labels().checked_sub(self.domain.num_labels())?;
        let labels: Vec<String> = qname
            .iter()
            .take(usize::from(depth))
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        match parse(&labels)? {
            Ask::Service(ns, svc) => {
                let view = table.service(ns, svc)?;
                let mut out = Vec::new();
                if qtype == RecordType::SRV {
                    for p in &view.ports {
                        let target = name(&[svc, ns, "svc"], &self.domain)?;
                        out.push(Record::from_rdata(
                            qname.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, 100, p.port, target)),
                        ));
                    }
                    return Some(out);
                }
                let ips: Vec<IpAddr> = if view.is_headless() {
                    view.endpoint_ips.iter().map(|(ip, _)| *ip).collect()
                } else {
                    view.cluster_ips.clone()
                };
                out.extend(
                    ips.iter()
                        .filter(|ip| wants(qtype, ip))
                        .map(|ip| address_record(qname, *ip)),
                );
                Some(out)
            }
            Ask::Endpoint(ns, svc, host) => {
                let view = table.service(ns, svc)?;
                let ips: Vec<IpAddr> = view
                    .endpoint_ips
                    .iter()
                    .filter(|(ip, h)| {
                        h.as_deref() == Some(host) || dashed(ip).eq_ignore_ascii_case(host)
                    })
                    .map(|(ip, _)| *ip)
                    .collect();
                if ips.is_empty() {
                    return None;
                }
                Some(
                    ips.iter()
                        .filter(|ip| wants(qtype, ip))
                        .map(|ip| address_record(qname, *ip))
                        .collect(),
                )
            }
            Ask::Srv(ns, svc, port, proto) => {
                let view = table.service(ns, svc)?;
                let p = view
                    .ports
                    .iter()
                    .find(|p| p.name == port && p.protocol.as_str() == proto)?;
                if qtype != RecordType::SRV && qtype != RecordType::ANY {
                    return Some(Vec::new());
                }
                let mut out = Vec::new();
                if view.is_headless() {
                    for b in &p.backends {
                        let host = view
                            .endpoint_ips
                            .iter()
                            .find(|(ip, _)| *ip == b.ip)
                            .and_then(|(_, h)| h.clone())
                            .unwrap_or_else(|| dashed(&b.ip));
                        let target = name(&[&host, svc, ns, "svc"], &self.domain)?;
                        out.push(Record::from_rdata(
                            qname.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, 100, b.port, target)),
                        ));
                    }
                } else {
                    let target = name(&[svc, ns, "svc"], &self.domain)?;
                    out.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, p.port, target)),
                    ));
                }
                Some(out)
            }
            Ask::Pod(ip) => Some(
                [ip].iter()
                    .filter(|ip| wants(qtype, ip))
                    .map(|ip| address_record(qname, *ip))
                    .collect(),
            ),
        }
    }

    /// PTR for a ClusterIP.
    fn reverse(&self, table: &Table, qname: &Name) -> Option<Vec<Record>> {
        let ip = ip_of_reverse(qname)?;
        let view = table.by_cluster_ip(ip)?;
        let target = name(&[&view.name, &view.namespace, "svc"], &self.domain)?;
        Some(vec![Record::from_rdata(
            qname.clone(),
            TTL,
            RData::PTR(PTR(target)),
        )])
    }

    /// Whether a name is the cluster's to answer.
    fn ours(&self, qname: &Name, qtype: RecordType) -> bool {
        self.domain.zone_of(qname)
            || (qtype == RecordType::PTR
                && ip_of_reverse(qname)
                    .is_some_and(|ip| self.tables.borrow().table.by_cluster_ip(ip).is_some()))
    }
}

fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn ip_of_reverse(qname: &Name) -> Option<IpAddr> {
    let text = qname.to_ascii().to_ascii_lowercase();
    let text = text.trim_end_matches('.');
    if let Some(v4) = text.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<&str> = v4.split('.').collect();
        parts.reverse();
        return parts.join(".").parse().ok();
    }
    let v6 = text.strip_suffix(".ip6.arpa")?;
    let nibbles: String = v6.split('.').rev().collect();
    if nibbles.len() != 32 {
        return None;
    }
    let groups: Vec<&str> = (0..8).map(|i| &nibbles[i * 4..i * 4 + 4]).collect();
    groups.join(":").parse().ok()
}

fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().max(512));
        e.set_version(0);
        e
    })
}

fn failed(request: &Request) -> ResponseInfo {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata: md,
        counts: HeaderCounts::default(),
    })
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut handle: R,
    metadata: Metadata,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let response = builder.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        [],
        additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "mesh dns: sending an answer failed");
            failed(request)
        }
    }
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    mut handle: R,
    code: ResponseCode,
) -> ResponseInfo {
    let edns = response_edns(request);
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
        .error_msg(&request.metadata, code);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => failed(request),
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, handle, ResponseCode::NotImp).await;
        }
        let Ok(info) = request.request_info() else {
            tracing::info!(src = %request.src(), "mesh dns: refused a query without exactly one question");
            return send_error(request, handle, ResponseCode::FormErr).await;
        };
        if info.query.query_class() != DNSClass::IN {
            return send_error(request, handle, ResponseCode::Refused).await;
        }
        let qname = Name::from(info.query.name());
        let qtype = info.query.query_type();
        if self.ours(&qname, qtype) {
            let table = self.tables.borrow().table.clone();
            let mut md = Metadata::response_from_request(&request.metadata);
            md.authoritative = true;
            md.recursion_available = true;
            return match self.answer(&table, &qname, qtype) {
                Some(records) => send(request, handle, md, &records, &[], &[]).await,
                None => {
                    md.response_code = ResponseCode::NXDomain;
                    send(request, handle, md, &[], &[], &[]).await
                }
            };
        }
        self.forward(request, handle, &qname, qtype).await
    }
}

impl Handler {
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
        qname: &Name,
        qtype: RecordType,
    ) -> ResponseInfo {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(qname.clone(), qtype));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        q.set_edns(e);
        for up in &self.upstreams {
            match exchange(*up, &q).await {
                Ok(reply) => {
                    let mut md = Metadata::response_from_request(&request.metadata);
                    md.response_code = reply.metadata.response_code;
                    md.recursion_available = reply.metadata.recursion_available;
                    return send(
                        request,
                        handle,
                        md,
                        &reply.answers,
                        &reply.authorities,
                        &reply.additionals,
                    )
                    .await;
                }
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "mesh dns: forwarding failed")
                }
            }
        }
        send_error(request, handle, ResponseCode::ServFail).await
    }
}

/// One query to an upstream resolver: UDP, then TCP when the answer is truncated.
async fn exchange(upstream: SocketAddr, query: &Message) -> std::io::Result<Message> {
    let bytes = query.to_vec().map_err(std::io::Error::other)?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let reply = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await??;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == query.metadata.id => break m,
            _ => continue,
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut tcp =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await??;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    tcp.write_all(&len.to_be_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let len = tokio::time::timeout(Duration::from_secs(2), tcp.read_u16()).await??;
    let mut rbuf = vec![0u8; usize::from(len)];
    tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut rbuf)).await??;
    Message::from_vec(&rbuf).map_err(std::io::Error::other)
}

/// The `nameserver` lines of a resolv.conf-style text, except `skip` (the mesh's own address).
pub fn upstreams(text: &str, skip: &SocketAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "nameserver").then_some(())?;
            let v = it.next()?;
            v.parse::<SocketAddr>()
                .ok()
                .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
        })
        .filter(|a| a != skip && !(a.ip() == skip.ip() && a.port() == skip.port()))
        .collect()
}

#[derive(Clone)]
struct UdpResponder {
    sock: Arc<UdpSocket>,
    dst: SocketAddr,
    max_size: u16,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        let info = {
            let mut enc = BinEncoder::new(&mut buf);
            enc.set_max_size(self.max_size);
            response.destructive_emit(&mut enc)?
        };
        self.sock.send_to(&buf, self.dst).await?;
        Ok(info)
    }
}

/// A running DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    udp: tokio::task::JoinHandle<()>,
    tcp: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Serves on `addr` (UDP and TCP; port 0 picks one, the same for both), answering from
    /// `tables` under `domain` (e.g. `cluster.local`) and forwarding other names to `upstreams`.
    pub async fn start(
        addr: SocketAddr,
        domain: &str,
        tables: Tables,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, crate::Error> {
        let mut domain = Name::from_str(domain)
            .map_err(|e| crate::Error::Config(format!("cluster domain {domain:?}: {e}")))?;
        domain.set_fqdn(true);
        let handler = Arc::new(Handler {
            tables,
            domain,
            upstreams,
        });
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| crate::Error::Bind(addr, e))?;
        let addr = udp.local_addr().map_err(|e| crate::Error::Bind(addr, e))?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| crate::Error::Bind(addr, e))?;
        let mut server = hickory_server::Server::new(SharedHandler(handler.clone()));
        server.register_listener(tcp, Duration::from_secs(10), 32);
        let token = server.shutdown_token().clone();
        tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::warn!(error = %e, "mesh dns: the TCP server stopped");
            }
        });
        let udp = tokio::spawn(serve_udp(Arc::new(udp), handler));
        Ok(DnsServer {
            addr,
            udp,
            tcp: token,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.cancel();
    }
}

struct SharedHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        self.0.handle_request::<R, T>(request, handle).await
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, handler: Arc<Handler>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "mesh dns: receive failed");
                continue;
            }
        };
        match Request::from_bytes(
            buf[..n].to_vec(),
            src,
            hickory_server::net::xfer::Protocol::Udp,
        ) {
            Ok(req) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%src, "mesh dns: too many queries in flight, dropped one");
                    continue;
                };
                let h = handler.clone();
                let responder = UdpResponder {
                    sock: sock.clone(),
                    dst: src,
                    max_size: req.max_payload(),
                };
                tokio::spawn(async move {
                    h.handle_request::<_, TokioTime>(&req, responder).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::info!(%src, error = %e, "mesh dns: refused a malformed query");
                if n >= 12 {
                    let mut out = buf[..12].to_vec();
                    out[2] = (out[2] | 0x80) & 0xF9;
                    out[3] = 0x01;
                    out[4..12].fill(0);
                    let _ = sock.send_to(&out, src).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_into_questions() {
        let l = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            parse(&l("web.default.svc")),
            Some(Ask::Service("default", "web"))
        );
        assert_eq!(
            parse(&l("_http._tcp.web.default.svc")),
            Some(Ask::Srv("default", "web", "http", "tcp"))
        );
        assert_eq!(
            parse(&l("web-0.web.default.svc")),
            Some(Ask::Endpoint("default", "web", "web-0"))
        );
        assert_eq!(
            parse(&l("10-0-0-7.default.pod")),
            Some(Ask::Pod("10.0.0.7".parse().unwrap()))
        );
        assert_eq!(parse(&l("web.default")), None);
        let n = Name::from_str("10.0.96.10.in-addr.arpa.").unwrap();
        assert_eq!(ip_of_reverse(&n), Some("10.96.0.10".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_without_our_own_address() {
        let me: SocketAddr = DEFAULT_ADDR.parse().unwrap();
        let text = "search default.svc.cluster.local\nnameserver 169.254.96.16\nnameserver 10.0.0.2\nnameserver ::1\n";
        assert_eq!(
            upstreams(text, &me),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
