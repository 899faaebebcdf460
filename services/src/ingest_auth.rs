//! Authentication and rate limiting of the connector's ingest port (contract: ingest API): a bearer
//! token from a mounted Secret, or TLS requiring a client certificate from a mounted CA bundle;
//! nothing configured refuses every request. The token and the CA are re-read when their files
//! change (through the material poller, [`crate::reload::MaterialStore::watch_file`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mpm_spiffe::{ClientIdentity, TrustAnchors, TrustSource};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::config::{IngestAuthSource, RateLimitConfig};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::reload::{MaterialStore, WatchedFile};
use crate::server::{json_error, PeerCertificate};
use crate::tls::{StoreCertResolver, TlsError};

/// Shortest token accepted from the mounted file (contract: Mounted files).
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No authentication configured: the ingest port is closed.
    NotConfigured,
    /// Token mode, but no usable token file has been loaded.
    TokenNotLoaded,
    /// No `Authorization: Bearer ...` header.
    Missing,
    /// A token that is not the configured one.
    Wrong,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotConfigured => {
                "ingest authentication is not configured: set spec.hes.auth.tokenSecret or \
                 spec.hes.auth.clientCaConfigMap in the DeviceHub"
            }
            Refusal::TokenNotLoaded => {
                "the ingest token is not loaded yet (see the connector's log for the token file)"
            }
            Refusal::Missing => "missing credentials: send Authorization: Bearer <token>",
            Refusal::Wrong => "invalid bearer token",
        })
    }
}

/// The ingest port's credentials, as currently loaded.
pub struct IngestAuth {
    source: IngestAuthSource,
    /// SHA-256 of the expected token (the token itself is not kept).
    token_sha256: RwLock<Option<[u8; 32]>>,
    client_ca: RwLock<Option<Arc<TrustAnchors>>>,
}

impl fmt::Debug for IngestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestAuth")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The token in a mounted file: UTF-8, surrounding whitespace ignored, at least
/// [`MIN_TOKEN_LEN`] characters, none of them whitespace. Errors never contain the content.
pub fn parse_token(bytes: &[u8]) -> Result<[u8; 32], String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "token is not UTF-8".to_string())?;
    let token = text.trim();
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "token has {} characters; at least {MIN_TOKEN_LEN} required",
            token.chars().count()
        ));
    }
    if token.chars().any(char::is_whitespace) {
        return Err("token contains whitespace".into());
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Equal in time independent of where the digests differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

/// The HES client CA from a PEM bundle.
pub fn client_ca(pem: &[u8]) -> Result<TrustAnchors, String> {
    let roots = mpm_spiffe::roots_from_pem(pem, "ca.crt").map_err(|e| e.to_string())?;
    TrustAnchors::new(roots).map_err(|e| e.to_string())
}

impl IngestAuth {
    pub fn new(source: IngestAuthSource) -> Arc<Self> {
        Arc::new(Self {
            source,
            token_sha256: RwLock::new(None),
            client_ca: RwLock::new(None),
        })
    }

    pub fn source(&self) -> &IngestAuthSource {
        &self.source
    }

    /// Has the material poller load the token or CA file now and whenever it changes.
    pub fn watch(self: &Arc<Self>, store: &MaterialStore) {
        match &self.source {
            IngestAuthSource::Unconfigured => {}
            IngestAuthSource::Token(path) => {
                let me = self.clone();
                store.watch_file(WatchedFile {
                    kind: "ingest-token",
                    path: path.clone(),
                    load: Box::new(move |bytes| {
                        let digest = parse_token(bytes)?;
                        *me.token_sha256.write().unwrap_or_else(|p| p.into_inner()) = Some(digest);
                        Ok(())
                    }),
                });
            }
            IngestAuthSource::ClientCa(path) => {
                let me = self.clone();
                store.watch_file(WatchedFile {
                    kind: "ingest-ca",
                    path: path.clone(),
                    load: Box::new(move |bytes| {
                        let anchors = client_ca(bytes)?;
                        *me.client_ca.write().unwrap_or_else(|p| p.into_inner()) =
                            Some(Arc::new(anchors));
                        Ok(())
                    }),
                });
            }
        }
    }

    /// The decision for one request's `Authorization` header (pure apart from reading the
    /// loaded token). With a client CA the TLS handshake already decided.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), Refusal> {
        match &self.source {
            IngestAuthSource::Unconfigured => Err(Refusal::NotConfigured),
            IngestAuthSource::ClientCa(_) => Ok(()),
            IngestAuthSource::Token(_) => {
                let expected = self
                    .token_sha256
                    .read()
                    .ok()
                    .and_then(|g| *g)
                    .ok_or(Refusal::TokenNotLoaded)?;
                let presented = authorization
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or(Refusal::Missing)?;
                let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                if digests_equal(&digest, &expected) {
                    Ok(())
                } else {
                    Err(Refusal::Wrong)
                }
            }
        }
    }

    /// TLS for the ingest port in client-CA mode: the connector's own certificate, and a client
    /// certificate chaining to the currently loaded ingest CA required.
    pub fn server_config(
        self: &Arc<Self>,
        store: Arc<MaterialStore>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let identity = Arc::new(StoreCertResolver(store));
        mpm_spiffe::mtls_server_config(self.clone(), ClientIdentity::AnyCertificate, identity)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// In client-CA mode, the HES's certificate must chain to the currently loaded ingest CA; none
/// loaded refuses every handshake.
impl TrustSource for IngestAuth {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
        self.client_ca
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| rustls::Error::General("no ingest client CA loaded".into()))
    }
}

