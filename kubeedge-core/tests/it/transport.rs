//! The TLS WebSocket transport and the session driver, over real sockets on 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::SinkExt;
use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::sync::{Full, cloud, edge, outbox};
use kubeedge_core::test_util::TestPki;
use kubeedge_core::transport::driver::{self, DriveError, Handle};
use kubeedge_core::transport::{tls, ws};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A WebSocket client that sets exactly the given upgrade headers (as an upstream edge or a broken
/// client would), with a valid certificate for `node`.
async fn raw_client(
    pki: &TestPki,
    node: &str,
    port: u16,
    headers: &[(&'static str, &str)],
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let id = pki.node(node).unwrap();
    let tls_cfg = tls::client_config(&pki.ca.cert(), id.chain(), id.private_key()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls_cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut req = format!(
        "wss://127.0.0.1:{port}/{}/{node}/events",
        names::DEFAULT_PROJECT_ID
    )
    .into_client_request()
    .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream).await
}

/// Accepts one edge on `l` in the background.
fn accept_one(
    l: TcpListener,
    cfg: ws::ServerConfig,
) -> tokio::task::JoinHandle<Result<ws::Connection, ws::Error>> {
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        ws::accept(tcp, &cfg).await
    })
}

fn msg(resource: &str, op: Operation) -> Message {
    Message::new(
        "m1",
        1,
        Route::new("edgecontroller", "resource", op, resource),
    )
    .with_content(serde_json::json!({"kind": "Pod"}))
}

#[tokio::test]
async fn connects_with_mtls_and_carries_messages_both_ways() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let got = conn.recv().await.unwrap().unwrap();
        conn.send(&got.response("r1", 2, serde_json::json!("OK")))
            .await
            .unwrap();
        conn.peer().clone()
    });
    let mut conn = ws::connect(&pki.client_config("e1", port).unwrap())
        .await
        .unwrap();
    assert!(conn.peer().negotiated);
    conn.send(&msg("default/pod/a", Operation::Insert))
        .await
        .unwrap();
    let reply = conn.recv().await.unwrap().unwrap();
    assert_eq!(reply.header.parent_id, "m1");
    assert_eq!(reply.route.operation, Operation::Response);
    let peer = server.await.unwrap();
    assert_eq!(peer.node_id, "e1");
    assert_eq!(peer.project_id, names::DEFAULT_PROJECT_ID);
    assert!(peer.negotiated);
    let cert = &peer.certificates[0];
    assert_eq!(kubeedge_core::pki::node_name(cert).unwrap(), "e1");
}

/// An upstream edge: Go-canonicalised header names, no extension offer, binary frames with a
/// trailing newline. The server reads the headers case-insensitively and does not negotiate.
#[tokio::test]
async fn accepts_upstream_style_headers_without_extensions() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let m = conn.recv().await.unwrap().unwrap();
        (conn.peer().clone(), m)
    });
    let (mut ws, resp) = raw_client(
        &pki,
        "e7",
        port,
        &[
            ("Node_id", "e7"),
            ("Project_id", "p1"),
            ("Connectionuse", "msg"),
        ],
    )
    .await
    .unwrap();
    assert!(
        resp.headers()
            .get(kubeedge_core::sync::SYNC_EXTENSION_HEADER)
            .is_none()
    );
    let mut bytes = msg("default/pod/b", Operation::Update).to_json();
    bytes.push(b'\n');
    ws.send(tungstenite::Message::binary(bytes)).await.unwrap();
    let (peer, m) = server.await.unwrap();
    assert_eq!(peer.node_id, "e7");
    assert_eq!(peer.project_id, "p1");
    assert!(!peer.negotiated);
    assert_eq!(m.route.resource, "default/pod/b");
}

