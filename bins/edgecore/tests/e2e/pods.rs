//! Pods on a real containerd, driven from the cloud with the real kubectl: a busybox pod runs with
//! its ConfigMap, a container killed by hand is restarted, bad pods get a clear reason and leave
//! the others alone, `kubectl delete` removes the container from containerd.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kubeedge_edge::EdgeCore;
use kubeedge_edge::cri::CriRuntime;
use kubeedge_edge::runtime::Runtime;
use kubeedge_edge::test_util::IMAGE;

use crate::common::{self, eventually, kubectl, kubectl_server, on_containerd};

async fn waiting_reason(pods: &Api<Pod>, name: &str) -> Option<String> {
    let pod = pods.get_opt(name).await.ok().flatten()?;
    pod.status?
        .container_statuses?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello-edge
---
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: e1
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/sh", "-c", "echo web-started $GREETING; exec sleep 3600"]
    env:
    - name: GREETING
      valueFrom:
        configMapKeyRef: {{name: web-config, key: greeting}}
    volumeMounts:
    - {{name: cfg, mountPath: /etc/web}}
  volumes:
  - name: cfg
    configMap: {{name: web-config}}
---
apiVersion: v1
kind: Pod
metadata:
  name: no-image
spec:
  nodeName: e1
  containers:
  - {{name: main, image: "localhost/absent:1"}}
---
apiVersion: v1
kind: Pod
metadata:
  name: no-key
spec:
  nodeName: e1
  containers:
  - name: main
    image: {IMAGE}
    env:
    - name: X
      valueFrom:
        configMapKeyRef: {{name: web-config, key: missing}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_restart_and_go_away_on_containerd() {
    let (ctrd, dir, cloud, ec) = on_containerd("pods").await;
    let edge = EdgeCore::start(ec).await.unwrap();

    let file = dir.0.join("pods.yaml");
    std::fs::write(&file, manifest()).unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    eventually(60, "pod web Running", async || {
        pods.get_opt("web")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let table = kubectl(&dir, &["get", "pods"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("Running")),
        "{table}"
    );

    // the container sees its ConfigMap, as env and as a file
    let rt = CriRuntime::connect(&ctrd.endpoint()).await.unwrap();
    let web = pods.get("web").await.unwrap();
    let status = web.status.unwrap();
    let cid = status.container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_owned();
    let (code, out, _) = rt
        .exec_sync(
            &cid,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo $GREETING; cat /etc/web/greeting".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&out), "hello-edge\nhello-edge");
    assert!(status.pod_ip.is_some());

    // bad pods: a clear reason each, and web is unaffected
    eventually(30, "no-image waits with ErrImageNeverPull", async || {
        waiting_reason(&pods, "no-image").await.as_deref() == Some("ErrImageNeverPull")
    })
    .await;
    eventually(
        30,
        "no-key waits with CreateContainerConfigError",
        async || {
            waiting_reason(&pods, "no-key").await.as_deref() == Some("CreateContainerConfigError")
        },
    )
    .await;

    // a container killed by hand is restarted
    ctrd.ctr(&["tasks", "kill", "-s", "SIGKILL", &cid]).unwrap();
    eventually(60, "web restarted", async || {
        pods.get_opt("web").await.ok().flatten().is_some_and(|p| {
            let s = p.status.unwrap_or_default();
            s.phase.as_deref() == Some("Running")
                && s.container_statuses
                    .unwrap_or_default()
                    .first()
                    .is_some_and(|c| c.restart_count >= 1 && c.ready)
        })
    })
    .await;

    // kubectl logs on the edge's metaserver: the current run and the one before it
    let server = format!("http://{}", edge.metaserver_addr());
    let logs = kubectl_server(&dir, &server, &["logs", "web"]);
    assert_eq!(logs, "web-started hello-edge\n");
    let previous = kubectl_server(
        &dir,
        &server,
        &["logs", "web", "--previous", "--timestamps"],
    );
    assert!(
        previous.ends_with(" web-started hello-edge\n") && previous.starts_with("20"),
        "{previous}"
    );

    // kubectl delete waits for the node's confirmation; the containers are gone from containerd
    kubectl(
        &dir,
        &[
            "delete",
            "pod",
            "web",
            "no-image",
            "no-key",
            "--timeout=60s",
        ],
    );
    assert!(pods.get_opt("web").await.unwrap().is_none());
    eventually(30, "no container left on containerd", async || {
        rt.list_sandboxes().await.unwrap().is_empty()
    })
    .await;
    assert!(
        ctrd.running_tasks().is_empty(),
        "{:?}",
        ctrd.running_tasks()
    );
    edge.stop().await;
    cloud.stop().await;
    drop(ctrd);
}

async fn condition_of(pods: &Api<Pod>, pod: &str, t: &str) -> Option<(String, Option<String>)> {
    let p = pods.get_opt(pod).await.ok()??;
    let c = p.status?.conditions?.into_iter().find(|c| c.type_ == t)?;
    Some((c.status, c.message))
}

async fn running_containers(rt: &CriRuntime) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for s in rt.list_sandboxes().await.unwrap() {
        for c in rt.list_containers(&s.id).await.unwrap() {
            if matches!(
                c.state,
                kubeedge_edge::runtime::ContainerState::Running { .. }
            ) {
                out.push((c.id, c.attempt));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_keep_running_offline_across_edge_restarts() {
    let (ctrd, dir, cloud, ec) = on_containerd("offline").await;
    let (hub, https) = (cloud.hub_addr().to_string(), cloud.https_addr().to_string());
    let edge = EdgeCore::start(ec.clone()).await.unwrap();
    let file = dir.0.join("app.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\nspec:\n  nodeName: e1\n  containers:\n  - name: main\n    image: {IMAGE}\n    command: [\"/bin/sh\", \"-c\", \"exec sleep 3600\"]\n"
        ),
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    eventually(60, "app Running", async || {
        pods.get_opt("app")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let rt = CriRuntime::connect(&ctrd.endpoint()).await.unwrap();
    let before = running_containers(&rt).await;
    assert_eq!(before.len(), 1);

    // the cloud goes away, then edgecore restarts: the pod is adopted, not started twice
    cloud.stop().await;
    edge.stop().await;
    let mut offline = ec.clone();
    offline.token = None;
    let edge = EdgeCore::start(offline).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        running_containers(&rt).await,
        before,
        "the running container was kept"
    );
    let listed = kubectl_server(
        &dir,
        &format!("http://{}", edge.metaserver_addr()),
        &["get", "pods", "-o", "name"],
    );
    assert!(listed.contains("pod/app"), "{listed}");

    // a container killed by hand comes back, offline
    ctrd.ctr(&["tasks", "kill", "-s", "SIGKILL", &before[0].0])
        .unwrap();
    eventually(30, "app restarted offline", async || {
        running_containers(&rt)
            .await
            .iter()
            .any(|(id, attempt)| *id != before[0].0 && *attempt >= 1)
    })
    .await;

    // the cloud is back: the node is Ready and the status queued meanwhile arrives
    let cloud = common::cloud(&dir, &hub, &https).await;
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    eventually(60, "the restart reported to the cloud", async || {
        pods.get_opt("app").await.ok().flatten().is_some_and(|p| {
            let s = p.status.unwrap_or_default();
            s.phase.as_deref() == Some("Running")
                && s.container_statuses
                    .unwrap_or_default()
                    .first()
                    .is_some_and(|c| c.restart_count >= 1)
        })
    })
    .await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cloud.client().clone());
    eventually(60, "e1 Ready", async || {
        nodes
            .get_opt("e1")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| common::node_ready(&n))
    })
    .await;
    kubectl(&dir, &["delete", "pod", "app", "--timeout=60s"]);
    eventually(30, "no container left", async || {
        rt.list_sandboxes().await.unwrap().is_empty()
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
    drop(ctrd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let (ctrd, dir, cloud, ec) = on_containerd("probes").await;
    let edge = EdgeCore::start(ec).await.unwrap();
    let file = dir.0.join("probed.yaml");
    std::fs::write(
        &file,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  nodeName: e1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    command: ["/bin/sh", "-c", "touch /tmp/alive; exec sleep 3600"]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/ready"]}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      exec: {{command: ["cat", "/tmp/alive"]}}
      periodSeconds: 1
      failureThreshold: 2
"#
        ),
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    let condition = async |t: &str| -> Option<(String, Option<String>)> {
        let p = pods.get_opt("probed").await.ok()??;
        let c = p.status?.conditions?.into_iter().find(|c| c.type_ == t)?;
        Some((c.status, c.message))
    };
    // running, but not ready: the readiness probe fails, and the status says which container
    eventually(60, "probed Running and not Ready", async || {
        let phase = pods
            .get_opt("probed")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.phase);
        phase.as_deref() == Some("Running")
            && condition("Ready").await.is_some_and(|(s, m)| {
                s == "False"
                    && m.is_some_and(|m| m.contains("containers with unready status: [main]"))
            })
    })
    .await;
    let rt = CriRuntime::connect(&ctrd.endpoint()).await.unwrap();
    let cid = |p: Pod| {
        p.status.unwrap().container_statuses.unwrap()[0]
            .container_id
            .clone()
            .unwrap()
            .trim_start_matches("containerd://")
            .to_owned()
    };
    let id = cid(pods.get("probed").await.unwrap());
    let sh = |cmd: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.to_owned()];
    rt.exec_sync(&id, &sh("touch /tmp/ready"), Duration::from_secs(5))
        .await
        .unwrap();
    eventually(30, "probed Ready", async || {
        condition("Ready").await.is_some_and(|(s, _)| s == "True")
    })
    .await;
    // the liveness probe starts failing: the container is restarted, and says why
    rt.exec_sync(&id, &sh("rm /tmp/alive"), Duration::from_secs(5))
        .await
        .unwrap();
    eventually(
        60,
        "probed restarted for failing its liveness probe",
        async || {
            pods.get_opt("probed")
                .await
                .ok()
                .flatten()
                .is_some_and(|p| {
                    p.status
                        .and_then(|s| s.container_statuses)
                        .unwrap_or_default()
                        .first()
                        .is_some_and(|c| {
                            c.restart_count >= 1
                                && c.last_state
                                    .as_ref()
                                    .and_then(|l| l.terminated.as_ref())
                                    .and_then(|t| t.message.as_ref())
                                    .is_some_and(|m| m.contains("Liveness probe failed"))
                        })
                })
        },
    )
    .await;
    // HTTP and TCP probes, against a web server on the host network (a free port of this machine)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = dir.0.join("http.yaml");
    std::fs::write(
        &http,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: http-probed
spec:
  nodeName: e1
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {IMAGE}
    command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"]
    readinessProbe:
      httpGet: {{path: /index.html, port: {port}}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{port: {port}}}
      periodSeconds: 1
      initialDelaySeconds: 1
  - name: sidecar
    image: {IMAGE}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    readinessProbe:
      httpGet: {{path: /, port: {closed}}}
      periodSeconds: 1
      failureThreshold: 1
"#
        ),
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", http.to_str().unwrap()]);
    let statuses = async || {
        pods.get_opt("http-probed")
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
    };
    // the web container is ready by its HTTP probe and alive by its TCP probe; the sidecar's
    // probe hits a closed port and keeps it (and the pod) unready
    eventually(60, "web ready, sidecar not", async || {
        let st = statuses().await;
        st.iter()
            .any(|c| c.name == "web" && c.ready && c.restart_count == 0)
            && st.iter().any(|c| {
                c.name == "sidecar"
                    && !c.ready
                    && c.state.as_ref().is_some_and(|s| s.running.is_some())
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        statuses().await.iter().all(|c| c.restart_count == 0),
        "a passing TCP liveness probe restarts nothing"
    );
    assert_eq!(
        condition_of(&pods, "http-probed", "Ready").await,
        Some((
            "False".to_owned(),
            Some("containers with unready status: [sidecar]".to_owned())
        ))
    );
    kubectl(
        &dir,
        &["delete", "pod", "probed", "http-probed", "--timeout=60s"],
    );
    edge.stop().await;
    cloud.stop().await;
    drop(ctrd);
}
