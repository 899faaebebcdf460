//! The trust bundle: `ca-bundle.pem` of ConfigMap `<hub>-trust-bundle`.
//!
//! contract: Mounted files (`/etc/mpm/trust/ca-bundle.pem`) and Health port (`trustBundleSha256`).

use super::der::sha256_hex;

/// Concatenates CA certificates in the given order into the exact `ca-bundle.pem` text.
///
/// Deterministic: each input is trimmed of surrounding whitespace and ends with exactly one `\n`;
/// empty inputs are skipped; nothing else is changed. The same inputs in the same order always give
/// the same bytes, so [`bundle_sha256`] is stable across operator restarts.
pub fn bundle_pem(ca_cert_pems: &[&str]) -> String {
    let mut out = String::new();
    for pem in ca_cert_pems {
        let pem = pem.trim();
        if pem.is_empty() {
            continue;
        }
        out.push_str(pem);
        out.push('\n');
    }
    out
}

/// Lower-case hex SHA-256 over the exact bytes of `ca-bundle.pem` (what services report as
/// `trustBundleSha256` in `/status`).
pub fn bundle_sha256(bundle: &str) -> String {
    sha256_hex(bundle.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_concatenation() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let b = "\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n\n";
        let bundle = bundle_pem(&[a, b, ""]);
        assert_eq!(
            bundle,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
             -----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(bundle, bundle_pem(&[a, b]));
        assert_ne!(bundle_sha256(&bundle), bundle_sha256(&bundle_pem(&[b, a])));
        // sha256("") is well known.
        assert_eq!(
            bundle_sha256(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
