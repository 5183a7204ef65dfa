//! The mesh across edges that cannot reach each other: three network namespaces made here, a
//! relay host `r` (IP forwarding to the cloud with masquerade, but A↔B dropped) and edges `a` and
//! `b` behind it, each with its own subnet. Our cloud runs in this process on the host's end of a
//! veth to `r`; real edgecore and edgemesh binaries run inside the namespaces (process-runtime
//! pods serving HTTP with busybox httpd and UDP with python3); clients are curl, dig and python3
//! inside `b`, resolving through `/etc/netns/b/resolv.conf` (made here, removed after).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::common::{TempDir, eventually};

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args)).unwrap();
}

/// A command inside namespace `ns`.
fn inside(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// The three hosts; everything made here is deleted on drop.
struct Hosts {
    r: String,
    a: String,
    b: String,
    host_if: String,
    /// 10.<n>: the host–relay link is .0, a's .1, b's .2.
    net: String,
}

impl Hosts {
    fn new() -> Hosts {
        let seed = kubeedge_core::transport::driver::random_seed();
        let tag = seed % 100_000;
        let net = format!("10.{}", 190 + seed % 10);
        let h = Hosts {
            r: format!("kemr{tag}"),
            a: format!("kema{tag}"),
            b: format!("kemb{tag}"),
            host_if: format!("kemh{tag}"),
            net: net.clone(),
        };
        for ns in [&h.r, &h.a, &h.b] {
            ip(&["netns", "add", ns]);
            sh(inside(ns, "ip").args(["link", "set", "lo", "up"])).unwrap();
        }
        // host <-> r
        ip(&[
            "link", "add", &h.host_if, "type", "veth", "peer", "name", "rh", "netns", &h.r,
        ]);
        ip(&["addr", "add", &format!("{net}.0.1/24"), "dev", &h.host_if]);
        ip(&["link", "set", &h.host_if, "up"]);
        let r = |args: &[&str]| sh(inside(&h.r, args[0]).args(&args[1..])).unwrap();
        r(&["ip", "addr", "add", &format!("{net}.0.2/24"), "dev", "rh"]);
        r(&["ip", "link", "set", "rh", "up"]);
        // r <-> a, r <-> b
        for (ns, n, rif) in [(&h.a, 1, "ra"), (&h.b, 2, "rb")] {
            ip(&[
                "link", "add", rif, "netns", &h.r, "type", "veth", "peer", "name", "up0", "netns",
                ns,
            ]);
            r(&["ip", "addr", "add", &format!("{net}.{n}.1/24"), "dev", rif]);
            r(&["ip", "link", "set", rif, "up"]);
            let e = |args: &[&str]| sh(inside(ns, args[0]).args(&args[1..])).unwrap();
            e(&[
                "ip",
                "addr",
                "add",
                &format!("{net}.{n}.2/24"),
                "dev",
                "up0",
            ]);
            e(&["ip", "link", "set", "up0", "up"]);
            e(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.{n}.1"),
            ]);
        }
        // r forwards the edges to the cloud behind its own address, and nothing between them.
        r(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        r(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "rh",
            "-j",
            "MASQUERADE",
        ]);
        r(&[
            "iptables", "-A", "FORWARD", "-i", "ra", "-o", "rb", "-j", "DROP",
        ]);
        r(&[
            "iptables", "-A", "FORWARD", "-i", "rb", "-o", "ra", "-j", "DROP",
        ]);
        // The edges resolve through their mesh agent.
        for ns in [&h.a, &h.b] {
            let dir = PathBuf::from("/etc/netns").join(ns);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("resolv.conf"),
                "nameserver 169.254.96.16\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n",
            )
            .unwrap();
        }
        h
    }

    fn host_ip(&self) -> String {
        format!("{}.0.1", self.net)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.r, &self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (and reaped) when dropped.
struct Proc(Child, PathBuf);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The process's log.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `cmd` with its stderr in `log`, and waits for its ready line on stdout.
fn started(mut cmd: Command, what: &'static str, log: PathBuf) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let p = Proc(child, log);
    assert!(
        line.contains("ready"),
        "{what} did not start: {line:?}\n{}",
        p.log()
    );
    (p, line)
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.ancestors().nth(2).unwrap().join(name);
    assert!(p.exists(), "build {name} first (cargo build -p {name})");
    p
}

/// edgecore in `ns` as node `node` on subnet `n`, with `extra` flags; its ready line's
/// metaserver address.
fn edgecore(
    h: &Hosts,
    ns: &str,
    node: &str,
    n: u8,
    dir: &Path,
    cloud: &kubeedge_cloud::CloudCore,
    extra: &[&str],
) -> (Proc, String) {
    let token = cloud
        .ca()
        .token(Duration::from_secs(600), SystemTime::now());
    let mut cmd = inside(ns, env!("CARGO_BIN_EXE_edgecore"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--node-name", node, "--runtime", "process"])
        .args(["--node-ip", &format!("{}.{n}.2", h.net)])
        .args(["--mqtt-internal", "127.0.0.1:0", "--metaserver-port", "0"])
        .arg("--cloud")
        .arg(format!("wss://{}:{}", h.host_ip(), cloud.hub_addr().port()))
        .arg("--https")
        .arg(format!(
            "https://{}:{}",
            h.host_ip(),
            cloud.https_addr().port()
        ))
        .arg("--token")
        .arg(token)
        .args(extra)
        .env("RUST_LOG", "warn,kubeedge_mesh=info");
    let (p, line) = started(cmd, "edgecore", dir.with_extension("log"));
    let meta = field(&line, "metaserver").to_owned();
    (p, meta)
}

fn edgemesh(ns: &str, node: &str, certs: &Path, metaserver: &str, relay: &str) -> Proc {
    let mut cmd = inside(ns, bin("edgemesh").to_str().unwrap());
    cmd.args(["--node-name", node])
        .arg("--api")
        .arg(format!("http://{metaserver}"))
        .arg("--certs")
        .arg(certs)
        .args(["--relay-node", relay])
        .args(["--resolv-conf", "/dev/null"])
        .args(["--socks", "127.0.0.1:10800"])
        .args(["--gateway", "0.0.0.0:18080=default/web:8080"])
        .env("RUST_LOG", "info");
    started(cmd, "edgemesh", certs.join("edgemesh.log")).0
}

/// curl inside `ns`; the body, or the error.
fn curl(ns: &str, url: &str) -> Result<String, String> {
    sh(inside(ns, "curl").args(["-sS", "--max-time", "5", url]))
}

fn pod(name: &str, node: &str, labels: serde_json::Value, command: &str, restart: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "busybox",
                                 "command": ["/bin/sh", "-c", command]}]}
    }))
    .unwrap()
}

