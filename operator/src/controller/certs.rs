//! Certificate I/O of a DeviceHub: the CA Secret (generated or user-supplied), the trust bundle
//! ConfigMap and one `kubernetes.io/tls` Secret per service plus the operator's client certificate.
//! Decisions (validity, renewal time, what a valid leaf is) live in `crate::pki`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::Resource;
use tracing::info;

use super::apply::{apply, list_by_name, prune, Change};
use super::device_hub::CONTROLLER_LABEL;
use super::{rotation, Context, Error};
use crate::crd::device_hub::{CaStatus, CertificateStatus, DeviceHub};
use crate::pki::{self, CertificateSettings, ExistingLeaf, LeafRequest};
use crate::resources::names::{self, hub_selector};
use crate::resources::workload::HubContext;
use crate::runtime::metrics::{CertLabels, HubLabels};

/// What the certificate step found and did, for the hub's status.
#[derive(Debug, Default)]
pub struct CertOutcome {
    /// `CertificatesReady`: (status, reason, message).
    pub ready: (bool, &'static str, String),
    /// `CARotationInProgress`: (status, reason, message).
    pub rotation: (bool, &'static str, String),
    pub services: BTreeMap<String, CertificateStatus>,
    pub authorities: Vec<CaStatus>,
    pub earliest_expiry: Option<String>,
    /// When the next certificate needs attention.
    pub next_check: Option<DateTime<Utc>>,
}

fn not_ready(reason: &'static str, message: String) -> CertOutcome {
    CertOutcome {
        ready: (false, reason, message),
        rotation: (
            false,
            "CertificatesNotReady",
            "no CA rotation step taken while certificates are not ready".into(),
        ),
        ..CertOutcome::default()
    }
}

fn secret_str<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
}

fn tls_secret(meta: kube::core::ObjectMeta, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(cert_pem.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

fn marked(mut meta: kube::core::ObjectMeta) -> kube::core::ObjectMeta {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTROLLER_LABEL.into(), "certificates".into());
    meta
}

pub async fn reconcile(
    ctx: &Context,
    hub: &DeviceHub,
    hub_ctx: &HubContext<'_>,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<CertOutcome, Error> {
    let now = Utc::now();
    let spec = &hub.spec.certificates;
    let hub_labels = HubLabels {
        namespace: hub_ctx.namespace.into(),
        hub: hub_ctx.name.into(),
    };
    let settings = match CertificateSettings::from_spec(
        Some(&spec.duration),
        spec.renew_before.as_deref(),
        spec.ca.duration.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            // Existing certificates stay as they are: a bad setting never replaces a valid certificate.
            return Ok(not_ready(e.reason(), format!("spec.certificates: {e}")));
        }
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), hub_ctx.namespace);

    // Leaves: one per service and one for the operator itself.
    let selector = format!(
        "{},{}=certificates",
        hub_selector(hub_ctx.name),
        CONTROLLER_LABEL
    );
    let live = list_by_name(&secrets, "Secret", &selector).await?;
    let mut wanted: Vec<(Option<&str>, String, String, Vec<String>)> = hub_ctx
        .services
        .iter()
        .map(|s| {
            (
                Some(s.name.as_str()),
                names::tls_secret(hub_ctx.name, &s.name),
                names::object_name(hub_ctx.name, &s.name),
                names::service_dns_names(hub_ctx.name, &s.name, hub_ctx.namespace),
            )
        })
        .collect();
    wanted.push((
        None,
        names::operator_client_secret(hub_ctx.name),
        names::OPERATOR_SA.to_string(),
        vec![],
    ));

    // The CAs, the trust bundle and the rotation state machine.
    let live_leaves: Vec<Option<&Secret>> = wanted.iter().map(|w| live.get(&w.1)).collect();
    let rotation =
        match rotation::reconcile(ctx, hub, hub_ctx, &settings, &live_leaves, regarding, now)
            .await?
        {
            Ok(r) => r,
            Err((reason, message)) => {
                ctx.metrics
                    .certificate_issuance_errors
                    .get_or_create(&hub_labels)
                    .inc();
                return Ok(not_ready(reason, message));
            }
        };
    let ca = rotation.cas.signing();

