//! Test fixtures (feature `test-util`): a throwaway PKI and TLS WebSocket configurations on
//! loopback, for this crate's tests and for the cloud and edge crates' tests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
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

/// One raw HTTP/1.1 request over TLS to `127.0.0.1:port`, trusting `ca`, presenting `who` (no
/// client certificate if `None`), with `headers`; returns the status and the body (de-chunked).
/// The body is written while the answer is read, so an early answer (413) still arrives. Panics
/// when the connection cannot be made: for tests.
pub async fn https(
    ca: &rustls::pki_types::CertificateDer<'static>,
    port: u16,
    who: Option<&Identity>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("test HTTPS request");
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .expect("test HTTPS request")
        .with_root_certificates(roots);
    let config = match who {
        Some(id) => builder
            .with_client_auth_cert(id.chain(), id.private_key())
            .expect("test HTTPS request"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("test HTTPS request");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("test HTTPS request");
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("test HTTPS request");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // Write while reading: a server may answer (413) and close before taking the whole body.
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut out = Vec::new();
    let _ = rd.read_to_end(&mut out).await;
    let _ = writer.await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (code, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}
