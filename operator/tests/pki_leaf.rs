//! Leaf issuance: certificate contents parsed back, chain verification with rustls/webpki,
//! reading back (`inspect_cert`, `leaf_matches`) and no key leaks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use mpm_operator::pki::{
    bundle_pem, bundle_sha256, cert_fingerprint, generate_ca, identify_issuer, inspect_cert,
    inspect_cert_with_issuers, issue_leaf, leaf_matches, leaf_mismatch, service_dns_names,
    spiffe_id, CaKeyPair, ExistingLeaf, IssuedCert, LeafMismatch, LeafRequest, DEFAULT_CA_VALIDITY,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn unix(t: DateTime<Utc>) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.timestamp() as u64))
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca_pems: &[&str]) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verify_as_server(
    bundle: &str,
    leaf_pem: &str,
    name: &str,
    at: DateTime<Utc>,
) -> Result<(), rustls::Error> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&[bundle]), provider())
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            &der_of(leaf_pem),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            unix(at),
        )
        .map(|_| ())
}

fn verify_as_client(bundle: &str, leaf_pem: &str, at: DateTime<Utc>) -> Result<(), rustls::Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&[bundle]), provider())
            .build()
            .unwrap();
    verifier
        .verify_client_cert(&der_of(leaf_pem), &[], unix(at))
        .map(|_| ())
}

fn ca() -> CaKeyPair {
    generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now() - TimeDelta::days(1)).unwrap()
}

fn request() -> LeafRequest {
    LeafRequest::new(
        spiffe_id("cluster.local", "park", "demo-device-hub").unwrap(),
        service_dns_names("demo-device-hub", "park").unwrap(),
    )
}

fn issue(ca: &CaKeyPair) -> IssuedCert {
    issue_leaf(ca, &request(), now()).unwrap()
}

#[test]
fn leaf_contents_parsed_back() {
    let ca = ca();
    let leaf = issue(&ca);
    let der = der_of(&leaf.cert_pem);
    let (rest, x509) = parse_x509_certificate(&der).unwrap();
    assert!(rest.is_empty());
    // Only one certificate in the PEM.
    assert_eq!(
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).count(),
        1
    );

    let san = x509.subject_alternative_name().unwrap().unwrap();
    let mut uris = vec![];
    let mut dns = vec![];
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(uris, ["spiffe://cluster.local/ns/park/sa/demo-device-hub"]);
    assert_eq!(
        dns,
        [
            "demo-device-hub",
            "demo-device-hub.park",
            "demo-device-hub.park.svc",
            "demo-device-hub.park.svc.cluster.local"
        ]
    );

    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca, "CA:FALSE");
    assert!(bc.critical);
    let ku = x509.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.key_encipherment());
    let eku = x509.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing);

    // Backdated by 5 minutes, 24h lifetime.
    assert_eq!(
        x509.validity().not_before.timestamp(),
        now().timestamp() - 300
    );
    assert_eq!(
        x509.validity().not_after.timestamp(),
        now().timestamp() + 24 * 3600
    );
    assert_eq!(leaf.not_before, now() - TimeDelta::minutes(5));
    assert_eq!(leaf.not_after, now() + TimeDelta::hours(24));

    // Serial: positive, 16 bytes, reported as hex.
    assert_eq!(hex::encode(x509.raw_serial()), leaf.serial_hex);
    assert_eq!(leaf.serial_hex.len(), 32);
    assert!(x509.raw_serial()[0] < 0x80);

    // Issuer/AKI point at the CA; ECDSA P-256 key, ecdsa-with-SHA256 signature.
    let ca_der = der_of(ca.cert_pem());
    let (_, ca_x509) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(x509.issuer().as_raw(), ca_x509.subject().as_raw());
    let ski = ca_x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let aki = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski);
    assert_eq!(
        x509.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    match x509.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::EC(point) => assert_eq!(point.key_size(), 256),
        other => panic!("unexpected key {other:?}"),
    }
    assert_eq!(leaf.ca_fingerprint, ca.fingerprint());

    // The key is PKCS#8 and usable by rustls.
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    rustls::crypto::ring::sign::any_ecdsa_type(&key).unwrap();
}