#[tokio::test]
async fn refuses_an_upgrade_without_connection_use() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = accept_one(l, server_cfg);
    assert!(
        raw_client(&pki, "e1", port, &[("node_id", "e1")])
            .await
            .is_err()
    );
    match server.await.unwrap() {
        Err(ws::Error::Header { header, problem }) => {
            assert_eq!(header, ws::CONNECTION_USE_HEADER);
            assert_eq!(problem, "missing");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_client_certificate_from_another_ca() {
    let pki = TestPki::new().unwrap();
    let other = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = accept_one(l, server_cfg);
    // trusts the right CA for the server, but presents a certificate from another CA
    let id = other.node("e1").unwrap();
    let tls_cfg = tls::client_config(&pki.ca.cert(), id.chain(), id.private_key()).unwrap();
    let cfg = ws::ClientConfig::new(format!("wss://127.0.0.1:{port}"), "e1", tls_cfg);
    assert!(ws::connect(&cfg).await.is_err());
    match server.await.unwrap() {
        Err(ws::Error::Tls { source, .. }) => {
            let text = format!("{source}");
            assert!(text.contains("certificate"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_server_from_another_ca() {
    let pki = TestPki::new().unwrap();
    let other = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = other.server_config().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let _ = ws::accept(tcp, &server_cfg).await;
    });
    match ws::connect(&pki.client_config("e1", port).unwrap()).await {
        Err(ws::Error::Tls { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_oversized_frame_is_a_typed_error() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let mut server_cfg = pki.server_config().unwrap();
    server_cfg.max_frame = 1024;
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let first = conn.recv().await;
        let second = conn.recv().await;
        (first, second)
    });
    let mut conn = ws::connect(&pki.client_config("e1", port).unwrap())
        .await
        .unwrap();
    conn.send(&msg("default/pod/ok", Operation::Insert))
        .await
        .unwrap();
    let mut big = msg("default/pod/big", Operation::Insert);
    big.content = serde_json::json!("x".repeat(4096));
    conn.send(&big).await.unwrap();
    let (first, second) = server.await.unwrap();
    assert_eq!(first.unwrap().unwrap().route.resource, "default/pod/ok");
    match second {
        Err(ws::Error::FrameTooLarge { max: 1024, size }) => assert!(size > 1024),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_non_message_frame_is_a_decode_error_and_the_link_survives() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let first = conn.recv().await;
        let second = conn.recv().await;
        (first, second)
    });
    let (mut raw, _) = raw_client(
        &pki,
        "e1",
        port,
        &[("node_id", "e1"), ("ConnectionUse", "msg")],
    )
    .await
    .unwrap();
    raw.send(tungstenite::Message::text("{not json"))
        .await
        .unwrap();
    raw.send(tungstenite::Message::text(
        msg("default/pod/a", Operation::Insert).to_json_string(),
    ))
    .await
    .unwrap();
    let (first, second) = server.await.unwrap();
    assert!(matches!(first, Err(ws::Error::Decode(_))), "{first:?}");
    assert_eq!(second.unwrap().unwrap().route.resource, "default/pod/a");
}

#[tokio::test]
async fn a_silent_edge_is_declared_dead() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let mut cfg = cloud::Config::default();
        cfg.keepalive_timeout = Duration::from_millis(300);
        let mut session = cloud::Session::new("e1", cfg, 1, driver::wall_clock(), driver::now());
        let (_handle, mut pump) = driver::channel(8);
        let (tx, _rx) = mpsc::channel(8);
        pump.drive(conn, &mut session, &tx).await
    });
    // connects, then never sends anything (not even its inventory)
    let _conn = ws::connect(&pki.client_config("e1", port).unwrap())
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(DriveError::Timeout)), "{result:?}");
}

// === 100,000 messages each way ===

const N: usize = 100_000;
const BATCH: usize = 2_000;

/// Feeds messages into a session through its driver, respecting back-pressure: what the session
/// refuses comes back and is offered again after the next `Writable`.
struct Feeder<S> {
    handle: Handle<S>,
    next: usize,
    leftovers: Vec<Message>,
    blocked: bool,
    back_tx: mpsc::UnboundedSender<Vec<Message>>,
    back_rx: mpsc::UnboundedReceiver<Vec<Message>>,
    make: fn(usize) -> Message,
    push: fn(&mut S, Message) -> Result<(), Full>,
}

impl<S: Send + 'static> Feeder<S> {
    fn new(
        handle: Handle<S>,
        make: fn(usize) -> Message,
        push: fn(&mut S, Message) -> Result<(), Full>,
    ) -> Self {
        let (back_tx, back_rx) = mpsc::unbounded_channel();
        Feeder {
            handle,
            next: 0,
            leftovers: Vec::new(),
            blocked: false,
            back_tx,
            back_rx,
            make,
            push,
        }
    }

    /// Offers the next batch unless blocked; waits for the session's answer.
    async fn offer(&mut self) {
        if self.blocked || (self.leftovers.is_empty() && self.next >= N) {
            return;
        }
        let mut batch = std::mem::take(&mut self.leftovers);
        while batch.len() < BATCH && self.next < N {
            batch.push((self.make)(self.next));
            self.next += 1;
        }
        let back = self.back_tx.clone();
        let push = self.push;
        self.handle
            .exec(move |s, _| {
                let mut refused = Vec::new();
                let mut it = batch.into_iter();
                for m in it.by_ref() {
                    if let Err(full) = push(s, m) {
                        refused.push(full.into_message());
                        break;
                    }
                }
                refused.extend(it);
                let _ = back.send(refused);
            })
            .await
            .unwrap();
        let refused = self.back_rx.recv().await.unwrap();
        self.blocked = !refused.is_empty();
        self.leftovers = refused;
    }

    async fn writable(&mut self) {
        self.blocked = false;
        self.offer().await;
    }
}

