//! The CRI runtime against a real containerd: sandbox and container lifecycle, state, exec, images.

use std::time::Duration;

use kubeedge_edge::cri::CriRuntime;
use kubeedge_edge::runtime::{ContainerSpec, ContainerState, Runtime, SandboxSpec};
use kubeedge_edge::test_util::{Containerd, IMAGE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_and_goes_away_on_containerd() {
    let ctrd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap()
        .unwrap();
    let rt = CriRuntime::connect(&ctrd.endpoint()).await.unwrap();
    assert!(rt.version().await.unwrap().starts_with("containerd://"));
    assert!(rt.ready().await.unwrap());
    assert!(rt.has_image(IMAGE).await.unwrap());
    assert!(!rt.has_image("localhost/absent:1").await.unwrap());

    let sandbox = SandboxSpec {
        uid: "uid-1".into(),
        namespace: "default".into(),
        name: "web".into(),
        hostname: "web".into(),
        log_directory: ctrd.dir.join("pods/uid-1"),
        labels: [("kubeedge.io/pod-uid".to_owned(), "uid-1".to_owned())]
            .into_iter()
            .collect(),
        ..SandboxSpec::default()
    };
    let sid = rt.run_sandbox(&sandbox).await.unwrap();
    assert!(
        rt.sandbox_ip(&sid).await.unwrap().is_some(),
        "a pod network address"
    );
    let container = ContainerSpec {
        name: "c".into(),
        image: IMAGE.into(),
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec!["echo started; exec sleep 60".into()],
        env: vec![("GREETING".into(), "hello".into())],
        log_path: "c_0.log".into(),
        ..ContainerSpec::default()
    };
    let cid = rt
        .start_container(&sid, &sandbox, &container)
        .await
        .unwrap();
    assert!(matches!(
        rt.container_state(&cid).await.unwrap(),
        ContainerState::Running { .. }
    ));
    let (code, out, _) = rt
        .exec_sync(
            &cid,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo $GREETING; hostname".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&out), "hello\nweb\n");
    let listed = rt.list_sandboxes().await.unwrap();
    assert!(
        listed.iter().any(|s| s.id == sid
            && s.labels.get("kubeedge.io/pod-uid").map(String::as_str) == Some("uid-1"))
    );
    assert_eq!(rt.list_containers(&sid).await.unwrap().len(), 1);

    rt.stop_container(&cid, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        rt.container_state(&cid).await.unwrap(),
        ContainerState::Exited { .. }
    ));
    rt.remove_container(&cid).await.unwrap();
    rt.remove_sandbox(&sid).await.unwrap();
    assert!(rt.list_sandboxes().await.unwrap().is_empty());
    assert!(ctrd.running_tasks().is_empty());
    drop(ctrd);
}
