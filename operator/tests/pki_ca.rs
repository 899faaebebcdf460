//! User CA handling: generation profile, loading, rejection reasons, key types, no key leaks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mpm_operator::pki::{
    generate_ca, issue_leaf, load_user_ca, service_dns_names, spiffe_id, CaKeyKind, CaSource,
    LeafRequest, PkiError, DEFAULT_CA_VALIDITY,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// The OpenSSL fixtures below were made in November 2026 and are valid for 100 years.
fn fixture_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn verify_server(
    ca_pem: &str,
    leaf_pem: &str,
    name: &str,
    at: DateTime<Utc>,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der_of(ca_pem))).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = CertificateDer::from(der_of(leaf_pem));
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(at.timestamp() as u64)),
        )
        .map(|_| ())
}

/// Every base64 line of a PEM body (what must never show up in messages).
fn key_lines(key_pem: &str) -> Vec<String> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 8)
        .map(str::to_owned)
        .collect()
}

fn assert_no_key_material(text: &str, key_pem: &str) {
    for line in key_lines(key_pem) {
        assert!(!text.contains(&line), "key material leaked: {text}");
        assert!(!text.contains(&line[..16]), "key material leaked: {text}");
    }
}

#[test]
fn generated_ca_profile() {
    let ca = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    let der = der_of(ca.cert_pem());
    assert_eq!(der, ca.cert_der());
    let (_, x509) = parse_x509_certificate(&der).unwrap();
    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x509.key_usage().unwrap().unwrap();
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(x509.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
    assert_eq!(
        x509.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    assert_eq!(
        x509.validity().not_before.timestamp(),
        now().timestamp() - 300
    );
    assert_eq!(
        x509.validity().not_after.timestamp(),
        now().timestamp() + 365 * 24 * 3600
    );
    assert_eq!(
        ca.not_after().timestamp(),
        now().timestamp() + 365 * 24 * 3600
    );
    let expected_fp = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der));
    assert_eq!(ca.fingerprint(), expected_fp);
    assert_eq!(ca.key_kind(), CaKeyKind::EcdsaP256);
    assert_eq!(ca.source(), CaSource::Generated);
    assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(x509.subject().to_string().contains("CN=demo-ca"));
}

#[test]
fn generated_ca_debug_redacts_key() {
    let ca = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    let dbg = format!("{ca:?} {ca:#?}");
    assert!(dbg.contains("redacted"));
    assert!(dbg.contains(ca.fingerprint()));
    assert_no_key_material(&dbg, ca.key_pem());
}

#[test]
fn generated_ca_roundtrips_through_load() {
    let ca = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    let loaded = load_user_ca(ca.cert_pem(), ca.key_pem(), now()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.source(), CaSource::User);
    assert_eq!(loaded.not_after(), ca.not_after());
    // A leaf from the loaded copy verifies against the original certificate.
    let id = spiffe_id("cluster.local", "park", "demo-device-hub").unwrap();
    let names = service_dns_names("demo-device-hub", "park").unwrap();
    let leaf = issue_leaf(&loaded, &LeafRequest::new(id, names), now()).unwrap();
    verify_server(
        ca.cert_pem(),
        &leaf.cert_pem,
        "demo-device-hub.park.svc",
        now(),
    )
    .unwrap();
}

#[test]
fn rejects_expired_and_not_yet_valid() {
    let old = now() - chrono::TimeDelta::days(800);
    let ca = generate_ca("old", DEFAULT_CA_VALIDITY, old).unwrap();
    let err = load_user_ca(ca.cert_pem(), ca.key_pem(), now()).unwrap_err();
    assert_eq!(err.reason(), "CAExpired");
    assert!(matches!(err, PkiError::CaExpired { not_after } if not_after == ca.not_after()));
    assert_no_key_material(&err.to_string(), ca.key_pem());

    let future = generate_ca(
        "future",
        DEFAULT_CA_VALIDITY,
        now() + chrono::TimeDelta::days(2),
    )
    .unwrap();
    let err = load_user_ca(future.cert_pem(), future.key_pem(), now()).unwrap_err();
    assert_eq!(err.reason(), "CANotYetValid");
}

