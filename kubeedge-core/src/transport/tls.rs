//! rustls configurations for the cloud–edge link: mutual TLS, ring as the only crypto provider.
//!
//! Both sides trust exactly one CA (the KubeEdge CA). The server **requires** a client certificate
//! chaining to it; the client verifies the server certificate and its name (so cloudcore's
//! certificate needs an IP SAN for the address edges dial). TLS 1.3 and 1.2 are enabled; TLS 1.2 is
//! limited to the ECDHE-ECDSA AES-GCM and ChaCha20-Poly1305 suites, as upstream restricts it.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CA certificate could not be added to the trust store.
    #[error("adding the CA certificate to the trust store")]
    Ca(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The certificate and key do not make a usable identity.
    #[error("loading the certificate and private key")]
    Identity(#[source] rustls::Error),
    /// PEM input could not be read.
    #[error("reading PEM: {0}")]
    Pem(String),
}

/// ring with TLS 1.2 limited to ECDHE-ECDSA suites (upstream's list) and every TLS 1.3 suite.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| match s {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => {
            let name = format!("{:?}", s.suite());
            name.contains("ECDHE_ECDSA")
                && (name.contains("AES_128_GCM")
                    || name.contains("AES_256_GCM")
                    || name.contains("CHACHA20"))
        }
    });
    Arc::new(p)
}

fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(Error::Ca)?;
    Ok(roots)
}

/// The server side (cloudhub): presents `chain` with `key`, and requires a client certificate issued
/// by `ca`.
pub fn server_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
            .build()
            .map_err(Error::Verifier)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(Error::Identity)?;
    Ok(Arc::new(config))
}

/// Checks client certificates after the handshake, for servers that let a request through without
/// one and answer it at the HTTP layer (401) instead of failing the handshake, as the Kubernetes
/// API server does. Built by [`server_config_optional_client`].
#[derive(Debug, Clone)]
pub struct ClientAuth {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientAuth {
    /// Whether `chain` (end entity first) chains to the CA and is valid now for client auth.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let Some((end, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.inner
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// Asks for a client certificate, accepts the handshake with or without one (proof of the key is
/// still checked), and leaves the chain check to [`ClientAuth::verify`].
#[derive(Debug)]
struct RequestClientCert(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// An HTTPS server (the embedded API server, cloudhub's certificate server): presents `chain` with
/// `key`, asks for a client certificate but does not require one, offers ALPN `http/1.1`. The
/// returned [`ClientAuth`] tells whether a presented chain is trusted.
pub fn server_config_optional_client(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(Arc<ServerConfig>, ClientAuth), Error> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
        .build()
        .map_err(Error::Verifier)?;
    let auth = ClientAuth {
        inner: inner.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Identity)?
        .with_client_cert_verifier(Arc::new(RequestClientCert(inner)))
        .with_single_cert(chain, key)
        .map_err(Error::Identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), auth))
}

/// The client side (edgehub): trusts only `ca`, presents `chain` with `key`.
pub fn client_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Identity)?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(Error::Identity)?;
    Ok(Arc::new(config))
}

/// Certificates from PEM text (every `CERTIFICATE` block, in order).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// A private key from PEM text (`EC PRIVATE KEY`, `PRIVATE KEY` or `RSA PRIVATE KEY`).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Pem(e.to_string()))
}
