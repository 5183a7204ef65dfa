//! What the pod lifecycle needs from a container runtime: pod sandboxes and containers, their
//! state, images present locally. [`crate::cri::CriRuntime`] implements it over CRI (containerd).

use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::StreamOptions;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime could not be reached.
    #[error("connecting to the runtime at {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The runtime refused or failed a call.
    #[error("{call}: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// The runtime's message.
        message: String,
    },
}

/// A pod sandbox to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Restart attempt of the sandbox.
    pub attempt: u32,
    /// Host name inside the pod (ignored with the host network).
    pub hostname: String,
    /// Share the host's network namespace.
    pub host_network: bool,
    /// Where container logs go.
    pub log_directory: PathBuf,
    /// Labels (the pod's identity is kept in them, to find the pod again after a restart).
    pub labels: BTreeMap<String, String>,
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the host.
    pub host_path: PathBuf,
    /// Path in the container.
    pub container_path: String,
    /// Read-only.
    pub readonly: bool,
}

/// A container to create and start in a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint override (`command`).
    pub command: Vec<String>,
    /// Arguments (`args`).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: String,
    /// Restart attempt (0 first).
    pub attempt: u32,
    /// Log file, relative to the sandbox's log directory.
    pub log_path: String,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running since (Unix nanoseconds).
    Running {
        /// Start time, Unix nanoseconds.
        started_at: i64,
    },
    /// Exited.
    Exited {
        /// Exit code.
        exit_code: i32,
        /// Reason (`Completed`, `Error`, `OOMKilled`).
        reason: String,
        /// Message.
        message: String,
        /// Start time, Unix nanoseconds.
        started_at: i64,
        /// Finish time, Unix nanoseconds.
        finished_at: i64,
    },
    /// The runtime does not know.
    Unknown,
}

/// A sandbox the runtime holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Runtime id.
    pub id: String,
    /// Labels it was created with.
    pub labels: BTreeMap<String, String>,
    /// Whether it is ready.
    pub ready: bool,
}

/// A container the runtime holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime id.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Container name.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// State.
    pub state: ContainerState,
}