    let mut outcome = CertOutcome {
        ready: (
            true,
            "Issued",
            "every service holds a valid certificate".into(),
        ),
        rotation: rotation.condition.clone(),
        authorities: rotation.cas.authorities(),
        next_check: rotation.next_check,
        ..CertOutcome::default()
    };
    let mut keep = vec![
        names::ca_secret(hub_ctx.name),
        names::next_ca_secret(hub_ctx.name),
    ];
    let mut earliest: Option<DateTime<Utc>> = None;
    for (service, secret_name, service_account, dns_names) in wanted {
        keep.push(secret_name.clone());
        let request =
            match pki::spiffe_id(&hub.spec.trust_domain, hub_ctx.namespace, &service_account) {
                Ok(id) => LeafRequest {
                    validity: settings.duration,
                    ..LeafRequest::new(id, dns_names)
                },
                Err(e) => return Ok(not_ready(e.reason(), format!("spec.trustDomain: {e}"))),
            };
        let existing = live.get(&secret_name);
        let current = existing.and_then(|s| {
            let leaf = ExistingLeaf {
                cert_pem: secret_str(s, "tls.crt")?,
                key_pem: secret_str(s, "tls.key")?,
            };
            if let Some(m) = pki::leaf_mismatch(&leaf, ca, &request) {
                info!(secret = %secret_name, reason = m.reason(), "certificate will be reissued");
                return None;
            }
            let info = pki::inspect_cert(leaf.cert_pem).ok()?;
            let renew_at = renew_time(info.not_before, info.not_after, &settings, &secret_name);
            (renew_at > now && info.not_after > now).then_some((s.clone(), info, renew_at))
        });
        let labels = CertLabels {
            namespace: hub_ctx.namespace.into(),
            hub: hub_ctx.name.into(),
            service: service.unwrap_or("mpm-operator").into(),
        };
        let (secret, serial, not_after, renew_at) = match current {
            Some((secret, info, renew_at)) => (secret, info.serial_hex, info.not_after, renew_at),
            None => {
                let issued = match pki::issue_leaf(ca, &request, now) {
                    Ok(i) => i,
                    Err(e) => {
                        ctx.metrics
                            .certificate_issuance_errors
                            .get_or_create(&hub_labels)
                            .inc();
                        return Ok(not_ready(e.reason(), format!("issuing {secret_name}: {e}")));
                    }
                };
                let renew_at =
                    renew_time(issued.not_before, issued.not_after, &settings, &secret_name);
                let meta = match service {
                    Some(svc) => {
                        let mut m = hub_ctx.hub_meta(secret_name.clone());
                        if let Some(l) = m.labels.as_mut() {
                            l.insert(names::LABEL_SERVICE.into(), svc.into());
                        }
                        m
                    }
                    None => hub_ctx.hub_meta(secret_name.clone()),
                };
                let secret = tls_secret(marked(meta), &issued.cert_pem, &issued.key_pem);
                let (reason, verb) = if existing.is_some() {
                    ("Renewed", "renewed")
                } else {
                    ("Issued", "issued")
                };
                if existing.is_some() {
                    ctx.metrics
                        .certificate_renewals
                        .get_or_create(&labels)
                        .inc();
                }
                ctx.publish(
                    regarding,
                    EventType::Normal,
                    reason,
                    "Certificate",
                    format!(
                        "{verb} certificate for {} (serial {}, expires {})",
                        request.spiffe_id.as_str(),
                        issued.serial_hex,
                        issued.not_after.to_rfc3339()
                    ),
                )
                .await;
                (
                    secret,
                    issued.serial_hex.clone(),
                    issued.not_after,
                    renew_at,
                )
            }
        };
        // Unchanged certificates produce identical desired Secrets, so `apply` skips the write.
        let mut desired = secret.clone();
        desired.metadata = marked(match service {
            Some(svc) => {
                let mut m = hub_ctx.hub_meta(secret_name.clone());
                if let Some(l) = m.labels.as_mut() {
                    l.insert(names::LABEL_SERVICE.into(), svc.into());
                }
                m
            }
            None => hub_ctx.hub_meta(secret_name.clone()),
        });
        desired.type_ = Some("kubernetes.io/tls".into());
        desired.string_data = None;
        let change = apply(ctx, &secrets, "Secret", desired, existing, regarding).await?;
        if change != Change::Unchanged {
            info!(secret = %secret_name, serial = %serial, "certificate stored");
        }
        ctx.metrics
            .certificate_expiration
            .get_or_create(&labels)
            .set(not_after.timestamp() as f64);
        outcome.next_check = Some(outcome.next_check.map_or(renew_at, |t| t.min(renew_at)));
        earliest = Some(earliest.map_or(not_after, |t| t.min(not_after)));
        if let Some(svc) = service {
            outcome.services.insert(
                svc.to_string(),
                CertificateStatus {
                    serial,
                    not_after: not_after.to_rfc3339(),
                    renewal_time: renew_at.to_rfc3339(),
                },
            );
        }
    }
    outcome.earliest_expiry = earliest.map(|t| t.to_rfc3339());
    let uid = hub.meta().uid.clone().unwrap_or_default();
    prune(ctx, &secrets, "Secret", &live, &keep, &uid, regarding).await?;
    Ok(outcome)
}

/// The jittered renewal time of a leaf, never earlier than [`MIN_LEAF_AGE`] after issuance (the
/// jitter may reach back past issuance when `renewBefore` is close to `duration`, which would
/// otherwise renew the leaf on every reconcile).
fn renew_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    settings: &CertificateSettings,
    jitter_key: &str,
) -> DateTime<Utc> {
    let issued =
        not_before + TimeDelta::from_std(pki::DEFAULT_BACKDATE).unwrap_or(TimeDelta::zero());
    let earliest = issued + TimeDelta::from_std(MIN_LEAF_AGE).unwrap_or(TimeDelta::zero());
    pki::renewal_time(not_before, not_after, settings.renew_before, jitter_key)
        .max(earliest.min(not_after))
}

/// A leaf is never renewed on schedule before it is this old.
pub const MIN_LEAF_AGE: std::time::Duration = std::time::Duration::from_secs(20);
