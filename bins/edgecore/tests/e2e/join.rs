//! `keadm join`'s library path: certificate, cloudhub check, configuration file; then an edgecore
//! started from that file alone joins, and a bad token changes nothing.

use std::time::{Duration, SystemTime};

use kubeedge_edge::config_file::EdgeCoreFile;
use kubeedge_edge::join::{Progress, join};
use kubeedge_edge::{CertFiles, EdgeCore};

use crate::common::{self, TempDir, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_starts_from_its_configuration_file() {
    let dir = TempDir::new("join");
    let cloud = common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let mut file = EdgeCoreFile::default();
    file.data_dir = Some(dir.0.join("edge"));
    let (hub, edged) = (&mut file.modules.edge_hub, &mut file.modules.edged);
    hub.websocket.server = Some(format!("127.0.0.1:{}", cloud.hub_addr().port()));
    hub.http_server = Some(format!("https://127.0.0.1:{}", cloud.https_addr().port()));
    edged.hostname_override = Some("joined".into());
    edged.runtime = Some("none".into());
    file.modules.meta_manager.meta_server.server = Some("127.0.0.1:0".into());
    let path = dir.0.join("edge/edgecore.yaml");

    // a token for another CA: refused, nothing written
    let mut wrong = file.clone();
    wrong.modules.edge_hub.token = Some(format!(
        "{}.{}",
        "00".repeat(32),
        cloud
            .ca()
            .token(Duration::from_secs(60), SystemTime::now())
            .split_once('.')
            .unwrap()
            .1
    ));
    let err = join(&wrong, &path, |_| {}).await.unwrap_err();
    assert!(
        kubeedge_edge::chain(&err).contains("token"),
        "{}",
        kubeedge_edge::chain(&err)
    );
    assert!(!path.exists());
    assert!(!CertFiles::under(&dir.0.join("edge")).exist());

    let token = cloud
        .ca()
        .token(Duration::from_secs(600), SystemTime::now());
    file.modules.edge_hub.token = Some(token.clone());
    let mut steps = Vec::new();
    join(&file, &path, |p| steps.push(p)).await.unwrap();
    let begun: Vec<u8> = steps
        .iter()
        .filter_map(|p| match p {
            Progress::Begin { n, of: 3, .. } => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(begun, [1, 2, 3], "{steps:?}");
    assert_eq!(
        steps
            .iter()
            .filter(|p| matches!(p, Progress::Done(_)))
            .count(),
        3
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&token), "the token is not kept: {text}");
    assert!(
        text.contains("edgecore.config.kubeedge.io/v1alpha2"),
        "{text}"
    );

    // edgecore from the file alone: no token needed any more
    let config = EdgeCoreFile::load(&path).unwrap().to_config().unwrap();
    assert_eq!(config.token, None);
    let edge = EdgeCore::start(config).await.unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cloud.client().clone());
    eventually(30, "node joined registered and Ready", async || {
        nodes
            .get_opt("joined")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| common::node_ready(&n))
    })
    .await;
    edge.stop().await;

    // joining again keeps the certificate
    let mut again = Vec::new();
    join(&file, &path, |p| again.push(p)).await.unwrap();
    assert!(
        matches!(&again[1], Progress::Done(m) if m.contains("kept")),
        "{again:?}"
    );
    cloud.stop().await;
}
