//! SPIFFE IDs (SPIFFE-ID specification §2) and X509-SVIDs (X509-SVID specification §2: exactly one
//! URI SAN, which is the SPIFFE ID).

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Longest SPIFFE ID accepted, in bytes.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is {0} bytes; at most {MAX_SPIFFE_ID_BYTES}")]
    TooLong(usize),
    #[error("SPIFFE ID must start with spiffe://")]
    Scheme,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error(
        "SPIFFE ID trust domain may only hold [a-z0-9.-_], found {0:?} (no userinfo, port, query or fragment)"
    )]
    TrustDomainChar(char),
    #[error("SPIFFE ID path segment {0:?} must not be empty, '.' or '..'")]
    Segment(String),
    #[error("SPIFFE ID path may only hold [A-Za-z0-9.-_/], found {0:?} (no query or fragment)")]
    PathChar(char),
}

/// Why a certificate is not an X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    #[error("unreadable subjectAltName: {0}")]
    SubjectAltName(String),
    #[error("certificate has no subjectAltName")]
    NoSubjectAltName,
    #[error("an X509-SVID must carry exactly one URI SAN; found {0}")]
    UriSanCount(usize),
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
}

/// The SPIFFE ID of a Kubernetes ServiceAccount: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`
/// (contract: SPIFFE IDs). The one place this format is written.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Checks one SPIFFE ID: scheme `spiffe://`, a non-empty trust domain of `[a-z0-9.-_]` (so no
/// userinfo or port), a path of non-empty segments of `[A-Za-z0-9.-_]` that are not `.` or `..`,
/// no trailing `/`, no query or fragment, at most [`MAX_SPIFFE_ID_BYTES`].
pub fn validate_spiffe_id(uri: &str) -> Result<(), SpiffeIdError> {
    if uri.len() > MAX_SPIFFE_ID_BYTES {
        return Err(SpiffeIdError::TooLong(uri.len()));
    }
    let rest = uri.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::TrustDomainChar(c));
    }
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(SpiffeIdError::Segment(segment.to_string()));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathChar(c));
        }
    }
    Ok(())
}

/// The SPIFFE ID of an X509-SVID (DER): the certificate must carry exactly one URI SAN, and it
/// must be a valid SPIFFE ID. A certificate with several URI SANs (one of them matching) is
/// refused.
pub fn svid_spiffe_id(der: &[u8]) -> Result<String, SvidError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::SubjectAltName(e.to_string()))?
        .ok_or(SvidError::NoSubjectAltName)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => {
            validate_spiffe_id(uri)?;
            Ok((*uri).to_string())
        }
        _ => Err(SvidError::UriSanCount(uris.len())),
    }
}

/// The `spiffe://` URI SANs of a parsed certificate, in order: what status and logs show. Identity
/// decisions use [`svid_spiffe_id`], which also requires exactly one URI SAN.
pub fn spiffe_uri_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}

/// The SPIFFE ID of the end-entity certificate of a peer chain: `None` unless it is an X509-SVID.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<String> {
    svid_spiffe_id(chain.first()?.as_ref()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_account_id_format() {
        assert_eq!(
            spiffe_id("cluster.local", "park", "demo-device-hub"),
            "spiffe://cluster.local/ns/park/sa/demo-device-hub"
        );
    }

    #[test]
    fn spiffe_ids_follow_the_x509_svid_rules() {
        for ok in [
            "spiffe://cluster.local/ns/park/sa/demo-device-hub",
            "spiffe://example.org",
            "spiffe://a_b-c.d/x.y/Z_9",
        ] {
            assert_eq!(validate_spiffe_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://cluster.local/ns/x",
            "spiffe://",
            "spiffe:///ns/x",
            "spiffe://user@cluster.local/ns/x",
            "spiffe://cluster.local:8443/ns/x",
            "spiffe://Cluster.local/ns/x",
            "spiffe://cluster.local/ns/x?q=1",
            "spiffe://cluster.local/ns/x#frag",
            "spiffe://cluster.local/ns//x",
            "spiffe://cluster.local/ns/./x",
            "spiffe://cluster.local/ns/../x",
            "spiffe://cluster.local/ns/x/",
            "spiffe://cluster.local/ns/%41",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_spiffe_id(&format!("spiffe://a/{}", "x".repeat(2048))),
            Err(SpiffeIdError::TooLong(2059))
        );
    }

    pub(crate) fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn an_svid_carries_exactly_one_uri_san() {
        let hub = "spiffe://cluster.local/ns/park/sa/demo-device-hub";
        assert_eq!(svid_spiffe_id(&cert_with_uris(&[hub])), Ok(hub.to_string()));
        for (uris, count) in [
            (vec![hub, "spiffe://cluster.local/ns/park/sa/evil"], 2),
            (vec!["spiffe://cluster.local/ns/park/sa/evil", hub], 2),
            (vec![hub, "https://example.org/"], 2),
            (vec![], 0),
        ] {
            let der = cert_with_uris(&uris);
            let err = svid_spiffe_id(&der).expect_err("refused");
            assert!(
                matches!(err, SvidError::UriSanCount(n) if n == count)
                    || (count == 0 && err == SvidError::NoSubjectAltName),
                "{uris:?}: {err}"
            );
            assert_eq!(
                peer_spiffe_id(&[CertificateDer::from(der)]),
                None,
                "{uris:?}"
            );
        }
        let bad = cert_with_uris(&["spiffe://cluster.local/ns/park/sa/x?y"]);
        assert_eq!(
            svid_spiffe_id(&bad),
            Err(SvidError::Id(SpiffeIdError::PathChar('?')))
        );
        assert!(matches!(
            svid_spiffe_id(b"garbage"),
            Err(SvidError::Parse(_))
        ));
    }
}