fn web(name: &str, node: &str, restart: &str) -> Pod {
    pod(
        name,
        node,
        json!({"app": "web"}),
        &format!(
            "mkdir -p www-{name} && echo {name} > www-{name}/index.html && exec busybox httpd -f -p 8080 -h www-{name}"
        ),
        restart,
    )
}

const UDP_ECHO: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9000))\nwhile True:\n    d,a=s.recvfrom(65535)\n    s.sendto(b'echo:'+d,a)\n";

const UDP_CLIENT: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.sendto(sys.argv[3].encode(),(sys.argv[1],int(sys.argv[2])))\nprint(s.recvfrom(65535)[0].decode())\n";

/// The pages answering `n` requests from `ns`, with the failures counted as `ERR`.
fn pages(ns: &str, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| curl(ns, url).map_or_else(|_| "ERR".to_owned(), |b| b.trim().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_across_edges_through_the_relay_and_offline() {
    let hosts = Hosts::new();
    let dir = TempDir::new("mesh");
    let mut config = crate::common::cloud_config(
        &dir,
        &format!("{}:0", hosts.host_ip()),
        &format!("{}:0", hosts.host_ip()),
    );
    config.advertise = vec![hosts.host_ip().parse().unwrap()];
    let cloud = kubeedge_cloud::CloudCore::start(config).await.unwrap();
    let client = cloud.client().clone();

    // The relay: a node certificate of the cluster, on r where both edges reach it.
    let relay_dir = dir.0.join("relay");
    let id = cloud
        .ca()
        .issue_node("relay", Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    std::fs::create_dir_all(relay_dir.join("ca")).unwrap();
    std::fs::create_dir_all(relay_dir.join("certs")).unwrap();
    std::fs::write(relay_dir.join("ca/rootCA.crt"), cloud.ca().cert_pem()).unwrap();
    std::fs::write(relay_dir.join("certs/server.crt"), id.cert_pem()).unwrap();
    std::fs::write(relay_dir.join("certs/server.key"), id.key_pem().unwrap()).unwrap();
    let relay_cmd = || {
        let mut c = inside(&hosts.r, bin("edgemesh").to_str().unwrap());
        c.args(["--node-name", "relay", "--relay-only", "--certs"])
            .arg(&relay_dir)
            .env("RUST_LOG", "info");
        c
    };
    let (mut relay, _) = started(relay_cmd(), "relay", relay_dir.join("relay.log"));

    // Two edges: a with the edgemesh binary beside edgecore, b with the agent inside edgecore
    // (--mesh).
    let net = hosts.net.clone();
    let (edge_a, meta_a) = edgecore(&hosts, &hosts.a, "a", 1, &dir.0.join("a"), &cloud, &[]);
    let relay_b = format!("relay@{net}.2.1:20006");
    let mesh_b = edgecore(
        &hosts,
        &hosts.b,
        "b",
        2,
        &dir.0.join("b"),
        &cloud,
        &["--mesh", "--mesh-relay", &relay_b],
    )
    .0;
    let relay_a = format!("relay@{net}.1.1:20006");
    let mesh_a = edgemesh(&hosts.a, "a", &dir.0.join("a"), &meta_a, &relay_a);

    // A and B really cannot reach each other.
    assert!(
        sh(inside(&hosts.b, "curl").args([
            "-sS",
            "--max-time",
            "2",
            &format!("http://{net}.1.2:20006/")
        ]))
        .is_err(),
        "b reaches a directly"
    );

    // web on a only: b's requests cross the relay.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &web("web-a", "a", "Never"))
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    let url = "http://web.default.svc.cluster.local:8080/";
    eventually(90, "b gets web-a's page through the relay", async || {
        curl(&hosts.b, url).is_ok_and(|b| b.trim() == "web-a")
    })
    .await;
    assert!(
        mesh_b.log().contains("mesh tunnel: connected"),
        "{}",
        mesh_b.log()
    );

    // DNS: the ClusterIP, SRV, a name outside the cluster domain answered (SERVFAIL, nothing
    // to forward to), a malformed query refused and the server still answering.
    let dig = |args: &[&str]| {
        sh(inside(&hosts.b, "dig")
            .args(["@169.254.96.16", "+short", "+time=2", "+tries=1"])
            .args(args))
        .unwrap()
    };
    assert_eq!(dig(&["web.default.svc.cluster.local"]).trim(), cluster_ip);
    assert_eq!(
        dig(&["SRV", "_http._tcp.web.default.svc.cluster.local"]).trim(),
        "0 100 8080 web.default.svc.cluster.local."
    );
    let nx = sh(inside(&hosts.b, "dig").args([
        "@169.254.96.16",
        "+time=2",
        "+tries=1",
        "nope.default.svc.cluster.local",
    ]))
    .unwrap();
    assert!(nx.contains("NXDOMAIN"), "{nx}");
    let rcode = sh(inside(&hosts.b, "python3").args([
        "-c",
        "import socket;s=socket.socket(2,2);s.settimeout(2);s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07garbage',('169.254.96.16',53));print(s.recv(512)[3] & 15)",
    ]))
    .unwrap();
    assert_eq!(rcode.trim(), "1", "FORMERR for a malformed query");
    assert_eq!(dig(&["web.default.svc.cluster.local"]).trim(), cluster_ip);
    assert!(
        mesh_b.log().contains("refused a malformed query"),
        "{}",
        mesh_b.log()
    );

    // A second replica on b: requests are spread over both.
    pods.create(&PostParams::default(), &web("web-b", "b", "Never"))
        .await
        .unwrap();
    eventually(60, "requests spread over web-a and web-b", async || {
        let got = pages(&hosts.b, url, 6);
        got.iter().any(|p| p == "web-a") && got.iter().any(|p| p == "web-b")
    })
    .await;

    // A consistent hash on a header (the policy annotation): one user, one replica.
    let patch = json!({"metadata": {"annotations": {
        "mesh.kubeedge.io/lb-policy": "CONSISTENT_HASH_HEADER:X-User"}}});
    services
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let as_user = |user: &str| -> Vec<String> {
        (0..6)
            .map(|_| {
                sh(inside(&hosts.b, "curl")
                    .args(["-sS", "--max-time", "5", "-H"])
                    .arg(format!("X-User: {user}"))
                    .arg(url))
                .map_or_else(|_| "ERR".to_owned(), |b| b.trim().to_owned())
            })
            .collect()
    };
    eventually(30, "each user sticks to one replica", async || {
        ["alice", "bob", "carol", "dave"].iter().all(|u| {
            let got = as_user(u);
            got[0] != "ERR" && got.iter().all(|p| *p == got[0])
        })
    })
    .await;
    services
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"metadata": {"annotations": {
                "mesh.kubeedge.io/lb-policy": null}}})),
        )
        .await
        .unwrap();

    // SOCKS5 on a: Services by name, anything else refused. The gateway on a: the Service for a
    // client outside the mesh (on r).
    let socks = |target: &str| {
        sh(inside(&hosts.a, "curl").args([
            "-sS",
            "--max-time",
            "5",
            "--socks5-hostname",
            "127.0.0.1:10800",
            target,
        ]))
    };
    assert_eq!(socks("http://web.default:8080/").unwrap().trim().len(), 5);
    let refused = socks("http://10.1.2.3:80/").unwrap_err();
    assert!(refused.contains("SOCKS5"), "{refused}");
    assert!(
        mesh_a.log().contains("is not a Service"),
        "{}",
        mesh_a.log()
    );
    let outside = sh(inside(&hosts.r, "curl").args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://{net}.1.2:18080/"),
    ]))
    .unwrap();
    assert!(outside.trim().starts_with("web-"), "{outside}");

    // UDP through the relay.
    let script = dir.0.join("udp_echo.py");
    std::fs::write(&script, UDP_ECHO).unwrap();
    let client_py = dir.0.join("udp_client.py");
    std::fs::write(&client_py, UDP_CLIENT).unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "echo-a",
            "a",
            json!({"app": "echo"}),
            &format!("exec python3 {}", script.display()),
            "Always",
        ),
    )
    .await
    .unwrap();
    let echo: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"},
                 "ports": [{"name": "udp", "port": 9000, "protocol": "UDP"}]}
    }))
    .unwrap();
    let echo = services
        .create(&PostParams::default(), &echo)
        .await
        .unwrap();
    let echo_ip = echo.spec.unwrap().cluster_ip.unwrap();
    eventually(60, "the UDP echo answers through the relay", async || {
        sh(inside(&hosts.b, "python3")
            .arg(&client_py)
            .args([&echo_ip, "9000", "hi"]))
        .is_ok_and(|o| o.trim() == "echo:hi")
    })
    .await;

    // The relay killed: a clear error in b's log, b's own replica still serves; back within 30 s.
    relay.kill();
    eventually(30, "b notices the relay is gone", async || {
        mesh_b.log().contains("lost the relay")
    })
    .await;
    let during = pages(&hosts.b, url, 6);
    assert!(during.iter().all(|p| p == "web-b"), "{during:?}");
    assert!(
        mesh_b.log().contains("node a is unreachable"),
        "no clear error in b's log:\n{}",
        mesh_b.log()
    );
    let (relay2, _) = started(relay_cmd(), "relay", relay_dir.join("relay2.log"));
    let back = Instant::now();
    eventually(30, "web-a through the relay again", async || {
        pages(&hosts.b, url, 4).iter().any(|p| p == "web-a")
    })
    .await;
    eprintln!("recovered {:?} after the relay came back", back.elapsed());

    // The cloud down: the edges' stores still know the Services; both replicas answer.
    cloud.stop().await;
    eventually(30, "both replicas answer with the cloud down", async || {
        let got = pages(&hosts.b, url, 6);
        got.iter().any(|p| p == "web-a") && got.iter().any(|p| p == "web-b")
    })
    .await;

    // web-a's server killed on a (cloud still down, so its endpoint stays listed): b's requests
    // skip it for web-b at once.
    let pid = sh(Command::new("pgrep").args(["-f", "httpd -f -p 8080 -h www-web-a$"])).unwrap();
    for p in pid.split_whitespace() {
        let _ = Command::new("kill").arg(p).status();
    }
    let killed = Instant::now();
    eventually(5, "every request answered by web-b", async || {
        pages(&hosts.b, url, 6).iter().all(|p| p == "web-b")
    })
    .await;
    eprintln!("web-a skipped {:?} after its server died", killed.elapsed());

    drop((mesh_a, mesh_b, relay2, edge_a));
}

