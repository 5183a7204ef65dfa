//! Throughput and latency through the mesh, against a direct connection, with real `edgemesh`
//! processes on loopback: a relay (`--relay-only`), agent `a` next to the backend's node, agent
//! `b` where the client is. The client enters b's proxy through its gateway port (the same proxy
//! path as a redirected ClusterIP connection, without the NAT table lookup). The API is
//! kubeedge-core's Kubernetes facade over a temporary store, the one edgecore's metaserver serves.
//!
//! `cargo build --release -p edgemesh && cargo bench -p kubeedge-mesh --bench mesh`
//!
//! Throughput is the best of three runs per path (the machine is shared). Paths: `direct` (client → backend), `proxy, local endpoint` (→ b → backend), `tunnel, direct`
//! (→ b → a over TLS+yamux → backend), `tunnel, relayed` (→ b → relay → a, with a's own TLS
//! inside the relay's). Throughput: one connection sending `MIB` MiB (env `MESH_BENCH_MIB`,
//! default 512). Latency: `ROUNDS` 64-byte round trips on one connection (env
//! `MESH_BENCH_ROUNDS`, default 20000). RSS: agent b's VmRSS idle and at its peak under load.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kubeedge_core::kubeapi::Api;
use kubeedge_core::pki::Ca;
use kubeedge_core::store::{Config as StoreConfig, Store};
use serde_json::json;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The backend: the first byte picks the mode. `T`: read to the end, answer the byte count
/// (8 bytes, big-endian). `L`: echo 64-byte messages.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).is_err() {
                    return;
                }
                if mode[0] == b'T' {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total: u64 = 0;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = s.write_all(&total.to_be_bytes());
                } else {
                    let mut m = [0u8; 64];
                    while s.read_exact(&mut m).is_ok() {
                        if s.write_all(&m).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The best of three runs (this machine is shared: the best run is the least disturbed).
fn throughput(to: SocketAddr, mib: usize) -> f64 {
    (0..3).map(|_| throughput_once(to, mib)).fold(0.0, f64::max)
}

fn throughput_once(to: SocketAddr, mib: usize) -> f64 {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    s.write_all(b"T").unwrap();
    for _ in 0..mib * 4 {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), (mib * 1024 * 1024) as u64);
    (mib * 1024 * 1024) as f64 / secs / 1e6
}

fn latency(to: SocketAddr, rounds: usize) -> (f64, f64) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"L").unwrap();
    let m = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds + 200 {
        let t = Instant::now();
        s.write_all(&m).unwrap();
        s.read_exact(&mut back).unwrap();
        if i >= 200 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts.sort_by(f64::total_cmp);
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn certs(ca: &Ca, dir: &Path, node: &str) -> PathBuf {
    let d = dir.join(node);
    std::fs::create_dir_all(d.join("ca")).unwrap();
    std::fs::create_dir_all(d.join("certs")).unwrap();
    let id = ca
        .issue_node(node, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    std::fs::write(d.join("ca/rootCA.crt"), ca.cert_pem()).unwrap();
    std::fs::write(d.join("certs/server.crt"), id.cert_pem()).unwrap();
    std::fs::write(d.join("certs/server.key"), id.key_pem().unwrap()).unwrap();
    d
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn edgemesh(bin: &Path, args: &[String]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "edgemesh: {line:?}");
    Proc(child)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples `pid`'s RSS every 20 ms while `f` runs; the peak.
fn peak_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(rss_kib(pid), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(Ordering::Relaxed))
}

/// Waits until a latency probe through `to` works (the agent has the table and the route).
fn reachable(to: SocketAddr) {
    for _ in 0..100 {
        let ok = TcpStream::connect(to).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"L").ok()?;
            s.write_all(&[1u8; 64]).ok()?;
            let mut b = [0u8; 64];
            s.read_exact(&mut b).ok()
        });
        if ok.is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{to} never reached the backend");
}

