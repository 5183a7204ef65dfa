//! Tunnels between three in-process nodes on loopback: a relay and two edges that only dial out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubeedge_core::pki::Ca;
use kubeedge_mesh::table::Protocol;
use kubeedge_mesh::tunnel::{Allow, RelayAddr, Tunnel, TunnelConfig};
use kubeedge_mesh::wire;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

fn config(ca: &Ca, node: &str) -> TunnelConfig {
    let id = ca
        .issue_node(node, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    TunnelConfig {
        node: node.to_owned(),
        ca: CertificateDer::from(ca.cert_der().to_vec()),
        chain: id.chain(),
        key: id.private_key(),
        listen: None,
        advertise: Vec::new(),
        relays: Vec::new(),
        relay: false,
    }
}

fn allow_only(target: SocketAddr) -> Allow {
    Arc::new(move |_, ip: IpAddr, port| ip == target.ip() && port == target.port())
}

fn deny() -> Allow {
    Arc::new(|_, _, _| false)
}

/// An echo server on 127.0.0.1 that prefixes what it returns.
async fn echo(prefix: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = prefix.as_bytes().to_vec();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn relay(ca: &Ca) -> (Tunnel, RelayAddr) {
    let mut c = config(ca, "relay");
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.relay = true;
    let t = Tunnel::start(c, deny()).await.unwrap();
    let addr = RelayAddr {
        node: "relay".into(),
        addr: t.addr().unwrap(),
    };
    (t, addr)
}

async fn until_connected(t: &Tunnel, peer: &str) {
    for _ in 0..200 {
        if t.peers().iter().any(|p| p == peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never connected to {peer}: {:?}", t.peers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_behind_nat_reach_each_other_through_the_relay() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (relay, raddr) = relay(&ca).await;
    let web = echo("a:").await;

    let mut a = config(&ca, "a");
    a.relays = vec![raddr.clone()];
    let a = Tunnel::start(a, allow_only(web)).await.unwrap();
    let mut b = config(&ca, "b");
    b.relays = vec![raddr.clone()];
    let b = Tunnel::start(b, deny()).await.unwrap();
    until_connected(&a, "relay").await;
    until_connected(&b, "relay").await;

    // A TCP connection from b to a backend on a, through the relay; 4 MiB each way.
    let mut s = b
        .open("a", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 7];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a:hello");
    let big = vec![7u8; 4 << 20];
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        for chunk in big.chunks(60_000) {
            wr.write_all(chunk).await.unwrap();
        }
        wr
    });
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while total < (4 << 20) {
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0);
        total += buf[..n].iter().filter(|b| **b == 7).count();
    }
    drop(writer.await.unwrap());
    assert!(
        b.peers().contains(&"a".to_owned()),
        "b holds a circuit to a"
    );

    // Only backends a's table allows; a refusal is an error, and the tunnel goes on.
    let err = b
        .open("a", Protocol::Tcp, "127.0.0.1".parse().unwrap(), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // A node nobody knows: the relay says so.
    let err = b
        .open("nobody", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("node nobody is not connected to relay relay"),
        "{err}"
    );
    let mut again = b
        .open("a", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap();
    again.write_all(b"x").await.unwrap();
    let mut got = [0u8; 3];
    again.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a:x");

    // UDP, datagrams framed on the stream.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uaddr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let mut out = b"u:".to_vec();
            out.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&out, from).await;
        }
    });
    drop((a, relay));
    let mut a2 = config(&ca, "a");
    let (relay, raddr2) = relay_at(&ca, raddr.addr).await;
    a2.relays = vec![raddr2];
    let a2 = Tunnel::start(a2, allow_only(uaddr)).await.unwrap();
    until_connected(&a2, "relay").await;
    until_connected(&b, "relay").await;
    // b's old circuit to a died with the relay: the next open makes a new one.
    let mut u = None;
    for _ in 0..100 {
        match b.open("a", Protocol::Udp, uaddr.ip(), uaddr.port()).await {
            Ok(s) => {
                u = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut u = u.expect("b reaches the new a through the relay that came back");
    wire::write_datagram(&mut u, b"ping").await.unwrap();
    let mut d = Vec::new();
    wire::read_datagram(&mut u, &mut d).await.unwrap();
    assert_eq!(d, b"u:ping");
    drop((a2, relay));
}

/// A relay listening on a given address again (a relay that comes back where it was).
async fn relay_at(ca: &Ca, addr: SocketAddr) -> (Tunnel, RelayAddr) {
    for _ in 0..50 {
        let mut c = config(ca, "relay");
        c.listen = Some(addr);
        c.relay = true;
        if let Ok(t) = Tunnel::start(c, deny()).await {
            let node = "relay".to_owned();
            return (t, RelayAddr { node, addr });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the relay could not listen at {addr} again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_edge_is_reached_directly() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (relay, raddr) = relay(&ca).await;
    let web = echo("a:").await;
    let mut a = config(&ca, "a");
    a.relays = vec![raddr.clone()];
    a.listen = Some("127.0.0.1:0".parse().unwrap());
    let a = Tunnel::start(a, allow_only(web)).await.unwrap();
    let mut b = config(&ca, "b");
    b.relays = vec![raddr];
    let b = Tunnel::start(b, deny()).await.unwrap();
    until_connected(&a, "relay").await;
    until_connected(&b, "relay").await;
    // Give a's announcement time to land at the relay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = b
        .open("a", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a:hi");
    // a sees b connect from its own listener, not through the relay: kill the relay, the
    // connection stays.
    drop(relay);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"on").await.unwrap();
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a:on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_garbage_are_refused_and_the_relay_keeps_serving() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (relay, raddr) = relay(&ca).await;
    let web = echo("a:").await;
    let mut a = config(&ca, "a");
    a.relays = vec![raddr.clone()];
    let a = Tunnel::start(a, allow_only(web)).await.unwrap();
    until_connected(&a, "relay").await;

    // A node of another cluster: its handshake fails, it never gets a connection.
    let other = Ca::generate(SystemTime::now()).unwrap();
    let mut s = config(&other, "s");
    s.relays = vec![raddr.clone()];
    let stranger = Tunnel::start(s, deny()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(stranger.peers().is_empty());
    let err = stranger
        .open("a", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("relay relay not connected"),
        "{err}"
    );
    assert_eq!(relay.peers(), vec!["a".to_owned()]);

    // Garbage instead of a TLS handshake, and members that send garbage on a stream: refused,
    // logged; the relay serves on.
    let mut raw = tokio::net::TcpStream::connect(raddr.addr).await.unwrap();
    raw.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    let mut g = config(&ca, "g");
    g.relays = vec![raddr.clone()];
    let g = Tunnel::start(g, deny()).await.unwrap();
    until_connected(&g, "relay").await;
    // A stream with an unknown kind, then one with an oversized message.
    let mut b = config(&ca, "b");
    b.relays = vec![raddr];
    let b = Tunnel::start(b, deny()).await.unwrap();
    until_connected(&b, "relay").await;
    for junk in [&[9u8, 1, 2, 3][..], &[2u8, 0xff, 0xff, 0xff, 0x7f][..]] {
        let mut s = b.raw_stream("relay").await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    }
    let mut s = b
        .open("a", Protocol::Tcp, web.ip(), web.port())
        .await
        .unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a:ok");
    drop((g, a, relay));
}
