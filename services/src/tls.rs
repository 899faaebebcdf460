//! rustls (ring provider) mTLS configuration whose certificate, key and trust bundle come from a
//! [`MaterialStore`] at handshake time, so reloaded material applies to new connections only.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
pub use mpm_spiffe::provider;
use mpm_spiffe::{ClientIdentity, TrustAnchors, TrustSource};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::reload::MaterialStore;
use crate::util::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] mpm_spiffe::PemError),
    #[error("invalid certificate in {what}: {reason}")]
    Certificate { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
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
    let spiffe_ids = mpm_spiffe::id::spiffe_uri_sans(&cert);
    Ok(CertInfo {
        serial_hex: hex::encode(cert.raw_serial()),
        not_before: to_utc(cert.validity().not_before)?,
        not_after: to_utc(cert.validity().not_after)?,
        spiffe_ids,
    })
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
        let certified_key = mpm_spiffe::certified_key(&provider(), cert_pem, key_pem)?;
        let info =
            cert_info(
                certified_key
                    .end_entity_cert()
                    .map_err(|e| TlsError::Certificate {
                        what: "tls.crt",
                        reason: e.to_string(),
                    })?,
            )
            .map_err(|reason| TlsError::Certificate {
                what: "tls.crt",
                reason,
            })?;
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

/// The trust bundle: its anchors (roots and the client verifier built from them).
pub struct Trust {
    pub anchors: Arc<TrustAnchors>,
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
        let roots = mpm_spiffe::roots_from_pem(bundle_pem, "ca-bundle.pem")?;
        let ca_count = roots.len();
        let anchors = TrustAnchors::new(roots).map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self {
            anchors: Arc::new(anchors),
            ca_count,
            sha256: sha256_hex(bundle_pem),
        })
    }
}

/// Presents the store's current certificate (server and client side).
#[derive(Debug)]
pub(crate) struct StoreCertResolver(pub(crate) Arc<MaterialStore>);

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

/// Peers are verified against the store's current trust bundle; none loaded refuses every
/// handshake.
impl TrustSource for MaterialStore {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
        self.trust()
            .map(|t| t.anchors.clone())
            .ok_or_else(|| rustls::Error::General("no trust bundle loaded".into()))
    }
}

/// Server config: requires a client certificate that is an X509-SVID chaining to the current
/// bundle, presents the current certificate.
pub fn server_config(store: Arc<MaterialStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let identity = Arc::new(StoreCertResolver(store.clone()));
    mpm_spiffe::mtls_server_config(store, ClientIdentity::Svid, identity)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Client config for calls to the peer with SPIFFE ID `expected`.
pub fn client_config(
    store: Arc<MaterialStore>,
    expected: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = Arc::new(StoreCertResolver(store.clone()));
    mpm_spiffe::spiffe_client_config(store, expected, identity)
        .map_err(|e| TlsError::Config(e.to_string()))
}
