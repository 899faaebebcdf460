//! Bearer token validation for smoc-service's query API: ES256 and RS256 against a key set from a
//! JWKS file or URL (`jwt.jwksFile` / `jwt.jwksUrl`), issuer and audience checked, Keycloak realm
//! role required.
//!
//! A file is re-read when its content changes. A URL is fetched at start, every
//! [`RefreshPolicy::interval`], sooner after failures, and when a token names a `kid` the set does
//! not have (at most once per [`RefreshPolicy::min_interval_unknown_kid`]). A failed or invalid
//! fetch never replaces the last good key set.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ConfigError, JwksLocation, JwtConfig};
use crate::jwks::{idp_roots, parse_jwks, JwksError, JwksFetcher, KeySet, RefreshPolicy};
use crate::metrics::Metrics;

/// The role the query API requires (contract: smoc-service API).
pub const REQUIRED_ROLE: &str = "reader";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token lacks realm role {0:?}")]
    Forbidden(String),
    #[error("no signing keys loaded")]
    NoKeys,
}

impl JwtError {
    /// `401` for authentication failures, `403` for authorization ones, `503` while no key set is
    /// loaded (our problem, not the caller's token).
    pub fn status(&self) -> u16 {
        match self {
            JwtError::Forbidden(_) => 403,
            JwtError::NoKeys => 503,
            _ => 401,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    realm_access: Option<RealmAccess>,
}

/// The caller a valid token describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: Option<String>,
    pub roles: Vec<String>,
}

/// Why a fetch of the key set happened (metrics label, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Initial,
    Periodic,
    UnknownKid,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Periodic => "periodic",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// Fetch bookkeeping of the URL source; its mutex also makes fetches single-flight.
#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    consecutive_failures: u32,
}

enum Source {
    /// A key set handed in by the caller, never refreshed.
    Fixed,
    File(PathBuf),
    Url {
        fetcher: Box<JwksFetcher>,
        policy: RefreshPolicy,
        state: tokio::sync::Mutex<FetchState>,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Fixed => "fixed key set".into(),
            Source::File(p) => format!("jwt.jwksFile {}", p.display()),
            Source::Url { fetcher, .. } => format!("jwt.jwksUrl {}", fetcher.url()),
        }
    }
}

/// Why no key was found for a token.
enum Lookup {
    NoKeys,
    NotFound,
}

