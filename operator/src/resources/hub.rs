//! Validation of a DeviceHub spec and its resolution into the services the hub runs
//! (built-in defaults merged with the user's entries).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use regex::Regex;

use crate::crd::device_hub::{
    DeviceHubSpec, JwtSpec, ServiceSpec, StorageSpec, DEFAULT_IMAGE, DEFAULT_SERVICES,
};

/// One problem in a spec, naming the field (`spec.services[1].image`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Joins spec errors into one condition message.
pub fn describe(errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a service is, which decides its command, ports and configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Connector,
    DeviceHub,
    Smoc,
    Custom,
}

impl ServiceKind {
    pub fn of(name: &str) -> Self {
        match name {
            "iec61968-connector" => Self::Connector,
            "device-hub" => Self::DeviceHub,
            "smoc-service" => Self::Smoc,
            _ => Self::Custom,
        }
    }
}

/// A service after defaults were applied and the spec validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedService {
    pub name: String,
    pub kind: ServiceKind,
    pub image: String,
    pub command: Vec<String>,
    pub replicas: i32,
    pub resources: ResourceRequirements,
    pub port: u16,
    pub env: Vec<EnvVar>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub storage: Option<StorageSpec>,
}

/// smoc-service takes its JWT keys from exactly one source and fetches a URL only over HTTPS
/// (a token key set is not something to accept from a network attacker).
pub fn validate_jwt(jwt: &JwtSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    match (&jwt.jwks_config_map, &jwt.jwks_url) {
        (Some(_), Some(_)) => errors.push(SpecError::new(
            "spec.jwt",
            "set exactly one of jwksConfigMap and jwksUrl, not both",
        )),
        (None, None) => errors.push(SpecError::new(
            "spec.jwt",
            "set exactly one of jwksConfigMap and jwksUrl",
        )),
        (Some(cm), None) if !valid_dns_subdomain(cm) => errors.push(SpecError::new(
            "spec.jwt.jwksConfigMap",
            format!("{cm:?} is not a valid ConfigMap name"),
        )),
        (None, Some(url)) if !valid_https_url(url) => errors.push(SpecError::new(
            "spec.jwt.jwksUrl",
            format!("{url:?} is not an https:// URL with a host"),
        )),
        _ => {}
    }
    match (&jwt.jwks_ca_config_map, &jwt.jwks_url) {
        (Some(_), None) => errors.push(SpecError::new(
            "spec.jwt.jwksCaConfigMap",
            "applies to jwksUrl only (it says which CA the identity provider's certificate chains to); remove it or use jwksUrl",
        )),
        (Some(cm), Some(_)) if !valid_dns_subdomain(cm) => errors.push(SpecError::new(
            "spec.jwt.jwksCaConfigMap",
            format!("{cm:?} is not a valid ConfigMap name"),
        )),
        _ => {}
    }
    for (field, value) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
        if value.trim().is_empty() {
            errors.push(SpecError::new(
                format!("spec.jwt.{field}"),
                "must not be empty",
            ));
        }
    }
    errors
}

fn valid_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(valid_dns_label)
}

fn valid_https_url(url: &str) -> bool {
    url.strip_prefix("https://")
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            !host.is_empty() && !host.starts_with(':') && !host.contains(char::is_whitespace)
        })
}

