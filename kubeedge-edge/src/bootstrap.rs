//! First-start bootstrap with a join token, as upstream edges do it (spec §3.4):
//!
//! 1. `GET <https>/ca.crt` without verifying the server (the edge has no CA yet), then check the
//!    SHA-256 of the answer against the token's first part: only the real CA matches.
//! 2. A new P-256 key and a CSR `CN=system:node:<node>`, `O=system:nodes`; `GET <https>/edge.crt`
//!    with the CSR as body, `NodeName` and `Authorization: Bearer <jwt>`, now verifying the server
//!    against the CA.
//! 3. Store `ca/rootCA.crt`, `certs/server.crt` and `certs/server.key` (private) under the data
//!    directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubeedge_core::pki::{self, Token};
use kubeedge_core::transport::tls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;

/// Largest answer read from the certificate server.
const MAX_ANSWER: usize = 1 << 20;
/// Bound on each bootstrap request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The files an edge identity lives in, under a data directory.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The KubeEdge CA (PEM).
    pub ca: PathBuf,
    /// The node certificate (PEM).
    pub cert: PathBuf,
    /// The node key (PEM, private).
    pub key: PathBuf,
}

impl CertFiles {
    /// Upstream's layout under `data_dir`: `ca/rootCA.crt`, `certs/server.{crt,key}`.
    pub fn under(data_dir: &Path) -> CertFiles {
        CertFiles {
            ca: data_dir.join("ca").join(pki::CA_CERT_FILE),
            cert: data_dir.join("certs").join("server.crt"),
            key: data_dir.join("certs").join("server.key"),
        }
    }

    /// Whether all three exist.
    pub fn exist(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }

    /// A TLS client configuration presenting this identity and trusting only this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                step: format!("reading {}", p.display()),
                source,
            })
        };
        let ca = tls::certs_from_pem(&read(&self.ca)?)?;
        let chain = tls::certs_from_pem(&read(&self.cert)?)?;
        let key = tls::key_from_pem(&read(&self.key)?)?;
        Ok(tls::client_config(&ca[0], chain, key)?)
    }
}

/// Accepts any server certificate (still checking that the server holds its key): only for
/// fetching the CA, whose hash the token then checks.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `host:port` of an `https://host:port[/...]` URL.
fn authority(url: &str) -> Result<(String, u16), Error> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| Error::Config(format!("{url:?} is not an https:// URL")))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::Config(format!("bad port in {url:?}")))?,
        ),
        _ => (hostport, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Config(format!("no host in {url:?}")));
    }
    Ok((host.to_owned(), port))
}

/// One HTTP/1.1 request over TLS; returns the status and body.
pub(crate) async fn request(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), Error> {
    let (host, port) = authority(url)?;
    let io = |step: &str| {
        let step = format!("{step} {url}{path}");
        move |source| Error::Io { step, source }
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(io("connecting to"))?;
        let name = ServerName::try_from(host.clone())
            .map_err(|_| Error::Config(format!("bad host name {host:?}")))?;
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(io("TLS handshake with"))?;
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())
            .await
            .map_err(io("writing to"))?;
        s.write_all(body).await.map_err(io("writing to"))?;
        let mut out = Vec::new();
        (&mut s)
            .take((MAX_ANSWER + 16 * 1024) as u64)
            .read_to_end(&mut out)
            .await
            .map_err(io("reading from"))?;
        parse_response(&out)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Config(format!("{url}{path} did not answer in time")))?
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), Error> {
    let bad = || Error::Config("malformed HTTP answer".into());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut b = body.as_slice();
        while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16)
                .map_err(|_| bad())?;
            if size == 0 || b.len() < pos + 2 + size {
                break;
            }
            out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
            b = &b[(pos + 4 + size).min(b.len())..];
        }
        body = out;
    }
    Ok((status, body))
}

/// Fetches the CA and a node certificate with `token` from the certificate server at `https_url`
/// and writes them to `files`.
pub async fn bootstrap(
    files: &CertFiles,
    node: &str,
    https_url: &str,
    token: &str,
) -> Result<(), Error> {
    let token = Token::parse(token)?;
    let provider = tls::provider();
    let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider.clone())))
        .with_no_client_auth();
    let (status, ca_der) = request(https_url, Arc::new(insecure), "/ca.crt", &[], b"").await?;
    if status != 200 {
        return Err(Error::Http {
            step: "fetching the CA",
            status,
            body: String::from_utf8_lossy(&ca_der).into_owned(),
        });
    }
    token.check_ca(&ca_der)?;
    let ca = CertificateDer::from(ca_der.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| Error::Config(e.to_string()))?;
    let verified = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (csr, key) = pki::node_csr(node)?;
    let bearer = format!("Bearer {}", token.jwt);
    let (status, cert) = request(
        https_url,
        Arc::new(verified),
        "/edge.crt",
        &[("NodeName", node), ("Authorization", &bearer)],
        &csr,
    )
    .await?;
    if status != 200 {
        return Err(Error::Http {
            step: "requesting a node certificate",
            status,
            body: String::from_utf8_lossy(&cert).into_owned(),
        });
    }
    if pki::node_name(&cert)? != node {
        return Err(Error::Config(
            "the certificate server signed a certificate for another node".into(),
        ));
    }
    pki::write(&files.ca, &pki::pem("CERTIFICATE", &ca_der), false)?;
    pki::write(&files.cert, &pki::pem("CERTIFICATE", &cert), false)?;
    pki::write(&files.key, &key.serialize_pem(), true)?;
    tracing::info!(node, "bootstrapped: node certificate stored");
    Ok(())
}
