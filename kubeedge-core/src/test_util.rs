//! Test fixtures (feature `test-util`): a throwaway PKI and TLS WebSocket configurations on
//! loopback, for this crate's tests and for the cloud and edge crates' tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use crate::pki::{Ca, Error, Identity};
use crate::transport::{tls, ws};

/// A CA, a cloudcore certificate for 127.0.0.1 and `localhost`, and node certificates on demand.
#[derive(Debug)]
pub struct TestPki {
    /// The CA.
    pub ca: Ca,
    /// cloudcore's serving identity.
    pub server: Identity,
}

impl TestPki {
    /// A fresh PKI.
    pub fn new() -> Result<TestPki, Error> {
        let now = SystemTime::now();
        let ca = Ca::generate(now)?;
        let server = ca.issue_server(
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            now,
        )?;
        Ok(TestPki { ca, server })
    }

    /// A node identity valid for a day.
    pub fn node(&self, name: &str) -> Result<Identity, Error> {
        self.ca
            .issue_node(name, Duration::from_secs(86_400), SystemTime::now())
    }

    /// An API client identity: `CN=<user>`, `O=<group>`, valid for a day.
    pub fn client(&self, user: &str, group: &str) -> Result<Identity, Error> {
        self.ca
            .issue_client(user, group, Duration::from_secs(86_400), SystemTime::now())
    }

    /// Server settings for cloudhub.
    pub fn server_config(&self) -> Result<ws::ServerConfig, tls::Error> {
        let tls = tls::server_config(
            &self.ca.cert(),
            self.server.chain(),
            self.server.private_key(),
        )?;
        Ok(ws::ServerConfig::new(tls))
    }

    /// Client settings for node `name` dialling `wss://127.0.0.1:<port>`.
    pub fn client_config(
        &self,
        name: &str,
        port: u16,
    ) -> Result<ws::ClientConfig, Box<dyn std::error::Error>> {
        let id = self.node(name)?;
        let tls = tls::client_config(&self.ca.cert(), id.chain(), id.private_key())?;
        Ok(ws::ClientConfig::new(
            format!("wss://127.0.0.1:{port}"),
            name,
            tls,
        ))
    }
}
