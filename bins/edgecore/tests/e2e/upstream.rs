//! Interoperability with real upstream KubeEdge (`../shared/upstream`: cloudcore and edgecore built
//! from upstream, with their CRDs and config writers), both ways:
//!
//! * upstream edgecore (its embedded kubelet on a real containerd, in its own network and mount
//!   namespace, reaching the cloud over a veth pair) joins our cloudcore with `keadm gettoken`'s
//!   token: its Node turns Ready, its Lease is created and renewed, a pod made with `kubectl run`
//!   runs with a ConfigMap volume and reports the right status, and is deleted cleanly;
//! * our edgecore (process runtime) joins upstream cloudcore running on our embedded control plane
//!   with upstream's join token: Ready, its Lease created (upstream answers an update of a missing
//!   lease with 404) and renewed, a pod runs and is deleted.
//!
//! Both skip, loudly, where `../shared/upstream` is absent (a clone outside this workplace).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kubeedge_cloud::ControlPlane;
use kubeedge_core::pki::Ca;
use kubeedge_edge::test_util::{Containerd, IMAGE};
use kubeedge_edge::{EdgeCore, PodRuntime};
use serde_json::Value;

use crate::common::{TempDir, eventually, kill_all};

/// The upstream binaries, if this workplace has them: `$KUBEEDGE_UPSTREAM_DIR`, else
/// `shared/upstream` beside the checkout or one of its parents (`../shared/upstream` for a checkout
/// in the workplace), else the workplace's own `/work/shared/upstream` (for a clone made elsewhere).
fn upstream_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEEDGE_UPSTREAM_DIR") {
        return Some(PathBuf::from(dir));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace
        .ancestors()
        .map(|d| d.join("../shared/upstream"))
        .chain([PathBuf::from("/work/shared/upstream")])
        .find(|d| d.join("edgecore.xz").exists())
}

/// The unpacked upstream binary `name`, cached beside the build (`<target>/upstream/`).
fn upstream_binary(src: &Path, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/e2e-…
    let target = exe.ancestors().nth(3).unwrap().to_owned();
    let dir = target.join("upstream");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    if !out.exists() {
        let partial = dir.join(format!("{name}.{}", std::process::id()));
        let file = std::fs::File::create(&partial).unwrap();
        let status = Command::new("xz")
            .arg("-dc")
            .arg(src.join(format!("{name}.xz")))
            .stdout(file)
            .status()
            .unwrap();
        assert!(status.success(), "unpacking upstream {name}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&partial, &out).unwrap();
    }
    out
}

fn skip(test: &str) {
    eprintln!(
        "\n!!! SKIPPED {test}: ../shared/upstream (upstream KubeEdge binaries) is not here; set \
         KUBEEDGE_UPSTREAM_DIR to run it !!!\n"
    );
}

/// `n` consecutive free TCP ports on 127.0.0.1.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (kubeedge_core::transport::driver::random_seed() % 30_000) as u16;
        let free = (base..base + n)
            .all(|p| p != 2024 && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no {n} free consecutive ports");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A log for failure messages: each distinct warning or error of the whole run once (upstream's
/// klog lines, keyed by their message) with how often it came, then the last `n` lines.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut seen: Vec<(&str, &str, usize)> = Vec::new();
    for line in &lines {
        if !matches!(line.as_bytes().first(), Some(b'E' | b'W' | b'F')) {
            continue;
        }
        let msg = line.split_once("] ").map_or(*line, |(_, m)| m);
        match seen.iter_mut().find(|(m, _, _)| *m == msg) {
            Some(entry) => entry.2 += 1,
            None => seen.push((msg, line, 1)),
        }
    }
    let mut out = String::from("(distinct warnings and errors, first time and count)\n");
    for (_, first, count) in seen.iter().take(80) {
        out.push_str(&format!("{first}  [x{count}]\n"));
    }
    out.push_str(&format!("(last {n} lines)\n"));
    out.push_str(&lines[lines.len().saturating_sub(n)..].join("\n"));
    out
}

/// kubectl with `kubeconfig`; `Err` with its output when it fails.
fn kubectl_at(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn json_of(home: &Path, kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    kubectl_at(home, kubeconfig, &all)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Seconds since an RFC 3339 time.
fn age(time: &str) -> Option<f64> {
    let (s, n) = kubeedge_core::kubeapi::protobuf::parse_time(time)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(now - (s as f64 + n as f64 / 1e9))
}

/// A network namespace joined to the host by a veth pair (host side `.1`, namespace side `.2` of a
/// /30), its default route through the host. Deleted on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let seed = kubeedge_core::transport::driver::random_seed();
        let name = format!("keup{}", seed % 100_000);
        let host_if = format!("keuh{}", seed % 100_000);
        let ns_if = format!("keun{}", seed % 100_000);
        let (a, b) = (220 + seed % 30, (seed / 30) % 64 * 4);
        let host_ip = format!("10.{a}.{}.{}", b / 256, b % 256 + 1);
        let ns_ip = format!("10.{a}.{}.{}", b / 256, b % 256 + 2);
        let netns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host_ip]);
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Host paths upstream's kubelet insists on (bind-mounted over inside its mount namespace):
/// made here if missing, removed again on drop, as are the `kubepods` cgroups it makes.
struct HostTraces {
    made: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
}

impl HostTraces {
    fn new() -> HostTraces {
        let mut made = Vec::new();
        for p in ["/var/lib/kubelet", "/var/log/containers"] {
            let p = PathBuf::from(p);
            if !p.exists() {
                std::fs::create_dir_all(&p).unwrap();
                made.push(p);
            }
        }
        let cgroups = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("kubepods"))
                    .filter(|p| !p.exists())
                    .collect()
            })
            .unwrap_or_default();
        HostTraces { made, cgroups }
    }
}