/// A container runtime: what the pod lifecycle, `kubectl logs/exec/attach/port-forward` and the
/// metrics drive. [`crate::cri::CriRuntime`] (containerd, feature `cri`) and
/// [`crate::process::ProcessRuntime`] (host processes, feature `process`) are built in; one of the
/// application's own is handed to the edge with [`PodRuntime::custom`](crate::PodRuntime::custom).
///
/// A runtime that runs pods as the process runtime does, but only programs on its list (any other
/// image is "not present", so the pod waits with `ErrImageNeverPull`); the whole of it runs in
/// `examples/examples/custom_runtime.rs`:
///
/// ```no_run
/// use std::time::Duration;
/// use kubeedge_edge::process::ProcessRuntime;
/// use kubeedge_edge::runtime::{Runtime, RuntimeError};
/// # use kubeedge_edge::runtime::{ContainerInfo, ContainerSpec, ContainerState, SandboxInfo,
/// #     SandboxSpec, Usage};
/// # use kubeedge_core::streaming::{channel::Duplex, remote::StreamOptions};
///
/// #[derive(Clone)]
/// struct Allowlisted {
///     inner: ProcessRuntime,
///     allowed: Vec<String>,
/// }
///
/// impl Runtime for Allowlisted {
///     async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
///         Ok(self.allowed.iter().any(|a| a == image) && self.inner.has_image(image).await?)
///     }
///     // Every other call as the process runtime does it:
///     async fn version(&self) -> Result<String, RuntimeError> {
///         self.inner.version().await
///     }
///     // ...
/// #   async fn run_sandbox(&self, s: &SandboxSpec) -> Result<String, RuntimeError> {
/// #       self.inner.run_sandbox(s).await
/// #   }
/// #   async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, RuntimeError> {
/// #       self.inner.sandbox_ip(id).await
/// #   }
/// #   async fn start_container(&self, id: &str, s: &SandboxSpec, c: &ContainerSpec)
/// #       -> Result<String, RuntimeError> {
/// #       self.inner.start_container(id, s, c).await
/// #   }
/// #   async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
/// #       self.inner.container_state(id).await
/// #   }
/// #   async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
/// #       self.inner.stop_container(id, grace).await
/// #   }
/// #   async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
/// #       self.inner.remove_container(id).await
/// #   }
/// #   async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
/// #       self.inner.remove_sandbox(id).await
/// #   }
/// #   async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
/// #       self.inner.list_sandboxes().await
/// #   }
/// #   async fn list_containers(&self, id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
/// #       self.inner.list_containers(id).await
/// #   }
/// #   async fn exec_sync(&self, id: &str, cmd: &[String], t: Duration)
/// #       -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
/// #       self.inner.exec_sync(id, cmd, t).await
/// #   }
/// #   async fn exec_stream(&self, id: &str, cmd: &[String], o: StreamOptions)
/// #       -> Result<Duplex, RuntimeError> {
/// #       self.inner.exec_stream(id, cmd, o).await
/// #   }
/// #   async fn attach_stream(&self, id: &str, o: StreamOptions) -> Result<Duplex, RuntimeError> {
/// #       self.inner.attach_stream(id, o).await
/// #   }
/// #   async fn port_forward_url(&self, id: &str) -> Result<Option<String>, RuntimeError> {
/// #       self.inner.port_forward_url(id).await
/// #   }
/// #   async fn container_usage(&self, id: &str) -> Result<Usage, RuntimeError> {
/// #       self.inner.container_usage(id).await
/// #   }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config =
///     kubeedge_edge::Config::new("/var/lib/kubeedge", "edge-1", "wss://cloud.example:10000");
/// config.runtime = kubeedge_edge::PodRuntime::custom(Allowlisted {
///     inner: ProcessRuntime::new("/var/lib/kubeedge/process", "127.0.0.1")?,
///     allowed: vec!["sleep".into()],
/// });
/// let edge = kubeedge_edge::EdgeCore::start(config).await?;
/// # edge.stop().await;
/// # Ok(()) }
/// ```
pub trait Runtime: Send + Sync + 'static {
    /// `<name>://<version>`, as nodeInfo.containerRuntimeVersion reports it.
    fn version(&self) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Whether `image` is present locally.
    fn has_image(&self, image: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send;
    /// Creates and starts a sandbox; returns its id.
    fn run_sandbox(
        &self,
        spec: &SandboxSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// The sandbox's IP address, if it has its own network.
    fn sandbox_ip(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;
    /// Creates and starts a container in a sandbox; returns its id.
    fn start_container(
        &self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        container: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// A container's state.
    fn container_state(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerState, RuntimeError>> + Send;
    /// Stops a container: SIGTERM, SIGKILL after `grace`.
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a (stopped) container.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops and removes a sandbox (and what is left in it).
    fn remove_sandbox(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every sandbox.
    fn list_sandboxes(&self)
    -> impl Future<Output = Result<Vec<SandboxInfo>, RuntimeError>> + Send;
    /// Every container of a sandbox.
    fn list_containers(
        &self,
        sandbox_id: &str,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Runs a command in a container; returns exit code, stdout, stderr.
    fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(i32, Vec<u8>, Vec<u8>), RuntimeError>> + Send;

    /// Starts `cmd` in a container for a client (`kubectl exec`): the session's channel frames
    /// (see [`kubeedge_core::streaming::channel`]); it ends with the exit status on the error
    /// channel.
    fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        options: StreamOptions,
    ) -> impl Future<Output = Result<Duplex, RuntimeError>> + Send;
    /// Attaches a client to a container's main process (`kubectl attach`).
    fn attach_stream(
        &self,
        id: &str,
        options: StreamOptions,
    ) -> impl Future<Output = Result<Duplex, RuntimeError>> + Send;
    /// Where a pod's ports are forwarded from: the CRI streaming URL of the sandbox's
    /// `PortForward`, or `None` when the pod's address is reachable from edgecore (the process
    /// runtime).
    fn port_forward_url(
        &self,
        sandbox_id: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;
    /// A running container's resource use: CPU time so far and memory in use.
    fn container_usage(&self, id: &str)
    -> impl Future<Output = Result<Usage, RuntimeError>> + Send;
}

/// What a container uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used so far, nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use (the working set), bytes.
    pub memory_bytes: u64,
}