#[test]
fn chain_verifies_with_webpki_as_server_and_client() {
    let ca = ca();
    let leaf = issue(&ca);
    let bundle = bundle_pem(&[ca.cert_pem()]);
    for name in [
        "demo-device-hub",
        "demo-device-hub.park",
        "demo-device-hub.park.svc",
        "demo-device-hub.park.svc.cluster.local",
    ] {
        verify_as_server(&bundle, &leaf.cert_pem, name, now()).unwrap();
    }
    verify_as_client(&bundle, &leaf.cert_pem, now()).unwrap();
    // Backdating: valid 4 minutes "before" issuance (a peer with a slow clock).
    verify_as_client(&bundle, &leaf.cert_pem, now() - TimeDelta::minutes(4)).unwrap();
    // Wrong name, expired, not yet valid, other CA: refused.
    assert!(verify_as_server(&bundle, &leaf.cert_pem, "other.park.svc", now()).is_err());
    assert!(verify_as_client(&bundle, &leaf.cert_pem, now() + TimeDelta::hours(25)).is_err());
    assert!(verify_as_client(&bundle, &leaf.cert_pem, now() - TimeDelta::minutes(6)).is_err());
    let other = generate_ca("other", DEFAULT_CA_VALIDITY, now()).unwrap();
    assert!(verify_as_client(other.cert_pem(), &leaf.cert_pem, now()).is_err());
    // A bundle with both CAs (rotation) accepts leaves of either.
    let both = bundle_pem(&[ca.cert_pem(), other.cert_pem()]);
    let other_leaf = issue(&other);
    verify_as_client(&both, &leaf.cert_pem, now()).unwrap();
    verify_as_client(&both, &other_leaf.cert_pem, now()).unwrap();
}

#[test]
fn client_only_identity_without_dns_names() {
    let ca = ca();
    let req = LeafRequest::new(
        spiffe_id("cluster.local", "park", "mpm-operator").unwrap(),
        vec![],
    );
    let leaf = issue_leaf(&ca, &req, now()).unwrap();
    verify_as_client(ca.cert_pem(), &leaf.cert_pem, now()).unwrap();
    let info = inspect_cert(&leaf.cert_pem).unwrap();
    assert_eq!(
        info.uri_sans,
        ["spiffe://cluster.local/ns/park/sa/mpm-operator"]
    );
    assert!(info.dns_sans.is_empty());
}

#[test]
fn leaf_lifetime_is_capped_by_the_ca() {
    let ca = generate_ca("short", Duration::from_secs(3600), now()).unwrap();
    let leaf = issue(&ca);
    assert_eq!(leaf.not_after, ca.not_after());
    let expired =
        generate_ca("gone", Duration::from_secs(60), now() - TimeDelta::hours(1)).unwrap();
    assert_eq!(
        issue_leaf(&expired, &request(), now())
            .unwrap_err()
            .reason(),
        "CAExpired"
    );
}

#[test]
fn invalid_requests_are_rejected() {
    let ca = ca();
    let mut req = request();
    req.dns_names.push("Not_A_DNS_Name".into());
    assert_eq!(
        issue_leaf(&ca, &req, now()).unwrap_err().reason(),
        "InvalidDNSName"
    );
    let mut req = request();
    req.validity = Duration::ZERO;
    assert_eq!(
        issue_leaf(&ca, &req, now()).unwrap_err().reason(),
        "InvalidValidity"
    );
}

#[test]
fn serials_and_keys_are_unique() {
    let ca = ca();
    let a = issue(&ca);
    let b = issue(&ca);
    assert_ne!(a.serial_hex, b.serial_hex);
    assert_ne!(a.key_pem, b.key_pem);
}

#[test]
fn debug_does_not_leak_keys() {
    let ca = ca();
    let leaf = issue(&ca);
    let existing = ExistingLeaf {
        cert_pem: &leaf.cert_pem,
        key_pem: &leaf.key_pem,
    };
    for text in [
        format!("{leaf:?}"),
        format!("{leaf:#?}"),
        format!("{existing:?}"),
        format!("{ca:?}"),
    ] {
        assert!(text.contains("redacted"), "{text}");
        for key in [&leaf.key_pem, ca.key_pem()] {
            for line in key.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(&line[..line.len().min(16)]), "{text}");
            }
        }
    }
}

