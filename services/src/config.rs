//! `config.json` and the environment overrides (contract: Mounted files / config.json).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid address in {var}={value}: {source}")]
    Addr {
        var: &'static str,
        value: String,
        source: std::net::AddrParseError,
    },
    #[error("config: {0}")]
    Invalid(String),
}

/// One peer service of the hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerConfig {
    pub url: String,
    pub spiffe_id: String,
}

/// The head-end system (connector only): where it is and how it authenticates on the ingest port.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HesConfig {
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Bearer token file (exactly one of this and `client_ca_file`).
    #[serde(default)]
    pub token_file: Option<String>,
    /// PEM CA bundle the HES's client certificate must chain to.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// The token bucket of each ingest source (contract: config.json, `hes`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 40,
        }
    }
}

/// How the ingest port authenticates the HES (validated [`HesConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestAuthSource {
    /// Nothing configured: every request is refused (fail closed).
    Unconfigured,
    /// Plain HTTP, `Authorization: Bearer <content of the file>`.
    Token(PathBuf),
    /// TLS with a required client certificate chaining to the bundle in the file.
    ClientCa(PathBuf),
}

impl HesConfig {
    /// The ingest authentication, or an error naming the fields when both are set.
    pub fn ingest_auth(&self) -> Result<IngestAuthSource, ConfigError> {
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        match (set(&self.token_file), set(&self.client_ca_file)) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "hes.tokenFile and hes.clientCaFile are both set; set exactly one".into(),
            )),
            (Some(t), None) => Ok(IngestAuthSource::Token(PathBuf::from(t))),
            (None, Some(ca)) => Ok(IngestAuthSource::ClientCa(PathBuf::from(ca))),
            (None, None) => Ok(IngestAuthSource::Unconfigured),
        }
    }

    /// The rate limit, or an error when a value is zero.
    pub fn rate_limit(&self) -> Result<RateLimitConfig, ConfigError> {
        let r = self.rate_limit.unwrap_or_default();
        if r.per_second == 0 || r.burst == 0 {
            return Err(ConfigError::Invalid(format!(
                "hes.rateLimit: perSecond ({}) and burst ({}) must be at least 1",
                r.per_second, r.burst
            )));
        }
        Ok(r)
    }
}

/// JWT validation settings (smoc-service only). Exactly one of `jwks_file` and `jwks_url`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA bundle for the IdP serving `jwks_url`; absent: the public web PKI roots.
    #[serde(default)]
    pub jwks_ca_file: Option<String>,
}

/// Where the JWT signing keys come from (validated [`JwtConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    File(PathBuf),
    Url {
        url: crate::jwks::JwksUrl,
        ca_file: Option<PathBuf>,
    },
}

impl JwtConfig {
    /// The key source, or an error naming the field. Exactly one of `jwksFile` and `jwksUrl`: with
    /// both, which keys are trusted would depend on a precedence rule nobody reads; with neither,
    /// no token could ever be valid. Empty strings count as unset (a templated config may render
    /// them).
    pub fn key_source(&self) -> Result<JwksLocation, ConfigError> {
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        match (set(&self.jwks_file), set(&self.jwks_url), set(&self.jwks_ca_file)) {
            (Some(_), Some(_), _) => invalid(
                "jwt.jwksFile and jwt.jwksUrl are both set; set exactly one".into(),
            ),
            (None, None, _) => invalid(
                "jwt.jwksFile or jwt.jwksUrl must be set (exactly one) when the jwt section is present"
                    .into(),
            ),
            (Some(_), None, Some(_)) => invalid(
                "jwt.jwksCaFile applies to jwt.jwksUrl only; remove it or use jwt.jwksUrl".into(),
            ),
            (Some(file), None, None) => Ok(JwksLocation::File(PathBuf::from(file))),
            (None, Some(url), ca) => Ok(JwksLocation::Url {
                url: crate::jwks::JwksUrl::parse(url)
                    .map_err(|e| ConfigError::Invalid(format!("jwt.jwksUrl: {e}")))?,
                ca_file: ca.map(PathBuf::from),
            }),
        }
    }
}

/// The connector's ingest port (contract: config.json, `ingest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngestConfig {
    /// Bounds on one ingest body; every field optional (defaults in [`crate::iec::Limits`]).
    #[serde(default)]
    pub limits: crate::iec::Limits,
}

/// `config.json` (contract: config.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    pub hub: String,
    pub namespace: String,
    pub service: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub peers: BTreeMap<String, PeerConfig>,
    #[serde(default)]
    pub hes: Option<HesConfig>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Connector only.
    #[serde(default)]
    pub ingest: IngestConfig,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The peer entry for a service name, or a typed error naming it.
    pub fn peer(&self, name: &str) -> Result<&PeerConfig, ConfigError> {
        self.peers
            .get(name)
            .ok_or_else(|| ConfigError::Invalid(format!("peers.{name} missing in config.json")))
    }
}

