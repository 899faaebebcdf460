//! JSON Web Key Sets for smoc-service's JWT validation: parsing (shared by the file and URL
//! sources), the HTTPS fetch of `jwt.jwksUrl`, and the refresh policy (contract: config.json,
//! `jwt`).
//!
//! The fetch is deliberately small: one HTTP/1.1 GET over rustls per refresh, no redirects, a size
//! cap and a timeout. Key sets change rarely and a refresh happens every few minutes at most, so
//! connection reuse would buy nothing and a general HTTP client would be a large dependency.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::time::Instant;

use crate::client::{open_https, OpenError};

/// Largest JWKS body accepted. A realm's key set is a few KiB; the cap keeps a misbehaving or
/// hostile endpoint from making us buffer without bound. contract: config.json, `jwt`.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("invalid JWKS URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read CA bundle {path}: {reason}")]
    CaBundle { path: String, reason: String },
    #[error("connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("TLS to {authority}: {reason}")]
    Tls { authority: String, reason: String },
    #[error("HTTP to {authority}: {reason}")]
    Http { authority: String, reason: String },
    #[error("{url} answered HTTP {status} (expected 200; redirects are not followed)")]
    Status { url: String, status: u16 },
    #[error("JWKS from {0} exceeds {MAX_JWKS_BYTES} bytes")]
    TooLarge(String),
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("invalid JWKS: {0}")]
    Invalid(String),
}

/// A key set with the SHA-256 of the bytes it was parsed from (to notice changes).
#[derive(Debug, Clone)]
pub struct KeySet {
    pub keys: JwkSet,
    pub sha256: String,
    /// Keys that were left out: unparseable, encryption keys, or types other than EC and RSA.
    pub skipped: usize,
}

impl KeySet {
    /// The `kid`s, for logs (key IDs are public).
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect()
    }
}

/// Whether a key may verify ES256/RS256 signatures at all (symmetric keys never may).
fn usable(key: &Jwk) -> bool {
    let signing = !matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption));
    let kind = matches!(
        key.algorithm,
        AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::RSA(_)
    );
    signing && kind
}

/// Parses a JWKS document. Keys this service cannot use are skipped rather than failing the whole
/// set (identity providers such as Keycloak publish encryption keys next to the signing keys); a
/// set without any usable key is an error, so it never replaces a good one.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(bytes)
        .map_err(|e| JwksError::Invalid(format!("expected {{\"keys\": [...]}}: {e}")))?;
    let total = raw.keys.len();
    let keys: Vec<Jwk> = raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter(usable)
        .collect();
    if keys.is_empty() {
        return Err(JwksError::Invalid(format!(
            "no usable EC or RSA signing key among {total} keys"
        )));
    }
    Ok(KeySet {
        skipped: total - keys.len(),
        keys: JwkSet { keys },
        sha256: crate::util::sha256_hex(bytes),
    })
}

/// A validated `https://` URL, split for the fetch.
#[derive(Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
}

