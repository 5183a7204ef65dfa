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

/// A real etcd (Debian's `etcd-server`: `etcd` on the `PATH`, or `$KUBEEDGE_TEST_ETCD`), one
/// member on loopback ports the OS picked, its data under a directory of the test's. Killed when
/// dropped; [`kill`](Self::kill) and [`restart`](Self::restart) (same data, same ports) make it
/// go away and come back.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    client: u16,
    peer: u16,
    name: String,
    /// `--initial-cluster`: every member's name and peer URL.
    cluster: String,
    /// Serving TLS: the CA, the member's certificate and key files; clients must present a
    /// certificate of that CA.
    tls: Option<[std::path::PathBuf; 3]>,
}

impl EtcdServer {
    /// Starts one under `dir` and waits until it is healthy.
    pub fn start(dir: &std::path::Path) -> std::io::Result<EtcdServer> {
        let mut members = EtcdServer::cluster(dir, 1)?;
        members
            .pop()
            .ok_or_else(|| std::io::Error::other("no member"))
    }

    /// Starts one under `dir` serving its clients over TLS only, with a server certificate of
    /// `ca` for 127.0.0.1, and asking each client for a certificate of `ca`.
    pub fn start_tls(dir: &std::path::Path, ca: &crate::pki::Ca) -> std::io::Result<EtcdServer> {
        let now = std::time::SystemTime::now();
        let server = ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                now,
            )
            .map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let files = [
            dir.join("ca.crt"),
            dir.join("etcd.crt"),
            dir.join("etcd.key"),
        ];
        std::fs::write(&files[0], ca.cert_pem())?;
        std::fs::write(&files[1], server.cert_pem())?;
        std::fs::write(&files[2], server.key_pem().map_err(std::io::Error::other)?)?;
        let mut members = EtcdServer::start_members(dir, 1, Some(files))?;
        members
            .pop()
            .ok_or_else(|| std::io::Error::other("no member"))
    }

    /// Starts a cluster of `n` members (under `dir/m0`, `dir/m1`, ...) and waits until each is
    /// healthy.
    pub fn cluster(dir: &std::path::Path, n: usize) -> std::io::Result<Vec<EtcdServer>> {
        EtcdServer::start_members(dir, n, None)
    }

    /// [`cluster`](Self::cluster), each member serving `tls` (CA, certificate, key) if given.
    fn start_members(
        dir: &std::path::Path,
        n: usize,
        tls: Option<[std::path::PathBuf; 3]>,
    ) -> std::io::Result<Vec<EtcdServer>> {
        // The ports were free when picked, but another test may take one before etcd binds it:
        // then etcd exits at once, and a fresh start on fresh ports follows.
        let mut last = None;
        for _ in 0..3 {
            let mut members = EtcdServer::members(dir, n)?;
            for m in &mut members {
                let _ = std::fs::remove_dir_all(m.dir.join("data"));
                m.tls = tls.clone();
            }
            // Every member must be up before any can elect a leader: start all, then wait.
            let started = members
                .iter_mut()
                .try_for_each(EtcdServer::spawn)
                .and_then(|()| members.iter_mut().try_for_each(EtcdServer::wait_healthy));
            match started {
                Ok(()) => return Ok(members),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("etcd did not start")))
    }

    fn members(dir: &std::path::Path, n: usize) -> std::io::Result<Vec<EtcdServer>> {
        let port = || -> std::io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdServer {
                child: None,
                dir: if n == 1 {
                    dir.to_owned()
                } else {
                    dir.join(format!("m{i}"))
                },
                client: port()?,
                peer: port()?,
                name: format!("m{i}"),
                cluster: String::new(),
                tls: None,
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster = cluster.clone();
        }
        Ok(members)
    }

    /// `127.0.0.1:port` of its client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same data and ports, and waits until it is healthy.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.spawn()?;
        self.wait_healthy()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        self.kill();
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let bin = std::env::var("KUBEEDGE_TEST_ETCD").unwrap_or_else(|_| "etcd".into());
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client);
        let mut command = std::process::Command::new(&bin);
        if let Some([ca, cert, key]) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.cluster))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting {bin}: {e}")))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(std::io::Error::other(format!(
                    "etcd exited ({status}); see {}",
                    self.dir.join("etcd.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(
            "etcd did not become healthy within 30 s",
        ))
    }

    /// Whether `/health` says so (over TLS, the port accepting connections).
    pub fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            // Answering needs a client certificate; a member that listens has loaded its own.
            return std::net::TcpStream::connect(("127.0.0.1", self.client)).is_ok();
        }
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
