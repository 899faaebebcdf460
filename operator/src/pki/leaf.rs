//! Leaf certificates: SPIFFE identities, Service DNS names and issuance.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::ca::CaKeyPair;
use super::der::{self, pem_encode, trunc_secs};
use super::error::{PkiError, Result};

/// Default leaf lifetime (24h).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default backdating of `notBefore` to tolerate clock skew between nodes (5 minutes).
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Kubernetes cluster domain used for the fully qualified Service name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A validated SPIFFE ID of the form `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
///
/// contract: SPIFFE identities
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    trust_domain_len: usize,
}

impl SpiffeId {
    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len().."spiffe://".len() + self.trust_domain_len]
    }
    /// Parses and validates `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(uri: &str) -> Result<Self> {
        let invalid = |detail| PkiError::InvalidSpiffeId {
            value: uri.to_owned(),
            detail,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("missing path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => spiffe_id(td, ns, sa),
            _ => Err(invalid("path must be /ns/<namespace>/sa/<serviceAccount>")),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Validates a SPIFFE trust domain: 1-255 characters of `[a-z0-9._-]`, no leading or trailing
/// dot, no empty label (SPIFFE-ID spec §2.1; upper case is rejected, not folded).
pub fn validate_trust_domain(trust_domain: &str) -> Result<()> {
    let invalid = |detail| PkiError::InvalidTrustDomain {
        value: trust_domain.to_owned(),
        detail,
    };
    if trust_domain.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if trust_domain.len() > 255 {
        return Err(invalid("must be at most 255 characters"));
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(invalid(
            "only lower-case letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    if trust_domain.starts_with('.') || trust_domain.ends_with('.') || trust_domain.contains("..") {
        return Err(invalid("must not start or end with '.' or contain '..'"));
    }
    Ok(())
}

/// Checks a Kubernetes DNS-1123 label (namespace names, Service names).
fn validate_dns1123_label(value: &str) -> std::result::Result<(), &'static str> {
    if value.is_empty() || value.len() > 63 {
        return Err("must have 1 to 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lower-case letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks a Kubernetes DNS-1123 subdomain (ServiceAccount names).
fn validate_dns1123_subdomain(value: &str) -> std::result::Result<(), &'static str> {
    if value.is_empty() || value.len() > 253 {
        return Err("must have 1 to 253 characters");
    }
    value.split('.').try_for_each(validate_dns1123_label)
}

/// Validates a DNS name used in a SAN (lower-case DNS-1123 subdomain, no wildcards).
pub fn validate_dns_name(name: &str) -> Result<()> {
    validate_dns1123_subdomain(name).map_err(|detail| PkiError::InvalidDnsName {
        value: name.to_owned(),
        detail,
    })
}

/// Builds `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>` after validating every
/// part (trust domain syntax, namespace as DNS-1123 label, ServiceAccount as DNS-1123 subdomain).
///
/// contract: SPIFFE identities
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId> {
    validate_trust_domain(trust_domain)?;
    validate_dns1123_label(namespace).map_err(|detail| PkiError::InvalidSpiffeId {
        value: namespace.to_owned(),
        detail,
    })?;
    validate_dns1123_subdomain(service_account).map_err(|detail| PkiError::InvalidSpiffeId {
        value: service_account.to_owned(),
        detail,
    })?;
    Ok(SpiffeId {
        uri: mpm_spiffe::spiffe_id(trust_domain, namespace, service_account),
        trust_domain_len: trust_domain.len(),
    })
}

/// The DNS names of a Service: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
/// `<svc>.<ns>.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Result<Vec<String>> {
    for (value, what) in [(service, "service"), (namespace, "namespace")] {
        validate_dns1123_label(value).map_err(|detail| PkiError::InvalidDnsName {
            value: format!("{what} {value}"),
            detail,
        })?;
    }
    Ok(vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}"),
    ])
}

/// What to put into a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// The URI SAN.
    pub spiffe_id: SpiffeId,
    /// DNS SANs (usually [`service_dns_names`]; may be empty, e.g. for the operator's client cert).
    pub dns_names: Vec<String>,
    /// Lifetime counted from `now` (the backdating comes on top).
    pub validity: Duration,
    /// How far `notBefore` lies before `now`.
    pub backdate: Duration,
}

impl LeafRequest {
    /// A request with [`DEFAULT_LEAF_VALIDITY`] and [`DEFAULT_BACKDATE`].
    pub fn new(spiffe_id: SpiffeId, dns_names: Vec<String>) -> Self {
        Self {
            spiffe_id,
            dns_names,
            validity: DEFAULT_LEAF_VALIDITY,
            backdate: DEFAULT_BACKDATE,
        }
    }
}

/// A freshly issued leaf certificate with its private key.
///
/// `Debug` redacts the key. Write `cert_pem` to `tls.crt` and `key_pem` to `tls.key`
/// (contract: Mounted files).
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The leaf certificate, PEM, nothing else.
    pub cert_pem: String,
    /// The private key, PEM PKCS#8 ECDSA P-256. Secret.
    pub key_pem: String,
    /// Serial number, lower-case hex without leading zeros (as in `/status` `certificateSerial`).
    pub serial_hex: String,
    /// `notBefore` (backdated).
    pub not_before: DateTime<Utc>,
    /// `notAfter` (never after the CA's `notAfter`).
    pub not_after: DateTime<Utc>,
    /// SHA-256 hex of the issuing CA certificate DER.
    pub ca_fingerprint: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// 16 random bytes, top bit clear and second bit set: a positive 126-bit serial that always
/// encodes in exactly 16 bytes (RFC 5280 §4.1.2.2 allows up to 20).
pub(crate) fn random_serial() -> Result<[u8; 16]> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::IssuanceFailed {
            detail: "random number generator failed".into(),
        })?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// A P-256 public key given as its uncompressed point.
struct P256PublicKey<'a>(&'a [u8]);

