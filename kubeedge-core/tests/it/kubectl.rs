//! The real kubectl (`/usr/bin/kubectl`) against the API facade over loopback: its own kubeconfig,
//! a fresh cache directory, never the machine's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubeedge_core::kubeapi::Api;
use kubeedge_core::store::{Config, Store};

struct Cluster {
    dir: PathBuf,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    api: Api,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!(
        "kubeedge-kubectl-{}-{}",
        std::process::id(),
        kubeedge_core::transport::driver::random_seed()
    ));
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let store = Store::open(&dir.join("api.redb"), Config::default()).unwrap();
    let api = Api::new(store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: t\n  context:\n    cluster: t\n    user: u\n    namespace: default\n\
             current-context: t\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = api.clone();
    tokio::spawn(async move {
        served
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Cluster {
        dir,
        _shutdown: tx,
        api,
    }
}

impl Cluster {
    fn kubectl_cmd(&self, cache: &str, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env_remove("KUBECONFIG")
            .env("HOME", self.dir.join("home"))
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join(cache))
            .arg("--request-timeout=20s")
            .args(args);
        c
    }

    /// Runs kubectl, expecting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .kubectl_cmd("cache", args)
            .output()
            .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl, expecting failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self
            .kubectl_cmd("cache", args)
            .output()
            .expect("kubectl runs");
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  nodeName: e1\n  containers:\n  - name: c\n    image: busybox\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_label_patch_delete() {
    let c = cluster().await;
    assert!(c.ok(&["version"]).contains("Server Version: v1.32.0"));
    let pod = c.write("pod.yaml", POD);
    assert!(
        c.ok(&["apply", "-f", path(&pod)])
            .contains("pod/web created")
    );
    assert!(
        c.ok(&["apply", "-f", path(&pod)])
            .contains("pod/web unchanged")
    );
    let pod2 = c.write("pod2.yaml", &POD.replace("app: web", "app: web2"));
    assert!(
        c.ok(&["apply", "-f", path(&pod2)])
            .contains("pod/web configured")
    );
    let table = c.ok(&["get", "pods"]);
    assert!(
        table.contains("NAME") && table.contains("READY") && table.contains("web"),
        "{table}"
    );
    assert!(c.ok(&["get", "pods", "-A"]).contains("default"));
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pod", "web", "-o", "json"])).unwrap();
    assert_eq!(json["metadata"]["labels"]["app"], "web2");
    assert!(
        c.ok(&["label", "pod", "web", "tier=front"])
            .contains("labeled")
    );
    assert!(
        c.ok(&[
            "patch",
            "pod",
            "web",
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"a":"b"}}}"#
        ])
        .contains("patched")
    );
    let got = c.ok(&["get", "pods", "-l", "tier=front", "-o", "name"]);
    assert_eq!(got.trim(), "pod/web");
    assert!(
        c.ok(&[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName=e2",
            "-o",
            "name"
        ])
        .trim()
        .is_empty()
    );

    // configmap: server-side apply, then delete
    let cm = c.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: v\n",
    );
    assert!(
        c.ok(&["apply", "--server-side", "-f", path(&cm)])
            .contains("serverside-applied")
    );
    let cm2 = c.write(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: v2\n",
    );
    assert!(
        c.ok(&["apply", "--server-side", "-f", path(&cm2)])
            .contains("serverside-applied")
    );
    assert_eq!(
        c.ok(&["get", "cm", "cfg", "-o", "jsonpath={.data.k}"]),
        "v2"
    );
    assert!(c.ok(&["delete", "configmap", "cfg"]).contains("deleted"));
    assert!(c.fails(&["get", "configmap", "cfg"]).contains("NotFound"));

    // a pod bound to a node is deleted gracefully: marked first, gone once the node confirms
    assert!(
        c.ok(&["delete", "pod", "web", "--wait=false"])
            .contains("deleted")
    );
    let marked = c.api.store().get("pods", Some("default"), "web").unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(c.ok(&["get", "pods"]).contains("Terminating"));
    c.ok(&[
        "delete",
        "pod",
        "web",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    assert!(c.api.store().get("pods", Some("default"), "web").is_err());

    // nodes are cluster-scoped
    let node = c.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata:\n  name: e1\n  labels:\n    node-role.kubernetes.io/edge: \"\"\n");
    c.ok(&["apply", "-f", path(&node)]);
    let nodes = c.ok(&["get", "nodes"]);
    assert!(nodes.contains("e1") && nodes.contains("edge"), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_changes() {
    let c = cluster().await;
    let pod = c.write("pod.yaml", POD);
    c.ok(&["apply", "-f", path(&pod)]);
    let mut watcher = c
        .kubectl_cmd("cache-w", &["get", "pods", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other = c.write("pod-b.yaml", &POD.replace("name: web", "name: second"));
    c.ok(&["apply", "-f", path(&other)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.kill().unwrap();
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pod/web") && text.contains("pod/second"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_applied_at_run_time_is_served() {
    let c = cluster().await;
    let crd = c.write(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: devices.devices.kubeedge.io\n\
         spec:\n  group: devices.kubeedge.io\n  scope: Namespaced\n  names:\n    plural: devices\n    singular: device\n    kind: Device\n\
         \n  versions:\n  - name: v1beta1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n    subresources:\n      status: {}\n",
    );
    assert!(c.ok(&["apply", "-f", path(&crd)]).contains("created"));
    let dev = c.write(
        "dev.yaml",
        "apiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  name: thermo\nspec:\n  nodeName: e1\n",
    );
    assert!(
        c.ok(&["apply", "-f", path(&dev)])
            .contains("device.devices.kubeedge.io/thermo created")
    );
    assert!(c.ok(&["get", "devices"]).contains("thermo"));
    assert!(
        c.ok(&["label", "device", "thermo", "room=lab"])
            .contains("labeled")
    );
    assert!(c.ok(&["delete", "device", "thermo"]).contains("deleted"));
    assert!(
        c.fails(&["get", "widgets"])
            .contains("the server doesn't have a resource type")
    );
}
