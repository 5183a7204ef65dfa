//! Certificates and bootstrap tokens, as upstream KubeEdge issues and checks them (spec §3).
//!
//! * [`Ca`]: the KubeEdge CA (ECDSA P-256, CN `KubeEdge`), generated or loaded from upstream's
//!   formats (certificate DER, private key as SEC1 DER, as in the `casecret` Secret).
//! * [`Ca::issue_server`]: cloudcore's serving certificate with DNS and IP SANs.
//! * [`Ca::sign_csr`]: signs an edge's CSR, which must name `CN=system:node:<node>`,
//!   `O=system:nodes`.
//! * [`Ca::token`] / [`Ca::verify_token`]: the join token `<sha256 of CA DER>.<HS256 JWT>`, whose
//!   HMAC key is the CA private key's SEC1 DER bytes and whose only claim is `exp`.
//! * [`node_csr`], [`Token`]: the edge's half of the bootstrap.
//!
//! Time is a parameter (`now: SystemTime`) so that expiry is testable.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use kubeedge_core::pki::{self, Ca};
//!
//! let now = SystemTime::now();
//! let ca = Ca::generate(now).unwrap();
//! let token = ca.token(Duration::from_secs(24 * 3600), now);
//! ca.verify_token(&token, now).unwrap();
//!
//! // the edge checks the CA it fetched against the token, then sends a CSR
//! let parsed = pki::Token::parse(&token).unwrap();
//! parsed.check_ca(ca.cert_der()).unwrap();
//! let (csr, _key) = pki::node_csr("edge-1").unwrap();
//! let cert = ca.sign_csr(&csr, "edge-1", Duration::from_secs(365 * 86400), now).unwrap();
//! assert_eq!(pki::node_name(&cert).unwrap(), "edge-1");
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use ring::{digest, hmac};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

/// CN of the CA and of cloudcore's certificate.
pub const KUBEEDGE_CN: &str = "KubeEdge";
/// Organization every node certificate carries.
pub const NODES_ORG: &str = "system:nodes";
/// Prefix of a node certificate's CN.
pub const NODE_CN_PREFIX: &str = "system:node:";

const BASE64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const HUNDRED_YEARS: Duration = Duration::from_secs(364 * 100 * 86_400);

/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "rootCA.crt";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "rootCA.key";

