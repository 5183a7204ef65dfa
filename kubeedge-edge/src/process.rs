//! The process runtime: [`Runtime`] for appliances without containers. A pod's containers run as
//! plain host processes.
//!
//! * **Program**: `command` + `args` when `command` is given (looked up in `PATH`), otherwise the
//!   `image` itself is the program (an absolute path, or a name in `PATH`) with `args`. An image
//!   that is an absolute path must exist (else the pod waits with `ErrImageNeverPull`); a bare name
//!   is only looked up when the container starts.
//! * **Pod root**: each sandbox has a directory (`<root>/<sandbox id>/rootfs`) that is the
//!   processes' working directory unless `workingDir` names an existing host directory. Volume
//!   mounts appear there as symbolic links at their mount path (`/etc/app` → `rootfs/etc/app`), and
//!   `KUBEEDGE_POD_ROOT` names it. There is no isolation: read-only mounts, resource limits, users
//!   and namespaces are not enforced, and every pod shares the host's network (the sandbox IP is the
//!   node's).
//! * **Output**: stdout and stderr go straight to the container's log file (plain text, no CRI
//!   framing), so a process keeps its output even while edgecore is down.
//! * **Lifetime**: each process leads its own process group; stopping sends SIGTERM to the group,
//!   then SIGKILL after the grace period. Processes outlive an edgecore restart, like containers
//!   outlive the kubelet: every container's record (`<root>/<sandbox>/containers/<id>.json`, with
//!   the PID and its kernel start time, so a reused PID is not mistaken for it) lets the next
//!   edgecore adopt it. A process that exits while edgecore runs gets its exit code recorded; one
//!   that exits while edgecore is down is reported like the kubelet reports a lost container:
//!   exit code 137, reason `ContainerStatusUnknown`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::StreamOptions;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, Runtime, RuntimeError, SandboxInfo, SandboxSpec,
};

/// Exit code and reason reported for a process that ended while nobody watched it.
const LOST_EXIT: i32 = 137;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    id: String,
    uid: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exit {
    code: i32,
    reason: String,
    finished_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    name: String,
    attempt: u32,
    pid: i32,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    start_ticks: u64,
    started_at: i64,
    env: Vec<(String, String)>,
    working_dir: PathBuf,
    exit: Option<Exit>,
    /// Started by this runtime instance, which reaps it and records its exit.
    #[serde(skip)]
    watched: bool,
}

/// Host processes as pods. See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    host_ip: String,
    /// Records of the containers this runtime started or looked at, by id.
    live: Arc<Mutex<HashMap<String, ContainerRecord>>>,
}

fn call(call: &'static str) -> impl Fn(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::Call {
        call,
        message: e.to_string(),
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}{:08x}{:08x}",
        now_nanos(),
        std::process::id(),
        n & 0xffff_ffff
    )
}

/// `pid`'s state letter and start time, if it exists.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses; the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, i.e. 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process recorded in `r` is still the same, live process.
fn alive(r: &ContainerRecord) -> bool {
    matches!(proc_stat(r.pid), Some((state, start)) if start == r.start_ticks && state != 'Z' && state != 'X')
}

