//! Reading TLS material from PEM: a CA bundle into trust roots, a certificate chain and its
//! private key into a signing identity. Every endpoint (the services' own identity and trust
//! bundle, the HES client CA, the IdP's CA, the operator's device-hub client) reads its files
//! here, so a bundle is accepted or refused by the same rules everywhere. Errors name the file
//! and the certificate's index; they never hold key bytes.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// Why PEM material was refused. `what` names the file or key (`ca-bundle.pem`, `tls.crt`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("invalid PEM in {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("no PEM certificate found in {what}")]
    NoCertificate { what: String },
    #[error("{what}: certificate #{index} is not a usable CA: {reason}")]
    UnusableCa {
        what: String,
        index: usize,
        reason: String,
    },
    #[error("{what} holds no usable private key: {reason}")]
    Key { what: String, reason: String },
    #[error("the certificate does not match the private key: {reason}")]
    KeyMismatch { reason: String },
}

/// Every certificate of a PEM bundle as trust roots. A bundle without a certificate, with invalid
/// PEM, or with a certificate webpki cannot use as an anchor is refused as a whole (a partly read
/// bundle would trust less than its owner meant, silently).
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, PemError> {
    let certs = certificates(pem, what)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| PemError::UnusableCa {
            what: what.to_string(),
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The certificates of a PEM file, in order; at least one.
pub fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    // The parser's error never quotes the input, so no key bytes reach the message.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| PemError::Key {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// A signing identity: the chain of `cert_pem` (leaf first; the rest is sent as chain) and the key
/// of `key_pem`, checked to belong together.
pub fn certified_key(
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, PemError> {
    let chain = certificates(cert_pem, "tls.crt")?;
    let key = private_key(key_pem, "tls.key")?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| PemError::Key {
            what: "tls.key".into(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| PemError::KeyMismatch {
        reason: e.to_string(),
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_bundle_of_two_cas_gives_two_roots() {
        let bundle = format!("{}{}", ca_pem(), ca_pem());
        let roots = roots_from_pem(bundle.as_bytes(), "ca-bundle.pem").unwrap();
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn empty_and_broken_bundles_are_refused_naming_the_file() {
        let err = roots_from_pem(b"", "ca-bundle.pem").unwrap_err();
        assert_eq!(
            err,
            PemError::NoCertificate {
                what: "ca-bundle.pem".into()
            }
        );
        let err = roots_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n", "ca.crt").unwrap_err();
        assert!(
            matches!(err, PemError::Invalid { ref what, .. } if what == "ca.crt"),
            "{err}"
        );
        // A PEM block that is no certificate: refused as a whole, naming its index.
        let bundle = format!(
            "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ca_pem()
        );
        let err = roots_from_pem(bundle.as_bytes(), "ca.crt").unwrap_err();
        assert!(
            matches!(err, PemError::UnusableCa { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn key_errors_never_quote_the_key() {
        let secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n";
        let cert = {
            let key = rcgen::KeyPair::generate().unwrap();
            rcgen::CertificateParams::new(vec!["x".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .pem()
        };
        let provider = rustls::crypto::ring::default_provider();
        let err = certified_key(&provider, cert.as_bytes(), secret.as_bytes()).unwrap_err();
        assert!(!err.to_string().contains("U0VDUkVU"), "{err}");
        assert!(err.to_string().contains("tls.key"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let provider = rustls::crypto::ring::default_provider();
        let err = certified_key(&provider, cert.as_bytes(), other.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(matches!(err, PemError::KeyMismatch { .. }), "{err}");
        certified_key(&provider, cert.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    }
}