/// Validates tokens against the current key set.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    source: Source,
    keys: RwLock<Option<Arc<KeySet>>>,
    last_error: RwLock<Option<String>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    fn with_source(
        issuer: &str,
        audience: &str,
        source: Source,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            source,
            keys: RwLock::new(None),
            last_error: RwLock::new(None),
            metrics,
        }
    }

    /// From smoc-service's `jwt` section: a file is read right away, a URL is fetched by
    /// [`Self::run`]. Errors name the offending field.
    pub fn from_config(cfg: &JwtConfig, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        match cfg.key_source()? {
            JwksLocation::File(path) => Ok(Self::from_file(
                &cfg.issuer,
                &cfg.audience,
                path,
                Some(metrics),
            )),
            JwksLocation::Url { url, ca_file } => {
                let policy = RefreshPolicy::default();
                let fetcher = match ca_file.as_deref() {
                    Some(path) => JwksFetcher::with_ca_file(url, path, policy.timeout)
                        .map_err(|e| ConfigError::Invalid(format!("jwt.jwksCaFile: {e}")))?,
                    None => {
                        let roots = idp_roots(None)
                            .map_err(|e| ConfigError::Invalid(format!("jwt.jwksCaFile: {e}")))?;
                        JwksFetcher::new(url, roots, policy.timeout)
                            .map_err(|e| ConfigError::Invalid(format!("jwt.jwksUrl: {e}")))?
                    }
                };
                Ok(Self::from_url(
                    &cfg.issuer,
                    &cfg.audience,
                    fetcher,
                    policy,
                    Some(metrics),
                ))
            }
        }
    }

    /// Keys from a JWKS file, read now and again by [`Self::reload`].
    pub fn from_file(
        issuer: &str,
        audience: &str,
        path: PathBuf,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let v = Self::with_source(issuer, audience, Source::File(path), metrics);
        v.reload();
        v
    }

    /// Keys from a JWKS URL. Holds no keys until [`Self::refresh_now`] or [`Self::run`] fetched
    /// them.
    pub fn from_url(
        issuer: &str,
        audience: &str,
        fetcher: JwksFetcher,
        policy: RefreshPolicy,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let source = Source::Url {
            fetcher: Box::new(fetcher),
            policy,
            state: tokio::sync::Mutex::new(FetchState::default()),
        };
        Self::with_source(issuer, audience, source, metrics)
    }

    /// With a fixed key set (tests, or callers that fetched it themselves).
    pub fn with_jwks(issuer: &str, audience: &str, jwks: JwkSet) -> Self {
        let v = Self::with_source(issuer, audience, Source::Fixed, None);
        if let Ok(mut g) = v.keys.write() {
            *g = Some(Arc::new(KeySet {
                keys: jwks,
                sha256: "fixed".into(),
                skipped: 0,
            }));
        }
        v
    }

    /// The `kid`s of the key set in use.
    pub fn kids(&self) -> Vec<String> {
        self.current()
            .map(|k| k.kids().into_iter().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|g| g.clone())
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.write() {
            *g = e;
        }
    }

    /// Swaps in `set` unless it is the one in use.
    fn install(&self, set: KeySet) {
        if let Some(m) = &self.metrics {
            m.jwks_last_success.set(chrono::Utc::now().timestamp());
            m.jwks_keys.set(set.keys.keys.len() as i64);
        }
        self.set_error(None);
        if self.current().is_some_and(|c| c.sha256 == set.sha256) {
            tracing::debug!(source = %self.source.describe(), "JWKS unchanged");
            return;
        }
        tracing::info!(source = %self.source.describe(), keys = set.keys.keys.len(), kids = ?set.kids(), skipped = set.skipped, "loaded JWKS");
        if let Ok(mut g) = self.keys.write() {
            *g = Some(Arc::new(set));
        }
    }

    /// Re-reads the JWKS file if it changed; invalid content keeps the old keys.
    pub fn reload(&self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read JWKS file");
                self.set_error(Some(format!("cannot read {}: {e}", path.display())));
                return;
            }
        };
        if self
            .current()
            .is_some_and(|c| c.sha256 == crate::util::sha256_hex(&bytes))
        {
            return;
        }
        match parse_jwks(&bytes) {
            Ok(set) => self.install(set),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "invalid JWKS file; keeping old keys");
                self.set_error(Some(e.to_string()));
            }
        }
    }

    /// One fetch of the URL source, the caller holding the fetch lock. Failures keep the keys.
    async fn fetch_locked(&self, st: &mut FetchState, trigger: Trigger) -> Result<(), JwksError> {
        let Source::Url { fetcher, .. } = &self.source else {
            return Ok(());
        };
        st.last_attempt = Some(Instant::now());
        let result = fetcher.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        if let Some(m) = &self.metrics {
            m.jwks_fetches
                .get_or_create(&Metrics::labels(&[
                    ("trigger", trigger.as_str()),
                    ("outcome", outcome),
                ]))
                .inc();
        }
        match result {
            Ok(set) => {
                st.consecutive_failures = 0;
                self.install(set);
                Ok(())
            }
            Err(e) => {
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                match self.current() {
                    Some(keys) => tracing::warn!(
                        url = %fetcher.url(), trigger = trigger.as_str(), error = %e,
                        failures = st.consecutive_failures, kids = ?keys.kids(),
                        "JWKS refresh failed; keeping the last good key set"
                    ),
                    None => tracing::warn!(
                        url = %fetcher.url(), trigger = trigger.as_str(), error = %e,
                        failures = st.consecutive_failures,
                        "JWKS fetch failed; no key set yet, query API unavailable"
                    ),
                }
                self.set_error(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Fetches the URL source now, regardless of the rate limit (start-up, tests). A no-op for
    /// the other sources.
    pub async fn refresh_now(&self) -> Result<(), JwksError> {
        let Source::Url { state, .. } = &self.source else {
            return Ok(());
        };
        let mut st = state.lock().await;
        self.fetch_locked(&mut st, Trigger::Initial).await
    }

    /// A token named a `kid` we do not have: the IdP may have rotated. Fetches unless a fetch
    /// happened within the rate-limit period; callers waiting here while another fetch runs see
    /// its result instead of starting their own.
    async fn refresh_for_unknown_kid(&self) {
        let Source::Url { policy, state, .. } = &self.source else {
            return;
        };
        let mut st = state.lock().await;
        if !policy.unknown_kid_may_refresh(st.last_attempt, Instant::now()) {
            // debug only: this is the path a flood of forged tokens takes.
            tracing::debug!("unknown kid; JWKS fetched recently, not refreshing");
            return;
        }
        let _ = self.fetch_locked(&mut st, Trigger::UnknownKid).await;
    }

    /// Keeps the key set current until `shutdown` flips: polls a file every `poll_interval`,
    /// fetches a URL per its [`RefreshPolicy`].
    pub async fn run(
        self: Arc<Self>,
        poll_interval: std::time::Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut trigger = Trigger::Initial;
        loop {
            let delay = match &self.source {
                Source::Fixed => return,
                Source::File(_) => {
                    let v = self.clone();
                    if tokio::task::spawn_blocking(move || v.reload())
                        .await
                        .is_err()
                    {
                        tracing::error!("JWKS reload task failed");
                    }
                    poll_interval
                }
                Source::Url { policy, state, .. } => {
                    let mut st = state.lock().await;
                    let _ = self.fetch_locked(&mut st, trigger).await;
                    policy.next_delay(st.consecutive_failures)
                }
            };
            trigger = Trigger::Periodic;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, Lookup> {
        let set = self.current().ok_or(Lookup::NoKeys)?;
        let keys = &set.keys.keys;
        let fits = |k: &&Jwk| {
            matches!(
                (&k.algorithm, alg),
                (
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
                    Algorithm::ES256
                ) | (
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
                    Algorithm::RS256
                )
            )
        };
        let found = match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid))
                .filter(fits),
            None => {
                let mut c = keys.iter().filter(fits);
                match (c.next(), c.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        };
        found.cloned().ok_or(Lookup::NotFound)
    }

    /// Validates an `Authorization` header value.
    pub async fn verify_header(&self, authorization: Option<&str>) -> Result<Caller, JwtError> {
        let raw = authorization.ok_or(JwtError::Missing)?.trim();
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(JwtError::Missing)?;
        self.verify(token).await
    }

    /// Validates a compact JWS.
    pub async fn verify(&self, token: &str) -> Result<Caller, JwtError> {
        let header = decode_header(token).map_err(|e| JwtError::Invalid(e.to_string()))?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
            return Err(JwtError::Invalid(format!(
                "algorithm {:?} not accepted (ES256, RS256)",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let jwk = match self.key_for(kid, header.alg) {
            Ok(k) => Ok(k),
            // Only a named kid can appear after a rotation; a token without one is ambiguous or
            // wrong however often we fetch.
            Err(_) if kid.is_some() => {
                self.refresh_for_unknown_kid().await;
                self.key_for(kid, header.alg)
            }
            Err(e) => Err(e),
        }
        .map_err(|e| match e {
            Lookup::NoKeys => JwtError::NoKeys,
            Lookup::NotFound => {
                JwtError::Invalid(format!("no {:?} key with kid {kid:?}", header.alg))
            }
        })?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 30;
        let data = decode::<Claims>(token, &key, &validation)
            .map_err(|e| JwtError::Invalid(e.to_string()))?;
        let roles = data
            .claims
            .realm_access
            .map(|r| r.roles)
            .unwrap_or_default();
        if !roles.iter().any(|r| r == REQUIRED_ROLE) {
            return Err(JwtError::Forbidden(REQUIRED_ROLE.to_string()));
        }
        Ok(Caller {
            subject: data.claims.sub,
            roles,
        })
    }
}

/// smoc-service is ready only once it holds a key set (the query API cannot work before).
impl crate::server::ReadinessCheck for JwtVerifier {
    fn readiness(&self) -> Result<(), String> {
        if self.current().is_some() {
            return Ok(());
        }
        let why = self
            .last_error
            .read()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "not fetched yet".into());
        Err(format!(
            "JWT key set not loaded ({}): {why}",
            self.source.describe()
        ))
    }
}
