//! The embedded control plane with its real clients: kubectl (admin kubeconfig), a kube-rs
//! `Controller`, the Python `kubernetes` client; restarts keep objects and resourceVersions.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::common::{TempDir, eventually, start};

fn kubectl(kubeconfig: &std::path::Path, home: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_uses_the_admin_kubeconfig_and_restarts_keep_everything() {
    let dir = TempDir::new("cp");
    let core = start(&dir).await;
    let kubeconfig = dir.0.join("admin.kubeconfig");
    assert!(kubeconfig.exists());
    let home = dir.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cm = dir.0.join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: v\n",
    )
    .unwrap();
    let (ok, out) = kubectl(&kubeconfig, &home, &["apply", "-f", cm.to_str().unwrap()]);
    assert!(ok && out.contains("configmap/cfg created"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &home, &["apply", "-f", cm.to_str().unwrap()]);
    assert!(ok && out.contains("unchanged"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &home, &["label", "cm", "cfg", "a=b"]);
    assert!(ok && out.contains("labeled"), "{out}");
    let api: Api<ConfigMap> = Api::namespaced(core.client().clone(), "default");
    let before = api.get("cfg").await.unwrap();
    let rv_before: u64 = before.metadata.resource_version.unwrap().parse().unwrap();
    core.stop().await;

    // a new process over the same directory
    let core = start(&dir).await;
    let api: Api<ConfigMap> = Api::namespaced(core.client().clone(), "default");
    let after = api.get("cfg").await.unwrap();
    assert_eq!(
        after.metadata.labels.unwrap().get("a").map(String::as_str),
        Some("b")
    );
    let mut fresh = ConfigMap::default();
    fresh.metadata.name = Some("cfg2".into());
    let created = api.create(&PostParams::default(), &fresh).await.unwrap();
    let rv_new: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv_new > rv_before, "{rv_new} > {rv_before}");
    // kubectl still works with the rewritten kubeconfig (the CA is the same)
    let (ok, out) = kubectl(&kubeconfig, &home, &["get", "cm", "-o", "name"]);
    assert!(ok && out.contains("configmap/cfg2"), "{out}");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_controller_reconciles_against_it() {
    let dir = TempDir::new("ctl");
    let core = start(&dir).await;
    let client = core.client().clone();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["one", "two"] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    // Stamps every ConfigMap with an annotation, as a real operator would.
    async fn reconcile(
        cm: Arc<ConfigMap>,
        api: Arc<Api<ConfigMap>>,
    ) -> Result<Action, kube::Error> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {"reconciled": "yes"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(Action::await_change())
    }
    fn on_error(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Api<ConfigMap>>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, on_error, Arc::new(api.clone()))
            .for_each(|_| async {}),
    );
    let mut late = ConfigMap::default();
    late.metadata.name = Some("three".into());
    api.create(&PostParams::default(), &late).await.unwrap();
    eventually(20, "every ConfigMap reconciled", async || {
        // Every namespace also has the control plane's kube-root-ca.crt, reconciled as well.
        let list = api.list(&Default::default()).await.unwrap();
        let ours = ["one", "two", "three"];
        list.items
            .iter()
            .filter(|c| ours.contains(&c.metadata.name.as_deref().unwrap_or_default()))
            .count()
            == 3
            && list.items.iter().all(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("reconciled"))
                    .is_some()
            })
    })
    .await;
    controller.abort();
    core.stop().await;
}

fn python() -> String {
    std::env::var("KUBEEDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

const PY_CLIENT: &str = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
pods = v1.list_namespaced_pod("default")
print("pods", sorted(p.metadata.name for p in pods.items), flush=True)
seen = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=pods.metadata.resource_version, timeout_seconds=3):
    seen.append((ev["type"], ev["object"].metadata.name))
print("events", seen)
nodes = v1.list_node().items
print("nodes", [(n.metadata.name, n.status.node_info.kubelet_version) for n in nodes])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_lists_and_watches_pods_and_nodes() {
    let probe = Command::new(python())
        .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
        .output()
        .expect("python runs");
    let version = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
    assert_eq!(
        version,
        "37.0.2",
        "the pinned Python client is missing (run .ci/test, or set KUBEEDGE_TEST_PYTHON): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dir = TempDir::new("py");
    let core = start(&dir).await;
    let client = core.client().clone();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "e1", "labels": {"node-role.kubernetes.io/edge": ""}},
        "status": {"nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://2.0",
            "kernelVersion": "6.1", "kubeProxyVersion": "", "kubeletVersion": "v1.32.10-kubeedge-rs",
            "machineID": "m", "operatingSystem": "linux", "osImage": "Debian", "systemUUID": "u"}}
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod = serde_json::from_value(json!({"metadata": {"name": "p1"},
        "spec": {"nodeName": "e1", "containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let script = dir.0.join("client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let kubeconfig = dir.0.join("admin.kubeconfig");
    let mut child = tokio::process::Command::new(python())
        .arg(&script)
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // once the client has listed (and is about to watch from that version), a pod is created
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the Python client lists")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(first, "pods ['p1']");
    let pod2 = serde_json::from_value(json!({"metadata": {"name": "p2"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod2).await.unwrap();
    let mut rest = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the Python client finishes")
    {
        rest.push_str(&line);
        rest.push('\n');
    }
    let out = child.wait_with_output().await.unwrap();
    let stdout = rest;
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("('ADDED', 'p2')"), "{stdout}");
    assert!(
        stdout.contains("nodes [('e1', 'v1.32.10-kubeedge-rs')]"),
        "{stdout}"
    );
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_of_unknown_loses_to_a_report_that_landed_first() {
    let dir = TempDir::new("mark");
    let core = start(&dir).await;
    let client = core.client().clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/edge": ""}}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let ready = |beat: &str| {
        json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "EdgeReady",
               "lastHeartbeatTime": beat, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let report = |beat: &'static str| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch_status("n1", &PatchParams::default(), &Patch::Merge(ready(beat)))
                .await
                .unwrap()
        }
    };
    // The leader finds the node silent at this version...
    let seen = report("2026-01-01T00:00:00Z").await;
    let seen_version = json!(seen.metadata.resource_version.clone().unwrap());
    let seen_json = serde_json::to_value(&seen).unwrap();
    let conditions =
        kubeedge_cloud::lifecycle::unknown_conditions(&seen_json, "2026-01-01T00:01:00Z").unwrap();
    // ...the edge reports before the mark lands: the mark loses, the report stays.
    let reported = report("2026-01-01T00:00:50Z").await;
    assert!(
        !kubeedge_cloud::lifecycle::mark_unknown(&client, "n1", &seen_version, &conditions)
            .await
            .unwrap()
    );
    let ready_status = |n: &Node| {
        n.status.as_ref().unwrap().conditions.as_ref().unwrap()[0]
            .status
            .clone()
    };
    assert_eq!(ready_status(&nodes.get("n1").await.unwrap()), "True");
    // At the version it has now, the mark is written.
    let now_version = json!(reported.metadata.resource_version.clone().unwrap());
    assert!(
        kubeedge_cloud::lifecycle::mark_unknown(&client, "n1", &now_version, &conditions)
            .await
            .unwrap()
    );
    assert_eq!(ready_status(&nodes.get("n1").await.unwrap()), "Unknown");
}