#[test]
fn inspect_reads_back_what_was_issued() {
    let ca = ca();
    let other = generate_ca("other", DEFAULT_CA_VALIDITY, now()).unwrap();
    let leaf = issue(&ca);
    let info = inspect_cert(&leaf.cert_pem).unwrap();
    assert_eq!(info.serial_hex, leaf.serial_hex);
    assert_eq!(info.not_before, leaf.not_before);
    assert_eq!(info.not_after, leaf.not_after);
    assert_eq!(info.uri_sans, [request().spiffe_id.to_string()]);
    assert_eq!(info.dns_sans, request().dns_names);
    assert!(!info.is_ca);
    assert_eq!(info.pem_certificates, 1);
    assert_eq!(info.issuer_fingerprint, None);
    assert_eq!(info.fingerprint, cert_fingerprint(&leaf.cert_pem).unwrap());
    assert!(info.authority_key_id.is_some());

    let with =
        inspect_cert_with_issuers(&leaf.cert_pem, &[other.cert_pem(), ca.cert_pem()]).unwrap();
    assert_eq!(with.issuer_fingerprint.as_deref(), Some(ca.fingerprint()));
    assert_eq!(identify_issuer(&leaf.cert_pem, &[other.cert_pem()]), None);
    let ca_info = inspect_cert(ca.cert_pem()).unwrap();
    assert!(ca_info.is_ca);
    assert_eq!(ca_info.fingerprint, ca.fingerprint());

    assert_eq!(
        inspect_cert("garbage").unwrap_err().reason(),
        "CertificateMalformed"
    );
}

#[test]
fn leaf_matches_detects_every_kind_of_drift() {
    let ca = ca();
    let leaf = issue(&ca);
    let ok = ExistingLeaf {
        cert_pem: &leaf.cert_pem,
        key_pem: &leaf.key_pem,
    };
    assert!(leaf_matches(&ok, &ca, &request()));

    // Other CA.
    let other = generate_ca("other", DEFAULT_CA_VALIDITY, now()).unwrap();
    assert_eq!(
        leaf_mismatch(&ok, &other, &request()),
        Some(LeafMismatch::WrongIssuer)
    );
    // Same subject name, different key (a regenerated CA with the same CN).
    let same_name = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    assert_eq!(
        leaf_mismatch(&ok, &same_name, &request()),
        Some(LeafMismatch::WrongIssuer)
    );
    // Different SANs.
    let mut req = request();
    req.dns_names.pop();
    assert_eq!(
        leaf_mismatch(&ok, &ca, &req),
        Some(LeafMismatch::SansDiffer)
    );
    let req = LeafRequest::new(
        spiffe_id("example.org", "park", "demo-device-hub").unwrap(),
        request().dns_names,
    );
    assert_eq!(
        leaf_mismatch(&ok, &ca, &req),
        Some(LeafMismatch::SansDiffer)
    );
    // DNS order does not matter.
    let mut req = request();
    req.dns_names.reverse();
    assert!(leaf_matches(&ok, &ca, &req));
    // Key of another leaf.
    let second = issue(&ca);
    let swapped = ExistingLeaf {
        cert_pem: &leaf.cert_pem,
        key_pem: &second.key_pem,
    };
    assert_eq!(
        leaf_mismatch(&swapped, &ca, &request()),
        Some(LeafMismatch::KeyMismatch)
    );
    // Broken key / certificate.
    let broken_key = ExistingLeaf {
        cert_pem: &leaf.cert_pem,
        key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    };
    assert_eq!(
        leaf_mismatch(&broken_key, &ca, &request()),
        Some(LeafMismatch::KeyMalformed)
    );
    let broken_cert = ExistingLeaf {
        cert_pem: "",
        key_pem: &leaf.key_pem,
    };
    assert!(matches!(
        leaf_mismatch(&broken_cert, &ca, &request()),
        Some(LeafMismatch::CertificateMalformed(_))
    ));
    // Chain in tls.crt (contract: leaf only).
    let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem());
    let with_chain = ExistingLeaf {
        cert_pem: &chain,
        key_pem: &leaf.key_pem,
    };
    assert_eq!(
        leaf_mismatch(&with_chain, &ca, &request()),
        Some(LeafMismatch::ExtraCertificates(2))
    );
    // The CA itself in a leaf Secret.
    let ca_as_leaf = ExistingLeaf {
        cert_pem: ca.cert_pem(),
        key_pem: ca.key_pem(),
    };
    assert_eq!(
        leaf_mismatch(&ca_as_leaf, &ca, &request()),
        Some(LeafMismatch::IsCa)
    );
    for m in [LeafMismatch::KeyMismatch, LeafMismatch::WrongIssuer] {
        assert!(!m.reason().is_empty() && !m.to_string().is_empty());
    }
}

#[test]
fn bundle_hash_is_over_exact_bytes() {
    let a = ca();
    let b = generate_ca("next", DEFAULT_CA_VALIDITY, now()).unwrap();
    let bundle = bundle_pem(&[a.cert_pem(), b.cert_pem()]);
    assert_eq!(bundle, format!("{}{}", a.cert_pem(), b.cert_pem()));
    let expected = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bundle.as_bytes()));
    assert_eq!(bundle_sha256(&bundle), expected);
    assert_eq!(bundle_pem(&[a.cert_pem(), b.cert_pem()]), bundle);
}
