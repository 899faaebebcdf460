//! CA rotation I/O of a DeviceHub, driven by the pure state machine [`pki::rotation::step`].
//!
//! Objects (contract: Names): `<hub>-ca` holds the current CA and, in the annotation
//! [`STATE_ANNOTATION`], the persisted [`CaRotationState`] (JSON, public data only: fingerprints,
//! phase, times). `<hub>-ca-next` holds a generated next CA during a rotation; it is only ever
//! *created* (`POST`, a conflict means it exists), never overwritten, so an operator restart in the
//! middle of a rotation never produces a second new CA. A user-supplied CA (`spec.certificates.ca
//! .secretRef`) is copied into `<hub>-ca` when first seen; when the user's Secret later holds a
//! different CA, that CA is presented to the state machine as the next CA and goes through the
//! same phases.
//!
//! Per reconcile: read the CAs, the state and the trust bundle; gather the observations
//! ([`RotationInputs`]: bundle fingerprints, the `/status` of every ready pod, the issuers of the
//! leaves); call [`step`]; persist the new state first, then execute the actions (each one is an
//! idempotent "ensure"). Leaves are (re)issued afterwards by the caller with [`CaSet::signing`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::{debug, info, warn};

use super::apply::apply;
use super::device_hub::CONTROLLER_LABEL;
use super::{Context, Error};
use crate::crd::device_hub::{CaStatus, DeviceHub};
use crate::pki::{
    self, step, Action, CaKeyPair, CaRotationState, CaSource, CertificateSettings, RotationInputs,
    RotationPhase,
};
use crate::resources::names;
use crate::resources::workload::HubContext;

/// Annotation of `<hub>-ca` holding the rotation state (JSON).
pub const STATE_ANNOTATION: &str = "meterpark.io/ca-rotation";
/// Allowed clock skew between the operator, the API server and the services.
pub const SKEW: Duration = Duration::from_secs(5 * 60);
/// Timeout of one `GET /status` call.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often to look again while a rotation waits for pods or leaves.
pub const POLL: Duration = Duration::from_secs(3);

/// A condition (reason, message) for invalid input; nothing is replaced then.
pub type Invalid = (&'static str, String);

/// The hub's CAs after the rotation step.
#[derive(Debug)]
pub struct CaSet {
    /// The CA in `<hub>-ca`.
    pub current: CaKeyPair,
    /// The next CA (`<hub>-ca-next` or the user's new CA), if any.
    pub next: Option<CaKeyPair>,
    /// The persisted state after this step.
    pub state: CaRotationState,
    /// Fingerprints of the trust bundle after this step, in order.
    pub bundle: Vec<String>,
}

impl CaSet {
    /// The CA that signs leaves: the one whose fingerprint the state names.
    pub fn signing(&self) -> &CaKeyPair {
        match (&self.next, self.state.signing_ca_fingerprint()) {
            (Some(n), Some(fp)) if n.fingerprint() == fp => n,
            _ => &self.current,
        }
    }

    fn by_fingerprint(&self, fp: &str) -> Option<&CaKeyPair> {
        std::iter::once(&self.current)
            .chain(self.next.iter())
            .find(|c| c.fingerprint() == fp)
    }

    /// Every CA of the bundle, with its role (`Signing` or `Trusted`).
    pub fn authorities(&self) -> Vec<CaStatus> {
        let signing = self.signing().fingerprint();
        self.bundle
            .iter()
            .filter_map(|fp| {
                let ca = self.by_fingerprint(fp)?;
                Some(CaStatus {
                    fingerprint: fp.clone(),
                    not_after: ca.not_after().to_rfc3339(),
                    role: if fp == signing { "Signing" } else { "Trusted" }.into(),
                })
            })
            .collect()
    }
}

/// What the rotation step produced, for the caller.
#[derive(Debug)]
pub struct RotationOutcome {
    pub cas: CaSet,
    /// `CARotationInProgress`: (status, reason, message).
    pub condition: (bool, &'static str, String),
    /// When to look again (rotation only; leaves add their own times).
    pub next_check: Option<DateTime<Utc>>,
}

fn secret_str<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| std::str::from_utf8(&b.0).ok())
}

