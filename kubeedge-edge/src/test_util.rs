//! Test fixtures (feature `test-util`): a real containerd on a private socket, with a local busybox
//! image, for tests of the CRI runtime and the pod lifecycle.
//!
//! Needs Debian's `containerd`, `runc`, `busybox-static` and `containernetworking-plugins` (the
//! project's `.ci/test` installs them). Everything the daemon writes lives under one temporary
//! directory; dropping the fixture kills every container, stops the daemon, unmounts and removes
//! it, and deletes the pod bridge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image every fixture imports.
pub const IMAGE: &str = "localhost/busybox:test";

const MKIMAGE: &str = include_str!("../testdata/mkimage.py");

/// A running containerd. See the module docs.
#[derive(Debug)]
pub struct Containerd {
    /// Its directory.
    pub dir: PathBuf,
    /// Its socket.
    pub sock: PathBuf,
    bridge: String,
    child: Child,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Containerd {
    /// Starts one (about half a second).
    pub fn start() -> Result<Containerd, String> {
        for (path, package) in [
            ("/usr/bin/containerd", "containerd"),
            ("/usr/sbin/runc", "runc"),
            ("/bin/busybox", "busybox-static"),
            ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ] {
            if !Path::new(path).exists() {
                return Err(format!(
                    "{path} is missing: install Debian's {package} (bash .ci/test does)"
                ));
            }
        }
        let seed = kubeedge_core::transport::driver::random_seed();
        let dir = std::env::temp_dir().join(format!("kubeedge-ctrd-{}-{seed}", std::process::id()));
        for sub in [
            "root",
            "state",
            "opt",
            "runc",
            "cni/net.d",
            "cni-data",
            "pods",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let d = dir.display();
        let sock = dir.join("containerd.sock");
        let net = 16 + seed % 200;
        let bridge = format!("kebr{}", seed % 100_000);
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
"#
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("cni/net.d/10-kubeedge-test.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "kubeedge-test", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": false, "ipMasq": false,
   "ipam": {{"type": "host-local", "dataDir": "{d}/cni-data", "ranges": [[{{"subnet": "10.213.{net}.0/24"}}]]}}}}]}}"#
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        let fixture = Containerd {
            dir,
            sock,
            bridge,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while fixture.ctr(&["version"]).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer; see {}",
                    fixture.dir.join("containerd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let script = fixture.dir.join("mkimage.py");
        std::fs::write(&script, MKIMAGE).map_err(|e| e.to_string())?;
        let archive = fixture.dir.join("busybox.tar");
        run(Command::new("python3")
            .arg(&script)
            .arg(&archive)
            .arg(IMAGE))?;
        fixture.ctr(&["images", "import", &archive.to_string_lossy()])?;
        Ok(fixture)
    }

    /// The CRI endpoint, `unix://<socket>`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Runs `ctr` against this daemon in the CRI namespace (`k8s.io`); returns stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args))
    }

    /// Ids of the running tasks (containers with a live process, sandboxes included).
    pub fn running_tasks(&self) -> Vec<String> {
        self.ctr(&["tasks", "ls", "-q"])
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.running_tasks() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for id in self.running_tasks() {
            let _ = self.ctr(&["tasks", "delete", "-f", &id]);
        }
        if let Ok(ids) = self.ctr(&["containers", "ls", "-q"]) {
            for id in ids.lines() {
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let prefix = format!("{}/", self.dir.display());
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_unstable_by(|a, b| b.cmp(a));
            for p in points {
                let _ = Command::new("umount").arg(p).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
