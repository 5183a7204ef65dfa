//! A pod runtime of your own: [`Runtime`] implemented by a vendor's type and handed to the edge
//! with [`PodRuntime::custom`]. This one runs pods as host processes (it wraps the built-in
//! [`ProcessRuntime`]) but only programs on its allowlist: any other image is "not present", so
//! its pod waits with `ErrImageNeverPull` as on a node without that image.
//!
//! The cloud (embedded control plane) and the edge run in this process; two pods are created with
//! kube-rs, one allowed and one not, and each ends as it should.
//!
//! `cargo run -p kubeedge-examples --example custom_runtime`

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kubeedge_core::streaming::channel::Duplex;
use kubeedge_core::streaming::remote::StreamOptions;
use kubeedge_edge::PodRuntime;
use kubeedge_edge::process::ProcessRuntime;
use kubeedge_edge::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, Runtime, RuntimeError, SandboxInfo, SandboxSpec,
    Usage,
};

/// The process runtime, for the programs on `allowed` only.
#[derive(Clone)]
struct Allowlisted {
    inner: ProcessRuntime,
    allowed: Vec<String>,
}

impl Runtime for Allowlisted {
    async fn version(&self) -> Result<String, RuntimeError> {
        Ok(format!("allowlisted+{}", self.inner.version().await?))
    }
    async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.allowed.iter().any(|a| a == image) && self.inner.has_image(image).await?)
    }
    async fn start_container(
        &self,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        container: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        println!(
            "starting {}/{} {} ({})",
            sandbox.namespace, sandbox.name, container.name, container.image
        );
        self.inner
            .start_container(sandbox_id, sandbox, container)
            .await
    }
    // The rest as the process runtime does it.
    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        self.inner.run_sandbox(spec).await
    }
    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        self.inner.sandbox_ip(id).await
    }
    async fn container_state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.inner.container_state(id).await
    }
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop_container(id, grace).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.remove_container(id).await
    }
    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.remove_sandbox(id).await
    }
    async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>, RuntimeError> {
        self.inner.list_sandboxes().await
    }
    async fn list_containers(&self, sandbox_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.inner.list_containers(sandbox_id).await
    }
    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), RuntimeError> {
        self.inner.exec_sync(id, cmd, timeout).await
    }
    async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        self.inner.exec_stream(id, cmd, options).await
    }
    async fn attach_stream(
        &self,
        id: &str,
        options: StreamOptions,
    ) -> Result<Duplex, RuntimeError> {
        self.inner.attach_stream(id, options).await
    }
    async fn port_forward_url(&self, sandbox_id: &str) -> Result<Option<String>, RuntimeError> {
        self.inner.port_forward_url(sandbox_id).await
    }
    async fn container_usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        self.inner.container_usage(id).await
    }
}

/// A pod running `image` with `args`.
fn pod(name: &str, image: &str, args: &[&str]) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image, "args": args}]},
    }))
}

/// `Running`, or the reason the container waits, or "" while it has no status.
fn state(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    waiting.unwrap_or_else(|| status.and_then(|s| s.phase.clone()).unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("kubeedge-custom-runtime-{}", std::process::id()));
    let mut cloud = kubeedge_cloud::Config::new(dir.join("cloud"));
    (cloud.api_addr, cloud.hub_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    (cloud.https_addr, cloud.stream_addr) = ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let cloud = kubeedge_cloud::CloudCore::start(cloud).await?;

    let mut edge = kubeedge_edge::Config::join(dir.join("edge"), "vendor-box", &cloud.address());
    edge.token = Some(
        cloud
            .ca()
            .token(Duration::from_secs(600), SystemTime::now()),
    );
    edge.metaserver_addr = "127.0.0.1:0".parse()?;
    edge.runtime = PodRuntime::custom(Allowlisted {
        inner: ProcessRuntime::new(dir.join("edge/process"), "127.0.0.1")?,
        allowed: vec!["sleep".into()],
    });
    let edge = kubeedge_edge::EdgeCore::start(edge).await?;

    let pods: Api<Pod> = Api::default_namespaced(cloud.client().clone());
    let post = PostParams::default();
    pods.create(&post, &pod("allowed", "sleep", &["600"])?)
        .await?;
    pods.create(&post, &pod("refused", "rm", &["-rf", "/tmp/x"])?)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (allowed, refused) = loop {
        let (a, r) = (pods.get("allowed").await?, pods.get("refused").await?);
        let (a, r) = (state(&a), state(&r));
        if a == "Running" && r == "ErrImageNeverPull" {
            break (a, r);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("pods did not settle: allowed {a:?}, refused {r:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("allowed: {allowed}; refused: {refused}");

    for name in ["allowed", "refused"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    while !pods.list(&Default::default()).await?.items.is_empty() {
        if tokio::time::Instant::now() > deadline + Duration::from_secs(60) {
            return Err("pods were not deleted".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    edge.stop().await;
    cloud.stop().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
