//! A pod created in the cloud reaches the edge's metastore and metaserver; the edge registers its
//! node; the metaserver keeps serving with the cloud gone and after an edge restart; changes made
//! while the edge was away reach it when the cloud is back.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubeedge_cloud::CloudCore;
use kubeedge_edge::EdgeCore;
use serde_json::json;

use crate::common::{
    self, TempDir, cloud, cloud_config, edge_config, eventually, metaserver_client,
};

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"nodeName": "e1", "containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_reach_the_edge_and_stay_served_offline() {
    let dir = TempDir::new("sync");
    let cloud_core = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let (hub_addr, https_addr) = (cloud_core.hub_addr(), cloud_core.https_addr());
    let config = edge_config(&dir, &cloud_core);
    let edge = EdgeCore::start(config.clone()).await.unwrap();

    // the edge registers its node, labelled as an edge node, with the fields clients require
    let nodes: Api<Node> = Api::all(cloud_core.client().clone());
    eventually(30, "node e1 registered and Ready", async || {
        nodes
            .get_opt("e1")
            .await
            .unwrap()
            .is_some_and(|n| common::node_ready(&n))
    })
    .await;
    let node = nodes.get("e1").await.unwrap();
    let labels = node.metadata.labels.unwrap();
    assert!(labels.contains_key("node-role.kubernetes.io/edge"));
    assert!(labels.contains_key("node-role.kubernetes.io/agent"));
    assert!(
        node.status
            .unwrap()
            .node_info
            .unwrap()
            .kubelet_version
            .starts_with("v1.32.10-kubeedge-rs")
    );

    // a pod bound to e1 reaches the metaserver
    let pods: Api<Pod> = Api::namespaced(cloud_core.client().clone(), "default");
    pods.create(&PostParams::default(), &pod("web"))
        .await
        .unwrap();
    let local: Api<Pod> = Api::namespaced(metaserver_client(&edge), "default");
    eventually(30, "pod web on the metaserver", async || {
        local.get_opt("web").await.ok().flatten().is_some()
    })
    .await;
    let cloud_uid = pods.get("web").await.unwrap().metadata.uid;
    assert_eq!(local.get("web").await.unwrap().metadata.uid, cloud_uid);
    // writes other than the node's own status belong to the cloud
    let refused = local
        .delete("web", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused:?}"
    );
    assert!(local.get_opt("web").await.unwrap().is_some());

    // the cloud goes away: the metaserver still serves; an edge restart still has it
    cloud_core.stop().await;
    assert!(local.get_opt("web").await.unwrap().is_some());
    edge.stop().await;
    let mut offline = config.clone();
    offline.token = None;
    let edge = EdgeCore::start(offline).await.unwrap();
    let local: Api<Pod> = Api::namespaced(metaserver_client(&edge), "default");
    assert!(local.get_opt("web").await.unwrap().is_some());
    assert!(!edge.hub().is_connected());

    // the cloud comes back (same data, same ports) with changes made meanwhile
    let cloud_core = cloud(&dir, &hub_addr.to_string(), &https_addr.to_string()).await;
    let pods: Api<Pod> = Api::namespaced(cloud_core.client().clone(), "default");
    pods.create(&PostParams::default(), &pod("late"))
        .await
        .unwrap();
    // bound pods are deleted gracefully; the node's confirmation would remove them, force it here
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    eventually(30, "the edge converged", async || {
        let have_late = local.get_opt("late").await.ok().flatten().is_some();
        let web = local.get_opt("web").await.ok().flatten();
        have_late && web.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(edge.hub().is_connected());
    edge.stop().await;
    cloud_core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_certificate_is_renewed_before_it_expires() {
    let dir = TempDir::new("rotate");
    let mut c = cloud_config(&dir, "127.0.0.1:0", "127.0.0.1:0");
    c.edge_cert_validity = Duration::from_secs(8);
    let cloud_core = CloudCore::start(c).await.unwrap();
    let edge = EdgeCore::start(edge_config(&dir, &cloud_core))
        .await
        .unwrap();
    let files = kubeedge_edge::CertFiles::under(&dir.0.join("edge"));
    let serial = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let first = serial(&files.cert);
    eventually(20, "e1 connected", async || edge.hub().is_connected()).await;
    // renewed at 70–90 % of its 8 s, with the old certificate as the credential
    eventually(20, "a renewed certificate", async || {
        serial(&files.cert) != first
    })
    .await;
    let der = kubeedge_core::pki::pem_block(&serial(&files.cert), "CERTIFICATE").unwrap();
    assert_eq!(kubeedge_core::pki::node_name(&der).unwrap(), "e1");
    // and the edge dials again with it: still in sync after the first one expired
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pods: Api<Pod> = Api::namespaced(cloud_core.client().clone(), "default");
    pods.create(&PostParams::default(), &pod("after-rotation"))
        .await
        .unwrap();
    let local: Api<Pod> = Api::namespaced(metaserver_client(&edge), "default");
    eventually(30, "a pod synced over the renewed identity", async || {
        local
            .get_opt("after-rotation")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    edge.stop().await;
    cloud_core.stop().await;
}

async fn status_message(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get_opt(name).await.ok()??.status?.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_written_on_the_metaserver_reaches_the_cloud_also_from_offline() {
    let dir = TempDir::new("status");
    let cloud_core = cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let (hub_addr, https_addr) = (cloud_core.hub_addr(), cloud_core.https_addr());
    let config = edge_config(&dir, &cloud_core);
    let edge = EdgeCore::start(config.clone()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cloud_core.client().clone(), "default");
    pods.create(&PostParams::default(), &pod("st"))
        .await
        .unwrap();
    let local: Api<Pod> = Api::namespaced(metaserver_client(&edge), "default");
    eventually(30, "pod st on the metaserver", async || {
        local.get_opt("st").await.ok().flatten().is_some()
    })
    .await;

    // online: stored locally at once, and the cloud follows
    let patch = |m: &str| Patch::Merge(json!({"status": {"phase": "Running", "message": m}}));
    let written = local
        .patch_status("st", &PatchParams::default(), &patch("online"))
        .await
        .unwrap();
    assert_eq!(written.status.unwrap().message.as_deref(), Some("online"));
    eventually(30, "the cloud has the edge's status", async || {
        status_message(&pods, "st").await.as_deref() == Some("online")
    })
    .await;

    // not the node's own: refused
    let nodes: Api<Node> = Api::all(metaserver_client(&edge));
    let other = nodes
        .patch_status(
            "e2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&other, kube::Error::Api(s) if s.code == 403),
        "{other:?}"
    );
    let created = local
        .create(&PostParams::default(), &pod("local"))
        .await
        .unwrap_err();
    assert!(
        matches!(&created, kube::Error::Api(s) if s.code == 403),
        "{created:?}"
    );
    let unknown = local
        .patch_status("nowhere", &PatchParams::default(), &patch("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, kube::Error::Api(s) if s.code == 404),
        "{unknown:?}"
    );

    // offline, across an edge restart: kept in the queue, delivered when the cloud is back
    cloud_core.stop().await;
    local
        .patch_status("st", &PatchParams::default(), &patch("offline"))
        .await
        .unwrap();
    assert_eq!(
        status_message(&local, "st").await.as_deref(),
        Some("offline")
    );
    edge.stop().await;
    let mut offline = config.clone();
    offline.token = None;
    let edge = EdgeCore::start(offline).await.unwrap();
    let cloud_core = cloud(&dir, &hub_addr.to_string(), &https_addr.to_string()).await;
    let pods: Api<Pod> = Api::namespaced(cloud_core.client().clone(), "default");
    eventually(30, "the offline status reached the cloud", async || {
        status_message(&pods, "st").await.as_deref() == Some("offline")
    })
    .await;
    edge.stop().await;
    cloud_core.stop().await;
}
