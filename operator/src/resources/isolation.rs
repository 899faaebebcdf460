//! Isolation between the hubs of a namespace and the operator (pure decisions).
//!
//! Object names are built by concatenation (`<hub>-<svc>`, contract: Names), so two hubs, or two
//! services of one hub, can name the same object, and a service can be given the operator's own
//! identity (`<hub>=mpm`, `<svc>=operator` → ServiceAccount `mpm-operator` → SPIFFE ID
//! `.../sa/mpm-operator`, which device-hub lets provision and delete every Meter). [`conflicts`]
//! finds every such collision before anything is applied; [`secret_refs`] refuses environment
//! variables that would read a Secret the operator manages (a CA key, a leaf key, a client
//! certificate) into a pod the operator, not the hub's editor, creates.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;

use super::hub::SpecError;
use super::names::{self, OwnedKind, OPERATOR_SA};
use crate::crd::device_hub::{DeviceHub, DeviceHubSpec};

/// What the collision and Secret checks need to know about one hub of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubIdentity {
    pub name: String,
    pub created: Option<Timestamp>,
    pub trust_domain: String,
    /// Services whose objects the hub owns: those its spec declares and those it last ran.
    pub services: BTreeSet<String>,
    /// Services its status says it runs (their objects exist).
    pub running: BTreeSet<String>,
    /// Whether its hub-level objects (CA, trust bundle, client certificate) exist.
    pub has_run: bool,
    /// `spec.certificates.ca.secretRef.name`.
    pub ca_secret_ref: Option<String>,
}

impl HubIdentity {
    /// `declared`: the hub's resolved services, or `None` when its spec does not resolve (it then
    /// still owns what it last ran).
    pub fn of(hub: &DeviceHub, declared: Option<Vec<String>>) -> Self {
        let status = hub.status.clone().unwrap_or_default();
        let running: BTreeSet<String> = status.services.iter().map(|s| s.name.clone()).collect();
        let mut services = running.clone();
        services.extend(declared.into_iter().flatten());
        Self {
            name: hub.metadata.name.clone().unwrap_or_default(),
            created: hub.metadata.creation_timestamp.as_ref().map(|t| t.0),
            trust_domain: hub.spec.trust_domain.clone(),
            services,
            has_run: !running.is_empty() || !status.certificate_authorities.is_empty(),
            running,
            ca_secret_ref: hub
                .spec
                .certificates
                .ca
                .secret_ref
                .as_ref()
                .map(|r| r.name.clone()),
        }
    }

    /// Who owns the object wins a collision: the party whose object already exists, else the
    /// older hub (creationTimestamp, then name).
    fn established(&self, service: Option<&str>) -> bool {
        match service {
            Some(s) => self.running.contains(s),
            None => self.has_run,
        }
    }

    fn age_key(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.name)
    }
}

/// Who owns an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Party {
    /// A service of a hub (`None`: the hub itself: CA, trust bundle, client certificate).
    Hub {
        hub: String,
        service: Option<String>,
    },
    /// The operator's own identity.
    Operator,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Hub {
                hub,
                service: Some(s),
            } => write!(f, "hub {hub:?} service {s:?}"),
            Party::Hub { hub, service: None } => write!(
                f,
                "hub {hub:?} (its CA, trust bundle and client certificate)"
            ),
            Party::Operator => f.write_str("the operator's identity (ServiceAccount mpm-operator)"),
        }
    }
}

/// Two parties naming the same object; `ours` must give way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub kind: OwnedKind,
    pub object: String,
    pub ours: Party,
    pub theirs: Party,
}

