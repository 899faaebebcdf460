//! Reading certificates back (from existing Secrets) and deciding whether they still fit.

use std::fmt;

use chrono::{DateTime, Utc};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};

use super::ca::CaKeyPair;
use super::der::{self, sha256_hex};
use super::error::{PkiError, Result};
use super::leaf::LeafRequest;

/// What the controller needs to know about a stored certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial, lower-case hex without leading zero bytes.
    pub serial_hex: String,
    /// `notBefore`.
    pub not_before: DateTime<Utc>,
    /// `notAfter`.
    pub not_after: DateTime<Utc>,
    /// URI SANs in certificate order.
    pub uri_sans: Vec<String>,
    /// DNS SANs in certificate order.
    pub dns_sans: Vec<String>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// SHA-256 hex of this certificate's DER.
    pub fingerprint: String,
    /// Subject key identifier (hex), if present.
    pub subject_key_id: Option<String>,
    /// Authority key identifier (hex), if present.
    pub authority_key_id: Option<String>,
    /// Fingerprint of the CA that signed it, when a candidate CA was given and verified the
    /// signature ([`inspect_cert_with_issuers`]); `None` from [`inspect_cert`].
    pub issuer_fingerprint: Option<String>,
    /// Number of `CERTIFICATE` blocks in the PEM (the first one is described here).
    pub pem_certificates: usize,
}

/// All `CERTIFICATE` blocks of a PEM text, as DER.
fn certificates(pem: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        match item {
            Ok((SectionKind::Certificate, der)) => out.push(der),
            Ok(_) => {}
            Err(e) => {
                return Err(PkiError::CertificateMalformed {
                    detail: format!("invalid PEM: {e}"),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(PkiError::CertificateMalformed {
            detail: "no CERTIFICATE PEM block found".into(),
        });
    }
    Ok(out)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::CertificateMalformed {
            detail: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(PkiError::CertificateMalformed {
            detail: e.to_string(),
        }),
    }
}

fn info_of(x509: &X509Certificate<'_>, der: &[u8], pem_certificates: usize) -> Result<CertInfo> {
    let malformed = |e: x509_parser::error::X509Error| PkiError::CertificateMalformed {
        detail: e.to_string(),
    };
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Some(san) = x509.subject_alternative_name().map_err(malformed)? {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    let is_ca = x509
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca);
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in x509.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(hex::encode(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| hex::encode(id.0))
            }
            _ => {}
        }
    }
    let raw_serial = x509.raw_serial();
    let skip = raw_serial
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(raw_serial.len().saturating_sub(1));
    Ok(CertInfo {
        serial_hex: hex::encode(&raw_serial[skip..]),
        not_before: der::from_asn1(x509.validity().not_before)?,
        not_after: der::from_asn1(x509.validity().not_after)?,
        uri_sans,
        dns_sans,
        is_ca,
        fingerprint: sha256_hex(der),
        subject_key_id,
        authority_key_id,
        issuer_fingerprint: None,
        pem_certificates,
    })
}

/// Describes the first certificate of a PEM text (`tls.crt` of a Secret).
pub fn inspect_cert(pem: &str) -> Result<CertInfo> {
    let ders = certificates(pem)?;
    let der = &ders[0];
    let x509 = parse(der)?;
    info_of(&x509, der, ders.len())
}

/// Like [`inspect_cert`], and fills [`CertInfo::issuer_fingerprint`] with the fingerprint of the
/// first of `ca_cert_pems` whose key verifies the certificate's signature.
pub fn inspect_cert_with_issuers(pem: &str, ca_cert_pems: &[&str]) -> Result<CertInfo> {
    let ders = certificates(pem)?;
    let der = &ders[0];
    let x509 = parse(der)?;
    let mut info = info_of(&x509, der, ders.len())?;
    info.issuer_fingerprint = ca_cert_pems.iter().find_map(|ca_pem| {
        let ca_der = certificates(ca_pem).ok()?.into_iter().next()?;
        let ca = parse(&ca_der).ok()?;
        signature_valid(&x509, &ca).then(|| sha256_hex(&ca_der))
    });
    Ok(info)
}

/// The fingerprint (SHA-256 hex of DER) of the CA among `ca_cert_pems` that signed `cert_pem`.
pub fn identify_issuer(cert_pem: &str, ca_cert_pems: &[&str]) -> Option<String> {
    inspect_cert_with_issuers(cert_pem, ca_cert_pems)
        .ok()
        .and_then(|info| info.issuer_fingerprint)
}

/// SHA-256 hex of the first certificate's DER in `pem`.
pub fn cert_fingerprint(pem: &str) -> Result<String> {
    Ok(sha256_hex(&certificates(pem)?[0]))
}

/// True when `issuer`'s subject is `cert`'s issuer and `issuer`'s key verifies `cert`'s
/// signature (no validity or usage checks).
pub(crate) fn signature_valid(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return false;
    }
    let spki = issuer.public_key();
    let key_alg = &spki.algorithm.algorithm;
    let sig_alg = &cert.signature_algorithm.algorithm;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let alg: &dyn VerificationAlgorithm = if *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let p256 = curve.as_ref() == Some(&OID_EC_P256);
        let p384 = curve.as_ref() == Some(&OID_NIST_EC_P384);
        match (p256, p384) {
            (true, _) if *sig_alg == OID_SIG_ECDSA_WITH_SHA256 => {
                &signature::ECDSA_P256_SHA256_ASN1
            }
            (true, _) if *sig_alg == OID_SIG_ECDSA_WITH_SHA384 => {
                &signature::ECDSA_P256_SHA384_ASN1
            }
            (_, true) if *sig_alg == OID_SIG_ECDSA_WITH_SHA256 => {
                &signature::ECDSA_P384_SHA256_ASN1
            }
            (_, true) if *sig_alg == OID_SIG_ECDSA_WITH_SHA384 => {
                &signature::ECDSA_P384_SHA384_ASN1
            }
            _ => return false,
        }
    } else if *key_alg == OID_PKCS1_RSAENCRYPTION {
        if *sig_alg == OID_PKCS1_SHA256WITHRSA {
            &signature::RSA_PKCS1_2048_8192_SHA256
        } else if *sig_alg == OID_PKCS1_SHA384WITHRSA {
            &signature::RSA_PKCS1_2048_8192_SHA384
        } else if *sig_alg == OID_PKCS1_SHA512WITHRSA {
            &signature::RSA_PKCS1_2048_8192_SHA512
        } else {
            return false;
        }
    } else if *key_alg == OID_SIG_ED25519 && *sig_alg == OID_SIG_ED25519 {
        &signature::ED25519
    } else {
        return false;
    };
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .is_ok()
}

