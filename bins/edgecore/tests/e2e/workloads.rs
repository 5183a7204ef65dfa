//! Workloads on the embedded control plane with real edgecores (process runtime, each edge with
//! its own loopback address as its pods' IP) and the real kubectl: a Deployment spreads, rolls
//! (`kubectl rollout status`), goes back (`kubectl rollout undo`) and goes with its ReplicaSets
//! and pods; a DaemonSet follows the edges, a late one included; a NoSchedule taint keeps new pods
//! off an edge; a Job completes 3/3; a Service's EndpointSlice holds its pods' IPs, as kubectl and
//! the edges' metaservers show them; deleting a namespace empties it. Then an edge goes offline
//! past its grace: its pods stay bound and running, except the one tolerating the unreachable
//! taint for 30 s, which is evicted and replaced on the other edge.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kubeedge_cloud::CloudCore;
use kubeedge_edge::{EdgeCore, PodRuntime};

use crate::common::{self, TempDir, eventually, kill_all, kubectl, live_processes};

/// Edge `name` joining `cloud`, its data under `dir/<name>`, its pods running as processes that
/// report `address` as their IP; it sends a keepalive every second.
async fn edge(dir: &TempDir, cloud: &CloudCore, name: &str, address: &str) -> EdgeCore {
    let mut c = common::node_config(&dir.0.join(name), name, cloud);
    c.runtime = PodRuntime::Process;
    c.restart_backoff = Duration::from_secs(1);
    c.node_address = address.to_owned();
    // Heard from every second, so that a short node grace tells a live edge from a lost one.
    c.session.keepalive_interval = Duration::from_secs(1);
    EdgeCore::start(c).await.unwrap()
}

/// Waits until the two edges report Ready.
async fn both_ready(dir: &TempDir) {
    eventually(30, "both edges Ready", async || {
        let ready = "{.items[*].status.conditions[?(@.type==\"Ready\")].status}";
        get(dir, &["nodes"], ready) == "True True"
    })
    .await;
}

/// `kubectl rollout status` of `what` (`deployment/web`), waiting up to `secs`.
fn rollout_status(dir: &TempDir, what: &str, secs: u32) {
    let timeout = format!("--timeout={secs}s");
    kubectl(dir, &["rollout", "status", what, &timeout]);
}

/// Applies a manifest through kubectl.
fn apply(dir: &TempDir, name: &str, yaml: &str) {
    let file = dir.0.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    kubectl(dir, &["apply", "-f", file.to_str().unwrap()]);
}

/// `kubectl get` with a jsonpath, trimmed.
fn get(dir: &TempDir, args: &[&str], path: &str) -> String {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    let jsonpath = format!("jsonpath={path}");
    a.extend_from_slice(&["-o", &jsonpath]);
    kubectl(dir, &a).trim().to_owned()
}

fn sorted(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    v.sort();
    v
}