impl JwksUrl {
    /// Accepts `https://host[:port][/path][?query]` only: the key set decides which tokens are
    /// trusted, so it must not travel in clear text or be swappable by anyone on the path.
    pub fn parse(url: &str) -> Result<Self, JwksError> {
        let bad = |reason: &str| JwksError::Url {
            url: redact(url),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https:// (plain http is refused)"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let tail = tail.split('#').next().unwrap_or_default();
        let path_and_query = match tail {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if path_and_query.chars().any(|c| c.is_whitespace()) {
            return Err(bad("whitespace in the path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => 443,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("invalid port"))?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (authority.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        ServerName::try_from(host.clone()).map_err(|_| bad("invalid host name"))?;
        Ok(Self {
            host,
            port,
            path_and_query,
        })
    }

    /// `host:port` as sent in the `Host` header (IPv6 in brackets, default port omitted).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Logs and errors show the URL without its query: some IdPs accept access keys there.
impl std::fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path_and_query.split('?').next().unwrap_or("/");
        write!(f, "https://{}{path}", self.authority())
    }
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwksUrl({self})")
    }
}

/// A URL as given, without credentials, query and fragment (for errors about URLs that did not
/// parse).
fn redact(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = base.split_once("://") else {
        return base.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => base.to_string(),
    }
}

/// Trust anchors for the IdP's server certificate: the PEM bundle `jwt.jwksCaFile` when set (an
/// in-house IdP with a private CA), else Mozilla's roots compiled into the binary (the image is
/// `FROM scratch`: there is no system store to read).
pub fn idp_roots(ca_file: Option<&Path>) -> Result<RootCertStore, JwksError> {
    match ca_file {
        Some(path) => roots_from_pem(&read_ca_bundle(path)?, path),
        None => {
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned(),
            );
            Ok(roots)
        }
    }
}

fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, JwksError> {
    std::fs::read(path).map_err(|e| JwksError::CaBundle {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The certificates of a PEM bundle read from `path` (named in errors), by the rules of every
/// other bundle (`mpm_spiffe::roots_from_pem`).
fn roots_from_pem(pem: &[u8], path: &Path) -> Result<RootCertStore, JwksError> {
    mpm_spiffe::roots_from_pem(pem, &path.display().to_string()).map_err(|e| JwksError::CaBundle {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn tls_config(roots: RootCertStore, url: &JwksUrl) -> Result<Arc<ClientConfig>, JwksError> {
    let mut tls = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksError::Tls {
            authority: url.authority(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The CA bundle file the roots came from, and its content when they were built.
struct CaFile {
    path: PathBuf,
    content: Vec<u8>,
}

/// Fetches a JWKS over HTTPS (server certificate and host name verified against `roots`).
pub struct JwksFetcher {
    url: JwksUrl,
    tls: Mutex<Arc<ClientConfig>>,
    ca_file: Option<Mutex<CaFile>>,
    timeout: Duration,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl JwksFetcher {
    pub fn new(url: JwksUrl, roots: RootCertStore, timeout: Duration) -> Result<Self, JwksError> {
        let tls = tls_config(roots, &url)?;
        Ok(Self {
            url,
            tls: Mutex::new(tls),
            ca_file: None,
            timeout,
        })
    }

    /// Trusts the PEM bundle at `path` (read now) and reads it again before each fetch: a changed
    /// bundle (a rotated IdP CA, updated in place by the kubelet) is used from then on. A changed
    /// file that is not a usable bundle is logged and the previous roots stay.
    pub fn with_ca_file(url: JwksUrl, path: &Path, timeout: Duration) -> Result<Self, JwksError> {
        let content = read_ca_bundle(path)?;
        let mut fetcher = Self::new(url, roots_from_pem(&content, path)?, timeout)?;
        fetcher.ca_file = Some(Mutex::new(CaFile {
            path: path.to_path_buf(),
            content,
        }));
        Ok(fetcher)
    }

    /// The TLS configuration for the next fetch, rebuilt first when the CA file changed.
    fn current_tls(&self) -> Arc<ClientConfig> {
        if let Some(ca) = &self.ca_file {
            let mut ca = ca.lock().unwrap_or_else(|p| p.into_inner());
            match std::fs::read(&ca.path) {
                Ok(content) if content != ca.content => {
                    let rebuilt = roots_from_pem(&content, &ca.path)
                        .and_then(|roots| tls_config(roots, &self.url));
                    match rebuilt {
                        Ok(tls) => {
                            tracing::info!(path = %ca.path.display(), "IdP CA bundle changed; trusting the new one");
                            *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "IdP CA bundle changed but is not usable; keeping the previous one");
                        }
                    }
                    // Remembered either way: a bad bundle is reported once, not at every fetch.
                    ca.content = content;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %ca.path.display(), error = %e, "cannot read the IdP CA bundle; keeping the previous one");
                }
            }
        }
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn url(&self) -> &JwksUrl {
        &self.url
    }

    /// GET the URL and parse the body; everything (connect, handshake, headers, body) within the
    /// timeout.
    pub async fn fetch(&self) -> Result<KeySet, JwksError> {
        let body = tokio::time::timeout(self.timeout, self.get())
            .await
            .map_err(|_| JwksError::Timeout {
                url: self.url.to_string(),
                timeout: self.timeout,
            })??;
        parse_jwks(&body)
    }

    async fn get(&self) -> Result<Bytes, JwksError> {
        let authority = self.url.authority();
        let http_err = |e: &dyn std::fmt::Display| JwksError::Http {
            authority: authority.clone(),
            reason: e.to_string(),
        };
        // The whole fetch is bounded by `fetch`'s timeout, so no separate connect timeout.
        let mut conn = open_https(&self.url.host, self.url.port, self.current_tls(), None)
            .await
            .map_err(|e| match e {
                OpenError::Connect(reason) => JwksError::Connect {
                    authority: authority.clone(),
                    reason,
                },
                // Not asked for (no connect timeout given); named for completeness.
                OpenError::ConnectTimeout => JwksError::Connect {
                    authority: authority.clone(),
                    reason: "timed out".into(),
                },
                OpenError::Tls(reason) => JwksError::Tls {
                    authority: authority.clone(),
                    reason,
                },
                OpenError::Http(reason) => http_err(&reason),
            })?;
        let req = http::Request::get(self.url.path_and_query.as_str())
            .header(http::header::HOST, &authority)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(http::header::USER_AGENT, "mpm-smoc-service")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_err(&e))?;
        // `conn` is dropped when this returns, which stops its driver task.
        async {
            let resp = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| http_err(&e))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(JwksError::Status {
                    url: self.url.to_string(),
                    status,
                });
            }
            let declared = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(JwksError::TooLarge(self.url.to_string()));
            }
            match Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
            {
                Ok(c) => Ok(c.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(JwksError::TooLarge(self.url.to_string()))
                }
                Err(e) => Err(http_err(&e)),
            }
        }
        .await
    }
}

/// When the URL source fetches the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Regular refresh while the last fetch succeeded (IdPs publish a new key well before they sign
    /// with it, so minutes are fast enough).
    pub interval: Duration,
    /// At most one fetch per this period on account of an unknown `kid`: tokens are attacker
    /// input, and a flood of made-up `kid`s must not turn into a flood of requests to the IdP.
    pub min_interval_unknown_kid: Duration,
    /// First retry after a failed fetch; doubles per consecutive failure up to `max_retry`.
    pub retry_base: Duration,
    pub max_retry: Duration,
    /// Whole fetch: connect, TLS, response.
    pub timeout: Duration,
}

// contract: config.json, `jwt` (5 min, 30 s, 1 s..30 s, 10 s).
impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            min_interval_unknown_kid: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            max_retry: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RefreshPolicy {
    /// Delay until the next scheduled fetch after `consecutive_failures` failed ones (0: the last
    /// fetch succeeded). Failures retry sooner than the regular interval, never more often than
    /// `retry_base` and never later than the interval.
    pub fn next_delay(&self, consecutive_failures: u32) -> Duration {
        if consecutive_failures == 0 {
            return self.interval;
        }
        let exp = consecutive_failures.saturating_sub(1).min(16);
        self.retry_base
            .saturating_mul(1u32 << exp)
            .min(self.max_retry)
            .min(self.interval)
    }

    /// May a token with an unknown `kid` trigger a fetch now, given the last fetch attempt (of any
    /// kind)?
    pub fn unknown_kid_may_refresh(&self, last_attempt: Option<Instant>, now: Instant) -> bool {
        match last_attempt {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= self.min_interval_unknown_kid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","alg":"ES256","use":"sig",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn parses_sets_and_skips_keys_it_cannot_use() {
        let doc = format!(
            r#"{{"keys": [{EC},
                {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}},
                {{"kty":"RSA","kid":"enc1","use":"enc","alg":"RSA-OAEP","n":"sXch","e":"AQAB"}},
                {{"kty":"weird"}}]}}"#
        );
        let set = parse_jwks(doc.as_bytes()).expect("one usable key");
        assert_eq!(set.kids(), vec!["ec1"]);
        assert_eq!(set.skipped, 3);
        assert_eq!(set.sha256, crate::util::sha256_hex(doc.as_bytes()));
    }

    #[test]
    fn sets_without_usable_keys_are_errors() {
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty":"oct","k":"c2VjcmV0"}]}"#,
        ] {
            assert!(
                matches!(parse_jwks(bad.as_bytes()), Err(JwksError::Invalid(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn urls_must_be_https() {
        let u = JwksUrl::parse("https://keycloak.example/realms/u/protocol/openid-connect/certs")
            .expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            (
                "keycloak.example",
                443,
                "/realms/u/protocol/openid-connect/certs"
            )
        );
        assert_eq!(u.authority(), "keycloak.example");
        let u = JwksUrl::parse("https://127.0.0.1:8443?realm=x#frag").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("127.0.0.1", 8443, "/?realm=x")
        );
        assert_eq!(u.to_string(), "https://127.0.0.1:8443/", "query not shown");
        let u = JwksUrl::parse("https://[::1]:9/jwks").expect("valid");
        assert_eq!((u.host.as_str(), u.authority()), ("::1", "[::1]:9".into()));
        for bad in [
            "http://keycloak.example/certs",
            "keycloak.example/certs",
            "https://",
            "https://:443/x",
            "https://host:notaport/",
            "https://user:pw@host/",
            "https://[::1/x",
            "https://bad host/x",
        ] {
            let e = JwksUrl::parse(bad).expect_err(bad);
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        let e = JwksUrl::parse("http://u:secret@idp.example/certs?access_key=k").expect_err("http");
        assert!(
            !e.to_string().contains("secret") && !e.to_string().contains("access_key"),
            "{e}"
        );
        let e = JwksUrl::parse("http://idp.example/certs").expect_err("http");
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn failures_back_off_up_to_the_cap_and_never_past_the_interval() {
        let p = RefreshPolicy::default();
        assert_eq!(p.next_delay(0), Duration::from_secs(300));
        assert_eq!(p.next_delay(1), Duration::from_secs(1));
        assert_eq!(p.next_delay(2), Duration::from_secs(2));
        assert_eq!(p.next_delay(5), Duration::from_secs(16));
        assert_eq!(p.next_delay(6), Duration::from_secs(30));
        assert_eq!(p.next_delay(u32::MAX), Duration::from_secs(30));
        let short = RefreshPolicy {
            interval: Duration::from_secs(5),
            ..p
        };
        assert_eq!(short.next_delay(10), Duration::from_secs(5));
    }

    #[test]
    fn unknown_kids_refresh_at_most_once_per_period() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        assert!(p.unknown_kid_may_refresh(None, t0));
        assert!(!p.unknown_kid_may_refresh(Some(t0), t0));
        assert!(!p.unknown_kid_may_refresh(Some(t0), t0 + Duration::from_secs(29)));
        assert!(p.unknown_kid_may_refresh(Some(t0), t0 + Duration::from_secs(30)));
        // A clock that appears to go backwards never allows a refresh early.
        assert!(!p.unknown_kid_may_refresh(Some(t0 + Duration::from_secs(5)), t0));
    }

    #[test]
    fn the_compiled_in_roots_load() {
        let roots = idp_roots(None).expect("webpki roots");
        assert!(roots.len() > 50, "{}", roots.len());
        let e = idp_roots(Some(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
