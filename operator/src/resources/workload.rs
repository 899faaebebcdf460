//! Desired objects of one service (pure builders): ServiceAccount, Deployment, Service,
//! PodDisruptionBudget, config ConfigMap and data PersistentVolumeClaim.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec as K8sServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde_json::json;

use super::hub::{ResolvedService, ServiceKind};
use super::ingest::{self, IngestAuth};
use super::names::{self, *};
use crate::crd::device_hub::DeviceHubSpec;

/// Hub-wide facts every builder needs.
#[derive(Debug, Clone)]
pub struct HubContext<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a DeviceHubSpec,
    pub owner: OwnerReference,
    /// All services of the hub (for peer URLs and identities in config.json).
    pub services: &'a [ResolvedService],
}

impl HubContext<'_> {
    fn meta(&self, name: String, svc: &ResolvedService) -> ObjectMeta {
        let mut labels = svc.labels.clone();
        labels.extend(service_labels(self.name, &svc.name));
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels),
            annotations: (!svc.annotations.is_empty()).then(|| svc.annotations.clone()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Metadata of hub-level objects.
    pub fn hub_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(hub_labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub fn spiffe_id(&self, svc: &str) -> String {
        names::spiffe_id(
            &self.spec.trust_domain,
            self.namespace,
            &object_name(self.name, svc),
        )
    }
}

pub fn service_account(hub: &HubContext, svc: &ResolvedService) -> ServiceAccount {
    ServiceAccount {
        metadata: hub.meta(object_name(hub.name, &svc.name), svc),
        // The services never call the API server.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn tcp_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// Startup probe: every 5 s, for at most 5 minutes.
const STARTUP_PERIOD: i32 = 5;
const STARTUP_FAILURES: i32 = 60;

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("health".to_string()),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn config_map_volume(name: &str, config_map: String, optional: bool) -> Volume {
    Volume {
        name: name.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            optional: Some(optional),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

pub fn deployment(hub: &HubContext, svc: &ResolvedService) -> Deployment {
    let name = object_name(hub.name, &svc.name);
    let mut ports = vec![tcp_port("https", svc.port), tcp_port("health", HEALTH_PORT)];
    if svc.kind == ServiceKind::Connector {
        ports.push(tcp_port("ingest", INGEST_PORT));
    }
    // contract: Mounted files.
    let mut volumes = vec![
        Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls_secret(hub.name, &svc.name)),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        config_map_volume("trust", trust_bundle(hub.name), false),
        // Optional: until a ServiceACL exists the file is absent, which means "no peers allowed".
        config_map_volume("acl", acl_config_map(hub.name, &svc.name), true),
        config_map_volume("config", config_map(hub.name, &svc.name), false),
        empty_dir("tmp"),
    ];
    volumes.push(match &svc.storage {
        Some(_) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data_claim(hub.name, &svc.name),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => empty_dir("data"),
    });
    let mut mounts = vec![
        mount("tls", TLS_DIR),
        mount("trust", TRUST_DIR),
        mount("acl", ACL_DIR),
        mount("config", CONFIG_DIR),
        VolumeMount {
            read_only: Some(false),
            ..mount("tmp", "/tmp")
        },
        VolumeMount {
            read_only: Some(false),
            ..mount("data", DATA_DIR)
        },
    ];
    if let (ServiceKind::Smoc, Some(jwt)) = (svc.kind, hub.spec.jwt.as_ref()) {
        if let Some(cm) = jwt.jwks_config_map.clone() {
            volumes.push(config_map_volume("jwks", cm, false));
            mounts.push(mount("jwks", JWKS_DIR));
        }
        if let Some(cm) = jwt.jwks_ca_config_map.clone() {
            volumes.push(config_map_volume("jwks-ca", cm, false));
            mounts.push(mount("jwks-ca", JWKS_CA_DIR));
        }
    }
    if svc.kind == ServiceKind::Connector {
        let (volume, dir) = ingest_auth_volume(hub);
        if let Some(volume) = volume {
            volumes.push(volume);
            mounts.push(mount("ingest-auth", dir));
        }
    }
    let mut env = vec![
        EnvVar {
            name: "MPM_SERVICE".into(),
            value: Some(svc.name.clone()),
            ..EnvVar::default()
        },
        EnvVar {
            name: "MPM_HTTPS_ADDR".into(),
            value: Some(format!("0.0.0.0:{}", svc.port)),
            ..EnvVar::default()
        },
        EnvVar {
            name: "RUST_LOG".into(),
            value: Some("info".into()),
            ..EnvVar::default()
        },
    ];
    // The user's entries come last; one for a default (RUST_LOG) replaces it, since a name may
    // appear only once (`MPM_*` names are refused by validation).
    env.retain(|e| !svc.env.iter().any(|u| u.name == e.name));
    env.extend(svc.env.iter().cloned());
    let mut pod_labels = svc.labels.clone();
    pod_labels.extend(service_labels(hub.name, &svc.name));
    let container = Container {
        name: svc.name.clone(),
        image: Some(svc.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: (!svc.command.is_empty()).then(|| svc.command.clone()),
        ports: Some(ports),
        env: Some(env),
        resources: Some(svc.resources.clone()),
        // A store repairing itself after a crash may take minutes to answer: liveness starts
        // only once the startup probe succeeded (up to 5 minutes).
        startup_probe: Some(probe("/healthz", STARTUP_PERIOD, STARTUP_FAILURES)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 3, 2)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Deployment {
        metadata: hub.meta(name.clone(), svc),
        spec: Some(DeploymentSpec {
            replicas: Some(svc.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(hub.name, &svc.name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!svc.annotations.is_empty()).then(|| svc.annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The connector's ingest credentials (contract: Mounted files): only the one key it needs,
/// read-only, the Secret's file group-readable only (`0440`, group = the pod's fsGroup).
fn ingest_auth_volume(hub: &HubContext) -> (Option<Volume>, &'static str) {
    let only = |key: &str| {
        Some(vec![KeyToPath {
            key: key.to_string(),
            path: key.to_string(),
            mode: None,
        }])
    };
    match ingest::ingest_auth(hub.spec.hes.as_ref()) {
        Some(IngestAuth::Token { secret }) => (
            Some(Volume {
                name: "ingest-auth".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_string()),
                    items: only(ingest::INGEST_TOKEN_KEY),
                    default_mode: Some(0o440),
                    optional: Some(false),
                }),
                ..Volume::default()
            }),
            ingest::INGEST_TOKEN_DIR,
        ),
        Some(IngestAuth::ClientCa { config_map }) => (
            Some(Volume {
                name: "ingest-auth".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.to_string(),
                    items: only(ingest::INGEST_CA_KEY),
                    optional: Some(false),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }),
            ingest::INGEST_CA_DIR,
        ),
        None => (None, ""),
    }
}

fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        // Server-side apply needs the protocol explicitly (it is part of the list-map key).
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn service(hub: &HubContext, svc: &ResolvedService) -> Service {
    let mut ports = vec![
        service_port("https", svc.port),
        service_port("health", HEALTH_PORT),
    ];
    if svc.kind == ServiceKind::Connector {
        ports.push(service_port("ingest", INGEST_PORT));
    }
    Service {
        metadata: hub.meta(object_name(hub.name, &svc.name), svc),
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(hub.name, &svc.name)),
            ports: Some(ports),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// PodDisruptionBudget as a dynamic object: `policy/v1` or `policy/v1beta1`, whichever the cluster
/// serves (Kubernetes 1.20 has only v1beta1, and k8s-openapi no longer ships that type).
/// `None` when the service runs at most one replica.
pub fn pod_disruption_budget(
    hub: &HubContext,
    svc: &ResolvedService,
    api_version: &str,
) -> Option<DynamicObject> {
    if svc.replicas <= 1 {
        return None;
    }
    let value = json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": hub.meta(object_name(hub.name, &svc.name), svc),
        "spec": {
            "minAvailable": 1,
            "selector": { "matchLabels": selector_labels(hub.name, &svc.name) },
        },
    });
    serde_json::from_value(value).ok()
}

pub fn data_claim_for(hub: &HubContext, svc: &ResolvedService) -> Option<PersistentVolumeClaim> {
    let storage = svc.storage.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: hub.meta(data_claim(hub.name, &svc.name), svc),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// `config.json` of a service (contract: config.json).
pub fn service_config(hub: &HubContext, svc: &ResolvedService) -> serde_json::Value {
    let peers: serde_json::Map<String, serde_json::Value> = hub
        .services
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                json!({
                    "url": service_url(hub.name, &p.name, hub.namespace, p.port),
                    "spiffeId": hub.spiffe_id(&p.name),
                }),
            )
        })
        .collect();
    let mut config = json!({
        "hub": hub.name,
        "namespace": hub.namespace,
        "service": svc.name,
        "trustDomain": hub.spec.trust_domain,
        "peers": peers,
    });
    if svc.kind == ServiceKind::Connector {
        if let Some(hes) = &hub.spec.hes {
            config["hes"] = ingest::hes_config(hes);
        }
    }
    if svc.kind == ServiceKind::Smoc {
        if let Some(jwt) = &hub.spec.jwt {
            config["jwt"] = json!({
                "issuer": jwt.issuer,
                "audience": jwt.audience,
                "jwksFile": jwt.jwks_config_map.as_ref().map(|_| format!("{JWKS_DIR}/jwks.json")),
                "jwksUrl": jwt.jwks_url,
                "jwksCaFile": jwt.jwks_ca_config_map.as_ref().map(|_| format!("{JWKS_CA_DIR}/ca.crt")),
            });
        }
    }
    config
}

pub fn config_map_for(hub: &HubContext, svc: &ResolvedService) -> ConfigMap {
    let body = serde_json::to_string_pretty(&service_config(hub, svc)).unwrap_or_default();
    ConfigMap {
        metadata: hub.meta(config_map(hub.name, &svc.name), svc),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), body)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::hub::resolve_services;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "meterpark.io/v1alpha1".into(),
            kind: "DeviceHub".into(),
            name: "demo".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Hub `demo` in namespace `park`.
    fn demo_hub<'a>(spec: &'a DeviceHubSpec, services: &'a [ResolvedService]) -> HubContext<'a> {
        HubContext {
            name: "demo",
            namespace: "park",
            spec,
            owner: owner(),
            services,
        }
    }

    #[test]
    fn deployment_is_restricted_and_mounts_the_contract_paths() {
        let spec = DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            ..DeviceHubSpec::default()
        };
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        let d = deployment(&hub, &services[0]);
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let paths: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        for p in [TLS_DIR, TRUST_DIR, ACL_DIR, CONFIG_DIR, DATA_DIR] {
            assert!(paths.contains(&p), "{p} not mounted");
        }
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(
            ports,
            vec![8443, 8080, 8090],
            "connector has https, health and ingest"
        );
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");

        let s = service(&hub, &services[1]);
        assert!(s
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .all(|p| p.protocol.as_deref() == Some("TCP")));
        assert!(pod_disruption_budget(&hub, &services[1], "policy/v1").is_none());

        let config = service_config(&hub, &services[0]);
        assert_eq!(
            config["peers"]["device-hub"]["spiffeId"],
            "spiffe://cluster.local/ns/park/sa/demo-device-hub"
        );
        assert_eq!(
            config["peers"]["device-hub"]["url"],
            "https://demo-device-hub.park.svc:8443"
        );
    }

    #[test]
    fn smoc_service_gets_the_identity_providers_private_ca() {
        let spec = DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            jwt: Some(crate::crd::device_hub::JwtSpec {
                issuer: "https://idp.internal/realms/utility".into(),
                audience: "smoc-api".into(),
                jwks_config_map: None,
                jwks_url: Some("https://idp.internal/certs".into()),
                jwks_ca_config_map: Some("idp-ca".into()),
            }),
            ..DeviceHubSpec::default()
        };
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        for svc in &services {
            let d = deployment(&hub, svc);
            let pod = d.spec.unwrap().template.spec.unwrap();
            let ca_volume = pod
                .volumes
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.config_map.as_ref().map(|c| c.name.as_str()) == Some("idp-ca"));
            let mounted = pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == JWKS_CA_DIR);
            let config = service_config(&hub, svc);
            if svc.kind == ServiceKind::Smoc {
                let volume = ca_volume.expect("smoc-service mounts the CA ConfigMap");
                assert_eq!(volume.config_map.and_then(|c| c.optional), Some(false));
                assert!(mounted, "{JWKS_CA_DIR} not mounted");
                assert_eq!(config["jwt"]["jwksCaFile"], "/etc/mpm/jwks-ca/ca.crt");
                assert_eq!(config["jwt"]["jwksUrl"], "https://idp.internal/certs");
                assert!(config["jwt"]["jwksFile"].is_null(), "{config}");
            } else {
                assert!(
                    ca_volume.is_none() && !mounted,
                    "{} mounts the IdP CA",
                    svc.name
                );
                assert!(config.get("jwt").is_none(), "{config}");
            }
        }
    }

    fn ingest_hub(auth: crate::crd::device_hub::HesAuthSpec) -> DeviceHubSpec {
        DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            hes: Some(crate::crd::device_hub::HesSpec {
                endpoint: "https://hes.example".into(),
                auth: Some(auth),
                rate_limit: None,
            }),
            ..DeviceHubSpec::default()
        }
    }

    /// (volume, mount) of the ingest credentials in a service's Deployment.
    fn ingest_volume(
        hub: &HubContext,
        svc: &ResolvedService,
    ) -> (Option<Volume>, Option<VolumeMount>) {
        let pod = deployment(hub, svc).spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "ingest-auth");
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == "ingest-auth");
        (volume, mount)
    }

    #[test]
    fn only_the_connector_mounts_the_ingest_token_read_only() {
        let spec = ingest_hub(crate::crd::device_hub::HesAuthSpec {
            token_secret: Some("hes-token".into()),
            client_ca_config_map: None,
        });
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        for svc in &services {
            let (volume, mount) = ingest_volume(&hub, svc);
            let config = service_config(&hub, svc);
            if svc.kind != ServiceKind::Connector {
                assert!(
                    volume.is_none() && mount.is_none(),
                    "{} mounts the token",
                    svc.name
                );
                assert!(config.get("hes").is_none(), "{config}");
                continue;
            }
            let secret = volume.and_then(|v| v.secret).expect("secret volume");
            assert_eq!(secret.secret_name.as_deref(), Some("hes-token"));
            assert_eq!(secret.default_mode, Some(0o440));
            assert_eq!(secret.optional, Some(false));
            let items = secret.items.unwrap_or_default();
            assert_eq!(items.len(), 1, "only the token key");
            assert_eq!(
                (items[0].key.as_str(), items[0].path.as_str()),
                ("token", "token")
            );
            let mount = mount.expect("mounted");
            assert_eq!(mount.mount_path, "/etc/mpm/ingest-token");
            assert_eq!(mount.read_only, Some(true));
            assert_eq!(config["hes"]["tokenFile"], "/etc/mpm/ingest-token/token");
            assert!(config["hes"]["clientCaFile"].is_null(), "{config}");
        }
    }

    #[test]
    fn only_the_connector_mounts_the_hes_client_ca() {
        let spec = ingest_hub(crate::crd::device_hub::HesAuthSpec {
            token_secret: None,
            client_ca_config_map: Some("hes-ca".into()),
        });
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        for svc in &services {
            let (volume, mount) = ingest_volume(&hub, svc);
            if svc.kind != ServiceKind::Connector {
                assert!(
                    volume.is_none() && mount.is_none(),
                    "{} mounts the CA",
                    svc.name
                );
                continue;
            }
            let cm = volume
                .and_then(|v| v.config_map)
                .expect("config map volume");
            assert_eq!(cm.name, "hes-ca");
            assert_eq!(cm.items.unwrap_or_default()[0].key, "ca.crt");
            let mount = mount.expect("mounted");
            assert_eq!(mount.mount_path, "/etc/mpm/ingest-ca");
            assert_eq!(mount.read_only, Some(true));
            let config = service_config(&hub, svc);
            assert_eq!(config["hes"]["clientCaFile"], "/etc/mpm/ingest-ca/ca.crt");
            assert!(config["hes"]["tokenFile"].is_null(), "{config}");
        }
    }

    #[test]
    fn pdb_only_above_one_replica_with_the_discovered_version() {
        let mut spec = DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            ..DeviceHubSpec::default()
        };
        spec.services.push(crate::crd::device_hub::ServiceSpec {
            name: "device-hub".into(),
            enabled: true,
            replicas: 2,
            port: 8443,
            ..Default::default()
        });
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        let pdb = pod_disruption_budget(&hub, &services[1], "policy/v1beta1").unwrap();
        assert_eq!(pdb.types.unwrap().api_version, "policy/v1beta1");
        assert_eq!(pdb.data["spec"]["minAvailable"], 1);
    }

    /// Issue 16, item 10: a store repairing itself after a crash must not be killed by the
    /// liveness probe; the startup probe holds liveness off for up to 5 minutes.
    #[test]
    fn a_slow_start_is_covered_by_the_startup_probe() {
        let spec = DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            ..DeviceHubSpec::default()
        };
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        for svc in &services {
            let d = deployment(&hub, svc);
            let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
            let startup = c.startup_probe.as_ref().expect("startupProbe");
            let get = startup.http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::String("health".into()));
            assert_eq!(get.path.as_deref(), Some("/healthz"));
            let budget = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
            assert!(budget >= 300, "startup budget {budget}s");
            let liveness = c.liveness_probe.as_ref().unwrap();
            let liveness_budget =
                liveness.period_seconds.unwrap() * liveness.failure_threshold.unwrap();
            assert!(budget > liveness_budget);
        }
    }

    /// A user's RUST_LOG replaces the default instead of duplicating the list-map key `name`
    /// (server-side apply refuses duplicates).
    #[test]
    fn env_names_are_unique_in_the_container() {
        let mut hub_svc = crate::crd::device_hub::ServiceSpec {
            name: "device-hub".into(),
            enabled: true,
            replicas: 1,
            port: 8443,
            ..Default::default()
        };
        hub_svc.env = vec![EnvVar {
            name: "RUST_LOG".into(),
            value: Some("debug".into()),
            ..EnvVar::default()
        }];
        let spec = DeviceHubSpec {
            include_default_services: true,
            trust_domain: "cluster.local".into(),
            services: vec![hub_svc],
            ..DeviceHubSpec::default()
        };
        let services = resolve_services("demo", &spec).unwrap();
        let hub = demo_hub(&spec, &services);
        let d = deployment(&hub, &services[1]);
        let env = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let rust_log: Vec<_> = env.iter().filter(|e| e.name == "RUST_LOG").collect();
        assert_eq!(rust_log.len(), 1, "{env:?}");
        assert_eq!(rust_log[0].value.as_deref(), Some("debug"));
        assert!(env.iter().any(|e| e.name == "MPM_SERVICE"));
    }
}
