//! Certificate rotation, as upstream edges do it: at a random point between 70 % and 90 % of the
//! node certificate's lifetime, a new key and CSR go to the certificate server's `/edge.crt`,
//! authenticated by the current certificate (no token); the new pair replaces the files
//! atomically and edgehub dials again with it. Failures retry with backoff (2 s doubling to 32 s).

use std::path::Path;
use std::time::{Duration, SystemTime};

use kubeedge_core::pki;

use crate::Error;
use crate::bootstrap::{CertFiles, request};
use crate::edgehub::EdgeHub;

fn read_cert(files: &CertFiles) -> Result<Vec<u8>, Error> {
    let pem = std::fs::read_to_string(&files.cert).map_err(|source| Error::Io {
        step: format!("reading {}", files.cert.display()),
        source,
    })?;
    pki::pem_block(&pem, "CERTIFICATE").map_err(Error::Config)
}

/// When the current certificate should be renewed.
pub fn deadline(files: &CertFiles) -> Result<SystemTime, Error> {
    let (not_before, not_after) = pki::validity(&read_cert(files)?)?;
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = 0.7 + (kubeedge_core::transport::driver::random_seed() % 1000) as f64 / 5000.0;
    Ok(not_before + lifetime.mul_f64(fraction))
}

/// Writes `text` to `path` through a temporary file and a rename, so that a crash leaves the old
/// file or the new one, never half of either.
fn replace(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    let tmp = path.with_extension("new");
    pki::write(&tmp, text, private)?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        step: format!("replacing {}", path.display()),
        source,
    })
}

/// Renews the certificate once.
pub async fn renew(files: &CertFiles, node: &str, https_url: &str) -> Result<(), Error> {
    let tls = files.client_config()?;
    let (csr, key) = pki::node_csr(node)?;
    let (status, cert) = request(https_url, tls, "/edge.crt", &[("NodeName", node)], &csr).await?;
    if status != 200 {
        return Err(Error::Http {
            step: "renewing the node certificate",
            status,
            body: String::from_utf8_lossy(&cert).into_owned(),
        });
    }
    if pki::node_name(&cert)? != node {
        return Err(Error::Config(
            "the certificate server signed a certificate for another node".into(),
        ));
    }
    // Key first: a crash in between leaves a key without its certificate, which the next renewal
    // (or a new bootstrap) repairs; the other order would pair the new certificate with the old key.
    replace(&files.key, &key.serialize_pem(), true)?;
    replace(&files.cert, &pki::pem("CERTIFICATE", &cert), false)?;
    Ok(())
}

/// Renews before expiry, forever.
pub async fn run(files: CertFiles, node: String, https_url: String, hub: EdgeHub) {
    let mut retry = Duration::from_secs(2);
    loop {
        let wait = match deadline(&files) {
            Ok(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), "reading the node certificate");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if !wait.is_zero() {
            // Look again at least daily (the files may be replaced from outside meanwhile).
            tokio::time::sleep(wait.min(Duration::from_secs(86_400))).await;
            continue;
        }
        match renew(&files, &node, &https_url).await {
            Ok(()) => {
                tracing::info!(node, "node certificate renewed");
                retry = Duration::from_secs(2);
                hub.redial();
            }
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), retry_in = ?retry, "renewing the node certificate");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(32));
            }
        }
    }
}