// contract: Mounted files
pub const DEFAULT_CONFIG: &str = "/etc/mpm/config/config.json";
pub const DEFAULT_TLS_DIR: &str = "/etc/mpm/tls";
pub const DEFAULT_TRUST_DIR: &str = "/etc/mpm/trust";
pub const DEFAULT_ACL_FILE: &str = "/etc/mpm/acl/allowed-peers.json";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/mpm";
// contract: Ports
pub const DEFAULT_HTTPS_ADDR: &str = "0.0.0.0:8443";
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:8080";
pub const DEFAULT_INGEST_ADDR: &str = "0.0.0.0:8090";

/// Where a service finds its files and which addresses it listens on.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    pub config_file: PathBuf,
    pub tls_dir: PathBuf,
    pub trust_dir: PathBuf,
    pub acl_file: PathBuf,
    pub data_dir: PathBuf,
    pub https_addr: SocketAddr,
    pub health_addr: SocketAddr,
}

impl RuntimePaths {
    /// Contract defaults with the `MPM_*` environment overrides applied.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = |var: &str, default: &str| {
            PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()))
        };
        let addr = |var: &'static str, default: &str| -> Result<SocketAddr, ConfigError> {
            let value = std::env::var(var).unwrap_or_else(|_| default.to_string());
            value.parse().map_err(|source| ConfigError::Addr {
                var,
                value: value.clone(),
                source,
            })
        };
        Ok(Self {
            config_file: path("MPM_CONFIG", DEFAULT_CONFIG),
            tls_dir: path("MPM_TLS_DIR", DEFAULT_TLS_DIR),
            trust_dir: path("MPM_TRUST_DIR", DEFAULT_TRUST_DIR),
            acl_file: path("MPM_ACL_FILE", DEFAULT_ACL_FILE),
            data_dir: path("MPM_DATA_DIR", DEFAULT_DATA_DIR),
            https_addr: addr("MPM_HTTPS_ADDR", DEFAULT_HTTPS_ADDR)?,
            health_addr: addr("MPM_HEALTH_ADDR", DEFAULT_HEALTH_ADDR)?,
        })
    }

    pub fn cert_file(&self) -> PathBuf {
        self.tls_dir.join("tls.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.tls_dir.join("tls.key")
    }

    pub fn bundle_file(&self) -> PathBuf {
        self.trust_dir.join("ca-bundle.pem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_example() {
        let json = br#"{
  "hub": "demo", "namespace": "park", "service": "device-hub", "trustDomain": "cluster.local",
  "peers": { "device-hub": { "url": "https://demo-device-hub.park.svc:8443",
                              "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-device-hub" },
             "smoc-service": { "url": "https://demo-smoc-service.park.svc:8443",
                               "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-smoc-service" } },
  "hes": { "endpoint": "https://hes.example:443" },
  "jwt": { "issuer": "https://keycloak.example/realms/utility", "audience": "smoc-api",
           "jwksFile": "/etc/mpm/config/jwks.json", "jwksUrl": null }
}"#;
        let cfg = ServiceConfig::parse(json).expect("contract example parses");
        assert_eq!(cfg.service, "device-hub");
        assert_eq!(
            cfg.peer("smoc-service").map(|p| p.spiffe_id.as_str()).ok(),
            Some("spiffe://cluster.local/ns/park/sa/demo-smoc-service")
        );
        let jwt = cfg.jwt.clone().expect("jwt section");
        assert_eq!(jwt.jwks_url, None);
        assert_eq!(
            jwt.key_source().ok(),
            Some(JwksLocation::File("/etc/mpm/config/jwks.json".into()))
        );
        assert!(cfg.peer("nope").is_err());
    }

    fn jwt(file: Option<&str>, url: Option<&str>, ca: Option<&str>) -> JwtConfig {
        JwtConfig {
            issuer: "https://idp.example".into(),
            audience: "smoc-api".into(),
            jwks_file: file.map(str::to_string),
            jwks_url: url.map(str::to_string),
            jwks_ca_file: ca.map(str::to_string),
        }
    }

    fn err(cfg: &JwtConfig) -> String {
        cfg.key_source().expect_err("invalid").to_string()
    }

    #[test]
    fn exactly_one_jwks_source() {
        let both = err(&jwt(
            Some("/j.json"),
            Some("https://idp.example/certs"),
            None,
        ));
        assert!(
            both.contains("jwt.jwksFile") && both.contains("jwt.jwksUrl") && both.contains("both"),
            "{both}"
        );
        let neither = err(&jwt(None, None, None));
        assert!(
            neither.contains("jwt.jwksFile") && neither.contains("jwt.jwksUrl"),
            "{neither}"
        );
        assert_eq!(
            err(&jwt(Some(" "), Some(""), None)),
            neither,
            "empty is unset"
        );
        let ca = err(&jwt(Some("/j.json"), None, Some("/ca.pem")));
        assert!(ca.contains("jwt.jwksCaFile"), "{ca}");
        let http = err(&jwt(None, Some("http://idp.example/certs"), None));
        assert!(
            http.contains("jwt.jwksUrl") && http.contains("https://"),
            "{http}"
        );
        match jwt(
            None,
            Some("https://idp.example:8443/certs"),
            Some("/ca.pem"),
        )
        .key_source()
        {
            Ok(JwksLocation::Url { url, ca_file }) => {
                assert_eq!(url.to_string(), "https://idp.example:8443/certs");
                assert_eq!(ca_file, Some(PathBuf::from("/ca.pem")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ingest_limits_are_optional_and_checked() {
        let base = r#""hub": "h", "namespace": "n", "service": "iec61968-connector""#;
        let cfg = ServiceConfig::parse(format!("{{{base}}}").as_bytes()).expect("no ingest");
        assert_eq!(cfg.ingest.limits, crate::iec::Limits::default());
        let cfg = ServiceConfig::parse(
            format!(r#"{{{base}, "ingest": {{"limits": {{"maxDepth": 8}}}}}}"#).as_bytes(),
        )
        .expect("one limit");
        assert_eq!(cfg.ingest.limits.max_depth, 8);
        assert_eq!(
            cfg.ingest.limits.max_events,
            crate::iec::Limits::default().max_events
        );
        let e = ServiceConfig::parse(
            format!(r#"{{{base}, "ingest": {{"limits": {{"maxDepth": 0}}}}}}"#).as_bytes(),
        )
        .expect_err("zero")
        .to_string();
        assert!(e.contains("ingest.limits.maxDepth 0"), "{e}");
    }

    #[test]
    fn at_most_one_ingest_authentication() {
        let hes = |token: Option<&str>, ca: Option<&str>| HesConfig {
            token_file: token.map(str::to_string),
            client_ca_file: ca.map(str::to_string),
            ..HesConfig::default()
        };
        let both = hes(Some("/t"), Some("/ca.crt"))
            .ingest_auth()
            .expect_err("both")
            .to_string();
        assert!(
            both.contains("hes.tokenFile") && both.contains("hes.clientCaFile"),
            "{both}"
        );
        assert_eq!(
            hes(Some(" "), None).ingest_auth().ok(),
            Some(IngestAuthSource::Unconfigured)
        );
        assert_eq!(
            hes(Some("/t"), Some("")).ingest_auth().ok(),
            Some(IngestAuthSource::Token("/t".into()))
        );
        assert_eq!(
            hes(None, Some("/ca.crt")).ingest_auth().ok(),
            Some(IngestAuthSource::ClientCa("/ca.crt".into()))
        );
        let cfg = ServiceConfig::parse(
            br#"{"hub": "h", "namespace": "n", "service": "iec61968-connector",
                 "hes": {"endpoint": "https://hes", "tokenFile": "/etc/mpm/ingest-token/token",
                         "rateLimit": {"perSecond": 5, "burst": 10}}}"#,
        )
        .expect("parses");
        let hes_cfg = cfg.hes.expect("hes");
        assert_eq!(
            hes_cfg.rate_limit().ok(),
            Some(RateLimitConfig {
                per_second: 5,
                burst: 10
            })
        );
        assert_eq!(
            HesConfig::default().rate_limit().ok(),
            Some(RateLimitConfig::default())
        );
        let zero = HesConfig {
            rate_limit: Some(RateLimitConfig {
                per_second: 0,
                burst: 1,
            }),
            ..HesConfig::default()
        };
        assert!(zero.rate_limit().is_err());
    }

    #[test]
    fn jwks_ca_file_is_optional_in_json() {
        let cfg = ServiceConfig::parse(
            br#"{"hub": "h", "namespace": "n", "service": "smoc-service",
                 "jwt": {"issuer": "i", "audience": "a", "jwksUrl": "https://idp.example/certs"}}"#,
        )
        .expect("parses");
        let jwt = cfg.jwt.expect("jwt");
        assert_eq!(jwt.jwks_ca_file, None);
        assert!(matches!(
            jwt.key_source(),
            Ok(JwksLocation::Url { ca_file: None, .. })
        ));
    }
}
