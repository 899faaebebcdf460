//! The rustls verifiers of every mTLS endpoint. Chains are checked by webpki against the trust
//! anchors current at handshake time; identities are SPIFFE IDs, so host names are not checked.
//! Each refusal is logged (never with key material) and fails the handshake.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::id::svid_spiffe_id;

/// The crypto provider of every TLS configuration: ring, explicitly (no process default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors at one moment: the CA certificates, and the webpki client verifier built from
/// them once (not per handshake).
#[derive(Debug)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
}

impl TrustAnchors {
    /// Anchors from `roots`; an empty store is refused (it would trust nothing, silently).
    pub fn new(roots: RootCertStore) -> Result<Self, rustls::Error> {
        let roots = Arc::new(roots);
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        Ok(Self { roots, client })
    }

    /// The CA certificates.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Where a verifier finds the trust anchors at handshake time. An error refuses the handshake
/// (fail closed), for example while no trust bundle has been loaded.
pub trait TrustSource: Send + Sync + fmt::Debug {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error>;
}

impl<T: TrustSource + ?Sized> TrustSource for Arc<T> {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
        (**self).anchors()
    }
}

/// Anchors that never change (the operator reads the hub's bundle per connection pool).
#[derive(Debug, Clone)]
pub struct FixedTrust(pub Arc<TrustAnchors>);

impl TrustSource for FixedTrust {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
        Ok(self.0.clone())
    }
}

fn tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// Verifies a server: its chain ends at the current anchors and it is an X509-SVID of exactly the
/// expected SPIFFE ID. The DNS name the client dialled is deliberately not checked.
#[derive(Debug)]
pub struct SpiffeServerVerifier<T> {
    trust: T,
    provider: Arc<CryptoProvider>,
    expected: String,
}

impl<T: TrustSource> SpiffeServerVerifier<T> {
    pub fn new(trust: T, expected: impl Into<String>) -> Self {
        Self {
            trust,
            provider: provider(),
            expected: expected.into(),
        }
    }
}

impl<T: TrustSource> ServerCertVerifier for SpiffeServerVerifier<T> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors = self.trust.anchors()?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchors.roots,
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
        tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// What a client certificate must be besides chaining to the anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdentity {
    /// An X509-SVID (service-to-service calls: the ACL keys on its SPIFFE ID, so a certificate
    /// without exactly one valid one is refused in the handshake, never taken for anonymous).
    Svid,
    /// Any certificate the anchors issued (the HES on the connector's ingest port).
    AnyCertificate,
}

/// Requires a client certificate that chains to the current anchors (and, per
/// [`ClientIdentity`], is an X509-SVID).
#[derive(Debug)]
pub struct ClientVerifier<T> {
    trust: T,
    provider: Arc<CryptoProvider>,
    identity: ClientIdentity,
}

impl<T: TrustSource> ClientVerifier<T> {
    pub fn new(trust: T, identity: ClientIdentity) -> Self {
        Self {
            trust,
            provider: provider(),
            identity,
        }
    }
}

