//! cloudhub's HTTPS server: the CA, and CSR signing authorized by a join token or the node's own
//! certificate.

use std::time::{Duration, SystemTime};

use kubeedge_core::pki::{self, node_csr};

use crate::common::{TempDir, https, node_identity, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_and_token_authorized_certificate_signing() {
    let dir = TempDir::new("certs");
    let core = start(&dir).await;
    let ca = core.ca().cert();
    let port = core.https_addr().port();

    let (code, body) = https(&ca, port, None, "GET", "/ca.crt", &[], b"").await;
    assert_eq!(code, 200);
    assert_eq!(body, core.ca().cert_der());

    let token = core
        .ca()
        .token(Duration::from_secs(3600), SystemTime::now());
    let jwt = token.split_once('.').unwrap().1.to_owned();
    let (csr, _key) = node_csr("e9").unwrap();
    let bearer = format!("Bearer {jwt}");
    let (code, cert) = https(
        &ca,
        port,
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "e9"), ("Authorization", &bearer)],
        &csr,
    )
    .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&cert));
    assert_eq!(pki::node_name(&cert).unwrap(), "e9");

    // no token, a token of another CA, a CSR for another node: refused
    let (code, _) = https(
        &ca,
        port,
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "e9")],
        &csr,
    )
    .await;
    assert_eq!(code, 401);
    let other = pki::Ca::generate(SystemTime::now()).unwrap();
    let forged = format!(
        "Bearer {}",
        other
            .token(Duration::from_secs(3600), SystemTime::now())
            .split_once('.')
            .unwrap()
            .1
    );
    let (code, _) = https(
        &ca,
        port,
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "e9"), ("Authorization", &forged)],
        &csr,
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = https(
        &ca,
        port,
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "e8"), ("Authorization", &bearer)],
        &csr,
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = https(
        &ca,
        port,
        None,
        "GET",
        "/edge.crt",
        &[("NodeName", "e9"), ("Authorization", &bearer)],
        b"not a csr",
    )
    .await;
    assert_eq!(code, 400);

    // rotation: the node's current certificate authorizes a new one, for itself only
    let id = node_identity(&core, "e9");
    let (csr2, _) = node_csr("e9").unwrap();
    let (code, _) = https(
        &ca,
        port,
        Some(&id),
        "GET",
        "/edge.crt",
        &[("NodeName", "e9")],
        &csr2,
    )
    .await;
    assert_eq!(code, 200);
    let (csr3, _) = node_csr("e7").unwrap();
    let (code, _) = https(
        &ca,
        port,
        Some(&id),
        "GET",
        "/edge.crt",
        &[("NodeName", "e7")],
        &csr3,
    )
    .await;
    assert_eq!(code, 401);
    core.stop().await;
}