/// Every service the hub runs, in a stable order (built-ins first, then the user's in spec order).
pub fn resolve_services(
    hub_name: &str,
    spec: &DeviceHubSpec,
) -> Result<Vec<ResolvedService>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, svc) in spec.services.iter().enumerate() {
        if !seen.insert(svc.name.as_str()) {
            errors.push(SpecError::new(
                format!("spec.services[{i}].name"),
                format!("duplicate service name {:?}", svc.name),
            ));
        }
    }
    if let Some(image) = &spec.image {
        if !valid_image(image) {
            errors.push(SpecError::new(
                "spec.image",
                format!("malformed image reference {image:?}"),
            ));
        }
    }
    if !valid_trust_domain(&spec.trust_domain) {
        errors.push(SpecError::new(
            "spec.trustDomain",
            format!("{:?} is not a valid SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')", spec.trust_domain),
        ));
    }

    if let Some(jwt) = &spec.jwt {
        errors.extend(validate_jwt(jwt));
    }
    if let Some(hes) = &spec.hes {
        errors.extend(super::ingest::validate_hes(hes));
    }

    let default_image = spec
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let mut names: Vec<&str> = Vec::new();
    if spec.include_default_services {
        names.extend(DEFAULT_SERVICES);
    }
    for svc in &spec.services {
        if !names.contains(&svc.name.as_str()) {
            names.push(&svc.name);
        }
    }

    let mut resolved = Vec::new();
    for name in names {
        let position = spec.services.iter().position(|s| s.name == name);
        let user = position.map(|i| (i, &spec.services[i]));
        if user.is_some_and(|(_, s)| !s.enabled) {
            continue;
        }
        let field = |f: &str| match position {
            Some(i) => format!("spec.services[{i}].{f}"),
            None => format!("spec.services[{name}].{f}"),
        };
        let kind = ServiceKind::of(name);
        if !valid_dns_label(name) {
            errors.push(SpecError::new(
                field("name"),
                format!(
                    "{name:?} is not a DNS label (lowercase alphanumerics and '-', at most 63)"
                ),
            ));
            continue;
        }
        // contract: Names. `<hub>-<svc>-config` is the longest per-service name that must be a DNS label
        // (Service names are DNS labels too).
        if format!("{hub_name}-{name}-config").len() > 63 {
            errors.push(SpecError::new(
                field("name"),
                format!("hub name {hub_name:?} plus service name {name:?} are too long: `<hub>-<service>-config` must fit in 63 characters"),
            ));
            continue;
        }
        let svc: ServiceSpec = user.map(|(_, s)| s.clone()).unwrap_or_else(|| ServiceSpec {
            name: name.to_string(),
            enabled: true,
            replicas: 1,
            port: 8443,
            ..ServiceSpec::default()
        });
        let image = match (&svc.image, kind) {
            (Some(image), _) => {
                if !valid_image(image) {
                    errors.push(SpecError::new(
                        field("image"),
                        format!("malformed image reference {image:?}"),
                    ));
                }
                image.clone()
            }
            (None, ServiceKind::Custom) => {
                errors.push(SpecError::new(
                    field("image"),
                    format!("service {name:?} is not built in, so it needs an image"),
                ));
                String::new()
            }
            (None, _) => default_image.clone(),
        };
        if svc.replicas < 0 {
            errors.push(SpecError::new(
                field("replicas"),
                format!("must be >= 0, got {}", svc.replicas),
            ));
        }
        if svc.port < 1024
            || svc.port == crate::resources::names::HEALTH_PORT
            || svc.port == crate::resources::names::INGEST_PORT
        {
            errors.push(SpecError::new(
                field("port"),
                format!("{} is not allowed: use an unprivileged port other than 8080 (health) and 8090 (ingest)", svc.port),
            ));
        }
        // Labels could make a pod match another service's selector (or hide whose it is).
        for k in svc.labels.keys() {
            if reserved_key(k) {
                errors.push(SpecError::new(
                    field("labels"),
                    format!("label {k:?} is reserved for the operator (keys under meterpark.io/ and app.kubernetes.io/)"),
                ));
            }
        }
        // Annotations: the operator's own (desired-hash, ca-rotation) and the ones that would
        // take the pod out of its AppArmor or seccomp sandbox.
        for k in svc.annotations.keys() {
            if reserved_key(k) || sandbox_annotation(k) {
                errors.push(SpecError::new(
                    field("annotations"),
                    format!("annotation {k:?} is not allowed (keys under meterpark.io/ and app.kubernetes.io/ are the operator's; AppArmor and seccomp annotations would change the pod's sandbox)"),
                ));
            }
        }
        errors.extend(validate_env(&svc.env, &field("env")));
        let command = if svc.command.is_empty() && kind != ServiceKind::Custom {
            // contract: Image.
            vec![format!("/usr/local/bin/{name}")]
        } else {
            svc.command.clone()
        };
        resolved.push(ResolvedService {
            name: name.to_string(),
            kind,
            image,
            command,
            replicas: svc.replicas,
            resources: svc.resources.clone().unwrap_or_else(default_resources),
            port: svc.port,
            env: svc.env.clone(),
            labels: svc.labels.clone(),
            annotations: svc.annotations.clone(),
            storage: svc.storage.clone(),
        });
    }
    if resolved.is_empty() && errors.is_empty() {
        errors.push(SpecError::new(
            "spec.services",
            "the hub declares no enabled service",
        ));
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

/// Most environment variables one service may declare.
pub const MAX_ENV: usize = 100;

/// Label and annotation keys the operator owns.
fn reserved_key(key: &str) -> bool {
    key.starts_with("meterpark.io/") || key.starts_with("app.kubernetes.io/")
}

/// Annotations that select a pod's AppArmor or seccomp profile.
fn sandbox_annotation(key: &str) -> bool {
    key.starts_with("container.apparmor.security.beta.kubernetes.io/")
        || key.starts_with("seccomp.security.alpha.kubernetes.io/")
        || key.starts_with("container.seccomp.security.alpha.kubernetes.io/")
}

/// A service's extra environment: valid, unique names, none of the operator's `MPM_*` variables
/// (a later duplicate would override the operator's value, e.g. `MPM_HTTPS_ADDR`). Which Secrets
/// `valueFrom.secretKeyRef` may read needs the other hubs: see `isolation::secret_refs`.
fn validate_env(env: &[EnvVar], base: &str) -> Vec<SpecError> {
    static NAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$").expect("static regex"));
    let mut errors = Vec::new();
    if env.len() > MAX_ENV {
        errors.push(SpecError::new(
            base,
            format!("at most {MAX_ENV} variables, got {}", env.len()),
        ));
        return errors;
    }
    let mut seen = BTreeSet::new();
    for (j, var) in env.iter().enumerate() {
        let field = |f: &str| format!("{base}[{j}].{f}");
        let name = var.name.as_str();
        if name.len() > 253 || !NAME.is_match(name) {
            errors.push(SpecError::new(
                field("name"),
                format!(
                    "{:?} is not a valid environment variable name",
                    truncate(name)
                ),
            ));
        } else if name.to_ascii_uppercase().starts_with("MPM_") {
            errors.push(SpecError::new(
                field("name"),
                format!("{name:?} is reserved: the operator sets the MPM_* variables"),
            ));
        } else if !seen.insert(name) {
            errors.push(SpecError::new(
                field("name"),
                format!("duplicate environment variable {name:?}"),
            ));
        }
    }
    errors
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("50m")),
            ("memory".into(), q("32Mi")),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), q("500m")),
            ("memory".into(), q("128Mi")),
        ])),
        ..ResourceRequirements::default()
    }
}