impl Conflict {
    /// The spec error, on the field that names the losing service.
    pub fn to_spec_error(&self, spec: &DeviceHubSpec) -> SpecError {
        let field = match &self.ours {
            Party::Hub {
                service: Some(s), ..
            } => match spec.services.iter().position(|e| &e.name == s) {
                Some(i) => format!("spec.services[{i}].name"),
                None => format!("spec.services[{s}].name"),
            },
            _ => "metadata.name".to_string(),
        };
        let why = match &self.theirs {
            Party::Operator => "no service may hold the operator's identity (names `<hub>-<service>` must not be `mpm-operator`)",
            Party::Hub { hub, .. } if matches!(&self.ours, Party::Hub { hub: h, .. } if h == hub) => "object names `<hub>-<service>...` must be unique within the hub",
            Party::Hub { .. } => "the other hub owned it first; rename this service or the hub",
        };
        SpecError::new(
            field,
            format!(
                "{} {:?} of {} collides with {}: {why}",
                self.kind, self.object, self.ours, self.theirs
            ),
        )
    }
}

/// Every object a hub owns, with the owning party.
fn owned(hub: &HubIdentity, namespace: &str) -> Vec<(OwnedKind, String, Party)> {
    let mut out = Vec::new();
    for svc in &hub.services {
        let party = Party::Hub {
            hub: hub.name.clone(),
            service: Some(svc.clone()),
        };
        for (kind, name) in names::service_objects(&hub.name, svc, &hub.trust_domain, namespace) {
            out.push((kind, name, party.clone()));
        }
    }
    let party = Party::Hub {
        hub: hub.name.clone(),
        service: None,
    };
    for (kind, name) in names::hub_objects(&hub.name) {
        out.push((kind, name, party.clone()));
    }
    out
}

/// The collisions that forbid `hub` (whose `services` are the resolved ones) to apply anything:
/// within the hub, with the operator's identity, and with an other hub of the namespace that owns
/// the object first. At most one conflict per pair of parties (the first colliding object).
pub fn conflicts(namespace: &str, hub: &HubIdentity, others: &[HubIdentity]) -> Vec<Conflict> {
    let ours = owned(hub, namespace);
    let mut found: BTreeMap<(Party, Party), Conflict> = BTreeMap::new();
    let mut record = |c: Conflict| {
        found.entry((c.ours.clone(), c.theirs.clone())).or_insert(c);
    };

    // The operator's identity: ServiceAccount `mpm-operator` in the hub's namespace, whatever
    // the trust domain.
    for svc in &hub.services {
        let sa = names::object_name(&hub.name, svc);
        if sa == OPERATOR_SA {
            record(Conflict {
                kind: OwnedKind::SpiffeId,
                object: names::spiffe_id(&hub.trust_domain, namespace, &sa),
                ours: Party::Hub {
                    hub: hub.name.clone(),
                    service: Some(svc.clone()),
                },
                theirs: Party::Operator,
            });
        }
    }

    // Within the hub: two of its own parties naming one object.
    let mut by_object: BTreeMap<(OwnedKind, &str), &Party> = BTreeMap::new();
    for (kind, name, party) in &ours {
        match by_object.get(&(*kind, name.as_str())) {
            Some(first) if *first != party => {
                // The hub-level object (or the first service) keeps the name.
                let (winner, loser) = match (first, party) {
                    (Party::Hub { service: None, .. }, _) => (*first, party),
                    (_, Party::Hub { service: None, .. }) => (party, *first),
                    _ => (*first, party),
                };
                record(Conflict {
                    kind: *kind,
                    object: name.clone(),
                    ours: loser.clone(),
                    theirs: winner.clone(),
                });
            }
            Some(_) => {}
            None => {
                by_object.insert((*kind, name.as_str()), party);
            }
        }
    }

    // With the other hubs of the namespace.
    for other in others.iter().filter(|o| o.name != hub.name) {
        let theirs: BTreeMap<(OwnedKind, String), Party> = owned(other, namespace)
            .into_iter()
            .map(|(k, n, p)| ((k, n), p))
            .collect();
        for (kind, name, party) in &ours {
            let Some(their_party) = theirs.get(&(*kind, name.clone())) else {
                continue;
            };
            let service = |p: &Party| match p {
                Party::Hub { service, .. } => service.clone(),
                Party::Operator => None,
            };
            let we_exist = hub.established(service(party).as_deref());
            let they_exist = other.established(service(their_party).as_deref());
            let we_win = if we_exist != they_exist {
                we_exist
            } else {
                hub.age_key() < other.age_key()
            };
            if !we_win {
                record(Conflict {
                    kind: *kind,
                    object: name.clone(),
                    ours: party.clone(),
                    theirs: their_party.clone(),
                });
            }
        }
    }
    found.into_values().collect()
}