#[test]
fn rejects_malformed_pem_and_der() {
    let ca = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    for bad_cert in [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    ] {
        let err = load_user_ca(bad_cert, ca.key_pem(), now()).unwrap_err();
        assert_eq!(err.reason(), "CAMalformed", "{bad_cert:?}: {err}");
        assert!(matches!(
            err,
            PkiError::CaMalformed {
                what: "certificate",
                ..
            }
        ));
    }
    // A truncated key: malformed, and the message must not echo any of it.
    let truncated: String = ca.key_pem().lines().take(2).collect::<Vec<_>>().join("\n");
    for bad_key in [
        "",
        "garbage",
        truncated.as_str(),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        let err = load_user_ca(ca.cert_pem(), bad_key, now()).unwrap_err();
        assert!(
            matches!(err.reason(), "CAMalformed" | "UnsupportedKey"),
            "{bad_key:?}: {err}"
        );
        assert_no_key_material(&err.to_string(), ca.key_pem());
        assert_no_key_material(&format!("{err:?}"), ca.key_pem());
    }
}

#[test]
fn rejects_certificates_that_are_not_cas() {
    let err = load_user_ca(NON_CA_CERT, P256_SEC1_KEY, now()).unwrap_err();
    assert_eq!(err.reason(), "NotACA");
    assert!(err.to_string().contains("CA:FALSE"));
    let err = load_user_ca(NO_BC_CERT, P256_SEC1_KEY, now()).unwrap_err();
    assert_eq!(err.reason(), "NotACA");
    assert!(err.to_string().contains("missing"));

    // A leaf issued by our own CA is not a CA either.
    let ca = generate_ca("demo-ca", DEFAULT_CA_VALIDITY, now()).unwrap();
    let id = spiffe_id("cluster.local", "park", "sa").unwrap();
    let leaf = issue_leaf(&ca, &LeafRequest::new(id, vec![]), now()).unwrap();
    let err = load_user_ca(&leaf.cert_pem, &leaf.key_pem, now()).unwrap_err();
    assert_eq!(err.reason(), "NotACA");
    assert_no_key_material(&format!("{err} {err:?}"), &leaf.key_pem);
}

#[test]
fn rejects_key_mismatch() {
    let a = generate_ca("a", DEFAULT_CA_VALIDITY, now()).unwrap();
    let b = generate_ca("b", DEFAULT_CA_VALIDITY, now()).unwrap();
    let err = load_user_ca(a.cert_pem(), b.key_pem(), now()).unwrap_err();
    assert_eq!(err.reason(), "CAKeyMismatch");
    assert_eq!(err, PkiError::CaKeyMismatch);
    assert_no_key_material(&format!("{err} {err:?}"), b.key_pem());
    // Different key type: a P-384 key for a P-256 certificate.
    let err = load_user_ca(a.cert_pem(), P384_CA_SEC1_KEY, now()).unwrap_err();
    assert_eq!(err.reason(), "CAKeyMismatch");
    // An RSA key for an ECDSA certificate.
    let err = load_user_ca(a.cert_pem(), RSA_CA_PKCS1_KEY, now()).unwrap_err();
    assert_eq!(err.reason(), "CAKeyMismatch");
}

#[test]
fn rejects_unsupported_key_types() {
    // P-521 is not supported by ring.
    let a = generate_ca("a", DEFAULT_CA_VALIDITY, now()).unwrap();
    let err = load_user_ca(a.cert_pem(), P521_PKCS8_KEY, now()).unwrap_err();
    assert_eq!(err.reason(), "UnsupportedKey");
    assert_no_key_material(&format!("{err} {err:?}"), P521_PKCS8_KEY);
}