/// Two edges behind their own NAT routers (iptables masquerade, unsolicited packets dropped), a
/// relay on the "internet"
/// between them: the agents punch a hole and talk directly, so the connection outlives the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_behind_nats_punch_a_hole_and_outlive_the_relay() {
    let seed = kubeedge_core::transport::driver::random_seed();
    let tag = seed % 100_000;
    let net = format!("10.{}", 180 + seed % 10);
    let names: Vec<String> = ["r", "na", "nb", "a", "b"]
        .iter()
        .map(|n| format!("kep{n}{tag}"))
        .collect();
    let host_if = format!("keph{tag}");
    struct Cleanup(Vec<String>, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
            let _ = Command::new("ip")
                .args(["link", "del", &self.1])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _cleanup = Cleanup(names.clone(), host_if.clone());
    let (r, na, nb, a, b) = (&names[0], &names[1], &names[2], &names[3], &names[4]);
    let run = |ns: &str, args: &[&str]| sh(inside(ns, args[0]).args(&args[1..])).unwrap();
    for ns in &names {
        ip(&["netns", "add", ns]);
        run(ns, &["ip", "link", "set", "lo", "up"]);
    }
    // host <-> r (the API the agents read), r <-> the NAT routers (the "internet"), each NAT
    // router <-> its edge (a private network).
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "rh", "netns", r,
    ]);
    ip(&["addr", "add", &format!("{net}.0.1/24"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    run(
        r,
        &["ip", "addr", "add", &format!("{net}.0.2/24"), "dev", "rh"],
    );
    run(r, &["ip", "link", "set", "rh", "up"]);
    run(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    run(
        r,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "rh",
            "-j",
            "MASQUERADE",
        ],
    );
    for (nat, edge, n) in [(na, a, 1), (nb, b, 2)] {
        ip(&[
            "link", "add", "pub", "netns", r, "type", "veth", "peer", "name", "wan", "netns", nat,
        ]);
        run(r, &["ip", "link", "set", "pub", "name", &format!("r{n}")]);
        run(
            r,
            &[
                "ip",
                "addr",
                "add",
                &format!("{net}.{n}.1/24"),
                "dev",
                &format!("r{n}"),
            ],
        );
        run(r, &["ip", "link", "set", &format!("r{n}"), "up"]);
        run(
            nat,
            &[
                "ip",
                "addr",
                "add",
                &format!("{net}.{n}.2/24"),
                "dev",
                "wan",
            ],
        );
        run(nat, &["ip", "link", "set", "wan", "up"]);
        run(
            nat,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.{n}.1"),
            ],
        );
        ip(&[
            "link", "add", "lan", "netns", nat, "type", "veth", "peer", "name", "up0", "netns",
            edge,
        ]);
        run(
            nat,
            &[
                "ip",
                "addr",
                "add",
                &format!("{net}.1{n}.1/24"),
                "dev",
                "lan",
            ],
        );
        run(nat, &["ip", "link", "set", "lan", "up"]);
        run(nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(
            nat,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ],
        );
        // As home routers: nothing unsolicited from outside reaches the router itself.
        run(
            nat,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW,INVALID",
                "-j",
                "DROP",
            ],
        );
        run(
            edge,
            &[
                "ip",
                "addr",
                "add",
                &format!("{net}.1{n}.2/24"),
                "dev",
                "up0",
            ],
        );
        run(edge, &["ip", "link", "set", "up0", "up"]);
        run(
            edge,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.1{n}.1"),
            ],
        );
    }

    // The API on the host's end: Service web, its endpoint a's busybox httpd.
    let dir = TempDir::new("mesh-nat");
    let store =
        kubeedge_core::store::Store::open(&dir.0.join("api.redb"), Default::default()).unwrap();
    let api = kubeedge_core::kubeapi::Api::new(store).unwrap();
    let listener = tokio::net::TcpListener::bind(format!("{net}.0.1:0"))
        .await
        .unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let serving = api.clone();
    tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    let local = api.local("test");
    local
        .create(
            ("", "services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "default"},
                   "spec": {"ports": [{"name": "http", "port": 8080}]}}),
        )
        .unwrap();
    local
        .create(
            ("discovery.k8s.io", "endpointslices"),
            Some("default"),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-1", "namespace": "default",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [format!("{net}.11.2")], "nodeName": "a",
                                  "conditions": {"ready": true}}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        )
        .unwrap();
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "behind-nat-a\n").unwrap();
    let mut httpd = inside(a, "busybox");
    httpd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&www);
    let _httpd = Proc(
        httpd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir.0.join("httpd.log"),
    );

    // Certificates, the relay on r, the agents on a and b.
    let ca = kubeedge_core::pki::Ca::generate(SystemTime::now()).unwrap();
    let certs = |node: &str| {
        let d = dir.0.join(node);
        std::fs::create_dir_all(d.join("ca")).unwrap();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        let id = ca
            .issue_node(node, Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        std::fs::write(d.join("ca/rootCA.crt"), ca.cert_pem()).unwrap();
        std::fs::write(d.join("certs/server.crt"), id.cert_pem()).unwrap();
        std::fs::write(d.join("certs/server.key"), id.key_pem().unwrap()).unwrap();
        d
    };
    let mut relay = inside(r, bin("edgemesh").to_str().unwrap());
    relay
        .args(["--node-name", "relay", "--relay-only", "--certs"])
        .arg(certs("relay"))
        .env("RUST_LOG", "info");
    let (mut relay, _) = started(relay, "relay", dir.0.join("relay.log"));
    let agent = |ns: &str, node: &str, n: u8, extra: &[&str]| {
        let d = certs(node);
        let mut c = inside(ns, bin("edgemesh").to_str().unwrap());
        c.args([
            "--node-name",
            node,
            "--api",
            &api_url,
            "--no-dns",
            "--no-capture",
        ])
        .arg("--certs")
        .arg(&d)
        .args(["--relay-node", &format!("relay@{net}.{n}.1:20006")])
        .args(extra)
        .env("RUST_LOG", "info");
        started(c, "edgemesh", d.join("edgemesh.log")).0
    };
    let mesh_a = agent(a, "a", 1, &[]);
    let mesh_b = agent(
        b,
        "b",
        2,
        &["--gateway", "127.0.0.1:18080=default/web:8080"],
    );

    // b reaches a's server: not directly (a is behind its NAT), by a punched hole.
    assert!(
        curl(b, &format!("http://{net}.11.2:8080/")).is_err(),
        "b reaches a directly"
    );
    assert!(
        curl(b, &format!("http://{net}.1.2:8080/")).is_err(),
        "a's NAT forwards"
    );
    let url = "http://127.0.0.1:18080/";
    eventually(60, "b reaches web behind a's NAT", async || {
        curl(b, url).is_ok_and(|p| p.trim() == "behind-nat-a")
    })
    .await;
    assert!(
        mesh_b.log().contains("mesh tunnel: hole punched"),
        "no hole punched:\n--- b ---\n{}\n--- a ---\n{}",
        mesh_b.log(),
        mesh_a.log()
    );
    for line in mesh_b.log().lines().filter(|l| l.contains("hole punched")) {
        eprintln!("{line}");
    }
    // The relay gone, the punched connection carries on.
    relay.kill();
    for _ in 0..5 {
        assert_eq!(curl(b, url).unwrap().trim(), "behind-nat-a");
    }
    drop((mesh_a, mesh_b));
}