/// Suffixes of the Secrets the operator manages (`<hub>-<svc>-tls`, `<hub>-ca`, `<hub>-ca-next`,
/// `<hub>-operator-client-tls`).
const MANAGED_SECRET_SUFFIXES: [&str; 3] = ["-tls", "-ca", "-ca-next"];

/// Whether a Secret name is one the operator manages (or uses as a CA) for a hub of the namespace.
pub fn protected_secret(name: &str, hubs: &[HubIdentity]) -> Option<String> {
    for hub in hubs {
        if hub.ca_secret_ref.as_deref() == Some(name) {
            return Some(format!("it is the CA of hub {:?}", hub.name));
        }
        let owned = hub
            .services
            .iter()
            .any(|s| names::tls_secret(&hub.name, s) == name)
            || names::hub_objects(&hub.name)
                .iter()
                .any(|(k, n)| *k == OwnedKind::Secret && n == name);
        if owned {
            return Some(format!("the operator manages it for hub {:?}", hub.name));
        }
        if name.starts_with(&format!("{}-", hub.name))
            && MANAGED_SECRET_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
            return Some(format!(
                "names `<hub>-...-tls`, `<hub>-ca` and `<hub>-ca-next` of hub {:?} are reserved for the operator's certificates",
                hub.name
            ));
        }
    }
    None
}

/// Every Secret an environment variable of the spec reads: (field, Secret name).
pub fn secret_key_refs(spec: &DeviceHubSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, svc) in spec.services.iter().enumerate() {
        for (j, env) in svc.env.iter().enumerate() {
            if let Some(r) = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                out.push((
                    format!("spec.services[{i}].env[{j}].valueFrom.secretKeyRef.name"),
                    r.name.clone(),
                ));
            }
        }
    }
    out
}

/// Refuses environment variables reading a Secret the operator manages for any hub of the
/// namespace (`hubs` includes the hub itself) or the CA Secret any hub names.
pub fn secret_refs(spec: &DeviceHubSpec, hubs: &[HubIdentity]) -> Vec<SpecError> {
    secret_key_refs(spec)
        .into_iter()
        .filter_map(|(field, name)| {
            if name.is_empty() {
                return Some(SpecError::new(field, "must name a Secret"));
            }
            protected_secret(&name, hubs).map(|why| {
                SpecError::new(
                    field,
                    format!("Secret {name:?} may not be read by a service: {why}"),
                )
            })
        })
        .collect()
}

/// Labels that mark a Secret as the operator's (its certificates, and its webhook's certificate).
pub fn managed_by_operator(labels: &BTreeMap<String, String>) -> bool {
    labels.get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::FIELD_MANAGER)
        || labels.get("app.kubernetes.io/name").map(String::as_str) == Some(names::FIELD_MANAGER)
}

