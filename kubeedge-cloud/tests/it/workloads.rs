//! The embedded control plane's workload controllers and scheduler, driven through kube-rs with
//! nodes whose kubelet is played here (it reports pods Running and Ready with an IP, finishes Job
//! pods, and completes graceful deletions while its node is "online"). The end-to-end version
//! with real edgecores and kubectl is bins/edgecore/tests/e2e/workloads.rs.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::{TempDir, eventually, start};

/// Nodes whose kubelet is played by [`kubelet`]; those in `offline` do nothing.
#[derive(Clone, Default)]
struct Kubelets {
    offline: Arc<Mutex<HashSet<String>>>,
}

async fn add_node(client: &Client, name: &str, labels: Value, taints: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    set_ready(client, name, "True").await;
}

async fn set_ready(client: &Client, name: &str, status: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {
        "conditions": [{"type": "Ready", "status": status, "reason": "Test",
                        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Plays the kubelet of every node not in `offline`: pods bound to it turn Running and Ready
/// (IP 10.1.<node index>.<n>), pods labelled `finish=yes` Succeeded; pods being deleted go.
fn kubelet(client: Client, kubelets: Kubelets) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        let mut ips: BTreeMap<String, String> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(list) = pods.list(&ListParams::default()).await else {
                continue;
            };
            for pod in list.items {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                if kubelets.offline.lock().unwrap().contains(&node) {
                    continue;
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                let finish = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("finish"))
                    .is_some();
                let want = if finish { "Succeeded" } else { "Running" };
                if phase.as_deref() == Some(want) {
                    continue;
                }
                let n = ips.len();
                let ip = ips
                    .entry(format!("{ns}/{name}"))
                    .or_insert_with(|| {
                        format!(
                            "10.1.{}.{}",
                            node.trim_start_matches(|c: char| !c.is_ascii_digit()),
                            n % 250 + 1
                        )
                    })
                    .clone();
                let ready = if finish { "False" } else { "True" };
                let status = json!({"status": {"phase": want, "podIP": ip, "hostIP": "192.0.2.1",
                    "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
        }
    })
}

fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}}))
    .unwrap()
}