/// Removes the directory tree of a cgroup, deepest first (cgroups are removed with rmdir).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for HostTraces {
    fn drop(&mut self) {
        for c in &self.cgroups {
            remove_cgroup(c);
        }
        for p in self.made.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Writes `edir/edgecore.yaml`: upstream edgecore's own default configuration
/// (`--defaultconfig`) for node `node` joining `cloud` with `token`, its pods on `ctrd`, every path
/// under `edir` and every port free (upstream's config writer).
fn upstream_edge_config(
    up: &Path,
    upstream_edgecore: &Path,
    edir: &Path,
    node: &str,
    cloud: &kubeedge_cloud::CloudCore,
    token: &str,
    ctrd: &Containerd,
) {
    std::fs::create_dir_all(edir).unwrap();
    let defaults = run(Command::new(upstream_edgecore).arg("--defaultconfig"));
    std::fs::write(edir.join("default.yaml"), defaults).unwrap();
    run(Command::new("python3")
        .arg(up.join("edgecore-config.py"))
        .arg(edir)
        .arg(node)
        .arg(cloud.hub_addr().to_string())
        .arg(format!("https://{}", cloud.https_addr()))
        .arg(token)
        .arg(&ctrd.sock)
        .arg(free_ports(10).to_string()));
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_edgecore_joins_our_cloudcore_and_runs_a_pod() {
    let Some(up) = upstream_dir() else {
        return skip("upstream_edgecore_joins_our_cloudcore_and_runs_a_pod");
    };
    let edgecore_bin = upstream_binary(&up, "edgecore");
    let ctrd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap()
        .unwrap();
    let traces = HostTraces::new();
    let netns = Netns::new();
    let dir = TempDir::new("upstream-edge");
    let home = dir.0.join("home");

    // Our cloudcore, cloudhub on the host end of the veth pair.
    let mut config = kubeedge_cloud::Config::new(dir.0.join("cloud"));
    config.api_addr = "127.0.0.1:0".parse().unwrap();
    config.hub_addr = format!("{}:0", netns.host_ip).parse().unwrap();
    config.https_addr = format!("{}:0", netns.host_ip).parse().unwrap();
    config.advertise = vec![netns.host_ip.parse().unwrap()];
    let cloud = kubeedge_cloud::CloudCore::start(config).await.unwrap();
    let kc = dir.0.join("cloud/admin.kubeconfig");
    let bins = std::env::current_exe().unwrap();
    let keadm = bins.ancestors().nth(2).unwrap().join("keadm");
    assert!(keadm.exists(), "build keadm first (cargo build -p keadm)");
    let token = run(Command::new(&keadm)
        .args(["gettoken", "--data-dir"])
        .arg(dir.0.join("cloud")));
    let token = token.trim();

    // Upstream's own default configuration, with the test's paths and ports (its config writer).
    let edir = dir.0.join("edge");
    upstream_edge_config(&up, &edgecore_bin, &edir, "up1", &cloud, token, &ctrd);
    // This machine's specifics: the local image as the sandbox ("pause") image, and eviction
    // thresholds that a shared build disk does not trip.
    run(Command::new("python3").arg("-c").arg(format!(
        "import yaml; p='{}'; c=yaml.safe_load(open(p)); e=c['modules']['edged']; \
         e['podSandboxImage']='{IMAGE}'; \
         e['tailoredKubeletConfig']['evictionHard']={{'imagefs.available':'1%','nodefs.available':'1%','memory.available':'1Mi'}}; \
         yaml.safe_dump(c, open(p,'w'))",
        edir.join("edgecore.yaml").display()
    )));
    for sub in ["varlibkubelet", "varlogcontainers"] {
        std::fs::create_dir_all(edir.join(sub)).unwrap();
    }
    let log_path = edir.join("edgecore.log");
    let e = edir.display();
    let edge = Proc(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", netns.name))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {e}/varlibkubelet /var/lib/kubelet && \
                 mount --bind {e}/varlogcontainers /var/log/containers && \
                 exec {} --config {e}/edgecore.yaml",
                edgecore_bin.display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();

    // Registered, Ready, untainted (the not-ready taints of its first seconds gone).
    let mut node = Value::Null;
    for _ in 0..180 {
        node = json_of(&home, &kc, &["get", "node", "up1"]).unwrap_or(Value::Null);
        let ready = condition(&node, "Ready").is_some_and(|c| c["status"] == "True");
        if ready && node["spec"]["taints"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        condition(&node, "Ready").is_some_and(|c| c["status"] == "True")
            && node["spec"]["taints"].is_null(),
        "upstream edgecore did not turn Ready: {node}\n--- edgecore log ---\n{}",
        tail(&log_path, 30)
    );
    assert!(
        node["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .is_some_and(|v| v.contains("kubeedge")),
        "{node}"
    );
    let lease_args = ["get", "lease", "-n", "kube-node-lease", "up1"];
    let mut first_renewal = None;
    eventually(60, "upstream edge's Lease", async || {
        first_renewal = json_of(&home, &kc, &lease_args)
            .and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_owned));
        first_renewal.is_some()
    })
    .await;

    // A pod from `kubectl run`, with a ConfigMap volume and a Secret in its environment; its
    // output is their content.
    kubectl_at(
        &home,
        &kc,
        &[
            "create",
            "secret",
            "generic",
            "word",
            "--from-literal=word=secret-from-our-cloud",
        ],
    )
    .unwrap();
    kubectl_at(
        &home,
        &kc,
        &[
            "create",
            "configmap",
            "greeting",
            "--from-literal=text=hello-from-our-cloud",
        ],
    )
    .unwrap();
    let overrides = format!(
        r#"{{"spec": {{"containers": [{{"name": "web", "image": "{IMAGE}", "imagePullPolicy": "Never",
            "command": ["sh", "-c", "cat /cfg/text; echo; echo $WORD; sleep 3600"],
            "env": [{{"name": "WORD", "valueFrom": {{"secretKeyRef": {{"name": "word", "key": "word"}}}}}}],
            "volumeMounts": [{{"name": "cfg", "mountPath": "/cfg"}}]}}],
            "volumes": [{{"name": "cfg", "configMap": {{"name": "greeting"}}}}]}}}}"#
    );
    kubectl_at(
        &home,
        &kc,
        &[
            "run",
            "web",
            "--image",
            IMAGE,
            "--image-pull-policy=Never",
            "--overrides",
            &overrides,
        ],
    )
    .unwrap();
    let mut pod = Value::Null;
    for _ in 0..120 {
        pod = json_of(&home, &kc, &["get", "pod", "web"]).unwrap_or(Value::Null);
        if pod["status"]["phase"] == "Running"
            && condition(&pod, "Ready").is_some_and(|c| c["status"] == "True")
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        pod["status"]["phase"] == "Running",
        "the pod did not run: {}\n--- edgecore log ---\n{}",
        pod["status"],
        tail(&log_path, 30)
    );
    // Its status as the kubelet reported it, strategic-merged: every condition kept (merged by
    // type), the container status replaced (running, not also waiting).
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            condition(&pod, kind).is_some_and(|c| c["status"] == "True"),
            "{kind}: {}",
            pod["status"]
        );
    }
    let state = &pod["status"]["containerStatuses"][0]["state"];
    assert!(
        state["running"].is_object() && state["waiting"].is_null(),
        "{state}"
    );
    assert_eq!(
        pod["status"]["hostIP"],
        netns.ns_ip.as_str(),
        "{}",
        pod["status"]
    );
    // The ConfigMap's and the Secret's content reached the container: its log (CRI format,
    // under the kubelet's pod log directory) says it.
    eventually(
        30,
        "the pod's log with the ConfigMap and the Secret",
        async || {
            log_contains(&edir, "hello-from-our-cloud")
                && log_contains(&edir, "secret-from-our-cloud")
        },
    )
    .await;

    // A Device bound to the edge reaches its device twin: upstream's twin keeps the devices of
    // its node, learnt from membership updates, in its database's `device` table.
    let device = dir.0.join("device.yaml");
    std::fs::write(
        &device,
        "apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata: {name: thermo-model}\n\
         spec: {protocol: modbus, properties: [{name: temperature, type: INT, accessMode: ReadOnly}]}\n---\n\
         apiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata: {name: thermo}\n\
         spec: {deviceModelRef: {name: thermo-model}, nodeName: up1, protocol: {protocolName: modbus}}\n",
    )
    .unwrap();
    kubectl_at(&home, &kc, &["apply", "-f", &device.to_string_lossy()]).unwrap();
    let db = edir.join("edgecore.db");
    let twin_devices = || {
        Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3; c = sqlite3.connect('file:{}?mode=ro', uri=True); \
                 print(','.join(r[0] for r in c.execute('select id from device')))",
                db.display()
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mut seen = String::new();
    for _ in 0..30 {
        seen = twin_devices();
        if seen.split(',').any(|d| d == "default/thermo") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        seen.split(',').any(|d| d == "default/thermo"),
        "the upstream edge's device twin holds {seen:?}\n--- edgecore log ---\n{}",
        tail(&log_path, 40)
    );

    // Three minutes on: still Ready, its Lease renewed within its 40 s duration, and renewed
    // since the first one seen (the kubelet reports node status every 5 minutes when nothing
    // changes, so the Lease is its heartbeat, as in Kubernetes).
    let three = Duration::from_secs(180).saturating_sub(started.elapsed());
    tokio::time::sleep(three).await;
    let node = json_of(&home, &kc, &["get", "node", "up1"]).unwrap();
    assert!(
        condition(&node, "Ready").is_some_and(|c| c["status"] == "True"),
        "{}",
        node["status"]
    );
    let lease = json_of(&home, &kc, &lease_args).unwrap();
    let renewed = lease["spec"]["renewTime"].as_str().unwrap_or("").to_owned();
    assert_ne!(
        Some(&renewed),
        first_renewal.as_ref(),
        "the lease was not renewed"
    );
    let lease_age = age(&renewed).unwrap();
    assert!(
        lease_age < 40.0,
        "lease renewed {lease_age:.0} s ago: {lease}"
    );
    assert_eq!(lease["spec"]["holderIdentity"], "up1");

    // Deleted cleanly: gone from the API, its containers gone from containerd.
    kubectl_at(&home, &kc, &["delete", "pod", "web", "--timeout=120s"]).unwrap();
    eventually(60, "the pod's containers gone", async || {
        ctrd.running_tasks().is_empty()
    })
    .await;
    assert!(
        kubectl_at(&home, &kc, &["get", "pod", "web"]).is_err(),
        "the pod is still there"
    );
    drop(edge);
    drop(cloud);
    drop(netns);
    drop(ctrd);
    drop(traces);
}