/// The isolation checks of one hub against the operator and every other hub of its namespace
/// (`all` may include the hub itself and hubs of other namespaces; they are skipped). `services`
/// are the hub's resolved service names. Pure: the controller passes its DeviceHub cache.
pub fn validate(
    namespace: &str,
    hub: &DeviceHub,
    services: &[String],
    all: &[std::sync::Arc<DeviceHub>],
) -> Vec<SpecError> {
    let name = hub.metadata.name.as_deref().unwrap_or_default();
    let mut ours = HubIdentity::of(hub, Some(services.to_vec()));
    // What it ran before but no longer declares is pruned by this reconcile: not its own any more.
    ours.services = services.iter().cloned().collect();
    let others: Vec<HubIdentity> = all
        .iter()
        .filter(|h| h.metadata.namespace.as_deref() == Some(namespace))
        .filter(|h| h.metadata.name.as_deref() != Some(name))
        .map(|h| {
            let other = h.metadata.name.as_deref().unwrap_or_default();
            let declared = super::hub::resolve_services(other, &h.spec)
                .ok()
                .map(|s| s.into_iter().map(|s| s.name).collect());
            HubIdentity::of(h, declared)
        })
        .collect();
    let mut errors: Vec<SpecError> = conflicts(namespace, &ours, &others)
        .iter()
        .map(|c| c.to_spec_error(&hub.spec))
        .collect();
    let mut everyone = others;
    everyone.push(ours);
    errors.extend(secret_refs(&hub.spec, &everyone));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::device_hub::{ServiceSpec, DEFAULT_SERVICES};
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};

    const NS: &str = "park";

    fn at(secs: i64) -> Option<Timestamp> {
        Timestamp::from_second(1_700_000_000 + secs).ok()
    }

    fn hub(name: &str, created: i64, services: &[&str]) -> HubIdentity {
        HubIdentity {
            name: name.into(),
            created: at(created),
            trust_domain: "cluster.local".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            running: BTreeSet::new(),
            has_run: false,
            ca_secret_ref: None,
        }
    }

    fn running(mut h: HubIdentity) -> HubIdentity {
        h.running = h.services.clone();
        h.has_run = true;
        h
    }

    fn defaults() -> Vec<&'static str> {
        DEFAULT_SERVICES.to_vec()
    }

    /// Issue 16, attack 1: hub `mpm` with service `operator` would get the operator's SPIFFE ID.
    #[test]
    fn a_service_never_gets_the_operators_identity() {
        let mut services = defaults();
        services.push("operator");
        let found = conflicts(NS, &hub("mpm", 0, &services), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].theirs, Party::Operator);
        assert_eq!(
            found[0].object,
            "spiffe://cluster.local/ns/park/sa/mpm-operator"
        );
        let spec = DeviceHubSpec {
            services: vec![ServiceSpec {
                name: "operator".into(),
                ..ServiceSpec::default()
            }],
            ..DeviceHubSpec::default()
        };
        let e = found[0].to_spec_error(&spec);
        assert_eq!(e.field, "spec.services[0].name");
        assert!(e.message.contains("mpm-operator"), "{e}");
        assert!(e.message.contains("\"operator\""), "{e}");
        // In any trust domain.
        let mut other = hub("mpm", 0, &["operator"]);
        other.trust_domain = "other.example".into();
        assert_eq!(conflicts(NS, &other, &[])[0].theirs, Party::Operator);
        // ... and not for look-alikes.
        assert!(conflicts(NS, &hub("mpm", 0, &["operator2"]), &[]).is_empty());
    }

    /// Issue 16, attack 2: hub `a` with service `b-device-hub` and hub `a-b` share
    /// `a-b-device-hub` (Deployment, ServiceAccount, Secret `a-b-device-hub-tls`, SPIFFE ID).
    #[test]
    fn the_newer_of_two_colliding_hubs_gives_way() {
        let older = hub("a-b", 0, &defaults());
        let mut newer_services = defaults();
        newer_services.push("b-device-hub");
        let newer = hub("a", 10, &newer_services);

        let found = conflicts(NS, &newer, std::slice::from_ref(&older));
        assert_eq!(found.len(), 1, "one pair of parties: {found:?}");
        let c = &found[0];
        assert_eq!(
            c.ours,
            Party::Hub {
                hub: "a".into(),
                service: Some("b-device-hub".into())
            }
        );
        assert_eq!(
            c.theirs,
            Party::Hub {
                hub: "a-b".into(),
                service: Some("device-hub".into())
            }
        );
        assert_eq!(c.object, "a-b-device-hub");
        let e = c.to_spec_error(&DeviceHubSpec::default());
        for part in [
            "\"a\"",
            "\"b-device-hub\"",
            "\"a-b\"",
            "\"device-hub\"",
            "a-b-device-hub",
        ] {
            assert!(e.message.contains(part), "{part} missing in {e}");
        }
        // The older hub keeps going.
        assert!(conflicts(NS, &older, std::slice::from_ref(&newer)).is_empty());

        // Created the other way round, the other one gives way.
        let older_a = hub("a", 0, &newer_services);
        let newer_ab = hub("a-b", 10, &defaults());
        assert!(conflicts(NS, &older_a, std::slice::from_ref(&newer_ab)).is_empty());
        assert_eq!(conflicts(NS, &newer_ab, &[older_a]).len(), 1);

        // Same timestamp: the name decides, and exactly one of them gives way.
        let (x, y) = (hub("a", 0, &newer_services), hub("a-b", 0, &defaults()));
        let lost = [
            conflicts(NS, &x, std::slice::from_ref(&y)).len(),
            conflicts(NS, &y, std::slice::from_ref(&x)).len(),
        ];
        assert_eq!(lost.iter().filter(|n| **n > 0).count(), 1, "{lost:?}");
    }

    /// An older hub given a colliding service later does not take over the running objects of
    /// the newer one: the objects that exist win.
    #[test]
    fn a_running_service_keeps_its_objects_against_an_older_hub() {
        let running_ab = running(hub("a-b", 10, &defaults()));
        let mut edited = running(hub("a", 0, &defaults()));
        edited.services.insert("b-device-hub".into());
        let found = conflicts(NS, &edited, std::slice::from_ref(&running_ab));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(conflicts(NS, &running_ab, &[edited]).is_empty());
    }

    #[test]
    fn services_of_one_hub_never_share_an_object() {
        // `operator-client`'s leaf Secret would be the operator's client certificate Secret.
        let found = conflicts(NS, &hub("demo", 0, &["device-hub", "operator-client"]), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "demo-operator-client-tls");
        assert_eq!(
            found[0].ours,
            Party::Hub {
                hub: "demo".into(),
                service: Some("operator-client".into())
            }
        );
        assert_eq!(
            found[0].theirs,
            Party::Hub {
                hub: "demo".into(),
                service: None
            }
        );
    }

    #[test]
    fn no_false_positives_on_ordinary_hubs() {
        let hubs = [
            hub("demo", 0, &defaults()),
            hub("demo2", 1, &defaults()),
            hub("north", 2, &["device-hub", "bff", "gateway"]),
            hub("north-east", 3, &defaults()),
            hub("mpm", 4, &defaults()),
            hub("a", 5, &["device-hub", "ca", "trust", "tls"]),
        ];
        for h in &hubs {
            assert!(
                conflicts(NS, h, &hubs).is_empty(),
                "{}: {:?}",
                h.name,
                conflicts(NS, h, &hubs)
            );
        }
    }

    #[test]
    fn a_hub_level_object_is_reserved_against_other_hubs_too() {
        // Hub `p` service `q-operator-client` would own `p-q-operator-client-tls`, hub `p-q`'s
        // client certificate Secret.
        let older = hub("p-q", 0, &defaults());
        let newer = hub("p", 5, &["q-operator-client"]);
        let found = conflicts(NS, &newer, &[older]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "p-q-operator-client-tls");
        assert_eq!(
            found[0].theirs,
            Party::Hub {
                hub: "p-q".into(),
                service: None
            }
        );
    }

    fn env_secret(name: &str, secret: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: "tls.key".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn spec_with_env(env: Vec<EnvVar>) -> DeviceHubSpec {
        DeviceHubSpec {
            services: vec![
                ServiceSpec {
                    name: "device-hub".into(),
                    ..ServiceSpec::default()
                },
                ServiceSpec {
                    name: "bff".into(),
                    env,
                    ..ServiceSpec::default()
                },
            ],
            ..DeviceHubSpec::default()
        }
    }

    /// Issue 16, attack 5: an env var reading the hub's CA key (or any operator-managed Secret).
    #[test]
    fn env_never_reads_a_secret_the_operator_manages() {
        let mut other = hub("other", 0, &defaults());
        other.ca_secret_ref = Some("corp-ca".into());
        let hubs = [hub("demo", 1, &["device-hub", "bff"]), other];
        for secret in [
            "demo-ca",
            "demo-ca-next",
            "demo-device-hub-tls",
            "demo-operator-client-tls",
            "other-smoc-service-tls",
            "other-ca",
            "corp-ca",
            "demo-removed-service-tls",
        ] {
            let spec = spec_with_env(vec![
                EnvVar {
                    name: "PLAIN".into(),
                    value: Some("x".into()),
                    ..EnvVar::default()
                },
                env_secret("STOLEN", secret),
            ]);
            let errors = secret_refs(&spec, &hubs);
            assert_eq!(errors.len(), 1, "{secret}: {errors:?}");
            assert_eq!(
                errors[0].field,
                "spec.services[1].env[1].valueFrom.secretKeyRef.name"
            );
            assert!(errors[0].message.contains(secret), "{}", errors[0]);
        }
        // The user's own Secrets stay usable.
        for secret in ["bff-db-password", "demo-api-key", "tls", "ca"] {
            let spec = spec_with_env(vec![env_secret("OWN", secret)]);
            assert!(secret_refs(&spec, &hubs).is_empty(), "{secret}");
        }
        assert_eq!(
            secret_refs(&spec_with_env(vec![env_secret("E", "")]), &hubs).len(),
            1
        );
    }

    #[test]
    fn operator_labels_mark_a_managed_secret() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(managed_by_operator(&l(
            "app.kubernetes.io/managed-by",
            "mpm-operator"
        )));
        assert!(managed_by_operator(&l(
            "app.kubernetes.io/name",
            "mpm-operator"
        )));
        assert!(!managed_by_operator(&l(
            "app.kubernetes.io/managed-by",
            "Helm"
        )));
    }

    fn device_hub(
        name: &str,
        ns: &str,
        created: i64,
        spec: DeviceHubSpec,
    ) -> std::sync::Arc<DeviceHub> {
        let mut h = DeviceHub::new(name, spec);
        h.metadata.namespace = Some(ns.into());
        h.metadata.creation_timestamp =
            at(created).map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        std::sync::Arc::new(h)
    }

    fn hub_spec(services: Vec<ServiceSpec>) -> DeviceHubSpec {
        DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            services,
            ..DeviceHubSpec::default()
        }
    }

    fn custom(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            enabled: true,
            replicas: 1,
            port: 8443,
            image: Some("registry.example/x:1".into()),
            ..ServiceSpec::default()
        }
    }

    fn resolved(h: &DeviceHub) -> Vec<String> {
        crate::resources::hub::resolve_services(h.metadata.name.as_deref().unwrap(), &h.spec)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// The reconcile's decision on real DeviceHubs: the newer colliding hub is refused, the
    /// older one and hubs of other namespaces are not affected.
    #[test]
    fn validate_uses_the_other_hubs_of_the_namespace_only() {
        let ab = device_hub("a-b", NS, 0, hub_spec(vec![]));
        let a = device_hub("a", NS, 10, hub_spec(vec![custom("b-device-hub")]));
        let elsewhere = device_hub("a-b", "other", 0, hub_spec(vec![]));
        let all = vec![ab.clone(), a.clone(), elsewhere.clone()];
        let errors = validate(NS, &a, &resolved(&a), &all);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.services[0].name");
        assert!(
            errors[0]
                .message
                .contains("hub \"a-b\" service \"device-hub\""),
            "{}",
            errors[0]
        );
        assert!(validate(NS, &ab, &resolved(&ab), &all).is_empty());
        // Hub `a` in a namespace without `a-b` is fine.
        let a_other = device_hub("a", "third", 10, a.spec.clone());
        assert!(validate("third", &a_other, &resolved(&a_other), &all).is_empty());

        // The CA Secret another hub names is refused as an env source too.
        let mut with_ca = hub_spec(vec![]);
        with_ca.certificates.ca.secret_ref = Some(crate::crd::device_hub::SecretRef {
            name: "corp-ca".into(),
        });
        let corp = device_hub("corp", NS, 0, with_ca);
        let mut bff = custom("bff");
        bff.env = vec![env_secret("K", "corp-ca")];
        let thief = device_hub("thief", NS, 5, hub_spec(vec![bff]));
        let errors = validate(NS, &thief, &resolved(&thief), &[corp, thief.clone()]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].field,
            "spec.services[0].env[0].valueFrom.secretKeyRef.name"
        );
    }
}
