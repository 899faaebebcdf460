//! The connector's ingest authentication (contract: Mounted files, config.json `hes`, ingest
//! API): validation of `spec.hes`, where its Secret and ConfigMap are mounted, and what
//! config.json says about them.

use serde_json::json;

use super::hub::SpecError;
use crate::crd::device_hub::{HesAuthSpec, HesSpec};

/// Mount directory of `spec.hes.auth.clientCaConfigMap` (key `ca.crt`), connector only.
pub const INGEST_CA_DIR: &str = "/etc/mpm/ingest-ca";
/// Mount directory of `spec.hes.auth.tokenSecret` (key `token`), connector only.
pub const INGEST_TOKEN_DIR: &str = "/etc/mpm/ingest-token";
pub const INGEST_CA_KEY: &str = "ca.crt";
pub const INGEST_TOKEN_KEY: &str = "token";

/// How the HES authenticates, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestAuth<'a> {
    Token { secret: &'a str },
    ClientCa { config_map: &'a str },
}

/// The configured authentication of a valid `spec.hes` (`None`: the ingest port is closed).
pub fn ingest_auth(hes: Option<&HesSpec>) -> Option<IngestAuth<'_>> {
    let auth = hes?.auth.as_ref()?;
    match (&auth.token_secret, &auth.client_ca_config_map) {
        (Some(secret), None) => Some(IngestAuth::Token { secret }),
        (None, Some(config_map)) => Some(IngestAuth::ClientCa { config_map }),
        _ => None,
    }
}

fn valid_dns_subdomain(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

/// `spec.hes`: exactly one authentication when `auth` is present, object names that Kubernetes
/// accepts, a rate limit of at least 1.
pub fn validate_hes(hes: &HesSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    if let Some(auth) = &hes.auth {
        errors.extend(validate_auth(auth));
    }
    if let Some(r) = &hes.rate_limit {
        for (field, value) in [("perSecond", r.per_second), ("burst", r.burst)] {
            if value == 0 {
                errors.push(SpecError::new(
                    format!("spec.hes.rateLimit.{field}"),
                    "must be at least 1",
                ));
            }
        }
    }
    errors
}

fn validate_auth(auth: &HesAuthSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    match (&auth.token_secret, &auth.client_ca_config_map) {
        (Some(_), Some(_)) => errors.push(SpecError::new(
            "spec.hes.auth",
            "set exactly one of tokenSecret and clientCaConfigMap, not both",
        )),
        (None, None) => errors.push(SpecError::new(
            "spec.hes.auth",
            "set exactly one of tokenSecret and clientCaConfigMap",
        )),
        (Some(name), None) if !valid_dns_subdomain(name) => errors.push(SpecError::new(
            "spec.hes.auth.tokenSecret",
            format!("{name:?} is not a valid Secret name"),
        )),
        (None, Some(name)) if !valid_dns_subdomain(name) => errors.push(SpecError::new(
            "spec.hes.auth.clientCaConfigMap",
            format!("{name:?} is not a valid ConfigMap name"),
        )),
        _ => {}
    }
    errors
}

/// What the operator found of the object `spec.hes.auth` names (read before the status is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    /// It exists and has the key the connector mounts.
    Present,
    /// It exists without that key.
    KeyMissing,
    /// It does not exist.
    NotFound,
}

/// The `IngestAuthenticated` condition: whether the HES can deliver to the ingest port, and if not,
/// the field and object to fix. `(status, reason, message)`; `source` is what was found of the
/// object the configured authentication names (ignored when none is configured).
pub fn auth_condition(
    namespace: &str,
    auth: Option<&IngestAuth<'_>>,
    source: AuthSource,
) -> (bool, &'static str, String) {
    let Some(auth) = auth else {
        return (
            false,
            "NotConfigured",
            "spec.hes.auth is not set: the connector's ingest port answers 401 to every request; \
             set spec.hes.auth.tokenSecret or spec.hes.auth.clientCaConfigMap"
                .into(),
        );
    };
    let (field, kind, name, key) = match auth {
        IngestAuth::Token { secret } => ("tokenSecret", "Secret", *secret, INGEST_TOKEN_KEY),
        IngestAuth::ClientCa { config_map } => {
            ("clientCaConfigMap", "ConfigMap", *config_map, INGEST_CA_KEY)
        }
    };
    match source {
        AuthSource::NotFound => (
            false,
            if kind == "Secret" {
                "SecretNotFound"
            } else {
                "ConfigMapNotFound"
            },
            format!(
                "spec.hes.auth.{field}: {kind} {namespace}/{name} not found; the connector cannot \
                 start until it exists (with key {key:?})"
            ),
        ),
        AuthSource::KeyMissing => (
            false,
            "KeyMissing",
            format!(
                "spec.hes.auth.{field}: {kind} {namespace}/{name} has no key {key:?}; the \
                 connector cannot start until it has"
            ),
        ),
        AuthSource::Present => match auth {
            IngestAuth::Token { .. } => (
                true,
                "BearerToken",
                format!("the HES authenticates with the bearer token in Secret {namespace}/{name}"),
            ),
            IngestAuth::ClientCa { .. } => (
                true,
                "ClientCertificate",
                format!(
                    "the HES authenticates with a client certificate issued by the CA in \
                     ConfigMap {namespace}/{name}"
                ),
            ),
        },
    }
}