fn marked(mut meta: kube::core::ObjectMeta) -> kube::core::ObjectMeta {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONTROLLER_LABEL.into(), "certificates".into());
    meta
}

fn ca_secret(
    hub_ctx: &HubContext<'_>,
    name: String,
    ca: &CaKeyPair,
    state: Option<&CaRotationState>,
) -> Secret {
    let mut meta = marked(hub_ctx.hub_meta(name));
    if let Some(state) = state {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(STATE_ANNOTATION.into(), state.to_json());
    }
    Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(ca.key_pem().as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Loads a CA from a `kubernetes.io/tls` Secret.
fn load_secret_ca(secret: &Secret, what: &str, now: DateTime<Utc>) -> Result<CaKeyPair, Invalid> {
    let (Some(cert), Some(key)) = (secret_str(secret, "tls.crt"), secret_str(secret, "tls.key"))
    else {
        return Err(("CAMalformed", format!("{what} needs tls.crt and tls.key")));
    };
    pki::load_user_ca(cert, key, now).map_err(|e| (e.reason(), format!("{what}: {e}")))
}

/// Fingerprints of the certificates of a PEM bundle, in order; `None` if any block is invalid.
pub fn bundle_fingerprints(pem: &str) -> Option<Vec<String>> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    for chunk in pem.split_inclusive(END) {
        if !chunk.contains("-----BEGIN CERTIFICATE-----") {
            if chunk.trim().is_empty() {
                continue;
            }
            return None;
        }
        if !chunk.ends_with(END) {
            return None;
        }
        out.push(pki::cert_fingerprint(chunk).ok()?);
    }
    Some(out)
}

/// The trust bundle text for these fingerprints, `None` if one of them is not a CA we hold.
fn bundle_text(cas: &CaSet, fps: &[String]) -> Option<String> {
    let pems: Option<Vec<&str>> = fps
        .iter()
        .map(|fp| cas.by_fingerprint(fp).map(CaKeyPair::cert_pem))
        .collect();
    Some(pki::bundle_pem(&pems?))
}

/// A phase name for the condition reason.
fn phase_reason(phase: &RotationPhase) -> &'static str {
    match phase {
        RotationPhase::Idle => "Idle",
        RotationPhase::NewCaPublished { .. } => "NewCAPublished",
        RotationPhase::SigningWithNewCa { .. } => "SigningWithNewCA",
        RotationPhase::OldCaRetiring { .. } => "OldCARetiring",
    }
}

fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

/// True when every ready pod of the hub reports `trustBundleSha256 == want` on `/status`.
/// Pods that are not ready, terminating or without an IP are skipped.
pub async fn pods_report_bundle(
    ctx: &Context,
    namespace: &str,
    hub: &str,
    want: &str,
) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={hub}", names::LABEL_HUB)))
        .await
        .map_err(|source| Error::List {
            kind: "Pod".into(),
            source,
        })?;
    let client: HttpClient<_, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let ready_ips: Vec<(String, String)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.metadata.name.clone().unwrap_or_default(), ip))
        })
        .collect();
    let checks = ready_ips.iter().map(|(pod, ip)| {
        let client = client.clone();
        async move {
            let reported = pod_bundle_sha(&client, ip).await;
            if reported.as_deref() != Some(want) {
                debug!(%pod, reported = ?reported, "pod does not report the current trust bundle yet");
                return false;
            }
            true
        }
    });
    Ok(futures::future::join_all(checks)
        .await
        .into_iter()
        .all(|ok| ok))
}

/// `trustBundleSha256` from `GET http://<ip>:8080/status` (contract: Health port), `None` on any
/// failure or after [`STATUS_TIMEOUT`].
async fn pod_bundle_sha(
    client: &HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    ip: &str,
) -> Option<String> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let uri: hyper::Uri = format!("http://{host}:{}/status", names::HEALTH_PORT)
        .parse()
        .ok()?;
    let fetch = async {
        let response = client.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value.get("trustBundleSha256")?.as_str().map(str::to_owned)
    };
    tokio::time::timeout(STATUS_TIMEOUT, fetch)
        .await
        .ok()
        .flatten()
}

