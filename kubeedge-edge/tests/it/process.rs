//! The process runtime with real host processes: start, state, exit codes, exec, mounts, graceful
//! and forced stops of the whole process group, and adoption by a new runtime instance (as after
//! an edgecore restart), including a process that died meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubeedge_edge::process::ProcessRuntime;
use kubeedge_edge::runtime::{ContainerSpec, ContainerState, Mount, Runtime, SandboxSpec};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let d = std::env::temp_dir().join(format!(
        "kubeedge-process-{}-{}",
        std::process::id(),
        kubeedge_core::transport::driver::random_seed()
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn sandbox(root: &Path) -> SandboxSpec {
    SandboxSpec {
        uid: "uid-1".into(),
        namespace: "default".into(),
        name: "app".into(),
        hostname: "app".into(),
        host_network: true,
        log_directory: root.join("logs"),
        labels: [("kubeedge.io/pod-uid".to_owned(), "uid-1".to_owned())]
            .into_iter()
            .collect(),
        ..SandboxSpec::default()
    }
}

fn shell(name: &str, script: &str, attempt: u32) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "busybox".into(),
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec![script.into()],
        env: vec![("GREETING".into(), "hello".into())],
        attempt,
        log_path: format!("{name}_{attempt}.log"),
        ..ContainerSpec::default()
    }
}