/// config.json `hes` of the connector.
pub fn hes_config(hes: &HesSpec) -> serde_json::Value {
    let auth = ingest_auth(Some(hes));
    let mut config = json!({
        "endpoint": hes.endpoint,
        "tokenFile": matches!(auth, Some(IngestAuth::Token { .. }))
            .then(|| format!("{INGEST_TOKEN_DIR}/{INGEST_TOKEN_KEY}")),
        "clientCaFile": matches!(auth, Some(IngestAuth::ClientCa { .. }))
            .then(|| format!("{INGEST_CA_DIR}/{INGEST_CA_KEY}")),
    });
    if let Some(r) = &hes.rate_limit {
        config["rateLimit"] = json!({ "perSecond": r.per_second, "burst": r.burst });
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::device_hub::HesRateLimit;

    fn hes(token: Option<&str>, ca: Option<&str>) -> HesSpec {
        HesSpec {
            endpoint: "https://hes.example".into(),
            auth: Some(HesAuthSpec {
                token_secret: token.map(Into::into),
                client_ca_config_map: ca.map(Into::into),
            }),
            rate_limit: None,
        }
    }

    fn fields(h: &HesSpec) -> Vec<String> {
        validate_hes(h).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn exactly_one_authentication_with_valid_names() {
        assert!(validate_hes(&hes(Some("hes-token"), None)).is_empty());
        assert!(validate_hes(&hes(None, Some("hes-ca"))).is_empty());
        let both = validate_hes(&hes(Some("t"), Some("c")));
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].field, "spec.hes.auth");
        assert!(both[0].message.contains("not both"), "{:?}", both[0]);
        assert_eq!(fields(&hes(None, None)), ["spec.hes.auth"]);
        assert_eq!(
            fields(&hes(Some("Bad_Name"), None)),
            ["spec.hes.auth.tokenSecret"]
        );
        assert_eq!(
            fields(&hes(None, Some("../etc"))),
            ["spec.hes.auth.clientCaConfigMap"]
        );
        // No auth section is valid (the ingest port is closed then).
        let open = HesSpec {
            auth: None,
            ..hes(None, None)
        };
        assert!(validate_hes(&open).is_empty());
        assert_eq!(ingest_auth(Some(&open)), None);
    }

    #[test]
    fn rate_limits_are_at_least_one() {
        let h = HesSpec {
            rate_limit: Some(HesRateLimit {
                per_second: 0,
                burst: 0,
            }),
            ..hes(Some("t"), None)
        };
        assert_eq!(
            fields(&h),
            ["spec.hes.rateLimit.perSecond", "spec.hes.rateLimit.burst"]
        );
    }

    #[test]
    fn the_condition_names_the_field_and_object_to_fix() {
        let (ok, reason, message) = auth_condition("park", None, AuthSource::NotFound);
        assert!(!ok);
        assert_eq!(reason, "NotConfigured");
        assert!(message.contains("spec.hes.auth is not set"), "{message}");

        let token = IngestAuth::Token {
            secret: "hes-ingest-token",
        };
        let (ok, reason, message) = auth_condition("park", Some(&token), AuthSource::NotFound);
        assert!(!ok);
        assert_eq!(reason, "SecretNotFound");
        assert!(
            message.contains("spec.hes.auth.tokenSecret: Secret park/hes-ingest-token not found"),
            "{message}"
        );
        let (ok, reason, message) = auth_condition("park", Some(&token), AuthSource::KeyMissing);
        assert!(!ok);
        assert_eq!(reason, "KeyMissing");
        assert!(message.contains("has no key \"token\""), "{message}");
        let (ok, reason, _) = auth_condition("park", Some(&token), AuthSource::Present);
        assert!(ok);
        assert_eq!(reason, "BearerToken");

        let ca = IngestAuth::ClientCa {
            config_map: "hes-ca",
        };
        let (ok, reason, message) = auth_condition("park", Some(&ca), AuthSource::NotFound);
        assert!(!ok);
        assert_eq!(reason, "ConfigMapNotFound");
        assert!(message.contains("ConfigMap park/hes-ca"), "{message}");
        assert!(message.contains("\"ca.crt\""), "{message}");
        let (ok, reason, _) = auth_condition("park", Some(&ca), AuthSource::Present);
        assert!(ok);
        assert_eq!(reason, "ClientCertificate");
    }

    #[test]
    fn config_names_the_mounted_file() {
        let token = hes_config(&hes(Some("hes-token"), None));
        assert_eq!(token["tokenFile"], "/etc/mpm/ingest-token/token");
        assert!(token["clientCaFile"].is_null(), "{token}");
        assert!(token.get("rateLimit").is_none(), "{token}");
        let ca = hes_config(&HesSpec {
            rate_limit: Some(HesRateLimit {
                per_second: 5,
                burst: 10,
            }),
            ..hes(None, Some("hes-ca"))
        });
        assert_eq!(ca["clientCaFile"], "/etc/mpm/ingest-ca/ca.crt");
        assert!(ca["tokenFile"].is_null(), "{ca}");
        assert_eq!(ca["rateLimit"], json!({"perSecond": 5, "burst": 10}));
        assert_eq!(ca["endpoint"], "https://hes.example");
    }
}