/// The contents of an existing leaf Secret (`tls.crt`, `tls.key`).
#[derive(Clone, Copy)]
pub struct ExistingLeaf<'a> {
    /// `tls.crt`.
    pub cert_pem: &'a str,
    /// `tls.key` (secret; never printed).
    pub key_pem: &'a str,
}

impl fmt::Debug for ExistingLeaf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExistingLeaf")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why an existing leaf does not fit (and must be reissued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafMismatch {
    /// `tls.crt` cannot be parsed.
    CertificateMalformed(String),
    /// `tls.crt` holds more than the leaf certificate (contract: leaf first, then nothing else).
    ExtraCertificates(usize),
    /// The certificate is a CA.
    IsCa,
    /// Not signed by the given CA.
    WrongIssuer,
    /// URI or DNS SANs differ from the request.
    SansDiffer,
    /// keyUsage/EKU/basicConstraints differ from the leaf profile.
    ProfileDiffers,
    /// `tls.key` is not a PKCS#8 ECDSA P-256 key.
    KeyMalformed,
    /// `tls.key` does not belong to `tls.crt`.
    KeyMismatch,
}

impl LeafMismatch {
    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            LeafMismatch::CertificateMalformed(_) => "CertificateMalformed",
            LeafMismatch::ExtraCertificates(_) => "ExtraCertificates",
            LeafMismatch::IsCa => "LeafIsCA",
            LeafMismatch::WrongIssuer => "WrongIssuer",
            LeafMismatch::SansDiffer => "SANsDiffer",
            LeafMismatch::ProfileDiffers => "ProfileDiffers",
            LeafMismatch::KeyMalformed => "KeyMalformed",
            LeafMismatch::KeyMismatch => "KeyMismatch",
        }
    }
}

