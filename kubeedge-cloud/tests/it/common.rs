//! Shared fixtures: a cloudcore on loopback in a temporary directory, raw test edges.

use std::path::PathBuf;
use std::time::Duration;

use kubeedge_cloud::{CloudCore, Config};
use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::pki::Identity;
use kubeedge_core::transport::ws::{self, Connection};
use kubeedge_core::transport::{driver, tls};

/// A directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "kubeedge-cloud-{tag}-{}-{}",
            std::process::id(),
            driver::random_seed()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings for a cloudcore on 127.0.0.1 with ports the OS picks.
pub fn loopback_config(dir: &TempDir) -> Config {
    let mut c = Config::new(&dir.0);
    c.api_addr = "127.0.0.1:0".parse().unwrap();
    c.hub_addr = "127.0.0.1:0".parse().unwrap();
    c.https_addr = "127.0.0.1:0".parse().unwrap();
    c.stream_addr = "127.0.0.1:0".parse().unwrap();
    c
}

pub async fn start(dir: &TempDir) -> CloudCore {
    CloudCore::start(loopback_config(dir)).await.unwrap()
}

/// Waits until `f` is true (checked every 50 ms), failing after `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A node identity signed by the cloud's CA.
pub fn node_identity(core: &CloudCore, node: &str) -> Identity {
    core.ca()
        .issue_node(
            node,
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap()
}

/// An edge speaking the upstream protocol by hand: acks what it gets, records it.
pub struct RawEdge {
    pub conn: Connection,
    pub received: Vec<Message>,
    next_id: u64,
}

impl RawEdge {
    /// Connects as `node_id` holding `identity`.
    pub async fn connect_as(core: &CloudCore, node_id: &str, identity: &Identity) -> RawEdge {
        let tls = tls::client_config(&core.ca().cert(), identity.chain(), identity.private_key())
            .unwrap();
        let mut cfg = ws::ClientConfig::new(
            format!("wss://127.0.0.1:{}", core.hub_addr().port()),
            node_id,
            tls,
        );
        cfg.offer_extensions = false;
        let conn = ws::connect(&cfg).await.unwrap();
        RawEdge {
            conn,
            received: Vec::new(),
            next_id: 0,
        }
    }

    pub async fn connect(core: &CloudCore, node: &str) -> RawEdge {
        let id = node_identity(core, node);
        RawEdge::connect_as(core, node, &id).await
    }

    /// Reads one message within `timeout`, acking it if the cloud waits for an ack. `None` on
    /// timeout; panics if the connection ends.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Message> {
        let m = match tokio::time::timeout(timeout, self.conn.recv()).await {
            Err(_) => return None,
            Ok(r) => r.unwrap().expect("connection open"),
        };
        if m.route.group == names::RESOURCE_GROUP
            && m.route.operation != Operation::Response
            && !m.header.resource_version.is_empty()
            || m.is_delete()
        {
            let ack = m.response(self.id(), 0, serde_json::json!(names::ACK_CONTENT));
            self.conn.send(&ack).await.unwrap();
        }
        self.received.push(m.clone());
        Some(m)
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("edge-{}", self.next_id)
    }

    /// The first message for `resource` with `op` received so far, or else the next one to arrive
    /// (within `secs`).
    pub async fn wait_for(&mut self, op: Operation, resource: &str, secs: u64) -> Message {
        if let Some(m) = self
            .received
            .iter()
            .find(|m| m.route.operation == op && m.route.resource == resource)
        {
            return m.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no {op} of {resource} arrived");
            if let Some(m) = self.recv(left).await
                && m.route.operation == op
                && m.route.resource == resource
            {
                return m;
            }
        }
    }

    /// Reads everything that arrives within `dur`.
    pub async fn drain(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || self.recv(left).await.is_none() {
                return;
            }
        }
    }

    /// Sends a request and returns the cloud's answer (reading and acking everything else).
    pub async fn request(
        &mut self,
        op: Operation,
        resource: &str,
        content: serde_json::Value,
    ) -> Message {
        let id = self.id();
        let m = Message::new(
            id.clone(),
            0,
            Route::new("edged", names::RESOURCE_GROUP, op, resource),
        )
        .with_content(content);
        self.conn.send(&m).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no answer to {resource}");
            if let Some(r) = self.recv(left).await
                && r.header.parent_id == id
            {
                return r;
            }
        }
    }
}

pub use kubeedge_core::test_util::https;