/// Whether a `*.log` file under `dir` contains `text`.
fn log_contains(dir: &Path, text: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            log_contains(&p, text)
        } else {
            p.extension().is_some_and(|x| x == "log")
                && p.file_name().is_some_and(|n| n != "edgecore.log")
                && std::fs::read_to_string(&p).is_ok_and(|s| s.contains(text))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_edgecore_joins_upstream_cloudcore_on_our_control_plane() {
    let Some(up) = upstream_dir() else {
        return skip("our_edgecore_joins_upstream_cloudcore_on_our_control_plane");
    };
    let cloudcore_bin = upstream_binary(&up, "cloudcore");
    let dir = TempDir::new("upstream-cloud");
    let home = dir.0.join("home");

    // Our embedded control plane alone: upstream cloudcore is the cloud side here.
    let cp_dir = dir.0.join("controlplane");
    std::fs::create_dir_all(&cp_dir).unwrap();
    let ca = Ca::load_or_create(&cp_dir.join("ca"), SystemTime::now()).unwrap();
    let cp = ControlPlane::start(
        &cp_dir,
        "127.0.0.1:0".parse().unwrap(),
        &ca,
        kubeedge_core::kubeapi::KUBE_MINOR,
    )
    .await
    .unwrap();
    let kc = cp.kubeconfig().to_owned();
    kubectl_at(&home, &kc, &["create", "namespace", "kubeedge"]).unwrap();
    kubectl_at(
        &home,
        &kc,
        &["apply", "-R", "-f", &up.join("crds").to_string_lossy()],
    )
    .unwrap();

    // Upstream cloudcore from its own default configuration, with the test's paths and ports.
    let cdir = dir.0.join("upstream-cloud");
    std::fs::create_dir_all(&cdir).unwrap();
    let defaults = run(Command::new(&cloudcore_bin).arg("--defaultconfig"));
    std::fs::write(cdir.join("default.yaml"), defaults).unwrap();
    let base = free_ports(10);
    run(Command::new("python3")
        .arg(up.join("cloudcore-config.py"))
        .arg(&cdir)
        .arg(&kc)
        .arg(base.to_string()));
    let log_path = cdir.join("cloudcore.log");
    let _cloud = Proc(
        Command::new(&cloudcore_bin)
            .arg("--config")
            .arg(cdir.join("cloudcore.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its join token, from the Secret it keeps.
    let mut token = String::new();
    for _ in 0..90 {
        let secret = json_of(
            &home,
            &kc,
            &["get", "secret", "-n", "kubeedge", "tokensecret"],
        );
        if let Some(data) = secret
            .as_ref()
            .and_then(|s| s["data"]["tokendata"].as_str())
        {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            token = String::from_utf8(raw).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !token.is_empty(),
        "upstream cloudcore made no join token\n--- cloudcore log ---\n{}",
        tail(&log_path, 30)
    );

    // Our edgecore, pods as host processes.
    let mut c = kubeedge_edge::Config::new(
        dir.0.join("edge"),
        "ours1",
        format!("wss://127.0.0.1:{base}"),
    );
    c.https_url = Some(format!("https://127.0.0.1:{}", base + 2));
    c.token = Some(token);
    c.metaserver_addr = "127.0.0.1:0".parse().unwrap();
    c.backoff_max = Duration::from_secs(2);
    c.runtime = PodRuntime::Process;
    c.restart_backoff = Duration::from_secs(1);
    let edge = EdgeCore::start(c).await.unwrap();

    let mut node = Value::Null;
    for _ in 0..90 {
        node = json_of(&home, &kc, &["get", "node", "ours1"]).unwrap_or(Value::Null);
        if condition(&node, "Ready").is_some_and(|c| c["status"] == "True") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        condition(&node, "Ready").is_some_and(|c| c["status"] == "True"),
        "our edge did not turn Ready under upstream cloudcore: {node}\n--- cloudcore log ---\n{}",
        tail(&log_path, 30)
    );
    // The Lease: created after upstream answers the first renewal 404, then renewed.
    let lease_args = ["get", "lease", "-n", "kube-node-lease", "ours1"];
    let renew_time = || {
        json_of(&home, &kc, &lease_args)
            .and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_owned))
    };
    let mut first = None;
    eventually(
        60,
        "our edge's Lease under upstream cloudcore",
        async || {
            first = renew_time();
            first.is_some()
        },
    )
    .await;
    eventually(40, "the Lease renewed", async || {
        let now = renew_time();
        now.is_some() && now != first
    })
    .await;

    // A pod, run as a host process, reported Running through upstream cloudcore, then deleted.
    kubectl_at(
        &home,
        &kc,
        &[
            "run",
            "sleeper",
            "--image",
            "busybox",
            "--overrides",
            r#"{"spec": {"nodeName": "ours1", "containers": [{"name": "sleeper", "image": "busybox", "command": ["sleep", "3600"]}]}}"#,
        ],
    )
    .unwrap();
    let mut pod = Value::Null;
    for _ in 0..90 {
        pod = json_of(&home, &kc, &["get", "pod", "sleeper"]).unwrap_or(Value::Null);
        if pod["status"]["phase"] == "Running" {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        pod["status"]["phase"],
        "Running",
        "{}\n--- cloudcore log ---\n{}",
        pod["status"],
        tail(&log_path, 30)
    );
    kubectl_at(&home, &kc, &["delete", "pod", "sleeper", "--timeout=90s"]).unwrap();
    let root = dir.0.join("edge");
    eventually(30, "the pod's process gone", async || {
        crate::common::live_processes(&root).is_empty()
    })
    .await;
    edge.stop().await;
    kill_all(&root);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_edgecore_runs_from_upstreams_default_configuration() {
    let Some(up) = upstream_dir() else {
        return skip("our_edgecore_runs_from_upstreams_default_configuration");
    };
    let upstream_edgecore = upstream_binary(&up, "edgecore");
    let ctrd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap()
        .unwrap();
    let dir = TempDir::new("upstream-config");
    let cloud = crate::common::cloud(&dir, "127.0.0.1:0", "127.0.0.1:0").await;
    let token = cloud
        .ca()
        .token(Duration::from_secs(3600), SystemTime::now());
    // `edgecore --defaultconfig`, with only the server, the token and the paths and ports
    // changed (upstream's config writer), and nothing of ours added.
    let edir = dir.0.join("edge");
    upstream_edge_config(
        &up,
        &upstream_edgecore,
        &edir,
        "ours2",
        &cloud,
        &token,
        &ctrd,
    );
    let ours = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(2)
        .unwrap()
        .join("edgecore");
    let log_path = edir.join("ours.log");
    let mut child = Proc(
        Command::new(&ours)
            .arg("--config")
            .arg(edir.join("edgecore.yaml"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("edgecore ready"))
    });
    let line = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(line) = line else {
        panic!(
            "our edgecore did not start from upstream's file\n--- its log ---\n{}",
            tail(&log_path, 40)
        );
    };
    // Upstream's default keeps the metaserver off; the device twin's socket is `dmi.sock` in
    // the directory `dmiSockPath` names.
    assert!(line.contains("metaserver=off"), "{line}");
    assert!(
        line.contains(&format!("dmi={}", edir.join("dmi/dmi.sock").display())),
        "{line}"
    );
    // The certificates where `tlsCertFile` and friends say, the store where `database.dataSource`
    // is.
    for file in [
        "ca/rootCA.crt",
        "certs/server.crt",
        "certs/server.key",
        "edge.redb",
    ] {
        assert!(edir.join(file).exists(), "{file} missing");
    }
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cloud.client().clone());
    eventually(60, "ours2 Ready", async || {
        nodes
            .get_opt("ours2")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| crate::common::node_ready(&n))
    })
    .await;
    drop(child);
    drop(ctrd);
}
