//! TLS of the device-hub client: the operator presents its client certificate and verifies
//! device-hub with the same verifier the services use for each other (`mpm_spiffe`): the chain with
//! webpki, then exactly one URI SAN, the expected SPIFFE ID; the DNS name is not checked. Key
//! material is never logged.

use std::sync::Arc;

use mpm_spiffe::{FixedTrust, TrustAnchors};
use rustls::sign::SingleCertAndKey;
use rustls::ClientConfig;

use crate::resources::names;

/// The SPIFFE IDs (`spiffe://` URI SANs) of a DER certificate.
pub fn spiffe_ids(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(mpm_spiffe::id::spiffe_uri_sans(&cert))
}

/// Builds the client TLS configuration: client certificate `cert_pem` (leaf first) with `key_pem`,
/// trust `bundle_pem`, server identity `expected_spiffe_id`. Errors never contain key bytes.
pub fn client_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    expected_spiffe_id: &str,
) -> Result<Arc<ClientConfig>, String> {
    let identity = mpm_spiffe::certified_key(&mpm_spiffe::provider(), cert_pem, key_pem)
        .map_err(|e| e.to_string())?;
    let roots = mpm_spiffe::roots_from_pem(bundle_pem, names::TRUST_BUNDLE_KEY)
        .map_err(|e| e.to_string())?;
    let anchors = TrustAnchors::new(roots).map_err(|e| format!("trust anchors: {e}"))?;
    mpm_spiffe::spiffe_client_config(
        FixedTrust(Arc::new(anchors)),
        expected_spiffe_id,
        Arc::new(SingleCertAndKey::from(identity)),
    )
    .map_err(|e| format!("TLS configuration: {e}"))
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
