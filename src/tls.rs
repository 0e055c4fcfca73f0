//! Building the rustls client configuration.
//!
//! By default syncws trusts the Mozilla root set shipped in `webpki-roots`, offers ALPN
//! `http/1.1`, and uses the `ring` crypto provider. The builder can add root certificates (for a
//! private CA), replace the whole [`rustls::ClientConfig`] (client certificates, custom
//! verification), override the server name sent in SNI and checked against the certificate, or —
//! only through the loudly named
//! [`dangerous_disable_certificate_verification`](crate::ClientBuilder::dangerous_disable_certificate_verification)
//! — skip certificate checks entirely.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// TLS choices collected by the builder.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsOptions {
    /// Extra trust anchors added to the webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// A complete configuration that replaces everything else.
    pub config: Option<Arc<ClientConfig>>,
    /// Name to use for SNI and certificate checks instead of the URL host.
    pub server_name: Option<String>,
    /// Accept any certificate (testing only).
    pub insecure: bool,
}

impl TlsOptions {
    /// The rustls configuration to connect with.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?;
        let mut config = if self.insecure {
            log::warn!("TLS certificate verification is DISABLED for this client");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in &self.extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| Error::TlsConfig(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The server name for SNI and verification.
    pub(crate) fn server_name(&self, host: &str) -> Result<ServerName<'static>> {
        let name = self.server_name.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_string())
            .map_err(|e| Error::TlsConfig(format!("invalid server name {name:?}: {e}")))
    }
}

/// Parses every certificate in a PEM document (for `--ca-file` style options).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| Error::TlsConfig(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig("no certificate found in PEM input".into()));
    }
    Ok(certs)
}

/// Accepts every certificate but still checks handshake signatures. Opt-in only.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
