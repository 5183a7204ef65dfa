//! Reaching edge pods from the cloud through the stream tunnel, with the real kubectl against the
//! embedded control plane: `logs -f`, `exec` (output, exit codes, 10 MiB of stdin, an interactive
//! shell under tmux), `port-forward` with curl; for a process-runtime pod and a containerd pod.
//! Then who may: a user without `pods/exec` gets 403, another node's certificate can neither
//! open this node's tunnel nor exec; and the edge offline: each fails fast, saying so.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kubeedge_cloud::CloudCore;
use kubeedge_edge::{EdgeCore, PodRuntime};

use crate::common::{self, TempDir, eventually, free_port, kubectl};

fn kubectl_cmd(dir: &TempDir, kubeconfig: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.env_remove("KUBECONFIG")
        .env("HOME", dir.0.join("home"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.0.join("kcache"));
    c
}

fn admin(dir: &TempDir) -> std::path::PathBuf {
    dir.0.join("cloud/admin.kubeconfig")
}

/// Runs kubectl, returns (exit code, stdout, stderr).
fn run(mut c: Command, stdin: Option<&Path>) -> (i32, Vec<u8>, String) {
    if let Some(f) = stdin {
        c.stdin(std::fs::File::open(f).unwrap());
    } else {
        c.stdin(Stdio::null());
    }
    let out = c.output().expect("kubectl runs");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Everything a user does with a running pod `pod` (its main container serves `page` on
/// `port` and prints a numbered line every 200 ms; `hostname` is what /etc/hostname holds).
async fn reach_pod(
    dir: &TempDir,
    pod: &str,
    port: u16,
    page: &str,
    hostname: &str,
    timestamps: bool,
) {
    let kc = admin(dir);

    // logs: follow shows the lines as they come; tail and limits apply
    let mut follow = kubectl_cmd(dir, &kc)
        .args(["logs", "-f", pod])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first: Vec<String> =
        tokio::task::spawn_blocking(move || lines.by_ref().take(5).map_while(Result::ok).collect())
            .await
            .unwrap();
    let _ = follow.kill();
    let mut err = String::new();
    let _ = follow.stderr.take().unwrap().read_to_string(&mut err);
    let _ = follow.wait();
    assert_eq!(first.len(), 5, "{first:?} {err}");
    assert!(first.iter().all(|l| l.starts_with("line ")), "{first:?}");
    let numbers: Vec<u64> = first
        .iter()
        .map(|l| l["line ".len()..].parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    let tail = kubectl(dir, &["logs", pod, "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let limited = kubectl(dir, &["logs", pod, "--limit-bytes", "4"]);
    assert_eq!(limited, "line");
    if timestamps {
        // containerd records each line's time; the process runtime's output has none
        let stamped = kubectl(dir, &["logs", pod, "--tail", "1", "--timestamps"]);
        assert!(stamped.starts_with("20"), "{stamped}");
        // a line every 200 ms for over 2 s: the last second holds fewer than all
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let recent = kubectl(dir, &["logs", pod, "--since=1s"]);
        let all = kubectl(dir, &["logs", pod]);
        assert!(recent.lines().count() < all.lines().count(), "{recent}");
    }

    // top: the pod's memory (and the node) from the edge's stats, through the tunnel
    let mut top = String::new();
    eventually(20, "kubectl top to show the pod's memory", async || {
        top = kubectl(dir, &["top", "pods", pod, "--no-headers"]);
        let fields: Vec<&str> = top.split_whitespace().collect();
        fields.first() == Some(&pod)
            && fields
                .get(2)
                .and_then(|m| m.strip_suffix("Mi"))
                .and_then(|m| m.parse::<u64>().ok())
                .is_some_and(|m| m > 0)
    })
    .await;
    let nodes = kubectl(dir, &["top", "nodes", "--no-headers"]);
    assert!(nodes.starts_with("e1 "), "{nodes}");

    // exec -i: 10 MiB through stdin, checksummed on the other side
    let input = dir.0.join(format!("{pod}-input"));
    {
        let mut f = std::fs::File::create(&input).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..10 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    for websockets in [true, false] {
        exec_checks(dir, pod, hostname, &input, websockets);
        port_forward_check(dir, pod, port, page, websockets).await;
    }
    // exec -it: an interactive shell under tmux
    let session = format!("ke-{}-{}", pod, std::process::id());
    let script = dir.0.join(format!("{pod}-tty.sh"));
    std::fs::write(
        &script,
        format!(
            "HOME={home} exec kubectl --kubeconfig {kc} --cache-dir {cache} exec -it {pod} -- sh\n",
            home = dir.0.join("home").display(),
            kc = kc.display(),
            cache = dir.0.join("kcache").display(),
        ),
    )
    .unwrap();
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &format!("sh {}; sleep 30", script.display()),
    ]);
    assert!(started.status.success(), "{started:?}");
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let mut typed = false;
    let mut last = String::new();
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !typed {
            // typed once the shell prompt shows
            last = pane();
            if last.contains('#') || last.contains('$') {
                tmux(&[
                    "send-keys",
                    "-t",
                    &session,
                    "echo tty-$((6*7)); stty size",
                    "Enter",
                ]);
                typed = true;
            }
            continue;
        }
        last = pane();
        if last.contains("tty-42") && last.contains("30 120") {
            break;
        }
    }
    tmux(&["send-keys", "-t", &session, "exit", "Enter"]);
    tmux(&["kill-server"]);
    assert!(
        last.contains("tty-42") && last.contains("30 120"),
        "the interactive shell did not answer (size 30x120 expected): {last}"
    );
}

/// kubectl speaks WebSocket (v5 channels; SPDY tunnelled for port-forward) by default since
/// 1.30/1.31, SPDY/3.1 before (and when told so).
fn kubectl_for(dir: &TempDir, websockets: bool) -> Command {
    let mut c = kubectl_cmd(dir, &admin(dir));
    c.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets.to_string())
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string());
    c
}

fn exec_checks(dir: &TempDir, pod: &str, hostname: &str, input: &Path, websockets: bool) {
    let kc = admin(dir);
    let kubectl_cmd = |dir: &TempDir, _: &Path| kubectl_for(dir, websockets);
    // exec: output, exit codes
    let (code, out, err) = run(
        {
            let mut c = kubectl_cmd(dir, &kc);
            c.args(["exec", pod, "--", "cat", "/etc/hostname"]);
            c
        },
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), hostname);
    let (code, _, err) = run(
        {
            let mut c = kubectl_cmd(dir, &kc);
            c.args(["exec", pod, "--", "sh", "-c", "echo oops >&2; exit 3"]);
            c
        },
        None,
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("oops"), "{err}");

    let (code, out, err) = run(
        {
            let mut c = kubectl_cmd(dir, &kc);
            c.args(["exec", "-i", pod, "--", "sha256sum"]);
            c
        },
        Some(input),
    );
    assert_eq!(code, 0, "{err}");
    let remote = String::from_utf8_lossy(&out);
    assert_eq!(
        remote.split_whitespace().next(),
        Some(sha256(input).as_str()),
        "{remote}"
    );
}

async fn port_forward_check(dir: &TempDir, pod: &str, port: u16, page: &str, websockets: bool) {
    let kc = admin(dir);
    let kubectl_cmd = |dir: &TempDir, _: &Path| kubectl_for(dir, websockets);
    // port-forward, then curl through it
    let local = free_port();
    let mut forward = kubectl_cmd(dir, &kc)
        .args([
            "port-forward",
            &format!("pod/{pod}"),
            &format!("{local}:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(forward.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        // kubectl keeps writing "Handling connection" lines: keep reading them
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        line
    })
    .await
    .unwrap();
    assert!(ready.contains("Forwarding from"), "{ready}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exited = forward.try_wait().unwrap();
    assert!(exited.is_none(), "kubectl port-forward exited: {exited:?}");
    let mut pages = Vec::new();
    for _ in 0..3 {
        let curl = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{local}/"),
            ])
            .output()
            .unwrap();
        pages.push(format!(
            "{}{}",
            String::from_utf8_lossy(&curl.stdout).trim(),
            String::from_utf8_lossy(&curl.stderr)
        ));
    }
    let _ = forward.kill();
    let mut err = String::new();
    let _ = forward.stderr.take().unwrap().read_to_string(&mut err);
    let _ = forward.wait();
    assert!(
        pages.iter().all(|p| p == page),
        "{pages:?}; kubectl said {ready:?} then {err}"
    );
}

/// The pod `web`: a numbered line every 200 ms, busybox httpd serving `page` on `port`, and a
/// shell holding 4 MB (a memory use `kubectl top` shows in MiB).
fn web_pod(image: &str, port: u16, page: &str, root: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: e1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", "mkdir -p {root}/www && echo {page} > {root}/www/index.html; (x=$(head -c 4000000 /dev/zero | tr '\\000' a); sleep 3600) & (i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done) & exec busybox httpd -f -p {port} -h {root}/www"]
    ports:
    - containerPort: {port}
"#
    )
}

