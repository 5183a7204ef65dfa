//! Pods as host processes (`--runtime process`, appliances without containers), driven from the
//! cloud with the real kubectl: the pod runs with its ConfigMap (env and volume), reports the node's
//! address, comes back when its process is killed by hand, and is gone when deleted. Its Secret is
//! written with `stringData` (folded into `data` by the API, as Kubernetes does).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kubeedge_edge::{EdgeCore, PodRuntime};

use crate::common::{self, TempDir, eventually, kubectl, kubectl_server, live_processes};

/// (pid, record path) of every process the runtime recorded under `root` that still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_host_processes() {
    let dir = TempDir::new("process");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let mut ec = common::edge_config(&dir, &cloud);
    ec.runtime = PodRuntime::Process;
    ec.restart_backoff = Duration::from_secs(1);
    let edge = EdgeCore::start(ec).await.unwrap();

    let file = dir.0.join("app.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  greeting: hello-appliance
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
stringData:
  password: s3cret
---
apiVersion: v1
kind: Pod
metadata:
  name: app
spec:
  nodeName: e1
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: ["/bin/sh", "-c", "echo $GREETING; cat etc/app/greeting; echo; echo $PASSWORD; exec sleep 3600"]
    env:
    - name: GREETING
      valueFrom:
        configMapKeyRef: {name: app-config, key: greeting}
    - name: PASSWORD
      valueFrom:
        secretKeyRef: {name: app-secret, key: password}
    volumeMounts:
    - {name: cfg, mountPath: /etc/app}
  volumes:
  - name: cfg
    configMap: {name: app-config}
"#,
    )
    .unwrap();
    kubectl(&dir, &["apply", "-f", file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    let running = async |restarts: i32| {
        pods.get_opt("app").await.ok().flatten().is_some_and(|p| {
            let s = p.status.unwrap_or_default();
            s.phase.as_deref() == Some("Running")
                && s.pod_ip.as_deref() == Some("127.0.0.1")
                && s.container_statuses
                    .unwrap_or_default()
                    .first()
                    .is_some_and(|c| {
                        c.ready
                            && c.restart_count >= restarts
                            && c.container_id
                                .as_deref()
                                .is_some_and(|id| id.starts_with("process://"))
                    })
        })
    };
    eventually(60, "app Running as a process", async || running(0).await).await;

    // the process got its environment and its volume; its output is in the pod's log
    let logs = dir.0.join("edge/pods");
    let mut output = String::new();
    eventually(10, "the process's output", async || {
        output = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|uid| std::fs::read_to_string(uid.path().join("logs/main_0.log")).ok())
            .collect();
        output.lines().count() >= 3
    })
    .await;
    assert_eq!(output, "hello-appliance\nhello-appliance\ns3cret\n");
    let server = format!("http://{}", edge.metaserver_addr());
    let logs = kubectl_server(&dir, &server, &["logs", "app", "--tail", "1"]);
    assert_eq!(logs, "s3cret\n");

    // `kubectl logs -f` follows until the process runs again
    let follow = std::process::Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.0.join("home"))
        .args(["--server", &server, "--cache-dir"])
        .arg(dir.0.join("kcache-follow"))
        .args(["logs", "-f", "app"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // killed by hand, it comes back
    let root = dir.0.join("edge/process");
    let live = live_processes(&root);
    assert_eq!(live.len(), 1, "{live:?}");
    let pid = rustix::process::Pid::from_raw(live[0].0).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    eventually(60, "app restarted", async || running(1).await).await;
    let again = live_processes(&root);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].0, live[0].0);
    let followed = tokio::task::spawn_blocking(move || follow.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(followed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&followed.stdout),
        "hello-appliance\nhello-appliance\ns3cret\n"
    );

    // kubectl delete waits for the node; no process is left
    kubectl(&dir, &["delete", "pod", "app", "--timeout=60s"]);
    assert!(pods.get_opt("app").await.unwrap().is_none());
    eventually(30, "no process left", async || {
        live_processes(&root).is_empty()
    })
    .await;
    // ... and the edge's own store lets go of it too (a pod left behind there grew the edge's
    // memory by every pod ever deleted)
    let local = kube::Client::try_from(kube::Config::new(server.parse().unwrap())).unwrap();
    let local_pods: Api<Pod> = Api::namespaced(local, "default");
    eventually(30, "the pod gone from the edge's metaserver", async || {
        local_pods.get_opt("app").await.unwrap().is_none()
    })
    .await;
    // ... and its directory (logs, volumes) goes with it, as the kubelet's does
    eventually(10, "the pod's directory removed", async || {
        std::fs::read_dir(dir.0.join("edge/pods")).is_ok_and(|mut d| d.next().is_none())
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
}