/// Nodes of the pods `selector` picks (in `namespace`), sorted.
fn nodes_of(dir: &TempDir, selector: &str) -> Vec<String> {
    sorted(&get(
        dir,
        &["pods", "-l", selector],
        "{.items[*].spec.nodeName}",
    ))
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sleep", "3600"]
        ports: [{name: http, containerPort: 8080}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_daemonsets_jobs_and_services_run_on_the_edges() {
    let dir = TempDir::new("workloads");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let roots: Vec<_> = ["e1", "e2", "e3"]
        .iter()
        .map(|e| dir.0.join(e).join("process"))
        .collect();
    let _reaper = Reaper(roots.iter().map(|p| p.as_path()).collect());
    let e1 = edge(&dir, &cloud, "e1", "127.0.0.2").await;
    let e2 = edge(&dir, &cloud, "e2", "127.0.0.3").await;
    both_ready(&dir).await;

    // A Deployment of 4 spreads over both edges and runs.
    apply(&dir, "web", DEPLOYMENT);
    rollout_status(&dir, "deployment/web", 90);
    assert_eq!(nodes_of(&dir, "app=web"), ["e1", "e1", "e2", "e2"]);
    let ready = kubectl(&dir, &["get", "deployment", "web", "--no-headers"]);
    assert!(ready.split_whitespace().nth(1) == Some("4/4"), "{ready}");

    // A new image rolls; `rollout status` returns once it has; `undo` goes back.
    kubectl(
        &dir,
        &["set", "image", "deployment/web", "main=busybox:1.37"],
    );
    rollout_status(&dir, "deployment/web", 90);
    let images = || {
        get(
            &dir,
            &["pods", "-l", "app=web"],
            "{.items[*].spec.containers[0].image}",
        )
    };
    eventually(30, "every pod on 1.37", async || {
        sorted(&images()) == ["busybox:1.37"; 4]
    })
    .await;
    let history = kubectl(&dir, &["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    kubectl(&dir, &["rollout", "undo", "deployment/web"]);
    rollout_status(&dir, "deployment/web", 90);
    eventually(30, "every pod back on 1.36", async || {
        sorted(&images()) == ["busybox:1.36"; 4]
    })
    .await;
    assert_eq!(
        get(
            &dir,
            &["deployment", "web"],
            "{.spec.template.spec.containers[0].image}"
        ),
        "busybox:1.36"
    );

    // A Service: a ClusterIP, and an EndpointSlice of the pods' IPs and ports, the same on the
    // cloud and on each edge's metaserver.
    kubectl(
        &dir,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=http",
        ],
    );
    let cluster_ip = get(&dir, &["service", "web"], "{.spec.clusterIP}");
    assert!(cluster_ip.starts_with("10."), "{cluster_ip}");
    let pod_ips = || {
        sorted(&get(
            &dir,
            &["pods", "-l", "app=web"],
            "{.items[*].status.podIP}",
        ))
    };
    let slice_ips = || {
        sorted(&get(
            &dir,
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            "{.items[*].endpoints[*].addresses[*]}",
        ))
    };
    eventually(30, "the slice holds the pods' IPs", async || {
        slice_ips() == pod_ips()
            && pod_ips() == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
    })
    .await;
    assert_eq!(
        get(
            &dir,
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            "{.items[0].ports[0].port}"
        ),
        "8080"
    );
    for e in [&e1, &e2] {
        let server = format!("http://{}", e.metaserver_addr());
        eventually(30, "the edge serves the same slice", async || {
            let out = common::kubectl_server(
                &dir,
                &server,
                &[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "jsonpath={.items[*].endpoints[*].addresses[*]}",
                ],
            );
            sorted(&out) == pod_ips()
        })
        .await;
        let svc = common::kubectl_server(
            &dir,
            &server,
            &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        );
        assert_eq!(svc.trim(), cluster_ip);
    }

    // A DaemonSet runs on every edge, and on one that joins later.
    apply(
        &dir,
        "agent",
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sleep", "3600"]
"#,
    );
    eventually(30, "an agent per edge", async || {
        nodes_of(&dir, "app=agent") == ["e1", "e2"]
    })
    .await;
    let e3 = edge(&dir, &cloud, "e3", "127.0.0.4").await;
    eventually(60, "an agent on the late edge", async || {
        nodes_of(&dir, "app=agent") == ["e1", "e2", "e3"]
    })
    .await;
    rollout_status(&dir, "daemonset/agent", 60);

    // A NoSchedule taint keeps new pods off e2.
    kubectl(&dir, &["taint", "node", "e2", "dedicated=db:NoSchedule"]);
    kubectl(&dir, &["scale", "deployment/web", "--replicas=8"]);
    rollout_status(&dir, "deployment/web", 90);
    let placed = nodes_of(&dir, "app=web");
    assert_eq!(
        placed.iter().filter(|n| *n == "e2").count(),
        2,
        "{placed:?}"
    );
    kubectl(&dir, &["taint", "node", "e2", "dedicated=db:NoSchedule-"]);

    // A Job of 3 completions completes: COMPLETIONS 3/3.
    apply(
        &dir,
        "job",
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: count
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "echo done"]
"#,
    );
    kubectl(
        &dir,
        &[
            "wait",
            "--for=condition=complete",
            "job/count",
            "--timeout=90s",
        ],
    );
    let jobs = kubectl(&dir, &["get", "job", "count", "--no-headers"]);
    assert!(jobs.contains("3/3"), "{jobs}");

    // Deleting the Deployment takes its ReplicaSets and pods.
    kubectl(&dir, &["delete", "deployment", "web", "--timeout=60s"]);
    eventually(60, "web's ReplicaSets and pods gone", async || {
        get(
            &dir,
            &["replicasets", "-l", "app=web"],
            "{.items[*].metadata.name}",
        )
        .is_empty()
            && get(
                &dir,
                &["pods", "-l", "app=web"],
                "{.items[*].metadata.name}",
            )
            .is_empty()
    })
    .await;

    // Deleting a namespace removes everything in it.
    kubectl(&dir, &["create", "namespace", "shop"]);
    kubectl(
        &dir,
        &[
            "create",
            "deployment",
            "cart",
            "-n",
            "shop",
            "--image=busybox:1.36",
            "--replicas=2",
            "--",
            "sleep",
            "3600",
        ],
    );
    eventually(60, "cart running", async || {
        get(&dir, &["pods", "-n", "shop"], "{.items[*].status.phase}") == "Running Running"
    })
    .await;
    kubectl(&dir, &["delete", "namespace", "shop", "--timeout=90s"]);
    assert!(!kubectl_ok(&dir, &["get", "namespace", "shop"]));

    // Every process left belongs to a pod still there.
    kubectl(&dir, &["delete", "daemonset", "agent", "--timeout=60s"]);
    kubectl(&dir, &["delete", "jobs", "--all", "--timeout=60s"]);
    eventually(60, "no pods left", async || {
        get(&dir, &["pods", "-A"], "{.items[*].metadata.name}").is_empty()
    })
    .await;
    for root in &roots {
        eventually(30, "no process left", async || {
            live_processes(root).is_empty()
        })
        .await;
    }
    for e in [e1, e2, e3] {
        e.stop().await;
    }
    cloud.stop().await;
}

fn kubectl_ok(dir: &TempDir, args: &[&str]) -> bool {
    std::process::Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", dir.0.join("home"))
        .arg("--kubeconfig")
        .arg(dir.0.join("cloud/admin.kubeconfig"))
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills the processes of an edge's pods at the end, whatever happened.
struct Reaper<'a>(Vec<&'a Path>);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        for root in &self.0 {
            kill_all(root);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_edge_keeps_its_pods_unless_a_toleration_runs_out() {
    let dir = TempDir::new("evict");
    let mut config = common::cloud_config(&dir, "127.0.0.1:0", "127.0.0.1:0");
    config.node_grace = Duration::from_secs(5);
    let cloud = CloudCore::start(config).await.unwrap();
    let roots = [dir.0.join("e1/process"), dir.0.join("e2/process")];
    let _reaper = Reaper(roots.iter().map(|p| p.as_path()).collect());
    let e1 = edge(&dir, &cloud, "e1", "127.0.0.2").await;
    let e2 = edge(&dir, &cloud, "e2", "127.0.0.3").await;
    both_ready(&dir).await;
    // Two Deployments pinned to e1 at first: one plain, one tolerating unreachability for 30 s.
    let pinned = |name: &str, toleration: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: {toleration}
      containers:
      - name: main
        image: busybox:1.36
        command: ["sleep", "3600"]
"#
        )
    };
    // e2 is cordoned while they start, so both land on e1.
    kubectl(&dir, &["cordon", "e2"]);
    apply(&dir, "stays", &pinned("stays", "[]"));
    apply(
        &dir,
        "moves",
        &pinned(
            "moves",
            r#"[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 30}]"#,
        ),
    );
    rollout_status(&dir, "deployment/stays", 60);
    rollout_status(&dir, "deployment/moves", 60);
    assert_eq!(nodes_of(&dir, "app=stays"), ["e1"]);
    assert_eq!(nodes_of(&dir, "app=moves"), ["e1"]);
    kubectl(&dir, &["uncordon", "e2"]);

    // e1 goes away (its pods' processes keep running, as after a link loss).
    let before = live_processes(&roots[0]).len();
    assert_eq!(before, 2);
    e1.stop().await;
    let offline = std::time::Instant::now();
    eventually(30, "e1 tainted unreachable", async || {
        get(&dir, &["node", "e1"], "{.spec.taints[*].key}")
            .contains("node.kubernetes.io/unreachable")
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cloud.client().clone(), "default");
    let moved = async || {
        let list = pods
            .list(&ListParams::default().labels("app=moves"))
            .await
            .unwrap()
            .items;
        list.iter().any(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("e2")
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
    };
    eventually(90, "the tolerating pod replaced on e2", async || {
        moved().await
    })
    .await;
    assert!(
        offline.elapsed() >= Duration::from_secs(25),
        "evicted after {:?}, before its 30 s",
        offline.elapsed()
    );
    // The plain one stays bound to e1 and its process runs on.
    let stays = pods
        .list(&ListParams::default().labels("app=stays"))
        .await
        .unwrap()
        .items;
    assert_eq!(stays.len(), 1);
    assert_eq!(
        stays[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some("e1")
    );
    assert!(stays[0].metadata.deletion_timestamp.is_none());
    assert!(!live_processes(&roots[0]).is_empty());
    let deployments: Api<Deployment> = Api::namespaced(cloud.client().clone(), "default");
    assert!(deployments.get("stays").await.is_ok());
    e2.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_and_a_job_run_on_containerd() {
    let (_ctrd, dir, cloud, ec) = common::on_containerd("wl-cri").await;
    let edge = EdgeCore::start(ec).await.unwrap();
    eventually(30, "e1 Ready", async || {
        let ready = "{.items[*].status.conditions[?(@.type==\"Ready\")].status}";
        get(&dir, &["nodes"], ready) == "True"
    })
    .await;
    let image = kubeedge_edge::test_util::IMAGE;
    apply(
        &dir,
        "cri",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["/bin/sh", "-c", "exec sleep 3600"]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  completions: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: {image}
        command: ["/bin/sh", "-c", "echo done"]
"#
        ),
    );
    rollout_status(&dir, "deployment/web", 120);
    let ids = get(
        &dir,
        &["pods", "-l", "app=web"],
        "{.items[*].status.containerStatuses[0].containerID}",
    );
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter().all(|id| id.starts_with("containerd://")),
        "{ids:?}"
    );
    kubectl(
        &dir,
        &[
            "wait",
            "--for=condition=complete",
            "job/once",
            "--timeout=120s",
        ],
    );
    kubectl(&dir, &["delete", "deployment", "web", "--timeout=60s"]);
    kubectl(&dir, &["delete", "job", "once", "--timeout=60s"]);
    eventually(60, "every pod gone", async || {
        get(&dir, &["pods"], "{.items[*].metadata.name}").is_empty()
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
}
