//! rustls (ring provider) mTLS configuration whose certificate, key and trust bundle come from a
//! [`MaterialStore`] at handshake time, so reloaded material applies to new connections only.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::reload::MaterialStore;
use crate::util::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("invalid PEM in {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("invalid private key: {0}")]
    Key(String),
    #[error("certificate does not match the private key: {0}")]
    KeyMismatch(String),
    #[error("invalid certificate in {what}: {reason}")]
    Certificate { what: &'static str, reason: String },
    #[error("trust bundle has no usable CA certificate: {0}")]
    Bundle(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider every config uses: ring, explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Facts about one X.509 certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub serial_hex: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub spiffe_ids: Vec<String>,
}

/// Parses serial, validity and URI SANs that are SPIFFE IDs.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let to_utc = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| "time out of range".to_string())
    };
    let mut spiffe_ids = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    spiffe_ids.push((*uri).to_string());
                }
            }
        }
    }
    Ok(CertInfo {
        serial_hex: hex::encode(cert.raw_serial()),
        not_before: to_utc(cert.validity().not_before)?,
        not_after: to_utc(cert.validity().not_after)?,
        spiffe_ids,
    })
}

/// Checks one SPIFFE ID as X509-SVID requires (SPIFFE-ID spec §2): scheme `spiffe://`, a non-empty
/// trust domain of `[a-z0-9.-_]` (so no userinfo or port), a path of non-empty segments of
/// `[A-Za-z0-9.-_]` that are not `.` or `..`, no trailing `/`, no query or fragment, at most 2048
/// bytes.
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

/// The SPIFFE ID of the end-entity certificate of a peer chain: `None` unless it carries exactly
/// one URI SAN and that is a valid SPIFFE ID.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<String> {
    svid_spiffe_id(chain.first()?.as_ref()).ok()
}

/// The service's own certificate and key.
pub struct Identity {
    pub certified_key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// Hash of cert and key bytes, to notice changes (never logged with the key).
    pub content_hash: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Parses `tls.crt` (leaf first; further certificates are sent as chain) and `tls.key` (PKCS#8,
    /// or SEC1/PKCS#1), and checks that they belong together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "tls.crt",
                reason: e.to_string(),
            })?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate("tls.crt"))?;
        let info = cert_info(leaf.as_ref()).map_err(|reason| TlsError::Certificate {
            what: "tls.crt",
            reason,
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Key(format!("tls.key: {e}")))?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key
            .keys_match()
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        let mut both = cert_pem.to_vec();
        both.extend_from_slice(key_pem);
        Ok(Self {
            certified_key: Arc::new(certified_key),
            info,
            content_hash: sha256_hex(&both),
        })
    }

    /// Valid right now (notBefore ≤ now < notAfter).
    pub fn is_current(&self, now: DateTime<Utc>) -> bool {
        self.info.not_before <= now && now < self.info.not_after
    }
}

/// The trust bundle: roots and a client verifier built from them.
pub struct Trust {
    pub roots: Arc<RootCertStore>,
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// Hex SHA-256 of ca-bundle.pem, exact bytes (contract: Health port, /status).
    pub sha256: String,
    pub ca_count: usize,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("sha256", &self.sha256)
            .field("ca_count", &self.ca_count)
            .finish_non_exhaustive()
    }
}

impl Trust {
    pub fn from_pem(bundle_pem: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(bundle_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "ca-bundle.pem",
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate("ca-bundle.pem"));
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| TlsError::Bundle(format!("certificate #{i}: {e}")))?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self {
            ca_count: roots.len(),
            roots,
            client_verifier,
            sha256: sha256_hex(bundle_pem),
        })
    }
}

/// Serves the store's current certificate.
#[derive(Debug)]
struct StoreCertResolver(Arc<MaterialStore>);

impl ResolvesServerCert for StoreCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified_key.clone())
    }
}

impl ResolvesClientCert for StoreCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.identity().is_some()
    }
}

/// Requires a client certificate that chains to the store's current trust bundle.
#[derive(Debug)]
struct StoreClientVerifier {
    store: Arc<MaterialStore>,
    provider: Arc<CryptoProvider>,
}

impl StoreClientVerifier {
    fn current(&self) -> Result<Arc<Trust>, rustls::Error> {
        self.store
            .trust()
            .ok_or_else(|| rustls::Error::General("no trust bundle loaded".into()))
    }
}

impl ClientCertVerifier for StoreClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.current()?
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        // The ACL keys on the SPIFFE ID: a certificate without exactly one valid one is refused
        // here, not left to be mistaken for another identity (or for an anonymous caller).
        if let Err(reason) = svid_spiffe_id(end_entity.as_ref()) {
            tracing::warn!(%reason, "client certificate is no X509-SVID");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
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

/// Verifies that the server chains to the trust bundle and that its URI SAN is the expected SPIFFE
/// ID; the DNS name is not checked.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    store: Arc<MaterialStore>,
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
        let trust = self
            .store
            .trust()
            .ok_or_else(|| rustls::Error::General("no trust bundle loaded".into()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &trust.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match svid_spiffe_id(end_entity.as_ref()) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(id) => {
                tracing::warn!(expected = %self.expected, presented = %id, "server SPIFFE ID mismatch");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ))
            }
            Err(reason) => {
                tracing::warn!(expected = %self.expected, %reason, "server certificate is no X509-SVID");
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

/// Server config: requires a client certificate chaining to the current bundle, presents the current
/// certificate.
pub fn server_config(store: Arc<MaterialStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(StoreClientVerifier {
        store: store.clone(),
        provider: provider.clone(),
    });
    // No ALPN on the server: a client offering only protocols we do not list would otherwise be
    // refused; every listener speaks HTTP/1.1.
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreCertResolver(store)));
    Ok(Arc::new(cfg))
}

/// Client config for calls to the peer with SPIFFE ID `expected`.
pub fn client_config(
    store: Arc<MaterialStore>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        store: store.clone(),
        provider: provider.clone(),
        expected: expected.to_string(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreCertResolver(store)));
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
        assert!(validate_spiffe_id(&format!("spiffe://a/{}", "x".repeat(2048))).is_err());
    }

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
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
        for uris in [
            vec![hub, "spiffe://cluster.local/ns/park/sa/evil"],
            vec!["spiffe://cluster.local/ns/park/sa/evil", hub],
            vec![hub, "https://example.org/"],
            vec![],
            vec!["spiffe://cluster.local/ns/park/sa/x?y"],
        ] {
            let der = cert_with_uris(&uris);
            assert!(svid_spiffe_id(&der).is_err(), "{uris:?}");
            assert_eq!(
                peer_spiffe_id(&[CertificateDer::from(der)]),
                None,
                "{uris:?}"
            );
        }
    }
}
