//! The real kubectl (`/usr/bin/kubectl`) against the API facade over loopback: its own kubeconfig,
//! a fresh cache directory, never the machine's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubeedge_core::kubeapi::Api;
use kubeedge_core::kubeapi::tls::{MASTERS_GROUP, TlsListener, kubeconfig};
use kubeedge_core::pki::Identity;
use kubeedge_core::store::{Config, Store};
use kubeedge_core::test_util::TestPki;
use kubeedge_core::transport::tls;

struct Cluster {
    dir: PathBuf,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    api: Api,
    pki: TestPki,
    port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The API over HTTPS with client-certificate authentication, and an admin kubeconfig for it.
async fn cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!(
        "kubeedge-kubectl-{}-{}",
        std::process::id(),
        kubeedge_core::transport::driver::random_seed()
    ));
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let store = Store::open(&dir.join("api.redb"), Config::default()).unwrap();
    let api = Api::new(store).unwrap();
    let pki = TestPki::new().unwrap();
    let (server_tls, auth) = tls::server_config_optional_client(
        &pki.ca.cert(),
        pki.server.chain(),
        pki.server.private_key(),
    )
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new("test", tcp, server_tls, auth).unwrap();
    let port = listener.local_addr().port();
    let admin = pki.client("kubernetes-admin", MASTERS_GROUP).unwrap();
    let server = format!("https://127.0.0.1:{port}");
    std::fs::write(
        dir.join("kubeconfig"),
        kubeconfig(
            &server,
            &pki.ca.cert_pem(),
            &admin.cert_pem(),
            &admin.key_pem().unwrap(),
        ),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = api.clone();
    tokio::spawn(async move {
        served
            .serve_tls(listener, vec![MASTERS_GROUP.to_owned()], async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Cluster {
        dir,
        _shutdown: tx,
        api,
        pki,
        port,
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

/// One raw HTTP/1.1 request over TLS as `who` (no client certificate if `None`); returns the
/// status code and the body.
async fn https(
    c: &Cluster,
    who: Option<&Identity>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let (code, body) = kubeedge_core::test_util::https(
        &c.pki.ca.cert(),
        c.port,
        who,
        method,
        path,
        &[("Content-Type", content_type)],
        body,
    )
    .await;
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_wrong_credentials_get_401_and_other_users_403() {
    let c = cluster().await;
    let pods = "/api/v1/namespaces/default/pods";
    let body = br#"{"metadata":{"name":"p"}}"#;
    let rv_before = c.api.store().resource_version().unwrap();
    let (code, text) = https(&c, None, "GET", pods, "application/json", b"").await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("Unauthorized") && text.contains("\"kind\":\"Status\""));
    let (code, _) = https(&c, None, "POST", pods, "application/json", body).await;
    assert_eq!(code, 401);
    // a certificate from another CA, even with the right group
    let other = TestPki::new().unwrap();
    let forged = other.client("kubernetes-admin", MASTERS_GROUP).unwrap();
    let (code, _) = https(&c, Some(&forged), "POST", pods, "application/json", body).await;
    assert_eq!(code, 401);
    // a node's certificate is genuine but grants no API access
    let node = c.pki.node("e1").unwrap();
    let (code, text) = https(&c, Some(&node), "POST", pods, "application/json", body).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("Forbidden") && text.contains("system:node:e1"));
    assert_eq!(c.api.store().resource_version().unwrap(), rv_before);
    // /version is public, as on the apiserver
    let (code, _) = https(&c, None, "GET", "/version", "application/json", b"").await;
    assert_eq!(code, 200);

    // kubectl with a bearer token this server does not know, and no client certificate (with no
    // credentials at all kubectl would prompt for a password)
    let cfg = std::fs::read_to_string(c.dir.join("kubeconfig")).unwrap();
    let anonymous = cfg.split("users:").next().unwrap().to_owned()
        + "users:\n- name: admin\n  user:\n    token: not-a-token\n";
    std::fs::write(c.dir.join("anonymous"), anonymous).unwrap();
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", c.dir.join("home"))
        .arg("--kubeconfig")
        .arg(c.dir.join("anonymous"))
        .arg("--cache-dir")
        .arg(c.dir.join("cache-anon"))
        .args(["get", "pods"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors_and_store_nothing() {
    let c = cluster().await;
    let admin = c.pki.client("kubernetes-admin", MASTERS_GROUP).unwrap();
    macro_rules! http {
        ($method:expr, $path:expr, $ct:expr, $body:expr $(,)?) => {
            https(&c, Some(&admin), $method, &$path, $ct, $body)
        };
    }
    let pods = "/api/v1/namespaces/default/pods";
    let rv_before = c.api.store().resource_version().unwrap();

    let (code, body) = http!("POST", pods, "application/json", b"{not json").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("\"kind\":\"Status\"") && body.contains("BadRequest"),
        "{body}"
    );
    let (code, _) = http!(
        "POST",
        pods,
        "application/json",
        br#"{"kind":"ConfigMap","metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = http!("POST", pods, "application/json", br#"{"metadata":{}}"#,).await;
    assert_eq!(code, 422);
    let (code, body) = http!(
        "GET",
        "/api/v1/namespaces/default/widgets",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    let (code, _) = http!(
        "POST",
        "/api/v1/namespaces/nowhere/pods",
        "application/json",
        br#"{"metadata":{"name":"p"}}"#,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = http!(
        "POST",
        "/api/v1/pods",
        "application/json",
        br#"{"metadata":{"name":"p"}}"#,
    )
    .await;
    assert_eq!(code, 405);
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"k":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let (code, body) = http!(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        big.as_bytes(),
    )
    .await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        c.api.store().resource_version().unwrap(),
        rv_before,
        "nothing was stored"
    );

    // stale resourceVersion → 409, and the object is unchanged
    let (code, created) = http!(
        "POST",
        pods,
        "application/json",
        br#"{"metadata":{"name":"p1"},"spec":{"containers":[{"name":"x","image":"i"}]}}"#,
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let stale = br#"{"metadata":{"name":"p1","resourceVersion":"1"},"spec":{"containers":[{"name":"y","image":"i"}]}}"#;
    let (code, body) = http!("PUT", &format!("{pods}/p1"), "application/json", stale,).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Conflict"));
    let (code, _) = http!("PATCH", &format!("{pods}/p1"), "text/plain", b"{}").await;
    assert_eq!(code, 415);
    let (code, _) = http!(
        "POST",
        pods,
        "application/json",
        br#"{"metadata":{"name":"p1"}}"#,
    )
    .await;
    assert_eq!(code, 409);
    let stored = c.api.store().get("pods", Some("default"), "p1").unwrap();
    assert_eq!(stored["spec"]["containers"][0]["name"], "x");
}