async fn pods_of(client: &Client, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_spread_roll_back_and_go_with_their_pods() {
    let dir = TempDir::new("deploy");
    let core = start(&dir).await;
    let client = core.client().clone();
    for n in ["edge1", "edge2"] {
        add_node(&client, n, json!({}), json!([])).await;
    }
    let sim = kubelet(client.clone(), Kubelets::default());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 4, "busybox:1.36"),
        )
        .await
        .unwrap();
    let rolled = async |image: &str| {
        let d = deployments.get("web").await.unwrap();
        let s = d.status.unwrap_or_default();
        let pods = pods_of(&client, "app=web").await;
        s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(4)
            && s.available_replicas == Some(4)
            && s.replicas == Some(4)
            && pods.len() == 4
            && pods
                .iter()
                .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image))
    };
    eventually(30, "4 pods up", async || rolled("busybox:1.36").await).await;
    let pods = pods_of(&client, "app=web").await;
    let on = |n: &str| pods.iter().filter(|p| node_of(p) == n).count();
    assert_eq!((on("edge1"), on("edge2")), (2, 2), "spread over both nodes");
    let d = deployments.get("web").await.unwrap();
    let progressing = d.status.unwrap().conditions.unwrap();
    assert!(
        progressing
            .iter()
            .any(|c| c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // A new image rolls; the old ReplicaSet stays, scaled to zero, as revision 1.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    eventually(30, "rolled to 1.37", async || rolled("busybox:1.37").await).await;
    let rs = sets
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(rs.len(), 2);
    let revisions: Vec<(String, i32)> = rs
        .iter()
        .map(|r| {
            (
                r.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"]
                    .clone(),
                r.spec.replicas.unwrap(),
            )
        })
        .collect();
    assert!(
        revisions.contains(&("1".into(), 0)) && revisions.contains(&("2".into(), 4)),
        "{revisions:?}"
    );

    // Back to the old template: the old ReplicaSet is revision 3 and scales up again.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    eventually(30, "rolled back", async || rolled("busybox:1.36").await).await;
    assert_eq!(
        sets.list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    // Scale.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually(30, "scaled to 1", async || {
        pods_of(&client, "app=web").await.len() == 1
    })
    .await;

    // Deleting it (background) takes its ReplicaSets and pods.
    deployments
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    eventually(30, "ReplicaSets and pods gone", async || {
        sets.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            && pods_of(&client, "app=web").await.is_empty()
    })
    .await;

    // Foreground: the Deployment stays until its dependents are gone; orphan: they stay.
    deployments
        .create(&PostParams::default(), &deployment("fg", 2, "busybox:1.36"))
        .await
        .unwrap();
    deployments
        .create(&PostParams::default(), &deployment("or", 2, "busybox:1.36"))
        .await
        .unwrap();
    eventually(30, "both up", async || {
        pods_of(&client, "app=fg").await.len() == 2 && pods_of(&client, "app=or").await.len() == 2
    })
    .await;
    deployments
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    deployments
        .delete("or", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(30, "foreground deletion done", async || {
        deployments.get_opt("fg").await.unwrap().is_none()
            && pods_of(&client, "app=fg").await.is_empty()
    })
    .await;
    eventually(30, "orphaned", async || {
        deployments.get_opt("or").await.unwrap().is_none()
    })
    .await;
    let left = sets
        .list(&ListParams::default().labels("app=or"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1, "the orphaned ReplicaSet stays");
    assert!(
        left[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pods_of(&client, "app=or").await.len(),
        2,
        "its pods stay too"
    );
    sim.abort();
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_heeds_selectors_taints_and_room_and_says_why_not() {
    let dir = TempDir::new("sched");
    let core = start(&dir).await;
    let client = core.client().clone();
    add_node(
        &client,
        "edge1",
        json!({"zone": "a"}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    add_node(&client, "edge2", json!({"zone": "b"}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let make = async |name: &str, spec: Value| {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "busybox:1.36",
            "resources": spec.get("requests").map(|r| json!({"requests": r})).unwrap_or(json!({}))}]);
        if let Some(m) = spec.as_object_mut() {
            m.remove("requests");
        }
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    };
    let bound = async |name: &str| {
        pods.get(name)
            .await
            .ok()
            .and_then(|p| p.spec.and_then(|s| s.node_name))
    };
    // The taint keeps plain pods off edge1; a toleration and a selector put one there.
    for i in 0..3 {
        make(&format!("plain-{i}"), json!({})).await;
    }
    make("tolerant", json!({"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]})).await;
    make("affine", json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}})).await;
    eventually(20, "bound", async || {
        let mut all = Vec::new();
        for n in ["plain-0", "plain-1", "plain-2", "tolerant", "affine"] {
            all.push(bound(n).await);
        }
        all.iter().all(Option::is_some)
    })
    .await;
    for i in 0..3 {
        assert_eq!(bound(&format!("plain-{i}")).await.as_deref(), Some("edge2"));
    }
    assert_eq!(bound("tolerant").await.as_deref(), Some("edge1"));
    assert_eq!(bound("affine").await.as_deref(), Some("edge2"));

    // No node fits: PodScheduled=False with the reasons, and an Event.
    make("nowhere", json!({"nodeSelector": {"zone": "mars"}})).await;
    make("huge", json!({"requests": {"cpu": "64"}})).await;
    let condition = async |name: &str| {
        pods.get(name).await.ok().and_then(|p| {
            p.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")
        })
    };
    eventually(20, "unschedulable conditions", async || {
        condition("nowhere")
            .await
            .is_some_and(|c| c.status == "False")
            && condition("huge").await.is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition("nowhere").await.unwrap();
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    let msg = c.message.unwrap();
    assert!(
        msg.starts_with("0/2 nodes are available:") && msg.contains("node affinity/selector"),
        "{msg}"
    );
    let msg = condition("huge").await.unwrap().message.unwrap();
    assert!(
        msg.contains("Insufficient cpu") && msg.contains("untolerated taint {dedicated: db}"),
        "{msg}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    eventually(10, "a FailedScheduling event", async || {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("nowhere")
            })
    })
    .await;
    // A node that fits arrives: the pod goes there.
    add_node(&client, "edge3", json!({"zone": "mars"}), json!([])).await;
    eventually(20, "scheduled once a node fits", async || {
        bound("nowhere").await.as_deref() == Some("edge3")
    })
    .await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_jobs_endpoints_and_taint_eviction() {
    let dir = TempDir::new("ds");
    let core = start(&dir).await;
    let client = core.client().clone();
    for n in ["edge1", "edge2"] {
        add_node(&client, n, json!({}), json!([])).await;
    }
    let kubelets = Kubelets::default();
    let sim = kubelet(client.clone(), kubelets.clone());

    // A DaemonSet: one pod per node, and one on a node that joins later.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let per_node = async || {
        let mut nodes: Vec<String> = pods_of(&client, "app=agent")
            .await
            .iter()
            .map(node_of)
            .collect();
        nodes.sort();
        nodes
    };
    eventually(20, "a daemon per node", async || {
        per_node().await == ["edge1", "edge2"]
    })
    .await;
    add_node(&client, "edge3", json!({}), json!([])).await;
    eventually(20, "a daemon on the new node", async || {
        per_node().await == ["edge1", "edge2", "edge3"]
    })
    .await;
    eventually(20, "daemonset status", async || {
        let s = daemonsets
            .get("agent")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        s.desired_number_scheduled == 3
            && s.number_ready == 3
            && s.updated_number_scheduled == Some(3)
    })
    .await;

    // A Job of 3 completions, 2 at a time.
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "batch"},
        "spec": {"completions": 3, "parallelism": 2,
                 "template": {"metadata": {"labels": {"finish": "yes"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually(30, "the job completes", async || {
        let s = jobs.get("batch").await.unwrap().status.unwrap_or_default();
        s.succeeded == Some(3)
            && s.completion_time.is_some()
            && s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
    })
    .await;
    assert_eq!(
        pods_of(&client, "batch.kubernetes.io/job-name=batch")
            .await
            .len(),
        3
    );

    // A Service's endpoints are its ready pods' IPs and nodes.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &deployment("api", 2, "busybox:1.36"),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    eventually(30, "endpoints match the pods", async || {
        let mut ips: Vec<String> = pods_of(&client, "app=api")
            .await
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ips.sort();
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=api"))
            .await
            .unwrap()
            .items;
        let mut got: Vec<String> = list
            .iter()
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .flatten()
                    .flat_map(|e| e.addresses.clone())
            })
            .collect();
        got.sort();
        ips.len() == 2
            && got == ips
            && list[0]
                .ports
                .as_ref()
                .is_some_and(|p| p[0].port == Some(8080))
    })
    .await;

    // edge1 goes offline past its grace: the pod without a toleration stays bound there; the one
    // tolerating the taint for 2 s is evicted and its replacement runs elsewhere.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pinned = |name: &str, toleration: Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": "edge1", "tolerations": toleration, "containers": [{"name": "c", "image": "busybox:1.36"}]}}))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pinned("stays", json!([])))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pinned("leaves", json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]))).await.unwrap();
    kubelets.offline.lock().unwrap().insert("edge1".into());
    set_ready(&client, "edge1", "Unknown").await;
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(10, "edge1 tainted unreachable", async || {
        nodes
            .get("edge1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
    })
    .await;
    eventually(20, "the tolerating pod evicted", async || {
        pods.get("leaves")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    })
    .await;
    let stays = pods.get("stays").await.unwrap();
    assert!(
        stays.metadata.deletion_timestamp.is_none(),
        "no toleration: it stays on its offline edge"
    );
    assert_eq!(node_of(&stays), "edge1");
    set_ready(&client, "edge1", "True").await;
    kubelets.offline.lock().unwrap().clear();
    eventually(10, "taints gone", async || {
        nodes
            .get("edge1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .taints
            .unwrap_or_default()
            .is_empty()
    })
    .await;
    eventually(
        10,
        "the evicted pod gone once its kubelet is back",
        async || pods.get_opt("leaves").await.unwrap().is_none(),
    )
    .await;
    sim.abort();
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workloads_are_refused_whole() {
    let dir = TempDir::new("badwl");
    let core = start(&dir).await;
    let client = core.client().clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut mismatched = deployment("bad", 1, "busybox:1.36");
    mismatched.spec.selector.match_labels = Some([("app".to_owned(), "other".to_owned())].into());
    let err = deployments
        .create(&PostParams::default(), &mismatched)
        .await
        .unwrap_err();
    let kube::Error::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, 422);
    assert!(
        e.message
            .contains("`selector` does not match template `labels`"),
        "{}",
        e.message
    );
    let err = deployments
        .create(
            &PostParams::default(),
            &deployment("neg", -1, "busybox:1.36"),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.replicas: Invalid value: -1"),
        "{}",
        e.message
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "always"},
        "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    let err = jobs.create(&PostParams::default(), &job).await.unwrap_err();
    let kube::Error::Api(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("restartPolicy: Unsupported value"),
        "{}",
        e.message
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    assert!(
        sets.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing half-made"
    );
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_keep_order_and_cronjobs_run_on_time() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::batch::v1::CronJob;

    let dir = TempDir::new("sts");
    let core = start(&dir).await;
    let client = core.client().clone();
    add_node(&client, "edge1", json!({}), json!([])).await;
    let sim = kubelet(client.clone(), Kubelets::default());

    // Ordinal names, made in order: each one only once those before it are Ready.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let set: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let names = async || {
        let mut n: Vec<String> = pods_of(&client, "app=db")
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        n.sort();
        n
    };
    eventually(30, "db-0..2", async || {
        names().await == ["db-0", "db-1", "db-2"]
    })
    .await;
    let pods = pods_of(&client, "app=db").await;
    let created = |n: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(n))
            .and_then(|p| p.metadata.creation_timestamp.clone())
            .unwrap()
            .0
    };
    assert!(created("db-0") <= created("db-1") && created("db-1") <= created("db-2"));
    let db1 = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("db-1"))
        .unwrap();
    assert_eq!(db1.spec.as_ref().unwrap().hostname.as_deref(), Some("db-1"));
    assert_eq!(db1.spec.as_ref().unwrap().subdomain.as_deref(), Some("db"));
    let settled = async || {
        let s = sets.get("db").await.unwrap().status.unwrap_or_default();
        s.ready_replicas == Some(3)
            && s.current_revision.is_some()
            && s.current_revision == s.update_revision
    };
    eventually(30, "ready and on one revision", async || settled().await).await;
    let first = sets
        .get("db")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision;
    // A new template rolls from the highest ordinal down; the revision moves on.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    eventually(60, "rolled", async || {
        settled().await
            && sets
                .get("db")
                .await
                .unwrap()
                .status
                .unwrap()
                .update_revision
                != first
            && pods_of(&client, "app=db").await.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:1.37")
            })
    })
    .await;
    // Scaled down from the top.
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(30, "only db-0 left", async || names().await == ["db-0"]).await;

    // A CronJob whose last run was two minutes ago is due now: it makes its Job, which completes.
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1,
                 "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"finish": "yes"}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}}))
    .unwrap();
    cronjobs.create(&PostParams::default(), &cj).await.unwrap();
    let earlier =
        kubeedge_core::store::rfc3339(std::time::SystemTime::now() - Duration::from_secs(120));
    cronjobs
        .patch_status(
            "tick",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastScheduleTime": earlier}})),
        )
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    eventually(30, "the due run made and completed", async || {
        let made = jobs.list(&ListParams::default()).await.unwrap().items;
        made.len() == 1
            && made[0]
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("tick-"))
            && cronjobs
                .get("tick")
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.last_successful_time.is_some())
    })
    .await;
    // A schedule that cannot be parsed is refused by nothing but reported.
    let bad: CronJob = serde_json::from_value(json!({"metadata": {"name": "bad"},
        "spec": {"schedule": "every minute", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}}))
    .unwrap();
    let refused = cronjobs.create(&PostParams::default(), &bad).await;
    let kube::Error::Api(e) = refused.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!(e.code, 422);
    assert!(e.message.contains("spec.schedule"), "{}", e.message);
    sim.abort();
    core.stop().await;
}
