//! The webhook's serving certificate. A CA of its own (10 years) signs a leaf for the webhook
//! Service's DNS names (1 year, renewed 30 days before it expires). All replicas share both through
//! one Secret, so any replica can answer the API server, and the API server trusts the CA through the
//! webhook configuration's `caBundle`.
//!
//! [`plan`] decides (pure); [`ensure`] and [`publish_ca_bundle`] do the API I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::info;

use super::AdmissionError;
use crate::pki::{self, CaKeyPair, ExistingLeaf, LeafRequest};
use crate::resources::names::FIELD_MANAGER;

pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A CA or leaf with less than this left is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Keys of the webhook Secret (contract: Operator webhook).
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// The CA and the serving leaf, as stored in the Secret. `Debug` redacts the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookCert {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for WebhookCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookCert")
            .field(
                "ca_cert_pem",
                &format_args!("<{} bytes>", self.ca_cert_pem.len()),
            )
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("ca_key_pem", &"<redacted>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl WebhookCert {
    fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        Some(Self {
            ca_cert_pem: text(CA_CERT)?,
            ca_key_pem: text(CA_KEY)?,
            cert_pem: text(TLS_CERT)?,
            key_pem: text(TLS_KEY)?,
        })
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT, &self.ca_cert_pem),
            (CA_KEY, &self.ca_key_pem),
            (TLS_CERT, &self.cert_pem),
            (TLS_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

/// What to do with the Secret's contents.
#[derive(Debug)]
pub enum Plan {
    /// Valid for the Service and not due: serve it.
    Keep(WebhookCert),
    /// Issue a new leaf, with the existing CA or with a new one (`ca` is `None`).
    Issue {
        ca: Option<Box<CaKeyPair>>,
        reason: &'static str,
    },
}

/// The leaf request for the webhook Service.
pub fn leaf_request(namespace: &str, service: &str) -> Result<LeafRequest, AdmissionError> {
    let identity = pki::spiffe_id(
        pki::leaf::CLUSTER_DOMAIN,
        namespace,
        crate::acl::OPERATOR_SERVICE_ACCOUNT,
    )?;
    let mut request = LeafRequest::new(identity, pki::service_dns_names(service, namespace)?);
    request.validity = LEAF_VALIDITY;
    Ok(request)
}

fn remaining(not_after: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (not_after - now).to_std().unwrap_or(Duration::ZERO)
}

/// Decides whether the stored certificate can be served as it is.
pub fn plan(
    data: Option<&BTreeMap<String, ByteString>>,
    request: &LeafRequest,
    now: DateTime<Utc>,
) -> Plan {
    let new_ca = |reason| Plan::Issue { ca: None, reason };
    let Some(stored) = data.and_then(WebhookCert::from_data) else {
        return new_ca("Missing");
    };
    let Ok(ca) = pki::load_user_ca(&stored.ca_cert_pem, &stored.ca_key_pem, now) else {
        return new_ca("CAInvalid");
    };
    if remaining(ca.not_after(), now) < RENEW_BEFORE {
        return new_ca("CAExpiring");
    }
    let existing = ExistingLeaf {
        cert_pem: &stored.cert_pem,
        key_pem: &stored.key_pem,
    };
    if let Some(mismatch) = pki::leaf_mismatch(&existing, &ca, request) {
        return Plan::Issue {
            ca: Some(Box::new(ca)),
            reason: mismatch.reason(),
        };
    }
    match pki::inspect_cert(&stored.cert_pem) {
        Ok(info) if remaining(info.not_after, now) >= RENEW_BEFORE => Plan::Keep(stored),
        Ok(_) => Plan::Issue {
            ca: Some(Box::new(ca)),
            reason: "Expiring",
        },
        Err(_) => Plan::Issue {
            ca: Some(Box::new(ca)),
            reason: "CertificateMalformed",
        },
    }
}

/// Issues a leaf (and a CA when `ca` is `None`).
pub fn issue(
    ca: Option<CaKeyPair>,
    request: &LeafRequest,
    now: DateTime<Utc>,
) -> Result<WebhookCert, AdmissionError> {
    let ca = match ca {
        Some(ca) => ca,
        None => pki::generate_ca("mpm-operator webhook CA", CA_VALIDITY, now)?,
    };
    let leaf = pki::issue_leaf(&ca, request, now)?;
    Ok(WebhookCert {
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem().to_string(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    })
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// Reads the webhook Secret and returns a certificate to serve, issuing and storing a new one when
/// [`plan`] says so. Replicas racing here settle through the Secret's resourceVersion: the loser
/// re-reads and serves the winner's certificate.
pub async fn ensure(
    secrets: &Api<Secret>,
    secret_name: &str,
    request: &LeafRequest,
) -> Result<WebhookCert, AdmissionError> {
    let api_err = |source| AdmissionError::Secret {
        name: secret_name.to_string(),
        source,
    };
    for _ in 0..5 {
        let existing = secrets.get_opt(secret_name).await.map_err(api_err)?;
        let now = Utc::now();
        let (ca, reason) = match plan(
            existing.as_ref().and_then(|s| s.data.as_ref()),
            request,
            now,
        ) {
            Plan::Keep(cert) => return Ok(cert),
            Plan::Issue { ca, reason } => (ca.map(|c| *c), reason),
        };
        let new_ca = ca.is_none();
        let cert = issue(ca, request, now)?;
        let result = match existing {
            Some(secret) => {
                // The resourceVersion makes the merge patch conditional: 409 if another replica
                // wrote in between.
                let patch = json!({
                    "metadata": {"resourceVersion": secret.metadata.resource_version},
                    "data": cert.to_data(),
                });
                secrets
                    .patch(secret_name, &field_manager(), &Patch::Merge(&patch))
                    .await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret_name.to_string()),
                        labels: Some(
                            [
                                (
                                    "app.kubernetes.io/name".to_string(),
                                    "mpm-operator".to_string(),
                                ),
                                (
                                    "app.kubernetes.io/component".to_string(),
                                    "webhook".to_string(),
                                ),
                            ]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".to_string()),
                    data: Some(cert.to_data()),
                    ..Secret::default()
                };
                secrets
                    .create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.to_string()),
                            ..PostParams::default()
                        },
                        &secret,
                    )
                    .await
            }
        };
        match result {
            Ok(_) => {
                info!(
                    secret = secret_name,
                    reason, new_ca, "issued the webhook serving certificate"
                );
                return Ok(cert);
            }
            // Another replica wrote first: serve what it stored.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_err(e)),
        }
    }
    Err(AdmissionError::SecretContended(secret_name.to_string()))
}