fn main() {
    let bin = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(2)
        .unwrap()
        .join("edgemesh");
    if !bin.exists() {
        eprintln!(
            "mesh bench: {} is missing; build it first: cargo build --release -p edgemesh",
            bin.display()
        );
        return;
    }
    let mib = env_num("MESH_BENCH_MIB", 512);
    let rounds = env_num("MESH_BENCH_ROUNDS", 20_000);
    let dir = std::env::temp_dir().join(format!("kubeedge-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // The API: Service web and an EndpointSlice whose node the scenarios change.
    let store = Store::open(&dir.join("api.redb"), StoreConfig::default()).unwrap();
    let api = Api::new(store).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let api_addr = listener.local_addr().unwrap();
    let serving = api.clone();
    rt.spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    let local = api.local("bench");
    let backend = backend();
    local
        .create(
            ("", "services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": backend.port()}]}}),
        )
        .unwrap();
    let slice = |node: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["127.0.0.1"], "nodeName": node,
                              "conditions": {"ready": true}}],
               "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}]})
    };
    local
        .create(
            ("discovery.k8s.io", "endpointslices"),
            Some("default"),
            slice("b"),
        )
        .unwrap();
    let set_node = |node: &str| {
        let mut cur = local
            .get(
                ("discovery.k8s.io", "endpointslices"),
                Some("default"),
                "web-1",
            )
            .unwrap();
        cur["endpoints"][0]["nodeName"] = json!(node);
        local
            .update(("discovery.k8s.io", "endpointslices"), cur, false)
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };

    let ca = Ca::generate(SystemTime::now()).unwrap();
    let relay_port = free_port();
    let relay = edgemesh(
        &bin,
        &[
            "--node-name".into(),
            "relay".into(),
            "--relay-only".into(),
            "--tunnel-listen".into(),
            format!("127.0.0.1:{relay_port}"),
            "--certs".into(),
            certs(&ca, &dir, "relay").display().to_string(),
        ],
    );
    let relay_node = format!("relay@127.0.0.1:{relay_port}");
    let agent = |node: &str, extra: Vec<String>| {
        let mut args = vec![
            "--node-name".to_owned(),
            node.to_owned(),
            "--api".into(),
            format!("http://{api_addr}"),
            "--no-dns".into(),
            "--no-capture".into(),
            "--relay-node".into(),
            relay_node.clone(),
            "--certs".into(),
            certs(&ca, &dir, node).display().to_string(),
        ];
        args.extend(extra);
        edgemesh(&bin, &args)
    };
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b = agent(
        "b",
        vec![
            "--no-listen".into(),
            "--gateway".into(),
            format!("{gateway}=default/web:8080"),
        ],
    );
    let b_pid = b.0.id();
    let a_port = free_port();
    let mut a = Some(agent(
        "a",
        vec!["--tunnel-listen".into(), format!("127.0.0.1:{a_port}")],
    ));
    reachable(gateway);
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(b_pid);

    let mut rows = Vec::new();
    let (d_tp, d_lat) = (throughput(backend, mib), latency(backend, rounds));
    rows.push(("direct".to_owned(), d_tp, d_lat, 0));
    for (name, node) in [
        ("proxy, local endpoint", "b"),
        ("tunnel, direct", "a"),
        ("tunnel, relayed", "a"),
    ] {
        if name == "tunnel, relayed" {
            drop(a.take());
            a = Some(agent("a", vec!["--no-listen".into()]));
        }
        set_node(node);
        reachable(gateway);
        let ((tp, lat), peak) = peak_rss(b_pid, || {
            (throughput(gateway, mib), latency(gateway, rounds))
        });
        rows.push((name.to_owned(), tp, lat, peak));
    }
    println!(
        "| path | MB/s | % of direct | RTT p50 µs | RTT p99 µs | added p50 µs | added p99 µs | agent b peak RSS KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, tp, (p50, p99), peak) in &rows {
        println!(
            "| {name} | {tp:.0} | {:.0} % | {p50:.1} | {p99:.1} | {:.1} | {:.1} | {} |",
            tp / d_tp * 100.0,
            p50 - d_lat.0,
            p99 - d_lat.1,
            if *peak == 0 {
                "-".to_owned()
            } else {
                peak.to_string()
            }
        );
    }
    println!(
        "\nagent b idle RSS: {idle} KiB; relay RSS after the runs: {} KiB",
        rss_kib(relay.0.id())
    );
    println!(
        "(best of 3 runs of {mib} MiB per throughput figure, {rounds} round trips of 64 bytes per latency run)"
    );
    drop((a, b, relay));
    let _ = std::fs::remove_dir_all(&dir);
}
