//! Admission under floods, on real sockets: idle connections never hold a handshake slot and make
//! room for clients that speak; silent ones are closed after the first-bytes timeout; a source's
//! handshakes are capped; every refusal is counted.

use std::time::Duration;

use kubeedge_core::admission::{AdmissionConfig, Gate};
use kubeedge_core::metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn refused(server: &str, reason: &str) -> u64 {
    metrics::counter(
        "kubeedge_connections_refused_total",
        "",
        &[("server", server), ("reason", reason)],
    )
    .get()
}

async fn gate(server: &str, config: AdmissionConfig) -> (Gate, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate = Gate::new(server, listener, config).unwrap();
    let addr = gate.local_addr();
    (gate, addr)
}

/// Whether the server closed `conn` (EOF or reset) within `wait`.
async fn closed_within(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, conn.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_a_client_that_speaks() {
    let mut config = AdmissionConfig::default();
    // Long enough that nothing here is helped by the timeout.
    config.first_bytes_timeout = Duration::from_secs(60);
    config.max_waiting_per_source = 16;
    config.max_handshakes = 2;
    let (mut gate, addr) = gate("test-flood", config).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let admitted = tokio::time::timeout(Duration::from_secs(10), gate.accept())
        .await
        .expect("the client that spoke is admitted while 200 idle connections are open")
        .unwrap();
    let mut first = [0u8; 5];
    let mut stream = admitted.stream;
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"hello", "the first bytes are left for the server");
    assert_eq!(admitted.peer, client.local_addr().unwrap());

    // The oldest idle connections made room: all but the last 16 are closed, and counted.
    assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await);
    assert!(!closed_within(&mut idle[199], Duration::from_millis(200)).await);
    assert!(refused("test-flood", "source_waiting_limit") >= 200 - 16);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_first_bytes_timeout() {
    let mut config = AdmissionConfig::default();
    config.first_bytes_timeout = Duration::from_millis(300);
    let (_gate, addr) = gate("test-silent", config).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut conn, Duration::from_secs(10)).await);
    assert_eq!(refused("test-silent", "first_bytes_timeout"), 1);
}

#[tokio::test]
async fn handshakes_are_capped_per_source_and_slots_come_back() {
    let mut config = AdmissionConfig::default();
    config.max_handshakes_per_source = 2;
    let (mut gate, addr) = gate("test-slots", config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        clients.push(c);
    }
    let a = gate.accept().await.unwrap();
    let b = gate.accept().await.unwrap();
    // The third one of the same source is refused while two handshakes are in progress.
    let mut refused_one = false;
    for c in &mut clients {
        if closed_within(c, Duration::from_millis(500)).await {
            refused_one = true;
        }
    }
    assert!(refused_one);
    assert_eq!(refused("test-slots", "source_handshake_limit"), 1);
    // A finished handshake gives its slot back.
    drop((a.slot, b.slot));
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"y").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), gate.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.peer, c.local_addr().unwrap());
}