/// Puts `ca_cert_pem` into the `caBundle` of every webhook of the configuration `name`. Returns
/// false when the configuration does not exist (the webhook is not installed; the Meter controller
/// adds the finalizer itself then).
pub async fn publish_ca_bundle(
    configs: &Api<MutatingWebhookConfiguration>,
    name: &str,
    ca_cert_pem: &str,
) -> Result<bool, AdmissionError> {
    let api_err = |source| AdmissionError::WebhookConfiguration {
        name: name.to_string(),
        source,
    };
    let Some(config) = configs.get_opt(name).await.map_err(api_err)? else {
        return Ok(false);
    };
    let stale: Vec<String> = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .filter(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice())
                != Some(ca_cert_pem.as_bytes())
        })
        .map(|w| w.name)
        .collect();
    if stale.is_empty() {
        return Ok(true);
    }
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_cert_pem);
    let webhooks: Vec<_> = stale
        .iter()
        .map(|n| json!({"name": n, "clientConfig": {"caBundle": bundle}}))
        .collect();
    // Strategic merge: `webhooks` merges by name, so only caBundle changes.
    configs
        .patch(
            name,
            &field_manager(),
            &Patch::Strategic(json!({ "webhooks": webhooks })),
        )
        .await
        .map_err(api_err)?;
    info!(configuration = name, webhooks = ?stale, "published the webhook CA bundle");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> LeafRequest {
        leaf_request("mpm-system", "mpm-operator-webhook").unwrap()
    }

    fn stored(cert: &WebhookCert) -> BTreeMap<String, ByteString> {
        cert.to_data()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn nothing_stored_issues_a_ca_and_a_leaf_that_are_then_kept() {
        let request = request();
        let Plan::Issue { ca: None, reason } = plan(None, &request, now()) else {
            panic!("expected a new CA");
        };
        assert_eq!(reason, "Missing");
        let cert = issue(None, &request, now()).unwrap();
        let info = pki::inspect_cert(&cert.cert_pem).unwrap();
        assert!(info
            .dns_sans
            .contains(&"mpm-operator-webhook.mpm-system.svc".to_string()));
        let data = stored(&cert);
        assert!(matches!(plan(Some(&data), &request, now()), Plan::Keep(c) if c == cert));
        // Still kept 11 months later; renewed with the same CA in the last 30 days.
        let later = now() + chrono::Duration::days(334);
        assert!(matches!(plan(Some(&data), &request, later), Plan::Keep(_)));
        let due = now() + chrono::Duration::days(340);
        let Plan::Issue {
            ca: Some(ca),
            reason,
        } = plan(Some(&data), &request, due)
        else {
            panic!("expected a leaf renewal");
        };
        assert_eq!(reason, "Expiring");
        assert_eq!(ca.cert_pem(), cert.ca_cert_pem);
    }

    #[test]
    fn a_leaf_for_another_service_is_reissued_with_the_same_ca() {
        let cert = issue(None, &request(), now()).unwrap();
        let other = leaf_request("other-ns", "mpm-operator-webhook").unwrap();
        let Plan::Issue {
            ca: Some(ca),
            reason,
        } = plan(Some(&stored(&cert)), &other, now())
        else {
            panic!("expected a reissue");
        };
        assert_eq!(reason, "SANsDiffer");
        assert_eq!(ca.cert_pem(), cert.ca_cert_pem);
    }

    #[test]
    fn a_damaged_secret_gets_a_new_ca() {
        let cert = issue(None, &request(), now()).unwrap();
        let mut data = stored(&cert);
        data.insert(CA_KEY.into(), ByteString(b"not a key".to_vec()));
        assert!(matches!(
            plan(Some(&data), &request(), now()),
            Plan::Issue {
                ca: None,
                reason: "CAInvalid"
            }
        ));
        data.remove(TLS_KEY);
        assert!(matches!(
            plan(Some(&data), &request(), now()),
            Plan::Issue {
                ca: None,
                reason: "Missing"
            }
        ));
        // A leaf whose key does not match is reissued under the stored CA.
        let mut swapped = stored(&cert);
        let other = issue(None, &request(), now()).unwrap();
        swapped.insert(TLS_KEY.into(), ByteString(other.key_pem.into_bytes()));
        assert!(matches!(
            plan(Some(&swapped), &request(), now()),
            Plan::Issue {
                ca: Some(_),
                reason: "KeyMismatch"
            }
        ));
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let cert = issue(None, &request(), now()).unwrap();
        let shown = format!("{cert:?}");
        assert!(!shown.contains("PRIVATE KEY"));
        assert!(shown.contains("<redacted>"));
    }
}
