//! The CRI runtime: [`Runtime`] over the Kubernetes Container Runtime Interface (gRPC, `runtime.v1`)
//! on a unix socket, as containerd serves it.
//!
//! Images are never pulled from here: `has_image` (CRI `ImageStatus`) tells whether an image is
//! present, and a missing one is reported on the pod (the kubelet's `IfNotPresent` without a
//! registry). The generated client (`runtime.v1.rs`, from `proto/api.proto` of kubernetes/cri-api)
//! is committed, so building needs no protoc; regenerate it with `tonic-prost-build` (client only)
//! when the proto changes.

#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v1 {
    //! Generated CRI v1 messages and clients.
    include!("runtime.v1.rs");
}

use std::collections::BTreeMap;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::{StreamOptions, dial_command};
use tonic::transport::{Channel, Endpoint, Uri};
use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

use crate::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, Runtime, RuntimeError, SandboxInfo, SandboxSpec,
};

/// Bound on each CRI call (ExecSync carries its own timeout on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A CRI runtime on a unix socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn call_err(call: &'static str) -> impl Fn(tonic::Status) -> RuntimeError {
    move |s| RuntimeError::Call {
        call,
        message: s.message().to_owned(),
    }
}

impl CriRuntime {
    /// Connects to `endpoint` (`unix:///run/containerd/containerd.sock` or a plain socket path).
    pub async fn connect(endpoint: &str) -> Result<CriRuntime, RuntimeError> {
        let path = endpoint
            .strip_prefix("unix://")
            .unwrap_or(endpoint)
            .to_owned();
        let err = |message: String| RuntimeError::Connect {
            endpoint: endpoint.to_owned(),
            message,
        };
        // The URI is not used: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::1]:50051")
            .map_err(|e| err(e.to_string()))?
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| err(crate::chain(&e)))?;
        Ok(CriRuntime {
            endpoint: endpoint.to_owned(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The endpoint it talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the runtime reports itself ready (CRI `Status`, condition `RuntimeReady`).
    pub async fn ready(&self) -> Result<bool, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .status(v1::StatusRequest { verbose: false })
            .await
            .map_err(call_err("Status"))?
            .into_inner();
        Ok(status
            .status
            .map(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "RuntimeReady" && c.status)
            })
            .unwrap_or(false))
    }
}