/// Certificate and key errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{what} {path}")]
    Io {
        /// `reading` or `writing`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or signing failed.
    #[error("{step}")]
    Rcgen {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A private key could not be read.
    #[error("reading the private key: {0}")]
    Key(String),
    /// A certificate could not be read.
    #[error("reading the certificate: {0}")]
    Certificate(String),
    /// A CSR could not be read or its signature is wrong.
    #[error("reading the CSR")]
    Csr(#[source] rcgen::Error),
    /// The CSR or certificate does not name the expected node.
    #[error("subject {found:?} is not {expected:?}")]
    Subject {
        /// What was required.
        expected: String,
        /// What was found.
        found: String,
    },
}

/// Join token errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not `<hash>.<header>.<claims>.<signature>`, or a part does not decode.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The CA hash in the token does not match the CA.
    #[error("the token's CA hash does not match this CA")]
    CaHashMismatch,
    /// The JWT signature does not verify (tampered, or from another CA).
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The JWT is not HS256.
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    /// The token has expired.
    #[error("the token expired at {exp} (now {now})")]
    Expired {
        /// `exp` claim, seconds since the epoch.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
}

/// A certificate with its private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl Identity {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// The private key as PEM (`EC PRIVATE KEY`, SEC1, as upstream stores it).
    pub fn key_pem(&self) -> Result<String, Error> {
        Ok(pem("EC PRIVATE KEY", &pkcs8_to_sec1(&self.key_pkcs8)?))
    }

    /// The certificate chain for rustls.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// The KubeEdge certificate authority.
#[derive(Debug)]
pub struct Ca {
    cert_der: Vec<u8>,
    key: KeyPair,
    key_sec1: Vec<u8>,
}

impl Ca {
    /// A new CA as upstream makes it: ECDSA P-256, CN `KubeEdge`, serial 1024, valid 364×100 days,
    /// key usages DigitalSignature, KeyEncipherment, CertSign; EKU ServerAuth and ClientAuth.
    pub fn generate(now: SystemTime) -> Result<Ca, Error> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Rcgen {
                step: "generating the CA key",
                source,
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[(DnType::CommonName, KUBEEDGE_CN)]);
        params.serial_number = Some(SerialNumber::from(1024u64));
        params.not_before = now.into();
        params.not_after = (now + HUNDRED_YEARS).into();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key).map_err(|source| Error::Rcgen {
            step: "self-signing the CA",
            source,
        })?;
        let key_sec1 = pkcs8_to_sec1(&key.serialize_der())?;
        Ok(Ca {
            cert_der: cert.der().to_vec(),
            key,
            key_sec1,
        })
    }

    /// Loads a CA from upstream's storage format: certificate DER and SEC1 DER private key (the
    /// `cadata` and `cakeydata` of Secret `kubeedge/casecret`, or `rootCA.crt`/`rootCA.key` decoded
    /// from PEM).
    pub fn from_der(cert_der: &[u8], key_sec1: &[u8]) -> Result<Ca, Error> {
        x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let pkcs8 = sec1_to_pkcs8(key_sec1)?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| Error::Key(e.to_string()))?;
        Ok(Ca {
            cert_der: cert_der.to_vec(),
            key,
            key_sec1: key_sec1.to_vec(),
        })
    }

    /// Loads a CA from PEM (`CERTIFICATE` and `EC PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let cert = pem_block(cert_pem, "CERTIFICATE").map_err(Error::Certificate)?;
        let key = pem_block(key_pem, "EC PRIVATE KEY").map_err(Error::Key)?;
        Ca::from_der(&cert, &key)
    }

    /// The CA certificate, DER (what `GET /ca.crt` serves).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate for rustls trust stores.
    pub fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key, SEC1 DER (the token's HMAC key).
    pub fn key_sec1(&self) -> &[u8] {
        &self.key_sec1
    }

    /// The CA private key, PEM (`EC PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem("EC PRIVATE KEY", &self.key_sec1)
    }

    /// Loads the CA from `dir/rootCA.crt` and `dir/rootCA.key` (PEM, upstream's file names), or
    /// creates both (the key readable by the owner only) when neither exists.
    pub fn load_or_create(dir: &Path, now: SystemTime) -> Result<Ca, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            let cert = read(&cert_path)?;
            let key = read(&key_path)?;
            return Ca::from_pem(&cert, &key);
        }
        let ca = Ca::generate(now)?;
        write(&cert_path, &ca.cert_pem(), false)?;
        write(&key_path, &ca.key_pem(), true)?;
        Ok(ca)
    }

    /// Hex SHA-256 of the CA certificate DER: the first part of a join token.
    pub fn hash(&self) -> String {
        ca_hash(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, Error> {
        Issuer::from_ca_cert_der(&CertificateDer::from(self.cert_der.as_slice()), &self.key)
            .map_err(|source| Error::Rcgen {
                step: "reading the CA certificate",
                source,
            })
    }

    /// cloudcore's serving certificate: CN and O `KubeEdge`, EKU ServerAuth, the given DNS and IP
    /// SANs, valid 364×100 days, as upstream issues it.
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        now: SystemTime,
    ) -> Result<Identity, Error> {
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for d in dns {
            let name = d.clone().try_into().map_err(|source| Error::Rcgen {
                step: "adding a DNS name",
                source,
            })?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue_leaf(
            dn(&[
                (DnType::CommonName, KUBEEDGE_CN),
                (DnType::OrganizationName, KUBEEDGE_CN),
            ]),
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            HUNDRED_YEARS,
        )
    }

    /// Signs an edge's CSR (DER) as `/edge.crt` does: the CSR must name `CN=system:node:<node>` and
    /// `O=system:nodes`; CN, O and the SANs are copied; a random serial below 2^63; valid from `now`
    /// for `validity`; key usages DigitalSignature and KeyEncipherment; EKU ClientAuth. Returns the
    /// certificate DER.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        node: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Vec<u8>, Error> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(Error::Csr)?;
        let cn = dn_value(&csr.params.distinguished_name, &DnType::CommonName);
        let org = dn_value(&csr.params.distinguished_name, &DnType::OrganizationName);
        let expected_cn = format!("{NODE_CN_PREFIX}{node}");
        if cn.as_deref() != Some(expected_cn.as_str()) {
            return Err(Error::Subject {
                expected: expected_cn,
                found: cn.unwrap_or_default(),
            });
        }
        if org.as_deref() != Some(NODES_ORG) {
            return Err(Error::Subject {
                expected: format!("O={NODES_ORG}"),
                found: org.unwrap_or_default(),
            });
        }
        let mut csr = csr;
        csr.params.distinguished_name = dn(&[
            (DnType::OrganizationName, NODES_ORG),
            (DnType::CommonName, &expected_cn),
        ]);
        self.sign_for_client_auth(csr, validity, now, "signing the node certificate")
    }

    /// Signs `csr` as a client certificate: a random serial, valid from `now` for `validity`, key
    /// usages DigitalSignature and KeyEncipherment, EKU ClientAuth.
    fn sign_for_client_auth(
        &self,
        mut csr: CertificateSigningRequestParams,
        validity: Duration,
        now: SystemTime,
        step: &'static str,
    ) -> Result<Vec<u8>, Error> {
        let params = &mut csr.params;
        params.serial_number = Some(random_serial()?);
        params.not_before = now.into();
        params.not_after = (now + validity).into();
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(|source| Error::Rcgen { step, source })?;
        Ok(cert.der().to_vec())
    }

    /// Signs a client certificate request (DER) as the `kubernetes.io/kube-apiserver-client`
    /// signer of certificates.k8s.io does: the subject is the CSR's (CN the user, O the groups),
    /// a random serial, valid from `now` for `validity`, key usages DigitalSignature and
    /// KeyEncipherment, EKU ClientAuth, no SANs. Returns the certificate DER.
    pub fn sign_client_csr(
        &self,
        csr_der: &[u8],
        validity: Duration,
        now: SystemTime,
    ) -> Result<Vec<u8>, Error> {
        let mut csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(Error::Csr)?;
        if dn_value(&csr.params.distinguished_name, &DnType::CommonName)
            .is_none_or(|cn| cn.is_empty())
        {
            return Err(Error::Subject {
                expected: "a common name (the user)".into(),
                found: String::new(),
            });
        }
        csr.params.subject_alt_names.clear();
        self.sign_for_client_auth(csr, validity, now, "signing a client certificate")
    }

    /// A node identity signed directly (generates the key and CSR in-process): for tests, and for
    /// provisioning an edge out of band.
    pub fn issue_node(
        &self,
        node: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Identity, Error> {
        let (csr, key) = node_csr(node)?;
        let cert_der = self.sign_csr(&csr, node, validity, now)?;
        Ok(Identity {
            cert_der,
            key_pkcs8: key.serialize_der(),
        })
    }

    /// A client identity for an API user (the embedded control plane's admin, cloudcore's own
    /// controllers): `CN=<user>`, `O=<group>` (Kubernetes reads the user name from the CN and the
    /// group from the O), EKU ClientAuth, valid from `now` for `validity`.
    pub fn issue_client(
        &self,
        user: &str,
        group: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Identity, Error> {
        self.issue_leaf(
            dn(&[
                (DnType::OrganizationName, group),
                (DnType::CommonName, user),
            ]),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            validity,
        )
    }

    /// A new P-256 key and a certificate for it signed by this CA: the given subject and SANs, a
    /// random serial, valid from `now` for `validity`, key usages DigitalSignature and
    /// KeyEncipherment, the one extended key usage `eku`.
    fn issue_leaf(
        &self,
        subject: DistinguishedName,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Identity, Error> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Rcgen {
                step: "generating a key",
                source,
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.serial_number = Some(random_serial()?);
        params.not_before = now.into();
        params.not_after = (now + validity).into();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|source| Error::Rcgen {
                step: "signing a certificate",
                source,
            })?;
        Ok(Identity {
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// A join token valid for `valid_for` from `now` (upstream: 2 × `tokenRefreshDuration`, 24 h by
    /// default).
    pub fn token(&self, valid_for: Duration, now: SystemTime) -> String {
        let exp = unix_secs(now).saturating_add(valid_for.as_secs());
        let header = BASE64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = BASE64URL.encode(format!(r#"{{"exp":{exp}}}"#));
        let signing_input = format!("{header}.{claims}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key_sec1);
        let sig = BASE64URL.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
        format!("{}.{signing_input}.{sig}", self.hash())
    }

    /// Checks a join token: the CA hash, the HS256 signature with this CA's key, and `exp` > `now`.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<(), TokenError> {
        let t = Token::parse(token)?;
        t.check_ca(&self.cert_der)?;
        self.verify_jwt(&t.jwt, now)
    }

    /// Checks the JWT part alone (what an edge sends as `Authorization: Bearer <jwt>`).
    pub fn verify_jwt(&self, jwt: &str, now: SystemTime) -> Result<(), TokenError> {
        let mut parts = jwt.split('.');
        let (Some(header), Some(claims), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("the JWT needs three parts"));
        };
        let header_json = BASE64URL
            .decode(header)
            .map_err(|_| TokenError::Malformed("JWT header is not base64url"))?;
        let header_v: serde_json::Value = serde_json::from_slice(&header_json)
            .map_err(|_| TokenError::Malformed("JWT header is not JSON"))?;
        let alg = header_v.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if alg != "HS256" {
            return Err(TokenError::Algorithm(alg.to_owned()));
        }
        let sig = BASE64URL
            .decode(sig)
            .map_err(|_| TokenError::Malformed("JWT signature is not base64url"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key_sec1);
        hmac::verify(&key, format!("{header}.{claims}").as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims_json = BASE64URL
            .decode(claims)
            .map_err(|_| TokenError::Malformed("JWT claims are not base64url"))?;
        let claims_v: serde_json::Value = serde_json::from_slice(&claims_json)
            .map_err(|_| TokenError::Malformed("JWT claims are not JSON"))?;
        let exp = claims_v
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(TokenError::Malformed("JWT has no numeric exp claim"))?;
        let now = unix_secs(now);
        if exp <= now {
            return Err(TokenError::Expired { exp, now });
        }
        Ok(())
    }
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Hex SHA-256 of the CA certificate DER.
    pub ca_hash: String,
    /// The JWT (the last three dot-separated parts), sent as `Authorization: Bearer <jwt>`.
    pub jwt: String,
}

impl Token {
    /// Splits `<hash>.<header>.<claims>.<signature>`.
    pub fn parse(token: &str) -> Result<Token, TokenError> {
        let token = token.trim();
        let (hash, jwt) = token
            .split_once('.')
            .ok_or(TokenError::Malformed("expected <ca hash>.<jwt>"))?;
        if jwt.split('.').count() != 3 {
            return Err(TokenError::Malformed("expected four dot-separated parts"));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed("the CA hash is not 64 hex digits"));
        }
        Ok(Token {
            ca_hash: hash.to_ascii_lowercase(),
            jwt: jwt.to_owned(),
        })
    }

    /// The edge's check of a CA fetched without verification: its hash must match the token.
    pub fn check_ca(&self, ca_der: &[u8]) -> Result<(), TokenError> {
        if ca_hash(ca_der) != self.ca_hash {
            return Err(TokenError::CaHashMismatch);
        }
        Ok(())
    }
}

/// A new key and a CSR (DER) for `node`, with upstream's subject: C=CN, O=system:nodes,
/// L=Hangzhou, ST=Zhejiang, `CN=system:node:<node>`.
pub fn node_csr(node: &str) -> Result<(Vec<u8>, KeyPair), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Rcgen {
        step: "generating the node key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&[
        (DnType::CountryName, "CN"),
        (DnType::OrganizationName, NODES_ORG),
        (DnType::LocalityName, "Hangzhou"),
        (DnType::StateOrProvinceName, "Zhejiang"),
        (DnType::CommonName, &format!("{NODE_CN_PREFIX}{node}")),
    ]);
    let csr = params
        .serialize_request(&key)
        .map_err(|source| Error::Rcgen {
            step: "building the CSR",
            source,
        })?;
    Ok((csr.der().to_vec(), key))
}

/// The node name a node certificate (DER) authenticates: its CN must be `system:node:<name>` and its
/// O `system:nodes`.
pub fn node_name(cert_der: &[u8]) -> Result<String, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    let org = subject
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    match cn.strip_prefix(NODE_CN_PREFIX) {
        Some(name) if !name.is_empty() && org == NODES_ORG => Ok(name.to_owned()),
        _ => Err(Error::Subject {
            expected: format!("CN={NODE_CN_PREFIX}<node>, O={NODES_ORG}"),
            found: format!("CN={cn}, O={org}"),
        }),
    }
}

/// A certificate's subject as Kubernetes reads it: the CN (user name) and every O (groups).
pub fn subject(cert_der: &[u8]) -> Result<(String, Vec<String>), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok((cn, orgs))
}

/// A certificate's validity window (not before, not after), for rotation deadlines.
pub fn validity(cert_der: &[u8]) -> Result<(SystemTime, SystemTime), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let to_system = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok((
        to_system(cert.validity().not_before.timestamp()),
        to_system(cert.validity().not_after.timestamp()),
    ))
}

/// Hex SHA-256 of a DER certificate.
pub fn ca_hash(cert_der: &[u8]) -> String {
    digest::digest(&digest::SHA256, cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PEM text of one DER block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the first PEM block labelled `label`.
pub fn pem_block(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no {label} block"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("unterminated {label} block"))?
        + start;
    let b64: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{label} block: {e}"))
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in parts {
        dn.push(t.clone(), *v);
    }
    dn
}

fn dn_value(dn: &DistinguishedName, t: &DnType) -> Option<String> {
    match dn.get(t)? {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn random_serial() -> Result<SerialNumber, Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Key("no system randomness".into()))?;
    bytes[0] &= 0x7f; // below 2^63, as upstream draws it
    Ok(SerialNumber::from_slice(&bytes))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to `path` (creating parent directories); private files get mode 0600.
pub fn write(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write as _;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// === SEC1 <-> PKCS#8 for P-256 keys (upstream stores SEC1; ring reads PKCS#8) ===

/// DER of OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of OID 1.2.840.10045.3.1.7 (prime256v1).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// Reads one TLV; returns (tag, content, rest).
fn der_read(input: &[u8]) -> Result<(u8, &[u8], &[u8]), Error> {
    let bad = || Error::Key("malformed DER".into());
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, rest) = rest.split_first().ok_or_else(bad)?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => {
            let (&n, rest) = rest.split_first().ok_or_else(bad)?;
            (usize::from(n), rest)
        }
        0x82 => {
            if rest.len() < 2 {
                return Err(bad());
            }
            (
                (usize::from(rest[0]) << 8) | usize::from(rest[1]),
                &rest[2..],
            )
        }
        _ => return Err(bad()),
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Wraps a SEC1 `ECPrivateKey` (P-256) into PKCS#8.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, Error> {
    let (tag, _, rest) = der_read(sec1)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(Error::Key("not a SEC1 EC private key".into()));
    }
    let alg = der_tlv(0x30, &[OID_EC_PUBLIC_KEY, OID_P256].concat());
    let body = [&[0x02, 0x01, 0x00][..], &alg, &der_tlv(0x04, sec1)].concat();
    Ok(der_tlv(0x30, &body))
}

/// Unwraps a PKCS#8 P-256 key into SEC1, with the curve parameters present, as Go's
/// `x509.MarshalECPrivateKey` writes it.
fn pkcs8_to_sec1(pkcs8: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |what: &str| Error::Key(format!("PKCS#8: {what}"));
    let (_, outer, _) = der_read(pkcs8)?;
    let (_, _version, rest) = der_read(outer)?;
    let (_, _alg, rest) = der_read(rest)?;
    let (tag, inner, _) = der_read(rest)?;
    if tag != 0x04 {
        return Err(bad("no private key octet string"));
    }
    let (tag, ec, _) = der_read(inner)?;
    if tag != 0x30 {
        return Err(bad("no ECPrivateKey"));
    }
    let (_, version, rest) = der_read(ec)?;
    let (tag, private, rest) = der_read(rest)?;
    if tag != 0x04 {
        return Err(bad("no private key"));
    }
    let mut public = None;
    let mut rest = rest;
    while !rest.is_empty() {
        let (tag, content, next) = der_read(rest)?;
        if tag == 0xa1 {
            public = Some(content);
        }
        rest = next;
    }
    let public = public.ok_or_else(|| bad("no public key"))?;
    let body = [
        der_tlv(0x02, version),
        der_tlv(0x04, private),
        der_tlv(0xa0, OID_P256),
        der_tlv(0xa1, public),
    ]
    .concat();
    Ok(der_tlv(0x30, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_round_trips_through_pkcs8() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let again = Ca::from_der(ca.cert_der(), ca.key_sec1()).unwrap();
        assert_eq!(again.key_sec1(), ca.key_sec1());
        // Go's layout: version 1, 32-byte key, [0] curve, [1] public key
        let (_, body, _) = der_read(ca.key_sec1()).unwrap();
        let (_, v, rest) = der_read(body).unwrap();
        assert_eq!(v, [1]);
        let (_, k, rest) = der_read(rest).unwrap();
        assert_eq!(k.len(), 32);
        let (t0, oid, rest) = der_read(rest).unwrap();
        assert_eq!((t0, oid), (0xa0, OID_P256));
        let (t1, _, rest) = der_read(rest).unwrap();
        assert_eq!(t1, 0xa1);
        assert!(rest.is_empty());
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert!(matches!(sec1_to_pkcs8(b""), Err(Error::Key(_))));
        assert!(matches!(
            sec1_to_pkcs8(&[0x30, 0x05, 0x01]),
            Err(Error::Key(_))
        ));
        assert!(Ca::from_der(b"junk", b"junk").is_err());
    }
}