fn signal_group(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| RuntimeError::Call {
        call: "record",
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(call("record"))?;
    std::fs::rename(&tmp, path).map_err(call("record"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `/a/b` → `root/a/b`, refusing `..`.
fn under(root: &Path, container_path: &str) -> Option<PathBuf> {
    let rel = Path::new(container_path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

impl ProcessRuntime {
    /// A runtime keeping its records under `root`; pods report `host_ip` as their IP.
    pub fn new(root: impl Into<PathBuf>, host_ip: impl Into<String>) -> Result<Self, RuntimeError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| RuntimeError::Connect {
            endpoint: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(ProcessRuntime {
            root,
            host_ip: host_ip.into(),
            live: Arc::default(),
        })
    }

    /// Where the records live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sandbox_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RuntimeError::Call {
                call: "sandbox",
                message: format!("no sandbox {id:?}"),
            });
        }
        Ok(self.root.join(id))
    }

    fn container_file(&self, r: &ContainerRecord) -> PathBuf {
        self.root
            .join(&r.sandbox_id)
            .join("containers")
            .join(format!("{}.json", r.id))
    }

    /// The record of container `id`: from memory, or found on disk (after a restart).
    fn record(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        {
            let mut live = self.live.lock().map_err(poisoned)?;
            if let Some(r) = live.get_mut(id) {
                if !r.watched && r.exit.is_none() && !alive(r) {
                    *r = self.settle(r.clone(), LOST_EXIT, "ContainerStatusUnknown");
                }
                return Ok(r.clone());
            }
        }
        let entries = std::fs::read_dir(&self.root).map_err(call("container"))?;
        for e in entries.flatten() {
            let path = e.path().join("containers").join(format!("{id}.json"));
            if let Some(r) = read_json::<ContainerRecord>(&path) {
                let r = self.settle(r, LOST_EXIT, "ContainerStatusUnknown");
                self.live
                    .lock()
                    .map_err(poisoned)?
                    .insert(id.to_owned(), r.clone());
                return Ok(r);
            }
        }
        Err(RuntimeError::Call {
            call: "container",
            message: format!("no container {id:?}"),
        })
    }

    /// Records the end of a process nobody reaps (adopted after a restart), if it is gone.
    fn settle(&self, mut r: ContainerRecord, code: i32, reason: &str) -> ContainerRecord {
        if r.exit.is_none() && !alive(&r) {
            r.exit = Some(Exit {
                code,
                reason: reason.into(),
                finished_at: now_nanos(),
            });
            let _ = write_json(&self.container_file(&r), &r);
        }
        r
    }

    fn state_of(r: &ContainerRecord) -> ContainerState {
        match &r.exit {
            None => ContainerState::Running {
                started_at: r.started_at,
            },
            Some(exit) => ContainerState::Exited {
                exit_code: exit.code,
                reason: exit.reason.clone(),
                message: if exit.reason == "ContainerStatusUnknown" {
                    "The process ended while edgecore was not running; its exit code is unknown"
                        .into()
                } else {
                    String::new()
                },
                started_at: r.started_at,
                finished_at: exit.finished_at,
            },
        }
    }

    /// Waits until the process of `r` is gone, up to `limit`; returns whether it is.
    async fn gone_within(&self, r: &ContainerRecord, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let exited = self
                .live
                .lock()
                .ok()
                .and_then(|m| m.get(&r.id).map(|r| r.exit.is_some()))
                .unwrap_or(false);
            if exited || !alive(r) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&self, r: &ContainerRecord, grace: Duration) {
        if r.exit.is_some() || !alive(r) {
            return;
        }
        signal_group(r.pid, Signal::TERM);
        let mut code = 128 + 15;
        if !self.gone_within(r, grace).await {
            signal_group(r.pid, Signal::KILL);
            code = 128 + 9;
            self.gone_within(r, Duration::from_secs(5)).await;
        }
        // A process this runtime did not start (adopted) is not reaped here: record its end.
        if let Ok(mut live) = self.live.lock()
            && let Some(rec) = live.get_mut(&r.id)
            && !rec.watched
        {
            *rec = self.settle(rec.clone(), code, "Error");
        }
    }

    fn containers_of(&self, sandbox_id: &str) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let dir = self.sandbox_dir(sandbox_id)?.join("containers");
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if let Ok(r) = self.record(id) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> RuntimeError {
    RuntimeError::Call {
        call: "process runtime",
        message: "internal state poisoned".into(),
    }
}

impl Runtime for ProcessRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok(format!("process://{}", env!("CARGO_PKG_VERSION")))
    }

    async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        if image.starts_with('/') {
            return Ok(Path::new(image).is_file());
        }
        Ok(true)
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        let id = new_id();
        let dir = self.root.join(&id);
        std::fs::create_dir_all(dir.join("rootfs")).map_err(call("RunPodSandbox"))?;
        std::fs::create_dir_all(dir.join("containers")).map_err(call("RunPodSandbox"))?;
        std::fs::create_dir_all(&spec.log_directory).map_err(call("RunPodSandbox"))?;
        write_json(
            &dir.join("sandbox.json"),
            &SandboxRecord {
                id: id.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
            },
        )?;
        Ok(id)
    }

    async fn sandbox_ip(&self, _id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(Some(self.host_ip.clone()))
    }

    async fn start_container(
        &self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        c: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let dir = self.sandbox_dir(sandbox_id)?;
        let rootfs = dir.join("rootfs");
        let fail = |message: String| RuntimeError::Call {
            call: "StartContainer",
            message,
        };
        for m in &c.mounts {
            let link = under(&rootfs, &m.container_path)
                .ok_or_else(|| fail(format!("mount path {:?} is not usable", m.container_path)))?;
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
            }
            if std::fs::read_link(&link).ok().as_deref() != Some(m.host_path.as_path()) {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&m.host_path, &link)
                    .map_err(|e| fail(format!("mounting {}: {e}", m.container_path)))?;
            }
        }
        let (program, args) = match c.command.split_first() {
            Some((program, rest)) => (
                program.clone(),
                rest.iter().chain(&c.args).cloned().collect(),
            ),
            None => (c.image.clone(), c.args.clone()),
        };
        if program.is_empty() {
            return Err(fail(
                "neither a command nor an image names a program".into(),
            ));
        }
        let working_dir = if c.working_dir.is_empty() {
            rootfs.clone()
        } else {
            PathBuf::from(&c.working_dir)
        };
        let log = sandbox.log_directory.join(&c.log_path);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail(format!("opening {}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut env = c.env.clone();
        env.push((
            "KUBEEDGE_POD_ROOT".into(),
            rootfs.to_string_lossy().into_owned(),
        ));
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .current_dir(&working_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("starting {program:?}: {e}")))?;
        let started_at = now_nanos();
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| fail("the process ended at once".into()))?;
        let start_ticks = proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        let record = ContainerRecord {
            id: new_id(),
            sandbox_id: sandbox_id.to_owned(),
            name: c.name.clone(),
            attempt: c.attempt,
            pid,
            start_ticks,
            started_at,
            env,
            working_dir,
            exit: None,
            watched: true,
        };
        write_json(&self.container_file(&record), &record)?;
        let id = record.id.clone();
        self.live
            .lock()
            .map_err(poisoned)?
            .insert(id.clone(), record);
        let me = self.clone();
        let watched = id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, reason) = match status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(0), _) => (0, "Completed"),
                    (Some(code), _) => (code, "Error"),
                    (None, Some(sig)) => (128 + sig, "Error"),
                    (None, None) => (LOST_EXIT, "Error"),
                },
                Err(_) => (LOST_EXIT, "ContainerStatusUnknown"),
            };
            if let Ok(mut live) = me.live.lock()
                && let Some(r) = live.get_mut(&watched)
            {
                r.exit = Some(Exit {
                    code,
                    reason: reason.into(),
                    finished_at: now_nanos(),
                });
                let path = me.container_file(r);
                // Removed meanwhile: nothing to record.
                if path.exists() {
                    let _ = write_json(&path, r);
                }
            }
        });
        Ok(id)
    }

    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        Ok(Self::state_of(&self.record(id)?))
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let r = self.record(id)?;
        self.stop(&r, grace).await;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let Ok(r) = self.record(id) else {
            return Ok(());
        };
        self.stop(&r, Duration::ZERO).await;
        self.live.lock().map_err(poisoned)?.remove(id);
        match std::fs::remove_file(self.container_file(&r)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(call("RemoveContainer")(e)),
            _ => Ok(()),
        }
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        for r in self.containers_of(id)? {
            self.stop(&r, Duration::ZERO).await;
            self.live.lock().map_err(poisoned)?.remove(&r.id);
        }
        match std::fs::remove_dir_all(self.sandbox_dir(id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(call("RemovePodSandbox")(e)),
            _ => Ok(()),
        }
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(call("ListPodSandbox"))?;
        for e in entries.flatten() {
            if let Some(s) = read_json::<SandboxRecord>(&e.path().join("sandbox.json")) {
                out.push(SandboxInfo {
                    id: s.id,
                    labels: s.labels,
                    ready: true,
                });
            }
        }
        Ok(out)
    }

    async fn list_containers(&self, sandbox_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .containers_of(sandbox_id)?
            .into_iter()
            .map(|r| ContainerInfo {
                state: Self::state_of(&r),
                id: r.id,
                sandbox_id: r.sandbox_id,
                name: r.name,
                attempt: r.attempt,
            })
            .collect())
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
        let r = self.record(id)?;
        let fail = |message: String| RuntimeError::Call {
            call: "ExecSync",
            message,
        };
        let (program, args) = cmd
            .split_first()
            .ok_or_else(|| fail("empty command".into()))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .current_dir(&r.working_dir)
            .envs(r.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("starting {program:?}: {e}")))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok((
                out.status.code().unwrap_or(LOST_EXIT),
                out.stdout,
                out.stderr,
            )),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!("command timed out after {timeout:?}"))),
        }
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        let r = self.record(id)?;
        if r.exit.is_some() {
            return Err(RuntimeError::Call {
                call: "Exec",
                message: format!("container {} is not running", r.name),
            });
        }
        crate::process_exec::start(cmd, &r.working_dir, &r.env, options).map_err(|message| {
            RuntimeError::Call {
                call: "Exec",
                message,
            }
        })
    }

    async fn container_usage(&self, id: &str) -> Result<crate::runtime::Usage, RuntimeError> {
        let r = self.record(id)?;
        Ok(process_group_usage(r.pid))
    }

    async fn port_forward_url(&self, _sandbox_id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }

    async fn attach_stream(
        &self,
        _id: &str,
        _options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        Err(RuntimeError::Call {
            call: "Attach",
            message: "the process runtime runs programs without a terminal or standard input to attach to; \
                      follow their output with `kubectl logs -f`"
                .into(),
        })
    }
}

/// CPU time and resident memory of every process in process group `pgid` (a container's
/// process and what it started), from `/proc`.
pub fn process_group_usage(pgid: i32) -> crate::runtime::Usage {
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let page = rustix::param::page_size() as u64;
    let mut usage = crate::runtime::Usage::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(stat) = entry
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|_| std::fs::read_to_string(entry.path().join("stat")).ok())
        else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if f.get(2).and_then(|v| v.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        usage.cpu_nanos += (num(11) + num(12)) * 1_000_000_000 / ticks;
        usage.memory_bytes += num(21) * page;
    }
    usage
}