fn object(i: usize) -> Message {
    Message::new("", 0, Route::new("edgecontroller", "resource", Operation::Insert, format!("default/pod/p{i}")))
        .with_resource_version((i + 1).to_string())
        .with_content(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "default"}}))
}

fn status(i: usize) -> Message {
    Message::new(
        "",
        0,
        Route::new(
            "websocket",
            "resource",
            Operation::Patch,
            format!("default/podpatch/p{i}"),
        ),
    )
    .with_resource_version("1")
    .with_content(serde_json::json!("{\"status\":{\"phase\":\"Running\"}}"))
}

fn small_outbox() -> outbox::Config {
    let mut o = outbox::Config::default();
    o.window = 64;
    o.capacity = 4_096;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_each_way_with_acks_lose_none() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();

    // --- cloud: sends N objects, receives N statuses ---
    let (app_tx, app_rx) = tokio::sync::oneshot::channel();
    let cloud = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let mut cfg = cloud::Config::default();
        cfg.outbox = small_outbox();
        let mut session = cloud::Session::new(
            "e1",
            cfg,
            driver::random_seed(),
            driver::wall_clock(),
            driver::now(),
        );
        let (handle, mut pump) = driver::channel(256);
        let (ev_tx, mut events) = mpsc::channel(4096);
        let app = tokio::spawn(async move {
            let mut feeder = Feeder::new(handle.clone(), object, cloud::Session::enqueue);
            let mut acked = HashSet::new();
            let mut statuses = HashSet::new();
            while acked.len() < N || statuses.len() < N {
                let Some(ev) = events.recv().await else { break };
                let mut tokens = Vec::new();
                let mut evs = vec![ev];
                while let Ok(ev) = events.try_recv() {
                    evs.push(ev);
                    if evs.len() > 1000 {
                        break;
                    }
                }
                for ev in evs {
                    match ev {
                        cloud::Event::ResyncNeeded => {
                            handle
                                .exec(|s, _| {
                                    s.resync(Vec::new());
                                })
                                .await
                                .unwrap();
                            feeder.offer().await;
                        }
                        cloud::Event::Acked { key, deleted, .. } => {
                            assert!(!deleted);
                            acked.insert(key);
                            if feeder.leftovers.is_empty()
                                && !feeder.blocked
                                && acked.len() % BATCH == 0
                            {
                                feeder.offer().await;
                            }
                        }
                        cloud::Event::Writable => feeder.writable().await,
                        cloud::Event::Uplink { token, message } => {
                            statuses.insert(message.route.resource.clone());
                            tokens.extend(token);
                        }
                        other => panic!("cloud: unexpected {other:?}"),
                    }
                }
                if !tokens.is_empty() {
                    handle
                        .exec(move |s, now| {
                            for t in tokens {
                                s.complete_uplink(now, t, Some(serde_json::json!("OK")));
                            }
                        })
                        .await
                        .unwrap();
                }
                if feeder.next < N && !feeder.blocked && feeder.leftovers.is_empty() {
                    feeder.offer().await;
                }
            }
            (acked.len(), statuses.len())
        });
        let _ = app_tx.send(app);
        pump.drive(conn, &mut session, &ev_tx).await
    });

    // --- edge: persists N objects, sends N statuses ---
    let conn = ws::connect(&pki.client_config("e1", port).unwrap())
        .await
        .unwrap();
    assert!(conn.peer().negotiated);
    let mut ecfg = edge::Config::default();
    ecfg.uplink = small_outbox();
    let mut session = edge::Session::new(
        ecfg,
        Vec::new(),
        driver::random_seed(),
        driver::wall_clock(),
        driver::now(),
    );
    let (handle, mut pump) = driver::channel(256);
    let (ev_tx, mut events) = mpsc::channel(4096);
    let edge_app = tokio::spawn(async move {
        let mut feeder = Feeder::new(handle.clone(), status, edge::Session::enqueue_uplink);
        feeder.offer().await;
        let mut store: HashMap<String, Option<u64>> = HashMap::new();
        let mut uplink_acked = HashSet::new();
        while store.len() < N || uplink_acked.len() < N {
            let Some(ev) = events.recv().await else { break };
            let mut evs = vec![ev];
            while let Ok(ev) = events.try_recv() {
                evs.push(ev);
                if evs.len() > 1000 {
                    break;
                }
            }
            // group commit: "persist" the batch, then report it durable in one command
            let mut tokens = Vec::new();
            for ev in evs {
                match ev {
                    edge::Event::Apply {
                        token,
                        key,
                        version,
                        deleted,
                        ..
                    } => {
                        assert!(!deleted);
                        store.insert(key, version);
                        tokens.push(token);
                    }
                    edge::Event::UplinkAcked { key, .. } => {
                        uplink_acked.insert(key);
                    }
                    edge::Event::Writable => feeder.writable().await,
                    other => panic!("edge: unexpected {other:?}"),
                }
            }
            if !tokens.is_empty() {
                handle
                    .exec(move |s, now| s.persisted(now, tokens))
                    .await
                    .unwrap();
            }
            if feeder.next < N && !feeder.blocked && feeder.leftovers.is_empty() {
                feeder.offer().await;
            }
        }
        // every object arrived at its version
        for i in 0..N {
            assert_eq!(
                store.get(&format!("default/pod/p{i}")),
                Some(&Some((i + 1) as u64))
            );
        }
        uplink_acked.len()
    });
    let edge_drive = tokio::spawn(async move { pump.drive(conn, &mut session, &ev_tx).await });

    let limit = Duration::from_secs(600);
    let edge_acked = tokio::time::timeout(limit, edge_app)
        .await
        .unwrap()
        .unwrap();
    let cloud_app = app_rx.await.unwrap();
    let (acked, statuses) = tokio::time::timeout(limit, cloud_app)
        .await
        .unwrap()
        .unwrap();
    // Both apps are done: stop the edge's driver, which closes the link and ends the cloud's.
    edge_drive.abort();
    // (it ends either because its app went away or because the link dropped)
    tokio::time::timeout(limit, cloud)
        .await
        .unwrap()
        .unwrap()
        .ok();
    assert_eq!(acked, N, "objects acked by the edge");
    assert_eq!(statuses, N, "statuses received by the cloud");
    assert_eq!(edge_acked, N, "statuses acked by the cloud");
}