/// What the ingest middlewares share.
pub struct IngestGuard {
    pub auth: Arc<IngestAuth>,
    pub limiter: RateLimiter,
    pub metrics: Arc<Metrics>,
}

impl fmt::Debug for IngestGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestGuard")
            .field("auth", &self.auth)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl IngestGuard {
    pub fn new(auth: Arc<IngestAuth>, rate: RateLimitConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            auth,
            limiter: RateLimiter::new(rate, crate::ratelimit::MAX_SOURCES),
            metrics,
        })
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .ingest_refusals
            .get_or_create(&Metrics::labels(&[("reason", reason)]))
            .inc();
    }
}

/// The rate-limit key of a request: the client certificate when there is one, else the peer's IP
/// address.
pub fn source_of(req: &Request) -> String {
    if let Some(PeerCertificate(sha256)) = req.extensions().get::<PeerCertificate>() {
        return format!("cert:{sha256}");
    }
    match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "unknown".to_string(),
    }
}

/// Every request on the ingest port: one token of its source's bucket, or `429`.
pub async fn rate_limit(State(g): State<Arc<IngestGuard>>, req: Request, next: Next) -> Response {
    let source = source_of(&req);
    match g.limiter.check(&source, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(retry_after) => {
            g.refused("rate_limited");
            tracing::debug!(source = %source, "ingest rate limit exceeded");
            let mut resp = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit exceeded for {source}; retry in {} s",
                    retry_after.as_secs()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

/// The ingest routes: only for an authenticated HES, else `401`.
pub async fn authenticate(State(g): State<Arc<IngestGuard>>, req: Request, next: Next) -> Response {
    match g.auth.check(req.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            g.refused("unauthenticated");
            tracing::warn!(source = %source_of(&req), reason = ?refusal, "ingest request refused");
            let mut resp = json_error(StatusCode::UNAUTHORIZED, refusal.to_string());
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ingest\""),
            );
            resp.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-ingest-token-0123456789";

    fn token_auth() -> Arc<IngestAuth> {
        let auth = IngestAuth::new(IngestAuthSource::Token("/t".into()));
        *auth.token_sha256.write().expect("lock") =
            Some(parse_token(format!("{TOKEN}\n").as_bytes()).expect("token"));
        auth
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).expect("header")
    }

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let auth = token_auth();
        assert_eq!(
            auth.check(Some(&header(&format!("Bearer {TOKEN}")))),
            Ok(())
        );
        assert_eq!(
            auth.check(Some(&header(&format!("bearer  {TOKEN} ")))),
            Ok(())
        );
        assert_eq!(auth.check(None), Err(Refusal::Missing));
        assert_eq!(auth.check(Some(&header("Bearer "))), Err(Refusal::Missing));
        assert_eq!(auth.check(Some(&header(TOKEN))), Err(Refusal::Missing));
        assert_eq!(
            auth.check(Some(&header(&format!("Basic {TOKEN}")))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            auth.check(Some(&header(&format!("Bearer {TOKEN}x")))),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            auth.check(Some(&header(&format!("Bearer {}", &TOKEN[1..])))),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn unconfigured_or_unloaded_refuses_everything() {
        let none = IngestAuth::new(IngestAuthSource::Unconfigured);
        let msg = none
            .check(Some(&header(&format!("Bearer {TOKEN}"))))
            .expect_err("closed")
            .to_string();
        assert!(
            msg.contains("spec.hes.auth.tokenSecret")
                && msg.contains("spec.hes.auth.clientCaConfigMap"),
            "{msg}"
        );
        let unloaded = IngestAuth::new(IngestAuthSource::Token("/t".into()));
        assert_eq!(
            unloaded.check(Some(&header(&format!("Bearer {TOKEN}")))),
            Err(Refusal::TokenNotLoaded)
        );
    }

    #[test]
    fn short_or_odd_tokens_are_not_loaded_and_errors_do_not_show_them() {
        for bad in ["short", "", "   \n", "has white space inside it"] {
            let e = parse_token(bad.as_bytes()).expect_err(bad);
            if !bad.trim().is_empty() {
                assert!(!e.contains(bad.trim()), "{e}");
            }
        }
        assert!(parse_token(&[0xff; 20]).is_err());
        assert_eq!(
            parse_token(format!("  {TOKEN}\r\n").as_bytes()),
            parse_token(TOKEN.as_bytes())
        );
    }

    #[test]
    fn digests_compare_by_content() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert!(digests_equal(&a, &a));
        assert!(!digests_equal(&a, &b));
    }

    #[test]
    fn a_client_ca_needs_a_certificate() {
        assert!(client_ca(b"").is_err());
        assert!(
            client_ca(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
