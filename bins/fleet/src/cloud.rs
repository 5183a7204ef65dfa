//! cloudcore as a child process of the harness.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use kubeedge_core::pki::Ca;

use super::Error;
use super::proc::{self, Daemon};

/// A running cloudcore (embedded control plane), killed on drop.
pub struct CloudCore {
    daemon: Daemon,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// cloudhub's WebSocket port.
    pub hub_port: u16,
    /// cloudhub's HTTPS port.
    pub https_port: u16,
    /// The embedded API server, `https://host:port`.
    pub api_url: String,
}

fn port(addr: Option<&str>) -> Option<u16> {
    addr?.rsplit(':').next()?.parse().ok()
}

impl CloudCore {
    /// Starts `bin` on loopback with room for `nodes` nodes and `window` messages in flight per node.
    pub fn start(bin: &Path, nodes: usize, window: usize) -> Result<CloudCore, Error> {
        CloudCore::start_with(bin, nodes, window, &[])
    }

    /// [`start`](Self::start) with more arguments.
    pub fn start_with(
        bin: &Path,
        nodes: usize,
        window: usize,
        extra: &[String],
    ) -> Result<CloudCore, Error> {
        let dir = proc::scratch("cloud");
        let mut command = Command::new(bin);
        command
            .arg("--data-dir")
            .arg(&dir)
            .args(["--api-port", "0", "--bind-address", "127.0.0.1"])
            .args(["--hub-port", "0", "--https-port", "0"])
            .args(["--node-limit", &(nodes + 16).to_string()])
            .args(["--window", &window.to_string()])
            .args(extra);
        let daemon = Daemon::start(command, dir, "cloudcore ready")?;
        let line = &daemon.ready;
        let kubeconfig = PathBuf::from(proc::field(line, "kubeconfig").ok_or("no kubeconfig")?);
        let hub_port = port(proc::field(line, "hub")).ok_or("no hub address")?;
        let https_port = port(proc::field(line, "https")).ok_or("no https address")?;
        let api_url = proc::field(line, "api").ok_or("no API address")?.to_owned();
        Ok(CloudCore {
            daemon,
            kubeconfig,
            hub_port,
            https_port,
            api_url,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.daemon.dir
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        proc::rss_kib(self.pid())
    }

    /// CPU time so far, seconds.
    pub fn cpu_secs(&self) -> f64 {
        proc::cpu_secs(self.pid())
    }

    /// Its CA (the one `keadm gettoken` and the certificate server use).
    pub fn ca(&self) -> Result<Ca, Error> {
        Ok(Ca::load_or_create(
            &self.daemon.dir.join("ca"),
            SystemTime::now(),
        )?)
    }

    /// A client of its embedded API as the admin.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// cloudhub's WebSocket URL.
    pub fn hub_url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.hub_port)
    }
}

/// The cloud of one fleet run: one cloudcore, or (with replicas) one cloudcore serving the
/// embedded API to which no edge connects ("the cluster") and replicas over its API holding the
/// edges. Memory and CPU are summed over the processes.
pub struct Cloud {
    /// The replicas (empty: edges connect to `api`); `None` once killed. (Dropped, i.e.
    /// stopped, before the API they use.)
    pub replicas: Vec<Option<CloudCore>>,
    /// The cloudcore serving the API.
    pub api: CloudCore,
    /// CPU seconds of replicas killed, when they were killed.
    dead_cpu: f64,
}

impl Cloud {
    /// One cloudcore for `nodes` nodes, or `replicas` replicas over a separate API cloudcore.
    pub fn start(bin: &Path, nodes: usize, replicas: usize) -> Result<Cloud, Error> {
        if replicas == 0 {
            return Ok(Cloud {
                api: CloudCore::start(bin, nodes, 32)?,
                replicas: Vec::new(),
                dead_cpu: 0.0,
            });
        }
        let arg = |s: &str| s.to_owned();
        let api = CloudCore::start_with(
            bin,
            0,
            32,
            &[arg("--replica"), arg("--replica-id"), arg("api")],
        )?;
        let kubeconfig = api.kubeconfig.display().to_string();
        let mut all = Vec::with_capacity(replicas);
        for r in 0..replicas {
            all.push(Some(CloudCore::start_with(
                bin,
                nodes,
                32,
                &[
                    arg("--kubeconfig"),
                    kubeconfig.clone(),
                    arg("--stream-port"),
                    arg("0"),
                    arg("--replica"),
                    arg("--replica-id"),
                    format!("r{r}"),
                ],
            )?));
        }
        Ok(Cloud {
            api,
            replicas: all,
            dead_cpu: 0.0,
        })
    }

    /// Every live cloudcore process.
    pub fn processes(&self) -> impl Iterator<Item = &CloudCore> {
        std::iter::once(&self.api).chain(self.replicas.iter().flatten())
    }

    /// cloudhub's URL at each replica (the one cloudcore's without replicas).
    pub fn hub_urls(&self) -> Vec<String> {
        if self.replicas.is_empty() {
            return vec![self.api.hub_url()];
        }
        self.replicas
            .iter()
            .flatten()
            .map(CloudCore::hub_url)
            .collect()
    }

    /// Resident memory of every live process, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.processes().map(CloudCore::rss_kib).sum()
    }

    /// CPU seconds so far of every process, killed ones included.
    pub fn cpu_secs(&self) -> f64 {
        self.dead_cpu + self.processes().map(CloudCore::cpu_secs).sum::<f64>()
    }

    /// Kills replica `r` with SIGKILL.
    pub fn kill_replica(&mut self, r: usize) {
        if let Some(mut c) = self.replicas.get_mut(r).and_then(Option::take) {
            self.dead_cpu += c.cpu_secs();
            c.kill9();
        }
    }
}