/// RFC 1123 label.
pub fn valid_dns_label(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$").expect("static regex")
    });
    RE.is_match(s)
}

/// SPIFFE trust domain: lowercase letters, digits, dots, dashes and underscores.
pub fn valid_trust_domain(s: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[a-z0-9._-]{1,255}$").expect("static regex"));
    RE.is_match(s)
}

/// Container image reference as the distribution spec defines it:
/// `[registry[:port]/]path[:tag][@digest]`.
pub fn valid_image(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?",
            r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
            r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
            r"(?:@sha256:[a-f0-9]{64})?$"
        ))
        .expect("static regex")
    });
    // The first component is a registry only when it looks like a host (has '.' or ':', or is
    // `localhost`); otherwise it is a path component and must be lowercase.
    let first = s.split('/').next().unwrap_or_default();
    let registry_like =
        s.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let first_ok = registry_like || !first.chars().any(|c| c.is_ascii_uppercase());
    s.len() <= 512 && first_ok && RE.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(services: Vec<ServiceSpec>) -> DeviceHubSpec {
        DeviceHubSpec {
            include_default_services: true,
            services,
            trust_domain: "cluster.local".into(),
            ..DeviceHubSpec::default()
        }
    }

    fn svc(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            enabled: true,
            replicas: 1,
            port: 8443,
            ..ServiceSpec::default()
        }
    }

    fn jwt(config_map: Option<&str>, url: Option<&str>) -> JwtSpec {
        JwtSpec {
            issuer: "https://idp.example/realms/mpm".into(),
            audience: "smoc".into(),
            jwks_config_map: config_map.map(Into::into),
            jwks_url: url.map(Into::into),
            jwks_ca_config_map: None,
        }
    }

    #[test]
    fn jwt_needs_exactly_one_https_key_source() {
        assert!(validate_jwt(&jwt(Some("jwks"), None)).is_empty());
        assert!(validate_jwt(&jwt(None, Some("https://idp.example/certs"))).is_empty());
        assert!(
            validate_jwt(&jwt(None, Some("https://user@idp.example:8443/certs?x=1"))).is_empty()
        );
        let fields = |j: JwtSpec| {
            validate_jwt(&j)
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(jwt(Some("jwks"), Some("https://idp/x"))),
            ["spec.jwt"]
        );
        assert_eq!(fields(jwt(None, None)), ["spec.jwt"]);
        assert_eq!(
            fields(jwt(None, Some("http://idp/x"))),
            ["spec.jwt.jwksUrl"]
        );
        assert_eq!(fields(jwt(None, Some("https:///x"))), ["spec.jwt.jwksUrl"]);
        assert_eq!(
            fields(jwt(Some("Bad_Name"), None)),
            ["spec.jwt.jwksConfigMap"]
        );
        let mut empty = jwt(Some("jwks"), None);
        empty.audience = " ".into();
        assert_eq!(fields(empty), ["spec.jwt.audience"]);

        // A private CA for the identity provider: with a URL only, and a valid name.
        let mut private = jwt(None, Some("https://idp.internal/certs"));
        private.jwks_ca_config_map = Some("idp-ca".into());
        assert!(validate_jwt(&private).is_empty());
        private.jwks_ca_config_map = Some("Bad_Name".into());
        assert_eq!(fields(private), ["spec.jwt.jwksCaConfigMap"]);
        let mut file_with_ca = jwt(Some("jwks"), None);
        file_with_ca.jwks_ca_config_map = Some("idp-ca".into());
        let errors = validate_jwt(&file_with_ca);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.jwt.jwksCaConfigMap");
        assert!(errors[0].message.contains("jwksUrl only"), "{errors:?}");
    }

    #[test]
    fn a_bad_jwt_section_makes_the_spec_invalid() {
        let mut s = spec(vec![]);
        s.jwt = Some(jwt(Some("jwks"), Some("https://idp/x")));
        let errors = resolve_services("demo", &s).unwrap_err();
        assert!(
            describe(&errors).contains("spec.jwt: set exactly one"),
            "{errors:?}"
        );
    }

    #[test]
    fn minimal_hub_runs_the_three_builtin_services() {
        let services = resolve_services("demo", &spec(vec![])).unwrap();
        let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, DEFAULT_SERVICES);
        assert_eq!(services[1].command, vec!["/usr/local/bin/device-hub"]);
        assert_eq!(services[0].image, DEFAULT_IMAGE);
    }

    #[test]
    fn user_entries_override_and_extend_the_defaults() {
        let mut hub = svc("device-hub");
        hub.replicas = 3;
        let mut bff = svc("bff");
        bff.image = Some("registry.example:5000/mpm/bff:1.0".into());
        let mut smoc = svc("smoc-service");
        smoc.enabled = false;
        let services = resolve_services("demo", &spec(vec![hub, bff, smoc])).unwrap();
        let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["iec61968-connector", "device-hub", "bff"]);
        assert_eq!(services[1].replicas, 3);
        assert_eq!(services[2].kind, ServiceKind::Custom);
        assert!(services[2].command.is_empty());
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut bad_image = svc("device-hub");
        bad_image.image = Some("Not A/Valid::image".into());
        let mut negative = svc("smoc-service");
        negative.replicas = -1;
        let errors = resolve_services(
            "demo",
            &spec(vec![bad_image, negative, svc("bff"), svc("bff")]),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.services[3].name"), "{errors:?}");
        assert!(fields.contains(&"spec.services[0].image"), "{errors:?}");
        assert!(fields.contains(&"spec.services[1].replicas"), "{errors:?}");
        assert!(fields.contains(&"spec.services[2].image"), "{errors:?}");
        assert!(describe(&errors).contains("duplicate service name \"bff\""));
    }

    #[test]
    fn image_references() {
        for ok in [
            "localhost/mpm-services:0.1.0",
            "docker.io/library/nginx:1.25",
            "nginx",
            "registry.example:5000/a/b_c/d-e:v1.2.3",
            "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(valid_image(ok), "{ok}");
        }
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x:",
            ":tag",
            "a//b",
            "reg/x:tag:tag",
        ] {
            assert!(!valid_image(bad), "{bad}");
        }
    }

    /// Issue 16, attack 5: pass-through fields that would override the operator's environment,
    /// match another service's selector or weaken the pod's sandbox.
    #[test]
    fn pass_through_fields_cannot_break_isolation() {
        let env = |name: &str| EnvVar {
            name: name.into(),
            value: Some("x".into()),
            ..EnvVar::default()
        };
        let mut bff = svc("bff");
        bff.image = Some("registry.example/bff:1".into());
        bff.env = vec![
            env("MPM_HTTPS_ADDR"),
            env("mpm_service"),
            env("OK"),
            env("OK"),
            env("1BAD"),
        ];
        bff.annotations = BTreeMap::from([
            ("meterpark.io/desired-hash".to_string(), "x".to_string()),
            ("app.kubernetes.io/name".to_string(), "x".to_string()),
            (
                "container.apparmor.security.beta.kubernetes.io/bff".to_string(),
                "unconfined".to_string(),
            ),
            (
                "seccomp.security.alpha.kubernetes.io/pod".to_string(),
                "unconfined".to_string(),
            ),
            ("example.com/team".to_string(), "grid".to_string()),
        ]);
        bff.labels =
            BTreeMap::from([("meterpark.io/service".to_string(), "device-hub".to_string())]);
        let errors = resolve_services("demo", &spec(vec![bff])).unwrap_err();
        let text = describe(&errors);
        for expected in [
            "spec.services[0].env[0].name: \"MPM_HTTPS_ADDR\"",
            "spec.services[0].env[1].name: \"mpm_service\"",
            "spec.services[0].env[3].name: duplicate",
            "spec.services[0].env[4].name: \"1BAD\"",
            "spec.services[0].annotations: annotation \"meterpark.io/desired-hash\"",
            "spec.services[0].annotations: annotation \"app.kubernetes.io/name\"",
            "spec.services[0].annotations: annotation \"container.apparmor.security.beta.kubernetes.io/bff\"",
            "spec.services[0].annotations: annotation \"seccomp.security.alpha.kubernetes.io/pod\"",
            "spec.services[0].labels: label \"meterpark.io/service\"",
        ] {
            assert!(text.contains(expected), "{expected} missing in {text}");
        }
        assert_eq!(errors.len(), 9, "{text}");

        // What stays allowed: ordinary env names (RUST_LOG included), foreign annotation keys.
        let mut ok = svc("device-hub");
        ok.env = vec![env("RUST_LOG"), env("HTTP_PROXY"), env("my.var-1")];
        ok.annotations = BTreeMap::from([("example.com/team".to_string(), "grid".to_string())]);
        ok.labels = BTreeMap::from([("team".to_string(), "grid".to_string())]);
        assert!(resolve_services("demo", &spec(vec![ok])).is_ok());
    }

    #[test]
    fn names_too_long_are_rejected() {
        let long = "a".repeat(50);
        let errors = resolve_services(&long, &spec(vec![])).unwrap_err();
        assert!(errors[0].message.contains("too long"));
    }
}
