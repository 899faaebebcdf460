//! Small shared helpers: PEM encoding, fingerprints, time conversion, PKCS#8 wrapping.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::error::{PkiError, Result};

/// PEM-encodes `der` under `label` (64-character lines, LF line endings, trailing newline).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Truncates to whole seconds (X.509 times have second precision).
pub(crate) fn trunc_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// `t + d`, failing on overflow.
pub(crate) fn add(t: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .ok_or(PkiError::InvalidValidity {
            detail: "time overflow",
        })
}

/// `t - d`, failing on overflow.
pub(crate) fn sub(t: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .ok_or(PkiError::InvalidValidity {
            detail: "time overflow",
        })
}

/// chrono → time (what rcgen wants).
pub(crate) fn to_offset(t: DateTime<Utc>) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|_| PkiError::InvalidValidity {
        detail: "time out of range",
    })
}

/// X.509 time → chrono.
pub(crate) fn from_asn1(t: x509_parser::time::ASN1Time) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(t.timestamp(), 0).ok_or(PkiError::CertificateMalformed {
        detail: "validity time out of range".into(),
    })
}

/// Appends a DER definite length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends a DER TLV.
fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// DER of AlgorithmIdentifier { id-ecPublicKey, namedCurve }.
fn ec_alg_id(curve_oid: &[u8]) -> Vec<u8> {
    const ID_EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let mut inner = ID_EC_PUBLIC_KEY.to_vec();
    push_tlv(&mut inner, 0x06, curve_oid);
    let mut out = Vec::new();
    push_tlv(&mut out, 0x30, &inner);
    out
}

/// OID content bytes of prime256v1 / secp256r1.
pub(crate) const OID_P256: [u8; 8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// OID content bytes of secp384r1.
pub(crate) const OID_P384: [u8; 5] = [0x2b, 0x81, 0x04, 0x00, 0x22];

/// Wraps a key in a PKCS#8 v1 PrivateKeyInfo.
fn pkcs8_wrap(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x02, 0x01, 0x00]; // version 0
    inner.extend_from_slice(alg_id);
    push_tlv(&mut inner, 0x04, key);
    let mut out = Vec::with_capacity(inner.len() + 4);
    push_tlv(&mut out, 0x30, &inner);
    out
}

/// Wraps a SEC1 `EC PRIVATE KEY` in PKCS#8 for the given curve.
pub(crate) fn pkcs8_from_sec1(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    pkcs8_wrap(&ec_alg_id(curve_oid), sec1)
}

/// Wraps a PKCS#1 `RSA PRIVATE KEY` in PKCS#8.
pub(crate) fn pkcs8_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    const RSA_ALG_ID: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    pkcs8_wrap(&RSA_ALG_ID, pkcs1)
}

/// The uncompressed P-256 public point at the end of a PKCS#8 document produced by
/// `ring::signature::EcdsaKeyPair::generate_pkcs8`: `... [1] { BIT STRING { 0x00, 0x04 X Y } }`.
///
/// Returns `None` if the document does not end that way (callers then fall back to parsing it
/// with ring, which costs one scalar multiplication more).
pub(crate) fn p256_public_key_from_ring_pkcs8(pkcs8: &[u8]) -> Option<&[u8]> {
    const POINT_LEN: usize = 65;
    const PREFIX: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];
    let start = pkcs8.len().checked_sub(POINT_LEN)?;
    let prefix = pkcs8.get(start.checked_sub(PREFIX.len())?..start)?;
    let point = pkcs8.get(start..)?;
    (prefix == PREFIX && point.first() == Some(&0x04)).then_some(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_lines_are_64_chars() {
        let pem = pem_encode("CERTIFICATE", &[7u8; 200]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        for line in pem.lines() {
            assert!(line.len() <= 64 || line.starts_with("-----"));
        }
    }

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        push_len(&mut v, 0x7f);
        push_len(&mut v, 0x80);
        push_len(&mut v, 0x1234);
        assert_eq!(v, vec![0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn ring_pkcs8_tail_holds_public_key() {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
        assert_eq!(
            p256_public_key_from_ring_pkcs8(doc.as_ref()),
            Some(kp.public_key().as_ref())
        );
        assert_eq!(p256_public_key_from_ring_pkcs8(&[0u8; 10]), None);
    }
}
