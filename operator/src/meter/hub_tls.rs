//! TLS of the device-hub client: the operator presents its client certificate and verifies
//! device-hub like the services verify each other, the chain with webpki, then its URI SAN must be
//! the expected SPIFFE ID; the DNS name is not checked. Key material is never logged.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::resources::names;

/// The SPIFFE IDs (`spiffe://` URI SANs) of a DER certificate.
pub fn spiffe_ids(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    ids.push((*uri).to_string());
                }
            }
        }
    }
    Ok(ids)
}

/// Verifies the server's chain against the hub's trust bundle (webpki) and requires its URI SAN to
/// be the expected SPIFFE ID. The host name is deliberately not checked: identities are SPIFFE IDs.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = spiffe_ids(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if ids.iter().any(|id| id == &self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = %self.expected, presented = ?ids, "device-hub SPIFFE ID mismatch");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds the client TLS configuration: client certificate `cert_pem` (leaf first) with `key_pem`,
/// trust `bundle_pem`, server identity `expected_spiffe_id`. Errors never contain key bytes.
pub fn client_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    expected_spiffe_id: &str,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key holds no usable private key: {e}"))?;
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_slice_iter(bundle_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", names::TRUST_BUNDLE_KEY))?;
    for (i, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|e| {
            format!(
                "{} certificate #{i} is not a usable CA: {e}",
                names::TRUST_BUNDLE_KEY
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no CA certificate",
            names::TRUST_BUNDLE_KEY
        ));
    }
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::new(roots),
        provider: provider.clone(),
        expected: expected_spiffe_id.to_string(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate and key do not form a usable identity: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_reports_bad_material_without_content() {
        let err = client_config(
            b"garbage",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            b"",
            "spiffe://x",
        )
        .unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
        assert!(!err.contains("AAAA"));
    }
}