/// Waits until pod `name` in `api`'s cluster is ready and `cloud` has e1's tunnel.
async fn wait_running_in(api: &CloudCore, cloud: &CloudCore, name: &str) {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(api.client().clone(), "default");
    eventually(120, &format!("{name} Running"), async || {
        pods.get_opt(name).await.ok().flatten().is_some_and(|p| {
            p.status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .first()
                .is_some_and(|c| c.ready)
        })
    })
    .await;
    eventually(30, "the stream tunnel", async || {
        cloud.tunnels().is_open("e1")
    })
    .await;
}

async fn wait_running(cloud: &CloudCore, name: &str) {
    wait_running_in(cloud, cloud, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_a_process_pod_and_only_whom_it_should() {
    let dir = TempDir::new("streams");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let mut ec = common::edge_config(&dir, &cloud);
    ec.runtime = PodRuntime::Process;
    let edge = EdgeCore::start(ec).await.unwrap();
    let port = free_port();
    let file = dir.0.join("web.yaml");
    std::fs::write(&file, web_pod("/bin/busybox", port, "hello-process", ".")).unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    wait_running(&cloud, "web").await;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    reach_pod(&dir, "web", port, "hello-process", hostname.trim(), false).await;

    // a client that goes away takes its command with it (on both protocols)
    for websockets in [true, false] {
        let marker = if websockets { "4242" } else { "4243" };
        let mut exec = kubectl_for(&dir, websockets)
            .args(["exec", "web", "--", "sleep", marker])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c == format!("sleep\0{marker}\0").as_bytes())
            })
        };
        eventually(20, "the exec'd command running", async || running()).await;
        let _ = exec.kill();
        let _ = exec.wait();
        eventually(20, "the command gone with its client", async || !running()).await;
    }

    // a user who may read pods and their logs, but not exec
    let ca = cloud.ca();
    let now = SystemTime::now();
    let viewer = ca
        .issue_client("viewer", "viewers", Duration::from_secs(3600), now)
        .unwrap();
    let api_url = format!(
        "https://127.0.0.1:{}",
        cloud.control_plane().unwrap().addr().port()
    );
    // A kubeconfig for the API as `id`.
    let kubeconfig = |name: &str, id: &kubeedge_core::pki::Identity| {
        let path = dir.0.join(format!("{name}.kubeconfig"));
        let text = kubeedge_core::kubeapi::tls::kubeconfig(
            &api_url,
            &ca.cert_pem(),
            &id.cert_pem(),
            &id.key_pem().unwrap(),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let viewer_kc = kubeconfig("viewer", &viewer);
    let rbac = dir.0.join("rbac.yaml");
    std::fs::write(
        &rbac,
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log", "pods/exec"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-reads}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {kind: User, name: viewer, apiGroup: rbac.authorization.k8s.io}
"#,
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", rbac.to_str().unwrap()]);
    let (code, out, err) = run(
        {
            let mut c = kubectl_cmd(&dir, &viewer_kc);
            c.args(["logs", "web", "--tail", "1"]);
            c
        },
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("line "));
    for args in [
        &["exec", "web", "--", "true"][..],
        &["exec", "-i", "web", "--", "true"][..],
        &["port-forward", "pod/web", "0:80"][..],
    ] {
        let (code, _, err) = run(
            {
                let mut c = kubectl_cmd(&dir, &viewer_kc);
                c.args(args);
                c
            },
            None,
        );
        assert_ne!(code, 0);
        assert!(
            err.contains("Forbidden") || err.contains("forbidden"),
            "{args:?}: {err}"
        );
    }

    // node e2's certificate: not e1's tunnel, not e1's pods
    let e2 = ca
        .issue_client(
            "system:node:e2",
            "system:nodes",
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let (cert, key, ca_file) = (
        dir.0.join("e2.crt"),
        dir.0.join("e2.key"),
        dir.0.join("ca.crt"),
    );
    std::fs::write(&cert, e2.cert_pem()).unwrap();
    std::fs::write(&key, e2.key_pem().unwrap()).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--cacert")
        .arg(&ca_file)
        .args([
            "-H",
            "NodeName: e1",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: kubeedge-tunnel/1",
        ])
        .arg(format!(
            "https://127.0.0.1:{}/v1/tunnel",
            cloud.https_addr().port()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "403");
    let e2_kc = kubeconfig("e2", &e2);
    let (code, _, err) = run(
        {
            let mut c = kubectl_cmd(&dir, &e2_kc);
            c.args(["exec", "web", "--", "true"]);
            c
        },
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("orbidden"), "{err}");
    assert_eq!(cloud.tunnels().nodes(), ["e1"]);

    // the edge offline: each fails within 5 s, saying the node is not connected
    edge.stop().await;
    eventually(30, "the tunnel to close", async || {
        !cloud.tunnels().is_open("e1")
    })
    .await;
    for args in [
        &["logs", "web"][..],
        &["exec", "web", "--", "true"][..],
        &["port-forward", "pod/web", "0:80"][..],
    ] {
        let began = Instant::now();
        let (code, _, err) = run(
            {
                let mut c = kubectl_cmd(&dir, &admin(&dir));
                c.args(args);
                c
            },
            None,
        );
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("not connected"), "{args:?}: {err}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            began.elapsed()
        );
    }
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_a_containerd_pod() {
    let (ctrd, dir, cloud, ec) = common::on_containerd("streams-cri").await;
    let edge = EdgeCore::start(ec).await.unwrap();
    let port = free_port();
    let file = dir.0.join("web.yaml");
    std::fs::write(
        &file,
        web_pod(
            kubeedge_edge::test_util::IMAGE,
            port,
            "hello-container",
            "/tmp",
        ),
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    wait_running(&cloud, "web").await;
    reach_pod(&dir, "web", port, "hello-container", "web", true).await;

    // attach: the main process's output as it comes
    for websockets in [true, false] {
        let mut attach = kubectl_for(&dir, websockets)
            .args(["attach", "web"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
        let got: Vec<String> = tokio::task::spawn_blocking(move || {
            lines.by_ref().take(3).map_while(Result::ok).collect()
        })
        .await
        .unwrap();
        let _ = attach.kill();
        let mut err = String::new();
        let _ = attach.stderr.take().unwrap().read_to_string(&mut err);
        let _ = attach.wait();
        assert!(
            got.len() == 3 && got.iter().all(|l| l.starts_with("line ")),
            "{got:?} {err}"
        );
    }
    kubectl(&dir, &["delete", "pod", "web", "--timeout=60s"]);
    edge.stop().await;
    cloud.stop().await;
    drop(ctrd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_an_external_cluster_cloudcore_serves_the_kubelet_api_for_edge_nodes() {
    // A stands for the real cluster (its API server would call the kubelet API); B is cloudcore
    // pointed at it, with edge e1.
    let dir_a = TempDir::new("kubelet-cluster");
    let cluster = common::cloud(&dir_a, "127.0.0.1:0", "127.0.0.1:0").await;
    let dir = TempDir::new("kubelet-remote");
    let mut config = common::cloud_config(&dir, "127.0.0.1:0", "127.0.0.1:0");
    config.kubeconfig = Some(dir_a.0.join("cloud/admin.kubeconfig"));
    let cloud = CloudCore::start(config).await.unwrap();
    let stream = cloud.stream_addr().expect("served with a kubeconfig");
    let mut ec = common::edge_config(&dir, &cloud);
    ec.runtime = PodRuntime::Process;
    let edge = EdgeCore::start(ec).await.unwrap();
    let port = free_port();
    let file = dir.0.join("web.yaml");
    std::fs::write(&file, web_pod("/bin/busybox", port, "hello-kubelet", ".")).unwrap();
    kubectl(&dir_a, &["apply", "-f", file.to_str().unwrap()]);
    wait_running_in(&cluster, &cloud, "web").await;
    eventually(30, "the stream tunnel", async || {
        cloud.tunnels().is_open("e1")
    })
    .await;

    // the API server's client: a certificate of the cluster's CA
    let now = SystemTime::now();
    let client = cluster
        .ca()
        .issue_client(
            "kube-apiserver-kubelet-client",
            "system:masters",
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let node_cert = cluster
        .ca()
        .issue_client(
            "system:node:e2",
            "system:nodes",
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let files = |tag: &str, id: &kubeedge_core::pki::Identity| {
        let (c, k) = (
            dir.0.join(format!("{tag}.crt")),
            dir.0.join(format!("{tag}.key")),
        );
        std::fs::write(&c, id.cert_pem()).unwrap();
        std::fs::write(&k, id.key_pem().unwrap()).unwrap();
        (c, k)
    };
    let (cert, key) = files("apiserver", &client);
    let (node_crt, node_key) = files("node", &node_cert);
    let nobody = cluster
        .ca()
        .issue_client("nobody", "nobodies", Duration::from_secs(3600), now)
        .unwrap();
    let (nobody_crt, nobody_key) = files("nobody", &nobody);
    let curl = |path: &str, cert: Option<(&Path, &Path)>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "-k", "--max-time", "10", "-w", "\n%{http_code}"]);
        if let Some((crt, key)) = cert {
            c.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        // The address the API server dials is the node's (e1 reports 127.0.0.1).
        let out = c
            .arg(format!("https://127.0.0.1:{}{path}", stream.port()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    let mut answer = (String::new(), String::new());
    eventually(10, "two log lines through the kubelet API", async || {
        answer = curl(
            "/containerLogs/default/web/main?tailLines=2",
            Some((&cert, &key)),
        );
        answer.1.lines().filter(|l| l.starts_with("line ")).count() == 2
    })
    .await;
    assert_eq!(answer.0, "200", "{}", answer.1);
    let (code, body) = curl("/stats/summary", Some((&cert, &key)));
    assert_eq!(code, "200", "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], "e1");
    assert_eq!(summary["pods"][0]["podRef"]["name"], "web");
    let (code, body) = curl("/metrics/resource", Some((&cert, &key)));
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"}"),
        "{body}"
    );
    // no certificate, or a node's: refused
    assert_eq!(curl("/stats/summary", None).0, "401");
    assert_eq!(
        curl("/stats/summary", Some((&node_crt, &node_key))).0,
        "403"
    );
    // a user the cluster does not allow nodes/proxy gets 403 from the cluster's authorization
    let (code, body) = curl(
        "/containerLogs/default/web/main",
        Some((&nobody_crt, &nobody_key)),
    );
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("nodes/proxy"), "{body}");

    edge.stop().await;
    cloud.stop().await;
    cluster.stop().await;
}
