//! Joining a node to a cloud, as `keadm join` does: the node certificate (with a join token), a
//! check that cloudhub admits the node with it, and the configuration file edgecore then starts
//! from. The token is used once and not written to the file.

use std::path::Path;

use kubeedge_core::transport::ws;

use crate::config_file::EdgeCoreFile;
use crate::{Error, bootstrap};

/// A step of [`join`], reported as it starts and as it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Step `n` of `of` begins.
    Begin {
        /// 1-based step number.
        n: u8,
        /// Number of steps.
        of: u8,
        /// What it does.
        what: String,
    },
    /// The step ended well.
    Done(String),
}

/// Steps of a join.
const STEPS: u8 = 3;

/// Joins: bootstraps the node certificate under the file's data directory (kept if present),
/// dials cloudhub with it, and writes `file` (without its token) to `path`. `file` needs the data
/// directory, the node's name, cloudhub's address, and, unless the node has a certificate already,
/// the certificate server and a token.
pub async fn join(
    file: &EdgeCoreFile,
    path: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<(), Error> {
    let config = file.to_config()?;
    let certs = config.cert_files();
    let begin = |n: u8, what: String| Progress::Begin { n, of: STEPS, what };
    if certs.exist() {
        progress(begin(1, format!("node certificate for {}", config.node)));
        progress(Progress::Done(format!(
            "kept the certificate under {}",
            config.data_dir.display()
        )));
    } else {
        let (Some(https), Some(token)) = (&config.https_url, &config.token) else {
            return Err(Error::Config(
                "no node certificate yet: give the certificate server and a join token".into(),
            ));
        };
        progress(begin(
            1,
            format!(
                "node certificate for {}: CA from {https} checked against the token, key and CSR, certificate signed",
                config.node
            ),
        ));
        bootstrap::bootstrap(&certs, &config.node, https, token).await?;
        progress(Progress::Done(format!(
            "wrote {}, {}, {}",
            certs.ca.display(),
            certs.cert.display(),
            certs.key.display()
        )));
    }
    progress(begin(
        2,
        format!("cloudhub at {} admits {}", config.cloud_url, config.node),
    ));
    let link = ws::ClientConfig::new(&config.cloud_url, &config.node, certs.client_config()?);
    let conn = ws::connect(&link).await?;
    let _ = conn.close().await;
    progress(Progress::Done("connected with the node certificate".into()));
    progress(begin(3, format!("configuration file {}", path.display())));
    let mut kept = file.clone();
    kept.modules.edge_hub.token = None;
    kept.write(path)?;
    progress(Progress::Done(format!(
        "start the node with: edgecore --config {}",
        path.display()
    )));
    Ok(())
}
