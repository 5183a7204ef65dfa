//! cloudhub with test edges: each node gets exactly its share, node authorization on everything
//! edges send, impostors and excess nodes turned away, last connection wins, NotReady after grace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kubeedge_core::message::Operation;
use serde_json::json;

use crate::common::{RawEdge, TempDir, eventually, loopback_config, node_identity, start};

fn pod(name: &str, node: &str, configmap: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                  "envFrom": [{"configMapRef": {"name": configmap}}]}]}
    }))
    .unwrap()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_gets_its_share_and_may_touch_only_its_own_objects() {
    let dir = TempDir::new("hub");
    let core = start(&dir).await;
    let client = core.client().clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    cms.create(&pp, &configmap("cfg1")).await.unwrap();
    cms.create(&pp, &configmap("cfg2")).await.unwrap();
    cms.create(&pp, &configmap("unused")).await.unwrap();
    pods.create(&pp, &pod("web", "e1", "cfg1")).await.unwrap();
    pods.create(&pp, &pod("db", "e2", "cfg2")).await.unwrap();

    let mut e1 = RawEdge::connect(&core, "e1").await;
    let mut e2 = RawEdge::connect(&core, "e2").await;
    let insert = e1.wait_for(Operation::Insert, "default/pod/web", 20).await;
    assert_eq!(insert.route.source, "edgecontroller");
    assert_eq!(insert.route.group, "resource");
    assert_eq!(insert.content["spec"]["nodeName"], "e1");
    assert_eq!(insert.content["kind"], "Pod");
    assert!(!insert.header.resource_version.is_empty());
    e1.wait_for(Operation::Insert, "default/configmap/cfg1", 20)
        .await;
    e2.wait_for(Operation::Insert, "default/pod/db", 20).await;

    // a change reaches its node; a service reaches every node
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "svc"},
        "spec": {"ports": [{"port": 80}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&pp, &svc)
        .await
        .unwrap();
    e1.wait_for(Operation::Insert, "default/service/svc", 20)
        .await;
    e2.wait_for(Operation::Insert, "default/service/svc", 20)
        .await;
    pods.delete("web", &DeleteParams::default()).await.ok();
    // bound to a node, the pod is marked for deletion first: the edge sees an update...
    let upd = e1.wait_for(Operation::Update, "default/pod/web", 20).await;
    assert!(upd.content["metadata"]["deletionTimestamp"].is_string());

    // node authorization: e2 may not read e1's config, patch e1's pod, or register as e1
    let r = e2
        .request(Operation::Query, "default/configmap/cfg1", json!(null))
        .await;
    // Answers are routed as upstream's cloud routes them (upstream edgehub hands a reply to its
    // caller only for group `resource`), a refused read in the bare `{"ErrStatus"}` shape.
    assert_eq!(r.content["ErrStatus"]["code"], 403, "{r:?}");
    assert_eq!(
        (r.route.group.as_str(), r.route.source.as_str()),
        ("resource", "edgecontroller")
    );
    let r = e2
        .request(Operation::Query, "default/configmap/cfg2", json!(null))
        .await;
    assert_eq!(r.content["data"]["k"], "cfg2", "{r:?}");
    let status = json!({"status": {"phase": "Running"}}).to_string();
    let r = e2
        .request(Operation::Patch, "default/podpatch/web", json!(status))
        .await;
    assert_eq!(r.content["Err"]["ErrStatus"]["code"], 403, "{r:?}");
    let r = e2
        .request(
            Operation::Insert,
            "null/node/e1",
            json!({"metadata": {"name": "e1"}}),
        )
        .await;
    assert_eq!(r.content["Err"]["ErrStatus"]["code"], 403, "{r:?}");
    let r = e2
        .request(
            Operation::Insert,
            "kube-node-lease/lease/e1",
            json!({"spec": {}}),
        )
        .await;
    assert_eq!(r.content["Err"]["ErrStatus"]["code"], 403, "{r:?}");
    let web = pods.get("web").await.unwrap();
    assert_ne!(
        web.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "e2's patch changed nothing"
    );

    // ... its own node may write its own objects
    let r = e1
        .request(Operation::Patch, "default/podpatch/web", json!(status))
        .await;
    assert_eq!(r.content["Err"], json!(null), "{r:?}");
    assert_eq!(r.content["Object"]["status"]["phase"], "Running");
    let r = e1
        .request(
            Operation::Insert,
            "null/node/e1",
            json!({"metadata": {"name": "e1"}, "status": {"nodeInfo": {"kubeletVersion": "v1.32.10-kubeedge-rs"}}}),
        )
        .await;
    assert_eq!(r.content["Err"], json!(null), "{r:?}");
    let node = Api::<Node>::all(client.clone()).get("e1").await.unwrap();
    assert!(
        node.metadata
            .labels
            .unwrap()
            .contains_key("node-role.kubernetes.io/edge")
    );
    let r = e1
        .request(
            Operation::Insert,
            "kube-node-lease/lease/e1",
            json!({"spec": {"holderIdentity": "e1", "leaseDurationSeconds": 40}}),
        )
        .await;
    assert_eq!(r.content["Object"]["spec"]["holderIdentity"], "e1", "{r:?}");
    assert_eq!(r.content["Err"], json!(null), "{r:?}");
    let r = e1
        .request(Operation::Query, "kube-node-lease/lease/e1", json!(null))
        .await;
    assert_eq!(r.content["Object"]["kind"], "Lease", "{r:?}");
    // The kubelet's empty status patch changes nothing and is no error.
    let r = e1
        .request(Operation::Patch, "null/nodepatch/e1", json!("{}"))
        .await;
    assert_eq!(r.content["Err"], json!(null), "{r:?}");
    assert_eq!(r.content["Object"]["metadata"]["name"], "e1", "{r:?}");
    // The cluster's CA, as cloudhub answers it.
    let r = e1
        .request(Operation::Query, "k8s/ca.crt", json!(null))
        .await;
    assert!(
        r.content
            .as_str()
            .is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE")),
        "{r:?}"
    );
    assert_eq!(r.route.source, "cloudhub");
    // the node confirms the deletion: the pod is gone, and the edge hears the delete
    let uid = web.metadata.uid.unwrap();
    let r = e1
        .request(Operation::Delete, "default/pod/web", json!(uid))
        .await;
    assert_eq!(r.content, json!("OK"));
    e1.wait_for(Operation::Delete, "default/pod/web", 20).await;
    assert!(pods.get_opt("web").await.unwrap().is_none());
    // cfg1 is no longer referenced by any pod on e1: it goes too
    e1.wait_for(Operation::Delete, "default/configmap/cfg1", 20)
        .await;

    // e2 never heard of e1's objects
    e2.drain(Duration::from_millis(500)).await;
    for m in e1.received.iter().chain(e2.received.iter()) {
        assert_ne!(m.route.resource, "default/configmap/unused");
    }
    for m in e2
        .received
        .iter()
        .filter(|m| m.route.operation != Operation::Response)
    {
        assert!(
            !m.route.resource.ends_with("/web") && !m.route.resource.ends_with("/cfg1"),
            "e2 got {m:?}"
        );
    }
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_and_excess_nodes_are_turned_away_and_the_last_connection_wins() {
    let dir = TempDir::new("hub2");
    let mut config = loopback_config(&dir);
    config.hub.node_limit = 1;
    config.node_grace = Duration::from_secs(1);
    let core = kubeedge_cloud::CloudCore::start(config).await.unwrap();

    // e2's certificate claiming to be e1
    let e2_id = node_identity(&core, "e2");
    let mut impostor = RawEdge::connect_as(&core, "e1", &e2_id).await;
    let end = tokio::time::timeout(Duration::from_secs(10), impostor.conn.recv()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    assert!(!core.hub().is_connected("e1"));

    let mut first = RawEdge::connect(&core, "e1").await;
    eventually(10, "e1 connected", async || core.hub().is_connected("e1")).await;
    let r = first
        .request(
            Operation::Insert,
            "null/node/e1",
            json!({"metadata": {"name": "e1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    assert_eq!(r.content["Err"], json!(null), "{r:?}");

    // the limit is one node: e2 is turned away
    let mut e2 = RawEdge::connect(&core, "e2").await;
    let end = tokio::time::timeout(Duration::from_secs(10), e2.conn.recv()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    assert!(!core.hub().is_connected("e2"));

    // a second connection of e1 replaces the first
    let mut second = RawEdge::connect(&core, "e1").await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.conn.recv().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    let r = second
        .request(Operation::Query, "null/node/e1", json!(null))
        .await;
    assert_eq!(r.content["metadata"]["name"], "e1");

    // gone past the grace period: Ready turns Unknown
    drop(second);
    let nodes: Api<Node> = Api::all(core.client().clone());
    eventually(20, "e1 Ready=Unknown", async || {
        let n = nodes.get("e1").await.unwrap();
        n.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown")
    })
    .await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kubeconfig_it_serves_a_cluster_it_does_not_run() {
    // A stands for "the real cluster"; B is a cloudcore pointed at it.
    let dir_a = TempDir::new("cluster");
    let cluster = start(&dir_a).await;
    let dir_b = TempDir::new("remote");
    let mut config = loopback_config(&dir_b);
    config.kubeconfig = Some(dir_a.0.join("admin.kubeconfig"));
    let core = kubeedge_cloud::CloudCore::start(config).await.unwrap();
    assert!(core.control_plane().is_none());
    assert!(!dir_b.0.join("admin.kubeconfig").exists());
    let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), "default");
    pods.create(&PostParams::default(), &pod("web", "e1", "cfg"))
        .await
        .unwrap();
    let mut e1 = RawEdge::connect(&core, "e1").await;
    e1.wait_for(Operation::Insert, "default/pod/web", 20).await;
    core.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_leaves_a_share_and_comes_back_is_sent_again() {
    let dir = TempDir::new("hub3");
    let core = start(&dir).await;
    let client = core.client().clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    cms.create(&pp, &configmap("shared")).await.unwrap();
    pods.create(&pp, &pod("a", "e1", "shared")).await.unwrap();
    let mut e1 = RawEdge::connect(&core, "e1").await;
    e1.wait_for(Operation::Insert, "default/configmap/shared", 20)
        .await;
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("a", &now).await.unwrap();
    let gone = e1
        .wait_for(Operation::Delete, "default/configmap/shared", 20)
        .await;
    assert!(
        gone.header.resource_version.is_empty(),
        "a share-leave delete carries no version: {gone:?}"
    );
    // another pod needs the same, unchanged ConfigMap: it comes back
    e1.received.clear();
    pods.create(&pp, &pod("b", "e1", "shared")).await.unwrap();
    e1.wait_for(Operation::Insert, "default/configmap/shared", 20)
        .await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_that_is_not_an_edge_cannot_be_impersonated() {
    let dir = TempDir::new("hub4");
    let core = start(&dir).await;
    let client = core.client().clone();
    let worker: Node = serde_json::from_value(json!({"metadata": {"name": "worker-1"}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &worker)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("kubelet-pod", "worker-1", "x"))
        .await
        .unwrap();
    eventually(10, "the index knows worker-1", async || {
        core.index()
            .get(kubeedge_cloud::index::Kind::Node, "", "worker-1")
            .is_some()
    })
    .await;
    // a join token does not buy a certificate for it
    let token = core
        .ca()
        .token(Duration::from_secs(600), std::time::SystemTime::now());
    let bearer = format!("Bearer {}", token.split_once('.').unwrap().1);
    let (csr, _) = kubeedge_core::pki::node_csr("worker-1").unwrap();
    let (code, _) = crate::common::https(
        &core.ca().cert(),
        core.https_addr().port(),
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "worker-1"), ("Authorization", &bearer)],
        &csr,
    )
    .await;
    assert_eq!(code, 401);
    // a certificate obtained some other way does not open cloudhub either
    let mut fake = RawEdge::connect(&core, "worker-1").await;
    let end = tokio::time::timeout(Duration::from_secs(10), fake.conn.recv()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    assert!(core.index().desired("worker-1").is_empty());
    core.stop().await;
}

/// Whether node `name`'s Ready condition is Unknown.
async fn unknown(nodes: &Api<Node>, name: &str) -> bool {
    let n = nodes.get(name).await.unwrap();
    n.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "Unknown")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_another_replica_counts_as_heard_through_its_record_without_a_lease() {
    // A: the API and the leader; B: a replica over A's API holding the node, which never renews
    // a Lease. Before replicas published what they hear, A marked it Unknown after the grace.
    let grace = Duration::from_secs(2);
    let dir_a = TempDir::new("heard-a");
    let mut config = loopback_config(&dir_a);
    config.replica = Some(kubeedge_cloud::leader::LeaderConfig::new("a"));
    config.node_grace = grace;
    let a = kubeedge_cloud::CloudCore::start(config).await.unwrap();
    eventually(20, "A leads", async || a.leadership().is_leader()).await;
    let dir_b = TempDir::new("heard-b");
    let mut config = loopback_config(&dir_b);
    config.kubeconfig = Some(dir_a.0.join("admin.kubeconfig"));
    config.replica = Some(kubeedge_cloud::leader::LeaderConfig::new("B_2"));
    config.node_grace = grace;
    let b = kubeedge_cloud::CloudCore::start(config).await.unwrap();

    let mut e1 = RawEdge::connect(&b, "e1").await;
    let r = e1
        .request(
            Operation::Insert,
            "null/node/e1",
            json!({"metadata": {"name": "e1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    assert_eq!(r.content["Err"], json!(null), "{r:?}");
    let records: Api<ConfigMap> = Api::namespaced(a.client().clone(), "kubeedge");
    eventually(20, "B's record lists e1", async || {
        records
            .get_opt(&kubeedge_cloud::lifecycle::heard_record_name("B_2"))
            .await
            .unwrap()
            .and_then(|r| r.data)
            .and_then(|d| d.get("nodes").cloned())
            .is_some_and(|n| n.lines().any(|l| l == "e1"))
    })
    .await;
    assert_eq!(
        kubeedge_cloud::lifecycle::heard_record_name("B_2"),
        "cloudcore-heard-b-2"
    );

    // The edge talks to B for four times the grace; the leader never hears it itself.
    let nodes: Api<Node> = Api::all(a.client().clone());
    let until = tokio::time::Instant::now() + grace * 4;
    while tokio::time::Instant::now() < until {
        let r = e1
            .request(Operation::Query, "null/node/e1", json!(null))
            .await;
        assert_eq!(r.content["metadata"]["name"], "e1");
        assert!(
            !unknown(&nodes, "e1").await,
            "e1 turned Unknown while B heard it"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!a.hub().is_connected("e1"));

    // B goes away with the node: its record ages out and the node turns Unknown.
    b.stop().await;
    drop(e1);
    eventually(20, "e1 Ready=Unknown", async || unknown(&nodes, "e1").await).await;
    a.stop().await;
}