impl PublicKeyData for P256PublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Issues a leaf certificate signed by `ca` with a fresh ECDSA P-256 key.
///
/// Profile: subject `CN=<first DNS name or SPIFFE ID>`, SAN URI = SPIFFE ID plus the DNS names,
/// `CA:FALSE` (critical), keyUsage `digitalSignature` (critical), EKU `serverAuth, clientAuth`,
/// authority key identifier, random positive serial, `notBefore = now - backdate`,
/// `notAfter = min(now + validity, CA notAfter)`.
pub fn issue_leaf(ca: &CaKeyPair, request: &LeafRequest, now: DateTime<Utc>) -> Result<IssuedCert> {
    if request.validity.is_zero() {
        return Err(PkiError::InvalidValidity {
            detail: "leaf validity must be positive",
        });
    }
    let now = trunc_secs(now);
    if ca.not_after() <= now {
        return Err(PkiError::CaExpired {
            not_after: ca.not_after(),
        });
    }
    let mut sans = Vec::with_capacity(1 + request.dns_names.len());
    sans.push(SanType::URI(
        request
            .spiffe_id
            .as_str()
            .try_into()
            .map_err(|_| PkiError::InvalidSpiffeId {
                value: request.spiffe_id.to_string(),
                detail: "not an IA5 string",
            })?,
    ));
    for name in &request.dns_names {
        validate_dns_name(name)?;
        sans.push(SanType::DnsName(name.as_str().try_into().map_err(
            |_| PkiError::InvalidDnsName {
                value: name.clone(),
                detail: "not an IA5 string",
            },
        )?));
    }

    let not_before = der::sub(now, request.backdate)?;
    let not_after = der::add(now, request.validity)?.min(ca.not_after());
    let serial = random_serial()?;

    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).map_err(|_| {
            PkiError::IssuanceFailed {
                detail: "leaf key generation failed".into(),
            }
        })?;
    // ring's PKCS#8 carries the public point; reading it avoids a second scalar multiplication.
    let parsed;
    let public_point = match der::p256_public_key_from_ring_pkcs8(pkcs8.as_ref()) {
        Some(point) => point,
        None => {
            parsed =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|_| PkiError::IssuanceFailed {
                        detail: "leaf key decoding failed".into(),
                    })?;
            parsed.public_key().as_ref()
        }
    };

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let cn = request
        .dns_names
        .first()
        .map(String::as_str)
        .unwrap_or(request.spiffe_id.as_str());
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = der::to_offset(not_before)?;
    params.not_after = der::to_offset(not_after)?;

    let cert = params
        .signed_by(&P256PublicKey(public_point), ca.issuer())
        .map_err(|_| PkiError::IssuanceFailed {
            detail: "signing the leaf certificate failed".into(),
        })?;

    Ok(IssuedCert {
        cert_pem: pem_encode("CERTIFICATE", cert.der()),
        key_pem: pem_encode("PRIVATE KEY", pkcs8.as_ref()),
        serial_hex: hex::encode(serial),
        not_before,
        not_after,
        ca_fingerprint: ca.fingerprint().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_format_and_parse() {
        let id = spiffe_id("cluster.local", "park", "demo-device-hub").unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://cluster.local/ns/park/sa/demo-device-hub"
        );
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        assert!(SpiffeId::parse("spiffe://cluster.local/ns/park").is_err());
        assert!(SpiffeId::parse("https://cluster.local/ns/a/sa/b").is_err());
    }

    #[test]
    fn trust_domain_syntax() {
        for ok in ["cluster.local", "example.org", "td_1-x", "a"] {
            assert!(validate_trust_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Cluster.local",
            "cluster.local:8080",
            "a/b",
            ".a",
            "a.",
            "a..b",
            "user@td",
            &"a".repeat(256),
        ] {
            let err = validate_trust_domain(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidTrustDomain", "{bad}");
        }
        assert_eq!(
            spiffe_id("td", "Bad_NS", "sa").unwrap_err().reason(),
            "InvalidSpiffeID"
        );
        assert_eq!(
            spiffe_id("td", "ns", "").unwrap_err().reason(),
            "InvalidSpiffeID"
        );
    }

    #[test]
    fn service_names() {
        assert_eq!(
            service_dns_names("demo-smoc-service", "park").unwrap(),
            vec![
                "demo-smoc-service",
                "demo-smoc-service.park",
                "demo-smoc-service.park.svc",
                "demo-smoc-service.park.svc.cluster.local"
            ]
        );
        assert!(service_dns_names("Bad", "park").is_err());
        assert!(service_dns_names("svc", "").is_err());
    }

    #[test]
    fn serial_is_positive_and_16_bytes() {
        for _ in 0..100 {
            let s = random_serial().unwrap();
            assert!(s[0] & 0x80 == 0 && s[0] >= 0x40);
        }
    }
}
