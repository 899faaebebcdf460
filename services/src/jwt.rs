//! Bearer token validation for smoc-service's query API: ES256 and RS256 against a JWKS file,
//! issuer and audience checked, Keycloak realm role required.

use std::path::PathBuf;
use std::sync::RwLock;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::util::sha256_hex;

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
    /// `401` for authentication failures, `403` for authorization ones.
    pub fn status(&self) -> u16 {
        match self {
            JwtError::Forbidden(_) => 403,
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

/// Validates tokens; the JWKS file is re-read when its content changes.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    keys: RwLock<(String, JwkSet)>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(issuer: &str, audience: &str, jwks_file: Option<PathBuf>) -> Self {
        let v = Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks_file,
            keys: RwLock::new((String::new(), JwkSet { keys: Vec::new() })),
        };
        v.reload();
        v
    }

    /// With a fixed key set (tests, or callers that fetched it themselves).
    pub fn with_jwks(issuer: &str, audience: &str, jwks: JwkSet) -> Self {
        Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            jwks_file: None,
            keys: RwLock::new(("fixed".into(), jwks)),
        }
    }

    /// Re-reads the JWKS file if it changed; invalid content keeps the old keys.
    pub fn reload(&self) {
        let Some(path) = &self.jwks_file else {
            return;
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read JWKS file");
                return;
            }
        };
        let hash = sha256_hex(&bytes);
        if self.keys.read().map(|g| g.0 == hash).unwrap_or(false) {
            return;
        }
        match serde_json::from_slice::<JwkSet>(&bytes) {
            Ok(set) => {
                tracing::info!(keys = set.keys.len(), "loaded JWKS");
                if let Ok(mut g) = self.keys.write() {
                    *g = (hash, set);
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "invalid JWKS file; keeping old keys")
            }
        }
    }

    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, JwtError> {
        let g = self.keys.read().map_err(|_| JwtError::NoKeys)?;
        let keys = &g.1.keys;
        if keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
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
        found
            .cloned()
            .ok_or_else(|| JwtError::Invalid(format!("no {alg:?} key with kid {kid:?}")))
    }

    /// Validates an `Authorization` header value.
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Caller, JwtError> {
        let raw = authorization.ok_or(JwtError::Missing)?.trim();
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(JwtError::Missing)?;
        self.verify(token)
    }

    /// Validates a compact JWS.
    pub fn verify(&self, token: &str) -> Result<Caller, JwtError> {
        let header = decode_header(token).map_err(|e| JwtError::Invalid(e.to_string()))?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
            return Err(JwtError::Invalid(format!(
                "algorithm {:?} not accepted (ES256, RS256)",
                header.alg
            )));
        }
        let jwk = self.key_for(header.kid.as_deref(), header.alg)?;
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