/// Reads the CAs, runs one rotation step, persists the state and executes the actions.
/// `leaves` are the live leaf Secrets the hub wants (by name); the inner `Err` is a condition for
/// invalid input (nothing is replaced then).
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    ctx: &Context,
    hub: &DeviceHub,
    hub_ctx: &HubContext<'_>,
    settings: &CertificateSettings,
    leaves: &[Option<&Secret>],
    regarding: &ObjectReference,
    now: DateTime<Utc>,
) -> Result<Result<RotationOutcome, Invalid>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), hub_ctx.namespace);
    let get = |name: String| {
        let secrets = secrets.clone();
        async move {
            secrets.get_opt(&name).await.map_err(|source| Error::Get {
                kind: "Secret".into(),
                name,
                source,
            })
        }
    };
    let ca_name = names::ca_secret(hub_ctx.name);
    let next_name = names::next_ca_secret(hub_ctx.name);
    let user_ref = hub.spec.certificates.ca.secret_ref.as_ref();

    // The user's CA, if any (validated).
    let user = match user_ref {
        None => None,
        Some(reference) => {
            let Some(secret) = get(reference.name.clone()).await? else {
                return Ok(Err((
                    "CASecretNotFound",
                    format!(
                        "spec.certificates.ca.secretRef: Secret {:?} not found",
                        reference.name
                    ),
                )));
            };
            match load_secret_ca(
                &secret,
                &format!("spec.certificates.ca.secretRef {:?}", reference.name),
                now,
            ) {
                Ok(ca) => Some(ca),
                Err(invalid) => return Ok(Err(invalid)),
            }
        }
    };

    // The current CA: <hub>-ca, created once (generated, or a copy of the user's CA).
    let live_ca = get(ca_name.clone()).await?;
    let (current, mut user) = match &live_ca {
        Some(secret) => match load_secret_ca(secret, &format!("Secret {ca_name}"), now) {
            Ok(ca) => (ca, user),
            Err(invalid) => return Ok(Err(invalid)),
        },
        None => {
            let (ca, reason, verb) = match user {
                Some(u) => (u, "CAImported", "imported the user-supplied"),
                None => {
                    let ca = match pki::generate_ca(
                        &format!("mpm {}/{} CA", hub_ctx.namespace, hub_ctx.name),
                        settings.ca_duration,
                        now,
                    ) {
                        Ok(ca) => ca,
                        Err(e) => return Ok(Err((e.reason(), format!("generating the CA: {e}")))),
                    };
                    (ca, "CAGenerated", "generated")
                }
            };
            apply(
                ctx,
                &secrets,
                "Secret",
                ca_secret(hub_ctx, ca_name.clone(), &ca, None),
                None,
                regarding,
            )
            .await?;
            warn!(hub = %hub_ctx.name, fingerprint = %ca.fingerprint(), "stored a new hub CA");
            ctx.publish(
                regarding,
                EventType::Normal,
                reason,
                "Certificate",
                format!(
                    "{verb} CA {} (expires {})",
                    ca.fingerprint(),
                    ca.not_after().to_rfc3339()
                ),
            )
            .await;
            // A user CA now is the current one; nothing to rotate to.
            (ca, None)
        }
    };
    let state = live_ca
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref()?.get(STATE_ANNOTATION))
        .and_then(|json| match CaRotationState::from_json(json) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(hub = %hub_ctx.name, error = %e, "unreadable rotation state; adopting the current CAs");
                None
            }
        })
        .unwrap_or_default();

    // The next CA: the user's CA when it differs from <hub>-ca, else <hub>-ca-next (generated).
    let live_next = get(next_name.clone()).await?;
    let next = match user.take() {
        Some(u) if u.fingerprint() != current.fingerprint() => Some(u),
        Some(_) => None,
        None if user_ref.is_some() => None,
        None => match &live_next {
            Some(secret) => match load_secret_ca(secret, &format!("Secret {next_name}"), now) {
                Ok(ca) => Some(ca),
                Err(invalid) => return Ok(Err(invalid)),
            },
            None => None,
        },
    };
    let current_source = if user_ref.is_some() {
        CaSource::User
    } else {
        CaSource::Generated
    };
    let next_source = current_source;

    // The trust bundle as published.
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), hub_ctx.namespace);
    let bundle_name = names::trust_bundle(hub_ctx.name);
    let live_bundle = cm_api
        .get_opt(&bundle_name)
        .await
        .map_err(|source| Error::Get {
            kind: "ConfigMap".into(),
            name: bundle_name.clone(),
            source,
        })?;
    let live_bundle_text = live_bundle
        .as_ref()
        .and_then(|cm| cm.data.as_ref()?.get(names::TRUST_BUNDLE_KEY).cloned());
    let bundle_fps = live_bundle_text
        .as_deref()
        .and_then(bundle_fingerprints)
        .unwrap_or_default();

    // Observations.
    let pods_ok = match (&state.phase, &live_bundle_text) {
        (RotationPhase::NewCaPublished { .. }, Some(text)) => {
            pods_report_bundle(
                ctx,
                hub_ctx.namespace,
                hub_ctx.name,
                &pki::bundle_sha256(text),
            )
            .await?
        }
        _ => false,
    };
    let all_leaves_signed_by_next = next.as_ref().is_some_and(|n| {
        leaves.iter().all(|leaf| {
            leaf.and_then(|s| secret_str(s, "tls.crt"))
                .and_then(|pem| pki::identify_issuer(pem, &[n.cert_pem()]))
                .is_some_and(|fp| fp == n.fingerprint())
        })
    });
    let backdate = TimeDelta::from_std(pki::DEFAULT_BACKDATE).unwrap_or(TimeDelta::zero());
    let longest = leaves
        .iter()
        .filter_map(|leaf| {
            let pem = secret_str((*leaf)?, "tls.crt")?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return None;
            }
            let info = pki::inspect_cert(pem).ok()?;
            (info.not_after - info.not_before - backdate).to_std().ok()
        })
        .fold(settings.duration, Duration::max);
    let mut current_info = current.info();
    current_info.source = current_source;
    let next_info = next.as_ref().map(|n| {
        let mut info = n.info();
        info.source = next_source;
        info
    });
    let inputs = RotationInputs {
        now,
        current_ca: current_info,
        next_ca: next_info,
        bundle_fingerprints: bundle_fps.clone(),
        pods_report_bundle: pods_ok,
        all_leaves_signed_by_next,
        rotation_token: hub.spec.certificates.ca.rotation_token.clone(),
        longest_leaf_lifetime: longest,
        skew: SKEW,
    };
    let (new_state, actions) = step(&state, &inputs);
    debug!(hub = %hub_ctx.name, ?actions, phase = ?new_state.phase, "CA rotation step");

    // Persist the state before acting: every action is idempotent and re-derived after a crash.
    if new_state != state || live_ca.is_none() {
        ctx.limiter.acquire().await;
        ctx.metrics.write("Secret", "patch");
        let patch = json!({"metadata": {"annotations": {STATE_ANNOTATION: new_state.to_json()}}});
        secrets
            .patch(&ca_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Apply {
                kind: "Secret".into(),
                name: ca_name.clone(),
                source,
            })?;
    }
    let started = match (&state.phase, &new_state.phase) {
        (
            RotationPhase::Idle,
            RotationPhase::NewCaPublished {
                new_ca_fingerprint, ..
            },
        ) => Some(new_ca_fingerprint),
        (
            RotationPhase::NewCaPublished {
                new_ca_fingerprint: a,
                ..
            },
            RotationPhase::NewCaPublished {
                new_ca_fingerprint: b,
                ..
            },
        ) if a != b => Some(b),
        _ => None,
    };
    if let Some(new_fp) = started {
        info!(hub = %hub_ctx.name, new = %new_fp, trigger = ?new_state.trigger, "CA rotation started");
        ctx.publish(
            regarding,
            EventType::Normal,
            "CARotationStarted",
            "Certificate",
            format!(
                "CA rotation started ({:?}): publishing CA {new_fp} next to {}",
                new_state.trigger,
                current.fingerprint()
            ),
        )
        .await;
    }

    let mut cas = CaSet {
        current,
        next,
        state: new_state,
        bundle: bundle_fps,
    };
    let mut next_check: Option<DateTime<Utc>> = None;
    let mut soon =
        |at: DateTime<Utc>| next_check = Some(next_check.map_or(at, |t: DateTime<Utc>| t.min(at)));
    let poll = now + TimeDelta::from_std(POLL).unwrap_or(TimeDelta::seconds(3));
    let mut warnings = Vec::new();
    let mut generating = false;
    for action in &actions {
        match action {
            Action::GenerateNextCa => {
                generating = true;
                soon(now + TimeDelta::seconds(1));
                if user_ref.is_some() || live_next.is_some() {
                    continue;
                }
                let ca = match pki::generate_ca(
                    &format!("mpm {}/{} CA", hub_ctx.namespace, hub_ctx.name),
                    settings.ca_duration,
                    now,
                ) {
                    Ok(ca) => ca,
                    Err(e) => return Ok(Err((e.reason(), format!("generating the next CA: {e}")))),
                };
                let secret = ca_secret(hub_ctx, next_name.clone(), &ca, None);
                ctx.limiter.acquire().await;
                ctx.metrics.write("Secret", "create");
                // Create only: a conflict means another run already created it; never overwrite.
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        warn!(hub = %hub_ctx.name, fingerprint = %ca.fingerprint(), "generated the next hub CA");
                        ctx.publish(
                            regarding,
                            EventType::Normal,
                            "CAGenerated",
                            "Certificate",
                            format!(
                                "generated next CA {} (expires {})",
                                ca.fingerprint(),
                                ca.not_after().to_rfc3339()
                            ),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(source) => {
                        return Err(Error::Apply {
                            kind: "Secret".into(),
                            name: next_name.clone(),
                            source,
                        })
                    }
                }
            }
            Action::PublishBundle(fps) | Action::DropOldCaFromBundle { remaining: fps, .. } => {
                if bundle_text(&cas, fps).is_some() {
                    cas.bundle = fps.clone();
                } else {
                    warnings.push((
                        "BundleCAUnknown",
                        "the desired trust bundle names a CA the operator does not hold"
                            .to_string(),
                    ));
                }
                if let Action::DropOldCaFromBundle {
                    old_ca_fingerprint, ..
                } = action
                {
                    ctx.publish(
                        regarding,
                        EventType::Normal,
                        "CARetired",
                        "Certificate",
                        format!("removed CA {old_ca_fingerprint} from the trust bundle"),
                    )
                    .await;
                }
                soon(poll);
            }
            Action::SwitchSigningToNextCa => {
                info!(hub = %hub_ctx.name, "signing leaves with the next CA");
                ctx.publish(
                    regarding,
                    EventType::Normal,
                    "CASigningSwitched",
                    "Certificate",
                    format!(
                        "every ready pod trusts the new CA; signing with {} and reissuing all leaves",
                        cas.signing().fingerprint()
                    ),
                )
                .await;
                soon(poll);
            }
            // The caller reissues every leaf not signed by `CaSet::signing`.
            Action::ReissueAllLeaves => soon(poll),
            Action::Complete => {
                complete(
                    ctx,
                    hub_ctx,
                    &secrets,
                    &mut cas,
                    live_ca.as_ref(),
                    &next_name,
                    regarding,
                )
                .await?;
                soon(now + TimeDelta::seconds(1));
            }
            Action::RequeueAt(at) => soon(*at),
            Action::Warn { reason, message } => {
                warn!(hub = %hub_ctx.name, reason, %message, "CA rotation needs attention");
                warnings.push((reason, message.clone()));
            }
        }
    }
    for (reason, message) in &warnings {
        ctx.publish(
            regarding,
            EventType::Warning,
            reason,
            "Certificate",
            message.clone(),
        )
        .await;
    }

    // The trust bundle ConfigMap, exactly the state machine's list (apply skips unchanged writes
    // and repairs edits).
    if let Some(text) = bundle_text(&cas, &cas.bundle) {
        let cm = ConfigMap {
            metadata: marked(hub_ctx.hub_meta(bundle_name.clone())),
            data: Some(BTreeMap::from([(
                names::TRUST_BUNDLE_KEY.to_string(),
                text,
            )])),
            ..ConfigMap::default()
        };
        apply(
            ctx,
            &cm_api,
            "ConfigMap",
            cm,
            live_bundle.as_ref(),
            regarding,
        )
        .await?;
    }

    let phase = &cas.state.phase;
    if matches!(
        phase,
        RotationPhase::NewCaPublished { .. } | RotationPhase::SigningWithNewCa { .. }
    ) {
        soon(poll);
    }
    let condition = if let Some((reason, message)) = warnings.first() {
        (cas.state.rotating(), *reason, message.clone())
    } else {
        match phase {
            RotationPhase::Idle if generating => (
                true,
                "GeneratingNextCA",
                "generating the next CA".to_string(),
            ),
            RotationPhase::Idle => (false, "Idle", "no CA rotation in progress".to_string()),
            RotationPhase::NewCaPublished {
                old_ca_fingerprint,
                new_ca_fingerprint,
                ..
            } => (
                true,
                phase_reason(phase),
                format!(
                    "trust bundle holds {} and {}; waiting for every ready pod to load it before \
                     signing with the new CA",
                    short(old_ca_fingerprint),
                    short(new_ca_fingerprint)
                ),
            ),
            RotationPhase::SigningWithNewCa {
                new_ca_fingerprint, ..
            } => (
                true,
                phase_reason(phase),
                format!(
                    "signing with {}; reissuing every leaf",
                    short(new_ca_fingerprint)
                ),
            ),
            RotationPhase::OldCaRetiring {
                old_ca_fingerprint,
                drop_old_at,
                ..
            } => (
                true,
                phase_reason(phase),
                format!(
                    "every leaf is signed by the new CA; {} stays trusted until {}",
                    short(old_ca_fingerprint),
                    drop_old_at.to_rfc3339()
                ),
            ),
        }
    };
    Ok(Ok(RotationOutcome {
        cas,
        condition,
        next_check,
    }))
}