fn sandbox_config(spec: &SandboxSpec) -> v1::PodSandboxConfig {
    let network = if spec.host_network {
        v1::NamespaceMode::Node
    } else {
        v1::NamespaceMode::Pod
    };
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: spec.attempt,
        }),
        // With the host network the pod shares the host's UTS namespace: no host name of its own.
        hostname: if spec.host_network {
            String::new()
        } else {
            spec.hostname.clone()
        },
        log_directory: spec.log_directory.to_string_lossy().into_owned(),
        labels: spec.labels.clone().into_iter().collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: network as i32,
                    pid: v1::NamespaceMode::Container as i32,
                    ipc: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn state_of(status: &v1::ContainerStatus) -> ContainerState {
    match v1::ContainerState::try_from(status.state) {
        Ok(v1::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(v1::ContainerState::ContainerRunning) => ContainerState::Running {
            started_at: status.started_at,
        },
        Ok(v1::ContainerState::ContainerExited) => ContainerState::Exited {
            exit_code: status.exit_code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            started_at: status.started_at,
            finished_at: status.finished_at,
        },
        _ => ContainerState::Unknown,
    }
}

impl Runtime for CriRuntime {
    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .runtime
            .clone()
            .version(v1::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(call_err("Version"))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let status = self
            .images
            .clone()
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(call_err("ImageStatus"))?
            .into_inner();
        Ok(status.image.is_some_and(|i| !i.id.is_empty()))
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        std::fs::create_dir_all(&spec.log_directory).map_err(|e| RuntimeError::Call {
            call: "RunPodSandbox",
            message: format!("creating {}: {e}", spec.log_directory.display()),
        })?;
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(sandbox_config(spec)),
                runtime_handler: String::new(),
            })
            .await
            .map_err(call_err("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            })
            .await
            .map_err(call_err("PodSandboxStatus"))?
            .into_inner();
        Ok(status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty()))
    }

    async fn start_container(
        &self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        c: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let config = v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: c.name.clone(),
                attempt: c.attempt,
            }),
            image: Some(v1::ImageSpec {
                image: c.image.clone(),
                ..Default::default()
            }),
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            envs: c
                .env
                .iter()
                .map(|(k, v)| v1::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: c
                .mounts
                .iter()
                .map(|m| v1::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.to_string_lossy().into_owned(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            log_path: c.log_path.clone(),
            labels: [("io.kubernetes.container.name".to_owned(), c.name.clone())]
                .into_iter()
                .collect(),
            linux: Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
                    namespace_options: sandbox_config(sandbox)
                        .linux
                        .and_then(|l| l.security_context)
                        .and_then(|s| s.namespace_options),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rt = self.runtime.clone();
        let id = rt
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config(sandbox)),
            })
            .await
            .map_err(call_err("CreateContainer"))?
            .into_inner()
            .container_id;
        rt.start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(call_err("StartContainer"))?;
        Ok(id)
    }

    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let status = self
            .runtime
            .clone()
            .container_status(v1::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .map_err(call_err("ContainerStatus"))?
            .into_inner();
        Ok(status
            .status
            .as_ref()
            .map(state_of)
            .unwrap_or(ContainerState::Unknown))
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .stop_container(v1::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: grace.as_secs() as i64,
            })
            .await
            .map_err(call_err("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .remove_container(v1::RemoveContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .map_err(call_err("RemoveContainer"))?;
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut rt = self.runtime.clone();
        rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map_err(call_err("StopPodSandbox"))?;
        rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map_err(call_err("RemovePodSandbox"))?;
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let items = self
            .runtime
            .clone()
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .map_err(call_err("ListPodSandbox"))?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|s| SandboxInfo {
                ready: s.state == v1::PodSandboxState::SandboxReady as i32,
                labels: s.labels.into_iter().collect::<BTreeMap<_, _>>(),
                id: s.id,
            })
            .collect())
    }

    async fn list_containers(&self, sandbox_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut rt = self.runtime.clone();
        let items = rt
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter {
                    pod_sandbox_id: sandbox_id.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(call_err("ListContainers"))?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(items.len());
        for c in items {
            let state = self.container_state(&c.id).await?;
            let meta = c.metadata.unwrap_or_default();
            out.push(ContainerInfo {
                id: c.id,
                sandbox_id: c.pod_sandbox_id,
                name: meta.name,
                attempt: meta.attempt,
                state,
            });
        }
        Ok(out)
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
        let r = self
            .runtime
            .clone()
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.to_vec(),
                timeout: timeout.as_secs() as i64,
            })
            .await
            .map_err(call_err("ExecSync"))?
            .into_inner();
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        let url = self
            .runtime
            .clone()
            .exec(v1::ExecRequest {
                container_id: id.to_owned(),
                cmd: cmd.to_vec(),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map_err(call_err("Exec"))?
            .into_inner()
            .url;
        dial(&url, options, "Exec").await
    }

    async fn container_usage(&self, id: &str) -> Result<crate::runtime::Usage, RuntimeError> {
        let stats = self
            .runtime
            .clone()
            .container_stats(v1::ContainerStatsRequest {
                container_id: id.to_owned(),
            })
            .await
            .map_err(call_err("ContainerStats"))?
            .into_inner()
            .stats
            .unwrap_or_default();
        Ok(crate::runtime::Usage {
            cpu_nanos: stats
                .cpu
                .and_then(|c| c.usage_core_nano_seconds)
                .map(|v| v.value)
                .unwrap_or(0),
            memory_bytes: stats
                .memory
                .and_then(|m| m.working_set_bytes)
                .map(|v| v.value)
                .unwrap_or(0),
        })
    }

    async fn port_forward_url(&self, sandbox_id: &str) -> Result<Option<String>, RuntimeError> {
        let url = self
            .runtime
            .clone()
            .port_forward(v1::PortForwardRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                port: Vec::new(),
            })
            .await
            .map_err(call_err("PortForward"))?
            .into_inner()
            .url;
        Ok(Some(url))
    }

    async fn attach_stream(
        &self,
        id: &str,
        options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        let url = self
            .runtime
            .clone()
            .attach(v1::AttachRequest {
                container_id: id.to_owned(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map_err(call_err("Attach"))?
            .into_inner()
            .url;
        dial(&url, options, "Attach").await
    }
}

/// The session at a streaming URL the runtime answered `call` with.
async fn dial(
    url: &str,
    options: StreamOptions,
    call: &'static str,
) -> Result<Duplex, RuntimeError> {
    dial_command(url, options)
        .await
        .map_err(|e| RuntimeError::Call {
            call,
            message: kubeedge_core::error_chain(&e),
        })
}
