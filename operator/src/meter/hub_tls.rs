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

/// Checks one SPIFFE ID as X509-SVID requires (SPIFFE-ID spec §2): scheme `spiffe://`, a non-empty
/// trust domain of `[a-z0-9.-_]` (so no userinfo or port), a path of non-empty segments of
/// `[A-Za-z0-9.-_]` that are not `.` or `..`, no trailing `/`, no query or fragment, at most 2048
/// bytes. (Same rules as the services' `tls::validate_spiffe_id`.)
pub fn validate_spiffe_id(uri: &str) -> Result<(), String> {
    if uri.len() > 2048 {
        return Err(format!("SPIFFE ID is {} bytes; at most 2048", uri.len()));
    }
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or("SPIFFE ID must start with spiffe://")?;
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err("SPIFFE ID has an empty trust domain".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "SPIFFE ID trust domain may only hold [a-z0-9.-_], found {c:?} (no userinfo, port, query or fragment)"
        ));
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "SPIFFE ID path segment {segment:?} must not be empty, '.' or '..'"
            ));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "SPIFFE ID path may only hold [A-Za-z0-9.-_/], found {c:?} (no query or fragment)"
            ));
        }
    }
    Ok(())
}

/// The SPIFFE ID of an X509-SVID: the certificate must carry exactly one URI SAN, and it must be a
/// valid SPIFFE ID. A certificate with several URI SANs (one of them matching) is refused.
pub fn svid_spiffe_id(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?
        .ok_or("certificate has no subjectAltName")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => validate_spiffe_id(uri).map(|()| (*uri).to_string()),
        _ => Err(format!(
            "an X509-SVID must carry exactly one URI SAN; found {}",
            uris.len()
        )),
    }
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
        match svid_spiffe_id(end_entity.as_ref()) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(id) => {
                tracing::warn!(expected = %self.expected, presented = %id, "device-hub SPIFFE ID mismatch");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ))
            }
            Err(reason) => {
                tracing::warn!(expected = %self.expected, %reason, "device-hub certificate is no X509-SVID");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ))
            }
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
    fn spiffe_ids_follow_the_x509_svid_rules() {
        for ok in [
            "spiffe://cluster.local/ns/park/sa/demo-device-hub",
            "spiffe://example.org",
        ] {
            assert_eq!(validate_spiffe_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://cluster.local/ns/x",
            "spiffe://",
            "spiffe://user@cluster.local/ns/x",
            "spiffe://cluster.local:8443/ns/x",
            "spiffe://cluster.local/ns/x?q=1",
            "spiffe://cluster.local/ns/x#frag",
            "spiffe://cluster.local/ns//x",
            "spiffe://cluster.local/ns/../x",
            "spiffe://cluster.local/ns/x/",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad}");
        }
    }

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