/// [`Action::Complete`]: write the next CA into `<hub>-ca` (with the state, in one write), then
/// delete `<hub>-ca-next`. Idempotent: a crash in between is finished by the next run.
async fn complete(
    ctx: &Context,
    hub_ctx: &HubContext<'_>,
    secrets: &Api<Secret>,
    cas: &mut CaSet,
    live_ca: Option<&Secret>,
    next_name: &str,
    regarding: &ObjectReference,
) -> Result<(), Error> {
    let promoted = match cas.next.take() {
        Some(next) if next.fingerprint() != cas.current.fingerprint() => {
            let desired = ca_secret(
                hub_ctx,
                names::ca_secret(hub_ctx.name),
                &next,
                Some(&cas.state),
            );
            apply(ctx, secrets, "Secret", desired, live_ca, regarding).await?;
            let old = std::mem::replace(&mut cas.current, next);
            Some(old.fingerprint().to_string())
        }
        _ => None,
    };
    ctx.limiter.acquire().await;
    ctx.metrics.write("Secret", "delete");
    let deleted = match secrets.delete(next_name, &DeleteParams::background()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(source) => {
            return Err(Error::Delete {
                kind: "Secret".into(),
                name: next_name.to_string(),
                source,
            })
        }
    };
    if promoted.is_some() || deleted {
        info!(hub = %hub_ctx.name, ca = %cas.current.fingerprint(), "CA rotation completed");
        ctx.publish(
            regarding,
            EventType::Normal,
            "CARotationCompleted",
            "Certificate",
            format!(
                "CA rotation completed: {} is the hub CA{}",
                cas.current.fingerprint(),
                promoted
                    .map(|o| format!(", {o} retired"))
                    .unwrap_or_default()
            ),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_fingerprints_in_order() {
        let now = Utc::now();
        let a = pki::generate_ca("a", Duration::from_secs(3600), now).expect("ca a");
        let b = pki::generate_ca("b", Duration::from_secs(3600), now).expect("ca b");
        let text = pki::bundle_pem(&[a.cert_pem(), b.cert_pem()]);
        assert_eq!(
            bundle_fingerprints(&text),
            Some(vec![
                a.fingerprint().to_string(),
                b.fingerprint().to_string()
            ])
        );
        assert_eq!(bundle_fingerprints(""), Some(vec![]));
        assert_eq!(bundle_fingerprints("garbage"), None);
        assert_eq!(
            bundle_fingerprints("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            None
        );
    }
}