impl fmt::Display for LeafMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafMismatch::CertificateMalformed(d) => write!(f, "certificate is malformed: {d}"),
            LeafMismatch::ExtraCertificates(n) => {
                write!(f, "tls.crt holds {n} certificates, expected 1")
            }
            LeafMismatch::IsCa => f.write_str("certificate is a CA"),
            LeafMismatch::WrongIssuer => f.write_str("certificate is not signed by the current CA"),
            LeafMismatch::SansDiffer => f.write_str("subject alternative names differ"),
            LeafMismatch::ProfileDiffers => f.write_str("key usages differ from the leaf profile"),
            LeafMismatch::KeyMalformed => {
                f.write_str("private key is not a PKCS#8 ECDSA P-256 key")
            }
            LeafMismatch::KeyMismatch => f.write_str("private key does not match the certificate"),
        }
    }
}

/// Checks an existing leaf against the CA that should have signed it and the current request.
/// Validity times are not checked here (see [`super::schedule::next_action`]).
pub fn leaf_mismatch(
    existing: &ExistingLeaf<'_>,
    ca: &CaKeyPair,
    request: &LeafRequest,
) -> Option<LeafMismatch> {
    let ders = match certificates(existing.cert_pem) {
        Ok(d) => d,
        Err(e) => return Some(LeafMismatch::CertificateMalformed(e.to_string())),
    };
    if ders.len() != 1 {
        return Some(LeafMismatch::ExtraCertificates(ders.len()));
    }
    let x509 = match parse(&ders[0]) {
        Ok(c) => c,
        Err(e) => return Some(LeafMismatch::CertificateMalformed(e.to_string())),
    };
    let info = match info_of(&x509, &ders[0], 1) {
        Ok(i) => i,
        Err(e) => return Some(LeafMismatch::CertificateMalformed(e.to_string())),
    };
    if info.is_ca {
        return Some(LeafMismatch::IsCa);
    }
    let Ok(ca_x509) = parse(ca.cert_der()) else {
        return Some(LeafMismatch::WrongIssuer);
    };
    if !signature_valid(&x509, &ca_x509) {
        return Some(LeafMismatch::WrongIssuer);
    }
    let mut want_dns: Vec<&str> = request.dns_names.iter().map(String::as_str).collect();
    let mut have_dns: Vec<&str> = info.dns_sans.iter().map(String::as_str).collect();
    want_dns.sort_unstable();
    want_dns.dedup();
    have_dns.sort_unstable();
    have_dns.dedup();
    if info.uri_sans != [request.spiffe_id.as_str()] || want_dns != have_dns {
        return Some(LeafMismatch::SansDiffer);
    }
    let profile_ok = x509
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.digital_signature() && !ku.value.key_cert_sign())
        && x509
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.server_auth && eku.value.client_auth);
    if !profile_ok {
        return Some(LeafMismatch::ProfileDiffers);
    }
    let Ok(key) = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(existing.key_pem.as_bytes())
    else {
        return Some(LeafMismatch::KeyMalformed);
    };
    let rng = ring::rand::SystemRandom::new();
    let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_pkcs8_der(),
        &rng,
    ) else {
        return Some(LeafMismatch::KeyMalformed);
    };
    use ring::signature::KeyPair as _;
    if pair.public_key().as_ref() != x509.public_key().subject_public_key.data.as_ref() {
        return Some(LeafMismatch::KeyMismatch);
    }
    None
}

/// True when the existing leaf is signed by `ca`, has exactly the requested SANs, the leaf
/// profile, and a key that belongs to the certificate. A leaf that matches is never replaced
/// before its renewal time.
pub fn leaf_matches(existing: &ExistingLeaf<'_>, ca: &CaKeyPair, request: &LeafRequest) -> bool {
    leaf_mismatch(existing, ca, request).is_none()
}
