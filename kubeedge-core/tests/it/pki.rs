//! The PKI: CA, server certificates, CSR signing and join tokens, including the bad cases.

use std::time::{Duration, SystemTime};

use kubeedge_core::pki::{self, Ca, Error, Token, TokenError};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn token_has_four_parts_and_verifies() {
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let token = ca.token(DAY, now);
    assert_eq!(token.split('.').count(), 4);
    assert_eq!(token.split('.').next().unwrap(), ca.hash());
    ca.verify_token(&token, now).unwrap();
    ca.verify_token(&token, now + DAY - Duration::from_secs(1))
        .unwrap();
    // the CA's own hash check, as the edge does it
    Token::parse(&token)
        .unwrap()
        .check_ca(ca.cert_der())
        .unwrap();
}

#[test]
fn expired_token_is_refused() {
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let token = ca.token(DAY, now);
    assert!(matches!(
        ca.verify_token(&token, now + DAY + Duration::from_secs(1)),
        Err(TokenError::Expired { .. })
    ));
}

#[test]
fn tampered_token_is_refused() {
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let token = ca.token(DAY, now);
    let parts: Vec<&str> = token.split('.').collect();
    // a later expiry in the claims, signature unchanged
    let claims = base64_url(&format!(r#"{{"exp":{}}}"#, u64::MAX / 2));
    let forged = format!("{}.{}.{}.{}", parts[0], parts[1], claims, parts[3]);
    assert_eq!(ca.verify_token(&forged, now), Err(TokenError::BadSignature));
    // a token from another CA
    let other = Ca::generate(now).unwrap();
    assert_eq!(
        ca.verify_token(&other.token(DAY, now), now),
        Err(TokenError::CaHashMismatch)
    );
    // another CA's JWT behind this CA's hash
    let other_jwt = other.token(DAY, now).split_once('.').unwrap().1.to_owned();
    assert_eq!(
        ca.verify_token(&format!("{}.{}", ca.hash(), other_jwt), now),
        Err(TokenError::BadSignature)
    );
    // alg "none"
    let none = format!(
        "{}.{}.{}.",
        ca.hash(),
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        parts[2]
    );
    assert_eq!(
        ca.verify_token(&none, now),
        Err(TokenError::Algorithm("none".into()))
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    for bad in [
        "",
        "abc",
        "a.b.c",
        "zz.a.b.c",
        &format!("{}.a.b", ca.hash()),
    ] {
        assert!(
            matches!(
                ca.verify_token(bad, SystemTime::now()),
                Err(TokenError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    let bad_b64 = format!("{}.!!.??.##", ca.hash());
    assert!(matches!(
        ca.verify_token(&bad_b64, SystemTime::now()),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn csr_signing_checks_the_subject() {
    let now = SystemTime::now();
    let ca = Ca::generate(now).unwrap();
    let (csr, _) = pki::node_csr("e1").unwrap();
    let cert = ca.sign_csr(&csr, "e1", 365 * DAY, now).unwrap();
    assert_eq!(pki::node_name(&cert).unwrap(), "e1");
    let (nb, na) = pki::validity(&cert).unwrap();
    let lifetime = na.duration_since(nb).unwrap();
    assert!(
        lifetime >= 364 * DAY && lifetime <= 366 * DAY,
        "{lifetime:?}"
    );
    // a CSR for e1 presented as e2
    assert!(matches!(
        ca.sign_csr(&csr, "e2", DAY, now),
        Err(Error::Subject { .. })
    ));
    // garbage and a truncated CSR
    assert!(matches!(
        ca.sign_csr(b"junk", "e1", DAY, now),
        Err(Error::Csr(_))
    ));
    assert!(matches!(
        ca.sign_csr(&csr[..csr.len() - 4], "e1", DAY, now),
        Err(Error::Csr(_))
    ));
    // a tampered CSR (signature no longer matches)
    let mut tampered = csr.clone();
    let i = tampered.len() / 2;
    tampered[i] ^= 0x01;
    assert!(ca.sign_csr(&tampered, "e1", DAY, now).is_err());
}

#[test]
fn server_certificate_is_not_a_node_certificate() {
    let pki = kubeedge_core::test_util::TestPki::new().unwrap();
    assert!(matches!(
        pki::node_name(&pki.server.cert_der),
        Err(Error::Subject { .. })
    ));
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.hash(), ca.hash());
    let now = SystemTime::now();
    again.verify_token(&ca.token(DAY, now), now).unwrap();
    assert!(Ca::from_pem("nothing", "here").is_err());
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