async fn exited(rt: &ProcessRuntime, id: &str) -> ContainerState {
    for _ in 0..100 {
        let state = rt.container_state(id).await.unwrap();
        if matches!(state, ContainerState::Exited { .. }) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {id} did not exit");
}

fn pid_of(root: &Path, sid: &str, cid: &str) -> i32 {
    let text = std::fs::read_to_string(
        root.join(sid)
            .join("containers")
            .join(format!("{cid}.json")),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

fn kill(pid: i32) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_run_report_and_stop() {
    let d = dir();
    let root = d.0.join("rt");
    let rt = ProcessRuntime::new(&root, "192.0.2.7").unwrap();
    assert!(rt.version().await.unwrap().starts_with("process://"));
    assert!(rt.has_image("busybox").await.unwrap());
    assert!(rt.has_image("/bin/sh").await.unwrap());
    assert!(!rt.has_image("/nonexistent/app").await.unwrap());

    let sb = sandbox(&d.0);
    let sid = rt.run_sandbox(&sb).await.unwrap();
    assert_eq!(
        rt.sandbox_ip(&sid).await.unwrap().as_deref(),
        Some("192.0.2.7")
    );
    let host_cfg = d.0.join("cfg");
    std::fs::create_dir_all(&host_cfg).unwrap();
    std::fs::write(host_cfg.join("greeting"), "from-volume").unwrap();

    // Environment, working directory (the pod root), mounts as links, output to the log file.
    let mut c = shell(
        "main",
        "echo $GREETING; cat etc/app/greeting; echo; pwd; exec sleep 60",
        0,
    );
    c.mounts = vec![Mount {
        host_path: host_cfg.clone(),
        container_path: "/etc/app".into(),
        readonly: true,
    }];
    let cid = rt.start_container(&sid, &sb, &c).await.unwrap();
    assert!(matches!(
        rt.container_state(&cid).await.unwrap(),
        ContainerState::Running { .. }
    ));
    let log = d.0.join("logs/main_0.log");
    let rootfs = root.join(&sid).join("rootfs");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        text,
        format!("hello\nfrom-volume\n{}\n", rootfs.display()),
        "the process's output"
    );

    // Exec runs beside it, with its environment and directory.
    let (code, out, _) = rt
        .exec_sync(
            &cid,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo $GREETING; exit 3".into(),
            ],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        (code, String::from_utf8_lossy(&out).as_ref()),
        (3, "hello\n")
    );
    let timed_out = rt
        .exec_sync(
            &cid,
            &["sleep".into(), "5".into()],
            Duration::from_millis(200),
        )
        .await;
    assert!(timed_out.is_err(), "exec honours its timeout");

    // Exit codes: 0 is Completed, others are Error with the code.
    let ok = rt
        .start_container(&sid, &sb, &shell("ok", "exit 0", 0))
        .await
        .unwrap();
    let bad = rt
        .start_container(&sid, &sb, &shell("bad", "exit 7", 0))
        .await
        .unwrap();
    match exited(&rt, &ok).await {
        ContainerState::Exited {
            exit_code, reason, ..
        } => {
            assert_eq!((exit_code, reason.as_str()), (0, "Completed"))
        }
        other => panic!("{other:?}"),
    }
    match exited(&rt, &bad).await {
        ContainerState::Exited {
            exit_code, reason, ..
        } => {
            assert_eq!((exit_code, reason.as_str()), (7, "Error"))
        }
        other => panic!("{other:?}"),
    }
    let missing = rt
        .start_container(
            &sid,
            &sb,
            &ContainerSpec {
                name: "missing".into(),
                image: "no-such-program-here".into(),
                log_path: "missing_0.log".into(),
                ..ContainerSpec::default()
            },
        )
        .await;
    let err = missing.unwrap_err().to_string();
    assert!(err.contains("no-such-program-here"), "{err}");

    // A graceful stop: SIGTERM reaches the process group; one that ignores it is killed.
    let polite = rt
        .start_container(&sid, &sb, &shell("polite", "exec sleep 60", 0))
        .await
        .unwrap();
    rt.stop_container(&polite, Duration::from_secs(5))
        .await
        .unwrap();
    match exited(&rt, &polite).await {
        ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, 143),
        other => panic!("{other:?}"),
    }
    let stubborn = rt
        .start_container(
            &sid,
            &sb,
            &shell("stubborn", "trap '' TERM; sleep 60 & wait", 0),
        )
        .await
        .unwrap();
    let stubborn_pid = pid_of(&root, &sid, &stubborn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.stop_container(&stubborn, Duration::from_millis(500))
        .await
        .unwrap();
    match exited(&rt, &stubborn).await {
        ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, 137),
        other => panic!("{other:?}"),
    }
    assert!(!running(stubborn_pid));

    let listed = rt.list_containers(&sid).await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    rt.remove_container(&ok).await.unwrap();
    assert_eq!(rt.list_containers(&sid).await.unwrap().len(), 4);

    let main_pid = pid_of(&root, &sid, &cid);
    rt.remove_sandbox(&sid).await.unwrap();
    assert!(
        !running(main_pid),
        "removing the sandbox ends its processes"
    );
    assert!(rt.list_sandboxes().await.unwrap().is_empty());
    assert!(rt.container_state(&cid).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_adopts_running_processes_and_reports_lost_ones() {
    let d = dir();
    let root = d.0.join("rt");
    let sb = sandbox(&d.0);
    // The first instance lives on a runtime of its own, gone with it, as edgecore would be.
    let (first_root, first_sb) = (root.clone(), sb.clone());
    let first = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let root = first_root;
            let sb = first_sb;
            let first = ProcessRuntime::new(&root, "127.0.0.1").unwrap();
            let sid = first.run_sandbox(&sb).await.unwrap();
            let kept = first
                .start_container(&sid, &sb, &shell("kept", "exec sleep 60", 0))
                .await
                .unwrap();
            let lost = first
                .start_container(&sid, &sb, &shell("lost", "exec sleep 60", 2))
                .await
                .unwrap();
            (sid, kept, lost)
        })
    };
    let (sid, kept, lost) = std::thread::spawn(first).join().unwrap();
    let lost_pid = pid_of(&root, &sid, &lost);
    kill(lost_pid);

    // A new instance over the same records, as after an edgecore restart.
    let second = ProcessRuntime::new(&root, "127.0.0.1").unwrap();
    let sandboxes = second.list_sandboxes().await.unwrap();
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(
        sandboxes[0]
            .labels
            .get("kubeedge.io/pod-uid")
            .map(String::as_str),
        Some("uid-1")
    );
    let mut containers = second.list_containers(&sid).await.unwrap();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(containers.len(), 2);
    assert_eq!(
        (containers[0].name.as_str(), containers[0].id.as_str()),
        ("kept", kept.as_str())
    );
    assert!(matches!(
        containers[0].state,
        ContainerState::Running { .. }
    ));
    assert_eq!(
        (containers[1].name.as_str(), containers[1].attempt),
        ("lost", 2)
    );
    for _ in 0..100 {
        if !running(lost_pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match exited(&second, &lost).await {
        ContainerState::Exited {
            exit_code,
            reason,
            message,
            ..
        } => {
            assert_eq!(
                (exit_code, reason.as_str()),
                (137, "ContainerStatusUnknown")
            );
            assert!(message.contains("exit code is unknown"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // The adopted process can be stopped, and its end is recorded.
    let kept_pid = pid_of(&root, &sid, &kept);
    assert!(running(kept_pid));
    second
        .stop_container(&kept, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!running(kept_pid));
    match second.container_state(&kept).await.unwrap() {
        ContainerState::Exited { exit_code, .. } => assert_eq!(exit_code, 143),
        other => panic!("{other:?}"),
    }
    second.remove_sandbox(&sid).await.unwrap();
}