impl<T: TrustSource> ClientCertVerifier for ClientVerifier<T> {
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
            self.trust
                .anchors()?
                .client
                .verify_client_cert(end_entity, intermediates, now)?;
        if self.identity == ClientIdentity::Svid {
            if let Err(reason) = svid_spiffe_id(end_entity.as_ref()) {
                tracing::warn!(%reason, "client certificate is no X509-SVID");
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// The client configuration of every mTLS call to a service: the server must be an X509-SVID of
/// `expected` chaining to `trust`'s anchors; the client presents what `identity` resolves (the
/// services' reloading store, or the operator's fixed client certificate). HTTP/1.1 by ALPN.
pub fn spiffe_client_config<T: TrustSource + 'static>(
    trust: T,
    expected: &str,
    identity: Arc<dyn ResolvesClientCert>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(SpiffeServerVerifier::new(trust, expected));
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The server configuration of every mTLS listener: a client certificate chaining to `trust`'s
/// anchors is required (an X509-SVID per `client`), the server presents what `identity` resolves.
/// No ALPN: a client offering only protocols we do not list would be refused; every listener
/// speaks HTTP/1.1.
pub fn mtls_server_config<T: TrustSource + 'static>(
    trust: T,
    client: ClientIdentity,
    identity: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = Arc::new(ClientVerifier::new(trust, client));
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        der: CertificateDer<'static>,
    }

    fn new_ca() -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, uris: &[&str], server: bool) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        params
            .signed_by(&key, &ca.issuer)
            .expect("leaf")
            .der()
            .clone()
    }

    fn anchors(ca: &Ca) -> FixedTrust {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).expect("root");
        FixedTrust(Arc::new(TrustAnchors::new(roots).expect("anchors")))
    }

    const HUB: &str = "spiffe://cluster.local/ns/park/sa/demo-device-hub";
    const EVIL: &str = "spiffe://cluster.local/ns/park/sa/evil";

    fn server_result(trust: &FixedTrust, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        SpiffeServerVerifier::new(trust.clone(), HUB)
            .verify_server_cert(
                cert,
                &[],
                &ServerName::try_from("ignored.example").expect("name"),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn a_server_must_be_the_expected_svid_from_the_anchors() {
        let ca = new_ca();
        let trust = anchors(&ca);
        assert_eq!(server_result(&trust, &leaf(&ca, &[HUB], true)), Ok(()));
        for uris in [vec![EVIL], vec![HUB, EVIL], vec![EVIL, HUB], vec![]] {
            assert_eq!(
                server_result(&trust, &leaf(&ca, &uris, true)),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                )),
                "{uris:?}"
            );
        }
        // The right SPIFFE ID from another CA.
        let other = new_ca();
        assert!(matches!(
            server_result(&trust, &leaf(&other, &[HUB], true)),
            Err(rustls::Error::InvalidCertificate(_))
        ));
    }

    #[test]
    fn a_client_must_chain_to_the_anchors_and_be_an_svid_when_required() {
        let ca = new_ca();
        let trust = anchors(&ca);
        let svid = ClientVerifier::new(trust.clone(), ClientIdentity::Svid);
        let any = ClientVerifier::new(trust.clone(), ClientIdentity::AnyCertificate);
        let check = |v: &ClientVerifier<FixedTrust>, c: &CertificateDer<'_>| {
            v.verify_client_cert(c, &[], UnixTime::now()).map(|_| ())
        };
        let good = leaf(&ca, &[HUB], false);
        assert_eq!(check(&svid, &good), Ok(()));
        let two = leaf(&ca, &[HUB, EVIL], false);
        assert_eq!(
            check(&svid, &two),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        );
        // The HES's certificate need not be an SVID, but must come from the anchors.
        assert_eq!(check(&any, &leaf(&ca, &[], false)), Ok(()));
        assert!(check(&any, &leaf(&new_ca(), &[], false)).is_err());
        assert!(check(&svid, &leaf(&new_ca(), &[HUB], false)).is_err());
    }

    #[derive(Debug)]
    struct Unloaded;
    impl TrustSource for Unloaded {
        fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
            Err(rustls::Error::General("no trust bundle loaded".into()))
        }
    }

    #[test]
    fn no_anchors_refuses_every_certificate() {
        let ca = new_ca();
        let cert = leaf(&ca, &[HUB], false);
        let v = ClientVerifier::new(Unloaded, ClientIdentity::AnyCertificate);
        assert!(v.verify_client_cert(&cert, &[], UnixTime::now()).is_err());
        let s = SpiffeServerVerifier::new(Arc::new(Unloaded), HUB);
        let name = ServerName::try_from("x").expect("name");
        assert!(s
            .verify_server_cert(&leaf(&ca, &[HUB], true), &[], &name, &[], UnixTime::now())
            .is_err());
        // PEM parsing is the caller's; the anchors take DER.
        assert!(CertificateDer::from_pem_slice(b"garbage").is_err());
    }
}