#[test]
fn accepts_p384_ca_with_sec1_key_and_issues_verifiable_leaves() {
    let ca = load_user_ca(P384_CA_CERT, P384_CA_SEC1_KEY, fixture_now()).unwrap();
    assert_eq!(ca.key_kind(), CaKeyKind::EcdsaP384);
    assert!(ca.subject().contains("Utility Root P384"));
    let id = spiffe_id("cluster.local", "park", "demo-smoc-service").unwrap();
    let names = service_dns_names("demo-smoc-service", "park").unwrap();
    let leaf = issue_leaf(&ca, &LeafRequest::new(id, names), fixture_now()).unwrap();
    verify_server(
        P384_CA_CERT,
        &leaf.cert_pem,
        "demo-smoc-service.park.svc.cluster.local",
        fixture_now(),
    )
    .unwrap();
    let dbg = format!("{ca:?}");
    assert_no_key_material(&dbg, P384_CA_SEC1_KEY);
    assert_no_key_material(&dbg, ca.key_pem());
}

#[test]
fn accepts_rsa_ca_with_pkcs1_key_and_issues_verifiable_leaves() {
    let ca = load_user_ca(RSA_CA_CERT, RSA_CA_PKCS1_KEY, fixture_now()).unwrap();
    assert_eq!(ca.key_kind(), CaKeyKind::Rsa);
    let id = spiffe_id("cluster.local", "park", "demo-device-hub").unwrap();
    let names = service_dns_names("demo-device-hub", "park").unwrap();
    let leaf = issue_leaf(&ca, &LeafRequest::new(id, names), fixture_now()).unwrap();
    verify_server(
        RSA_CA_CERT,
        &leaf.cert_pem,
        "demo-device-hub",
        fixture_now(),
    )
    .unwrap();
    // The normalized key is PKCS#8 and loads again.
    assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = load_user_ca(RSA_CA_CERT, ca.key_pem(), fixture_now()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
}

#[test]
fn user_ca_pem_may_carry_more_blocks() {
    // A bundle with the CA first: only the first certificate is the CA.
    let ca = generate_ca("first", DEFAULT_CA_VALIDITY, now()).unwrap();
    let other = generate_ca("second", DEFAULT_CA_VALIDITY, now()).unwrap();
    let pem = format!("{}{}", ca.cert_pem(), other.cert_pem());
    let loaded = load_user_ca(&pem, ca.key_pem(), now()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
}

#[test]
fn reasons_are_stable() {
    let cases = [
        (PkiError::CaKeyMismatch, "CAKeyMismatch"),
        (PkiError::RenewBeforeNotPositive, "RenewBeforeNotPositive"),
        (
            PkiError::NotACa {
                detail: String::new(),
            },
            "NotACA",
        ),
        (
            PkiError::UnsupportedKey {
                detail: String::new(),
            },
            "UnsupportedKey",
        ),
    ];
    for (err, reason) in cases {
        assert_eq!(err.reason(), reason);
    }
}

// ---- fixtures ----

pub const P384_CA_CERT: &str = r"-----BEGIN CERTIFICATE-----
MIICKjCCAbCgAwIBAgIUMjV2cVui7WgdAOKC/UthVtZIFaUwCgYIKoZIzj0EAwIw
QzELMAkGA1UEBhMCREUxGDAWBgNVBAoMD0V4YW1wbGUgVXRpbGl0eTEaMBgGA1UE
AwwRVXRpbGl0eSBSb290IFAzODQwIBcNMjYxMTIyMTIxMjI0WhgPMjEyNjEwMjkx
MjEyMjRaMEMxCzAJBgNVBAYTAkRFMRgwFgYDVQQKDA9FeGFtcGxlIFV0aWxpdHkx
GjAYBgNVBAMMEVV0aWxpdHkgUm9vdCBQMzg0MHYwEAYHKoZIzj0CAQYFK4EEACID
YgAEOcRaAh5sryzBaorD2qthNn+T1PlE2y8Ad9Sdjq9LtLp1unhyaadyptffjGsp
xkeUXVPYoV0SfX++8SZLYbnyBsaLl7PT6FW49PK4YfcMAMk30I1I9UvYQDYUkcw/
Lumpo2MwYTAdBgNVHQ4EFgQUeQ0TtYJsHf3sGcgZL7TRD8897LgwHwYDVR0jBBgw
FoAUeQ0TtYJsHf3sGcgZL7TRD8897LgwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwCgYIKoZIzj0EAwIDaAAwZQIwAWBbbjg9xekH1Nwb+2Xm5XNgL53V
C9SBZUety1lAxLIHu78BTM+8i1l0rMglkBkDAjEAnSBmY3qTvAOyQP6br+SThlFh
RYUMipv71txhmADfsyySS65/LDqBHsznBm19QQN9
-----END CERTIFICATE-----
";

pub const P384_CA_SEC1_KEY: &str = r"-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDAU+nKZ28zWb3aczg910CxzaL4XcXQfUbsOig0qvynHZUAQ9iZ0gzFh
rlCgpVl1gtygBwYFK4EEACKhZANiAAQ5xFoCHmyvLMFqisPaq2E2f5PU+UTbLwB3
1J2Or0u0unW6eHJpp3Km19+MaynGR5RdU9ihXRJ9f77xJkthufIGxouXs9PoVbj0
8rhh9wwAyTfQjUj1S9hANhSRzD8u6ak=
-----END EC PRIVATE KEY-----
";

pub const RSA_CA_CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIDXTCCAkWgAwIBAgIUMWnhHg+7qGCsRa3CoOV7FjagJfYwDQYJKoZIhvcNAQEL
BQAwNTEYMBYGA1UECgwPRXhhbXBsZSBVdGlsaXR5MRkwFwYDVQQDDBBVdGlsaXR5
IFJvb3QgUlNBMCAXDTI2MTEyMjEyMTIyNVoYDzIxMjYxMDI5MTIxMjI1WjA1MRgw
FgYDVQQKDA9FeGFtcGxlIFV0aWxpdHkxGTAXBgNVBAMMEFV0aWxpdHkgUm9vdCBS
U0EwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCog/Pj9zitsJRi25W3
tPXywvAmT2Oq0xkdCg953Tk4WfvX+ZMnqmNT0xQ8jA0nIw33SN9XkEKOUNFL/tO6
jzW8xJMliGZzfWL7R/PRVFUbjAzy+lc284bk1lQYzSrSMgY2BpR8NIZveHIfhVDc
xoLiZaresM4Z4WTTWD8p/foxe1FVxybiZBqRQ/0nJ/pHbUXX9hCkn7uSdWdiA+PU
DLK0SwHNKhMCVvMCQVTgbgo+y++Oz6UTI5cXKgrlD1zN4ogKQfG7Z1HAvH+zyfhI
412hVJcqaNuyL4IEjnOi5JOVo/FgzhIb3ZFS7c8934BT3DNHdzwJklZybh4uT24g
2S+lAgMBAAGjYzBhMB0GA1UdDgQWBBTYfZQ5hJFaJ5wsOZbeDbLB2Ly8KzAfBgNV
HSMEGDAWgBTYfZQ5hJFaJ5wsOZbeDbLB2Ly8KzAPBgNVHRMBAf8EBTADAQH/MA4G
A1UdDwEB/wQEAwIBBjANBgkqhkiG9w0BAQsFAAOCAQEAjWvCOfCv7K6zGs2NTaBi
6HWieFofIZ4LqKzSnmcGHnL2y1BZ2JwqqULe1JsnCs4kQ21IP2IEMW5QWL3qiU+4
ISPOPehLwNVPLA3zfhoq+Rx4jOV+dLtjGECey3HUdz3Y+2qeGFLb8f+sblJcwDdY
u8dzH1vthGMCi3uigyv44JC8DFRrebO2oFCM9T+pif7ES/1QqcEV6r8VGX0luFkE
frzuE2e0PRf7fTgPWHmTwrg4UlGk98w2+ScnYlwG55dclpHr1PdAIY4tP2YsztHL
kJreKARyjapcjOuB4w8NmqZfyzAONH4uOzFZiVDoq+n0uEVvLj2S09dutFbH83M9
lg==
-----END CERTIFICATE-----
";

pub const RSA_CA_PKCS1_KEY: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEAqIPz4/c4rbCUYtuVt7T18sLwJk9jqtMZHQoPed05OFn71/mT
J6pjU9MUPIwNJyMN90jfV5BCjlDRS/7Tuo81vMSTJYhmc31i+0fz0VRVG4wM8vpX
NvOG5NZUGM0q0jIGNgaUfDSGb3hyH4VQ3MaC4mWq3rDOGeFk01g/Kf36MXtRVccm
4mQakUP9Jyf6R21F1/YQpJ+7knVnYgPj1AyytEsBzSoTAlbzAkFU4G4KPsvvjs+l
EyOXFyoK5Q9czeKICkHxu2dRwLx/s8n4SONdoVSXKmjbsi+CBI5zouSTlaPxYM4S
G92RUu3PPd+AU9wzR3c8CZJWcm4eLk9uINkvpQIDAQABAoIBAAqf5yykVap9y51A
AvyGKEuaBtIjh0Ep9hdinv8r94OaCMrhLWn+0Cxkzo3StrGVADhrG8nFiqy2Y7vK
4UaN6PFx42UmaG83pJn7O2AjVQpbliVrqzwHtqWO7dZyeRSvmrylRY9fMGquyWM7
YJHK4k2r404PD6+KCnVYxwK6xJ+B8Ljjyq2I2DJ7oEWTDQxI7FZ8pQz7V45vV1iQ
zbIm50zmcXCUUE81U4BknRLZyPM2QxMrY4pMMMpDdfYWsJXO8FNCbxasaOSEb09W
JNECubrrhEVPEZxUgytj9vRUN0WVXX3H2z5qVGVJ+zEe7EHYXo3+ukZzOtLiupG3
3gK04gECgYEA04A+Ls+KPt9253akVjVjXi5ZlLqFwR3TJGjibfYFaSsuAM1od7mG
l2rUzDOzJ4KBT/EXU03gsHg6Zqrq4bWfXuRqQI9nssMV8broYfI+18v9UzeMaqY2
6J+aPc1DiQODz+P9hnMEEdEY7EANx/AQpUI7pDyKCqANpMHKhQQtVgUCgYEAy/hy
MjrHqO7Gt/A/FF/6/z3+5eGmtTQFR7ADlOjlPuQ0J3jVISNKnShkg0F+bfMb5CyP
gj05StYvUVvOUixdi6UNUu5Sa6JesmqKl6FD80TIkfYfqxMGwYwp16TcDDGu7vwc
kDo5OyHG+pcXBmf4I09/+Z4Z0AcRFMfQg1h3BSECgYA6skCPpTFsuX+6RQbelfp5
zMs3p3wvWCOc2y7b7Yca5MzjlB4F/AsKQq/D7CUwNdvFX9dlWxucXgF3NL/y3ADa
yPFj8WiKB/IzH/gWFrCyGv629ZeWkYJzlLetpyWzBLK0I0Xc5laeyzTre+tXLZyx
AGyk69gzkq+2pcGaoMokMQKBgGW84bD+MrKnjwUWV1BhY3/Gu4qMWCvP68ZLHC49
UINjLkR199DUmpXzHNd/ZoGPHl1cgKRUx2v1k5qAMVQ5ftt1k0THTOMVFSjnDYP+
UzdXGrf7TOZ20greT8yZFY0bhwb7R4AFGqDNA0Pg8wIl/9YVBF9MpdFmhPWZiP7K
tGshAoGAAn11LZjnu0HmHQCBnK0jEe1hdWQcV/EdI8QtoapPDIiIR1lIcZarOViU
rkg13i9NIR8WVV/YNKKLrUqOtpKWPJ+vuL0j7t2aRxOr4B2hdAnLzGJBxWJt+zT4
3S4SQlC95gJSwVWAw7Pvbam5LcqQW6Z5vPU83bIMFd41D/TIbEQ=
-----END RSA PRIVATE KEY-----
";

pub const P521_PKCS8_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIBDdrH8LQySnGjHQze
nz+RxOCaMfiwCG51xLONd25JI5a9EFCYP5QOzf1gZdzeCshOsxeW3nxqBpy4E4+k
YV0mpl6hgYkDgYYABAGkUtTYf8rMRqp7roAB3W3t/iSS1Mhn4hSbpXgVHq95e9UM
WxB58XFiao1IkFrAnp57ESYFQeNSfCx4HlLy+BM6YQFSF+ajx67FLcMNRYcs8eUV
z0e3PnqV24P8TRQGKIz/m4p3MTPqxSSRkJzCsPnoyrb7PDBZcltlwqxwd1FRm5zI
pw==
-----END PRIVATE KEY-----
";

pub const P256_SEC1_KEY: &str = r"-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIJpE2H1X+8n8Mnfr9ggH3/zhyoHR63CHxQVjjSIg3vacoAoGCCqGSM49
AwEHoUQDQgAEjwY/4O1BRPtNdWVLtzvwzf70gyq4+0qnTLTiIxU7mE4hGnxgAh9z
k4J1TpSmfeR7Oy0TDv59zlu56YU438AZJw==
-----END EC PRIVATE KEY-----
";

pub const NON_CA_CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBezCCASCgAwIBAgIUSrdUpEOgP9y/ddpBaykOjZX3qOgwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwITm90IEEgQ0EwIBcNMjYxMTIyMTIxMjI1WhgPMjEyNjEwMjkx
MjEyMjVaMBMxETAPBgNVBAMMCE5vdCBBIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEjwY/4O1BRPtNdWVLtzvwzf70gyq4+0qnTLTiIxU7mE4hGnxgAh9zk4J1
TpSmfeR7Oy0TDv59zlu56YU438AZJ6NQME4wHQYDVR0OBBYEFMFc39tdOApw1YOQ
+KL1lSCWu0oyMB8GA1UdIwQYMBaAFMFc39tdOApw1YOQ+KL1lSCWu0oyMAwGA1Ud
EwEB/wQCMAAwCgYIKoZIzj0EAwIDSQAwRgIhAI8DL+Klcxq1g3/RNeBoNf+FcY8F
0pY0/o246FuqL3ECAiEA4in9tsTV+WPLfBuG6dkwZ5Kpm3Gz0GlvE5hyG2TAgyk=
-----END CERTIFICATE-----
";

pub const NO_BC_CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBHDCBwwIUK7PFOhsplt4pNgj1hfDSD608wJEwCgYIKoZIzj0EAwIwEDEOMAwG
A1UEAwwFTm8gQkMwIBcNMjYxMTIyMTIxMjI4WhgPMjEyNjEwMjkxMjEyMjhaMBAx
DjAMBgNVBAMMBU5vIEJDMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjwY/4O1B
RPtNdWVLtzvwzf70gyq4+0qnTLTiIxU7mE4hGnxgAh9zk4J1TpSmfeR7Oy0TDv59
zlu56YU438AZJzAKBggqhkjOPQQDAgNIADBFAiEA4VhItdBYhGaLQbgvldBLWYJe
a0tcJ1q1rU0hlRMsYCACIAVVJMHErRP1n6CBq6o3jGk410HvMHMY7PLODD+wpxg1
-----END CERTIFICATE-----
";