/// While the application is slow to take events, the driver stops reading, and neither declares the
/// (perfectly alive) peer dead nor loses the event it holds back.
#[tokio::test]
async fn a_slow_application_neither_kills_the_link_nor_loses_events() {
    let pki = TestPki::new().unwrap();
    let (l, port) = listener().await;
    let server_cfg = pki.server_config().unwrap();
    let (events_tx, mut events) = mpsc::channel(1);
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let conn = ws::accept(tcp, &server_cfg).await.unwrap();
        let mut cfg = cloud::Config::default();
        cfg.keepalive_timeout = Duration::from_millis(300);
        let mut session = cloud::Session::new("e1", cfg, 1, driver::wall_clock(), driver::now());
        let (_handle, mut pump) = driver::channel(8);
        pump.drive(conn, &mut session, &events_tx).await
    });
    let mut conn = ws::connect(&pki.client_config("e1", port).unwrap())
        .await
        .unwrap();
    // the connection negotiated: an empty inventory lets the cloud resync
    let mut inv = kubeedge_core::sync::InventoryChunk::split(Vec::new(), 10)
        .remove(0)
        .to_message();
    inv.header.id = "inv".into();
    conn.send(&inv).await.unwrap();
    for i in 0..5 {
        let m = Message::new(
            format!("s{i}"),
            1,
            Route::new(
                "websocket",
                "resource",
                Operation::Patch,
                format!("default/podpatch/p{i}"),
            ),
        )
        .with_resource_version("1");
        conn.send(&m).await.unwrap();
    }
    // keep the link alive while the application sleeps for three keepalive timeouts
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ka = Message::new(
            "ka",
            1,
            Route::new("websocket", "resource", Operation::Keepalive, "node"),
        );
        conn.send(&ka).await.unwrap();
    }
    let mut uplinks = Vec::new();
    while uplinks.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
        {
            Some(cloud::Event::Uplink { message, .. }) => uplinks.push(message.route.resource),
            Some(cloud::Event::ResyncNeeded) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(uplinks.len(), 5);
    assert!(!server.is_finished(), "the link is still up");
    server.abort();
}
