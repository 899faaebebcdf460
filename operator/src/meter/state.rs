//! The Meter state machine: a pure function from what the controller observed (spec, status, hub
//! readiness, duplicate check, device-hub's answer, the clock) to the next status and when to look
//! again. No I/O happens here; `controller.rs` gathers the inputs and applies the decision.
//!
//! Phases:
//!
//! | phase | meaning | `Ready` reasons |
//! |---|---|---|
//! | `Pending` | device-hub does not hold the meter yet and cannot be asked | `HubNotReady`, `HubNotFound`, `HubUnavailable` |
//! | `Provisioning` | device-hub holds an older version; the update is being retried | `HubUnavailable` |
//! | `Provisioned` | device-hub confirmed the current spec (`desiredState: Active`) | `Provisioned` |
//! | `Decommissioned` | device-hub confirmed `desiredState: Decommissioned` | `Decommissioned` |
//! | `Failed` | needs a change by the user | `DuplicateSerial`, `Rejected`, `SerialNumberImmutable` |

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::condition::{find, merge_conditions, Condition, ConditionStatus};
use crate::crd::meter::{DesiredState, MeterPhase, MeterSpec, MeterStatus};

/// Type of the one condition a Meter carries.
pub const READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub mod reason {
    pub const PROVISIONED: &str = "Provisioned";
    pub const DECOMMISSIONED: &str = "Decommissioned";
    pub const HUB_NOT_READY: &str = "HubNotReady";
    pub const HUB_NOT_FOUND: &str = "HubNotFound";
    pub const HUB_UNAVAILABLE: &str = "HubUnavailable";
    pub const DUPLICATE_SERIAL: &str = "DuplicateSerial";
    pub const REJECTED: &str = "Rejected";
    pub const SERIAL_NUMBER_IMMUTABLE: &str = "SerialNumberImmutable";
}

/// First retry delay of the capped exponential backoff.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// `status.failures` stops counting here: 2 s · 2^8 is past the cap, so further failures would not
/// change the delay, and a saturated counter keeps a long outage from writing the status of every
/// Meter every five minutes.
pub const MAX_RECORDED_FAILURES: u32 = 8;
/// How often a `DuplicateSerial` Meter checks whether the Meter holding its serial is gone.
pub const DUPLICATE_RECHECK: Duration = Duration::from_secs(30);

/// The hub as the controller found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubCheck {
    /// `Ready=True` and it runs device-hub.
    Ready,
    /// Exists but cannot serve the device-hub API yet (message says why).
    NotReady { message: String },
    /// No such DeviceHub in the Meter's namespace, or it is being deleted.
    NotFound { message: String },
}

/// The device-hub facts a successful `PUT` (or batch item) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    /// `Provisioned` or `Decommissioned`, as device-hub reports it.
    pub state: String,
    pub provisioned_at: Option<String>,
}

/// What device-hub answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubResponse {
    /// `200`/`201`: the record as stored.
    Applied(DeviceRecord),
    /// `400`: the payload is not acceptable; retrying the same spec is pointless.
    Rejected { message: String },
    /// Transport error, timeout, `5xx` or another refusal that is not the Meter's fault.
    Unavailable { message: String },
}

/// Everything the state machine looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub spec: &'a MeterSpec,
    /// `metadata.generation` of the Meter.
    pub generation: Option<i64>,
    /// The current status (default when the Meter has none yet).
    pub status: &'a MeterStatus,
    pub hub: HubCheck,
    /// Name of an earlier Meter of the same hub with the same serial number, if any.
    pub duplicate_of: Option<&'a str>,
    /// Whether device-hub confirmed this generation recently, since the hub last became ready
    /// (the controller remembers its successful `PUT`s). A confirmed, provisioned Meter needs no call.
    pub confirmed: bool,
    /// device-hub's answer, once the controller made the call this machine asked for.
    pub response: Option<&'a HubResponse>,
    pub now: DateTime<Utc>,
    /// A number in `[0, 1)` spreading retries (randomness stays outside the pure function).
    pub jitter: f64,
    /// Period of the drift check of provisioned Meters.
    pub resync: Duration,
}

/// When to reconcile the Meter again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Only on a change of the Meter (or a hub becoming ready).
    AwaitChange,
    After(Duration),
}

/// The result: the status to hold and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: MeterStatus,
    /// Whether `status` differs from the input status (only then is it written).
    pub changed: bool,
    pub requeue: Requeue,
}

/// One step of the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// device-hub must be asked: `PUT` the spec, then call [`transition`] again with the answer.
    Call,
    /// Nothing (more) to ask: hold this status.
    Settle(Decision),
}

/// Capped exponential backoff: `2 s · 2^(failures-1)`, at most 5 minutes, then scaled by a jitter
/// factor in `[0.8, 1.2)` (still never above the cap, never below one second).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_CAP);
    let factor = 0.8 + 0.4 * unit(jitter);
    base.mul_f64(factor)
        .clamp(Duration::from_secs(1), BACKOFF_CAP)
}

/// `x` clamped to `[0, 1]`; NaN and infinities count as 0.5 (so `Duration::mul_f64` never panics).
fn unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Computes the next step.
pub fn transition(input: &Input<'_>) -> Transition {
    let old = input.status;
    let spec = input.spec;

    if let HubCheck::NotFound { message } = &input.hub {
        return Transition::Settle(retry(
            input,
            MeterPhase::Pending,
            reason::HUB_NOT_FOUND,
            message.clone(),
        ));
    }
    if let Some(provisioned) = old.provisioned_serial_number.as_deref() {
        if provisioned != spec.serial_number {
            let message = format!(
                "spec.serialNumber changed from {provisioned:?} to {:?}; the serial number of a provisioned meter \
                 cannot change: restore it, or delete this Meter and create a new one",
                spec.serial_number
            );
            return Transition::Settle(terminal(
                input,
                reason::SERIAL_NUMBER_IMMUTABLE,
                message,
                Requeue::AwaitChange,
            ));
        }
    }
    if let Some(other) = input.duplicate_of {
        let message = format!(
            "serial number {:?} is already used by Meter {other:?} of hub {:?}; delete one of them",
            spec.serial_number, spec.hub_ref.name
        );
        let requeue = Requeue::After(DUPLICATE_RECHECK.mul_f64(1.0 + 0.2 * unit(input.jitter)));
        return Transition::Settle(terminal(input, reason::DUPLICATE_SERIAL, message, requeue));
    }
    let current = old.observed_generation == input.generation;
    let ready_reason = find(&old.conditions, READY).map(|c| c.reason.as_str());
    if current
        && old.phase == MeterPhase::Failed
        && ready_reason == Some(reason::REJECTED)
        && input.response.is_none()
    {
        // device-hub refused exactly this spec: asking again changes nothing until the spec does.
        return Transition::Settle(unchanged(old, Requeue::AwaitChange));
    }
    let settled = matches!(
        old.phase,
        MeterPhase::Provisioned | MeterPhase::Decommissioned
    );
    if current && settled && input.response.is_none() {
        if input.confirmed {
            return Transition::Settle(unchanged(old, Requeue::After(input.resync)));
        }
        if input.hub != HubCheck::Ready {
            // Provisioned and nothing to change; the hub becoming ready again triggers a re-check.
            return Transition::Settle(unchanged(old, Requeue::After(input.resync)));
        }
    }
    if let HubCheck::NotReady { message } = &input.hub {
        return Transition::Settle(retry(
            input,
            MeterPhase::Pending,
            reason::HUB_NOT_READY,
            message.clone(),
        ));
    }
    let Some(response) = input.response else {
        return Transition::Call;
    };
    Transition::Settle(match response {
        HubResponse::Applied(record) => applied(input, record),
        HubResponse::Rejected { message } => terminal(
            input,
            reason::REJECTED,
            format!("device-hub rejected the meter: {message}"),
            Requeue::AwaitChange,
        ),
        HubResponse::Unavailable { message } => {
            let phase = if old.device_id.is_some() {
                MeterPhase::Provisioning
            } else {
                MeterPhase::Pending
            };
            retry(input, phase, reason::HUB_UNAVAILABLE, message.clone())
        }
    })
}

fn unchanged(old: &MeterStatus, requeue: Requeue) -> Decision {
    Decision {
        status: old.clone(),
        changed: false,
        requeue,
    }
}

fn condition(
    input: &Input<'_>,
    status: ConditionStatus,
    reason: &str,
    message: String,
) -> Vec<Condition> {
    let new = Condition {
        type_: READY.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: input.now,
        observed_generation: input.generation,
    };
    merge_conditions(&input.status.conditions, vec![new])
}

fn finish(input: &Input<'_>, status: MeterStatus, requeue: Requeue) -> Decision {
    Decision {
        changed: &status != input.status,
        status,
        requeue,
    }
}

/// A transient problem: count the failure and retry after the backoff.
fn retry(input: &Input<'_>, phase: MeterPhase, reason: &str, message: String) -> Decision {
    let old = input.status;
    let failures = old
        .failures
        .unwrap_or(0)
        .saturating_add(1)
        .min(MAX_RECORDED_FAILURES);
    let status = MeterStatus {
        observed_generation: input.generation,
        phase,
        failures: Some(failures),
        conditions: condition(input, ConditionStatus::False, reason, message),
        ..old.clone()
    };
    finish(
        input,
        status,
        Requeue::After(backoff(failures, input.jitter)),
    )
}

/// A problem only the user can fix: `Failed`, no failure counting.
fn terminal(input: &Input<'_>, reason: &str, message: String, requeue: Requeue) -> Decision {
    let status = MeterStatus {
        observed_generation: input.generation,
        phase: MeterPhase::Failed,
        failures: None,
        conditions: condition(input, ConditionStatus::False, reason, message),
        ..input.status.clone()
    };
    finish(input, status, requeue)
}

fn applied(input: &Input<'_>, record: &DeviceRecord) -> Decision {
    let decommissioned = record.state == "Decommissioned"
        || (record.state.is_empty() && input.spec.desired_state == DesiredState::Decommissioned);
    let (phase, reason, message) = if decommissioned {
        (
            MeterPhase::Decommissioned,
            reason::DECOMMISSIONED,
            format!(
                "device {} is decommissioned in device-hub (kept, no longer read)",
                record.device_id
            ),
        )
    } else {
        (
            MeterPhase::Provisioned,
            reason::PROVISIONED,
            format!("provisioned in device-hub as {}", record.device_id),
        )
    };
    let old = input.status;
    let status = MeterStatus {
        observed_generation: input.generation,
        phase,
        device_id: Some(record.device_id.clone()),
        provisioned_serial_number: Some(input.spec.serial_number.clone()),
        provisioned_at: record
            .provisioned_at
            .clone()
            .or_else(|| old.provisioned_at.clone()),
        hub_state: Some(record.state.clone()).filter(|s| !s.is_empty()),
        failures: None,
        conditions: condition(input, ConditionStatus::True, reason, message),
    };
    finish(input, status, Requeue::After(input.resync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::meter::HubRef;

    fn spec(serial: &str) -> MeterSpec {
        MeterSpec {
            hub_ref: HubRef {
                name: "demo".into(),
            },
            serial_number: serial.into(),
            manufacturer: "Landis+Gyr".into(),
            model: "E450".into(),
            protocol: "DLMS/COSEM".into(),
            hes_id: "hes-1".into(),
            location: None,
            desired_state: DesiredState::Active,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn input<'a>(spec: &'a MeterSpec, status: &'a MeterStatus) -> Input<'a> {
        Input {
            spec,
            generation: Some(1),
            status,
            hub: HubCheck::Ready,
            duplicate_of: None,
            confirmed: false,
            response: None,
            now: now(),
            jitter: 0.5,
            resync: Duration::from_secs(600),
        }
    }

    fn settle(t: Transition) -> Decision {
        match t {
            Transition::Settle(d) => d,
            Transition::Call => panic!("expected Settle, got Call"),
        }
    }

    fn ready(status: &MeterStatus) -> &Condition {
        find(&status.conditions, READY).expect("Ready condition")
    }

    fn applied_record() -> HubResponse {
        HubResponse::Applied(DeviceRecord {
            device_id: "dev-1".into(),
            state: "Provisioned".into(),
            provisioned_at: Some("2024-01-01T00:00:00Z".into()),
        })
    }

    fn provisioned(serial: &str) -> MeterStatus {
        let s = spec(serial);
        let empty = MeterStatus::default();
        let resp = applied_record();
        let i = Input {
            response: Some(&resp),
            ..input(&s, &empty)
        };
        settle(transition(&i)).status
    }

    #[test]
    fn new_meter_with_ready_hub_asks_device_hub() {
        let s = spec("SN1");
        let st = MeterStatus::default();
        assert_eq!(transition(&input(&s, &st)), Transition::Call);
    }

    #[test]
    fn pending_to_provisioned_on_success() {
        let s = spec("SN1");
        let st = MeterStatus {
            failures: Some(3),
            ..MeterStatus::default()
        };
        let resp = applied_record();
        let d = settle(transition(&Input {
            response: Some(&resp),
            ..input(&s, &st)
        }));
        assert!(d.changed);
        assert_eq!(d.status.phase, MeterPhase::Provisioned);
        assert_eq!(d.status.device_id.as_deref(), Some("dev-1"));
        assert_eq!(d.status.provisioned_serial_number.as_deref(), Some("SN1"));
        assert_eq!(
            d.status.provisioned_at.as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(d.status.hub_state.as_deref(), Some("Provisioned"));
        assert_eq!(d.status.failures, None);
        assert_eq!(d.status.observed_generation, Some(1));
        let c = ready(&d.status);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, reason::PROVISIONED)
        );
        assert_eq!(d.requeue, Requeue::After(Duration::from_secs(600)));
    }

    #[test]
    fn repeated_success_writes_nothing() {
        let s = spec("SN1");
        let st = provisioned("SN1");
        let resp = applied_record();
        let later = Input {
            response: Some(&resp),
            now: now() + chrono::Duration::hours(1),
            ..input(&s, &st)
        };
        let d = settle(transition(&later));
        assert!(
            !d.changed,
            "identical answer must not change the status: {:?}",
            d.status
        );
        assert_eq!(d.status, st);
    }

    #[test]
    fn confirmed_provisioned_meter_needs_no_call() {
        let s = spec("SN1");
        let st = provisioned("SN1");
        let d = settle(transition(&Input {
            confirmed: true,
            ..input(&s, &st)
        }));
        assert!(!d.changed);
        assert_eq!(d.requeue, Requeue::After(Duration::from_secs(600)));
        // Not confirmed (operator restart, resync, hub came back): re-assert with an idempotent PUT.
        assert_eq!(transition(&input(&s, &st)), Transition::Call);
    }

    #[test]
    fn spec_change_of_provisioned_meter_calls_again() {
        let s = spec("SN1");
        let st = provisioned("SN1");
        let i = Input {
            generation: Some(2),
            confirmed: true,
            ..input(&s, &st)
        };
        assert_eq!(transition(&i), Transition::Call);
    }

    #[test]
    fn hub_not_ready_is_pending_with_backoff() {
        let s = spec("SN1");
        let st = MeterStatus::default();
        let d = settle(transition(&Input {
            hub: HubCheck::NotReady {
                message: "DeviceHub demo is not Ready (ServicesNotReady)".into(),
            },
            ..input(&s, &st)
        }));
        assert!(d.changed);
        assert_eq!(d.status.phase, MeterPhase::Pending);
        assert_eq!(d.status.failures, Some(1));
        assert_eq!(ready(&d.status).reason, reason::HUB_NOT_READY);
        assert_eq!(d.requeue, Requeue::After(backoff(1, 0.5)));

        // Second round: failures grow, the delay doubles.
        let d2 = settle(transition(&Input {
            hub: HubCheck::NotReady {
                message: "DeviceHub demo is not Ready (ServicesNotReady)".into(),
            },
            ..input(&s, &d.status)
        }));
        assert_eq!(d2.status.failures, Some(2));
        assert_eq!(d2.requeue, Requeue::After(backoff(2, 0.5)));
        assert_eq!(
            ready(&d2.status).last_transition_time,
            ready(&d.status).last_transition_time
        );
    }

    #[test]
    fn long_outage_stops_writing_once_failures_saturate() {
        let s = spec("SN1");
        let mut st = MeterStatus::default();
        let hub = HubCheck::NotReady {
            message: "down".into(),
        };
        let mut writes = 0;
        for _ in 0..50 {
            let d = settle(transition(&Input {
                hub: hub.clone(),
                ..input(&s, &st)
            }));
            if d.changed {
                writes += 1;
            }
            st = d.status;
        }
        assert_eq!(writes, MAX_RECORDED_FAILURES as usize);
        assert_eq!(st.failures, Some(MAX_RECORDED_FAILURES));
    }

    #[test]
    fn provisioned_meter_stays_provisioned_while_hub_is_not_ready() {
        let s = spec("SN1");
        let st = provisioned("SN1");
        let d = settle(transition(&Input {
            hub: HubCheck::NotReady {
                message: "down".into(),
            },
            ..input(&s, &st)
        }));
        assert!(!d.changed);
        assert_eq!(d.status.phase, MeterPhase::Provisioned);
    }

    #[test]
    fn missing_hub_is_pending_hub_not_found() {
        let s = spec("SN1");
        let st = provisioned("SN1");
        let d = settle(transition(&Input {
            hub: HubCheck::NotFound {
                message: "DeviceHub demo not found in namespace park".into(),
            },
            ..input(&s, &st)
        }));
        assert!(d.changed);
        assert_eq!(d.status.phase, MeterPhase::Pending);
        let c = ready(&d.status);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, reason::HUB_NOT_FOUND)
        );
        assert!(matches!(d.requeue, Requeue::After(_)));
        // The device id is kept for reference.
        assert_eq!(d.status.device_id.as_deref(), Some("dev-1"));
    }

    #[test]
    fn duplicate_serial_fails_without_calling() {
        let s = spec("SN1");
        let st = MeterStatus::default();
        let d = settle(transition(&Input {
            duplicate_of: Some("meter-a"),
            ..input(&s, &st)
        }));
        assert_eq!(d.status.phase, MeterPhase::Failed);
        let c = ready(&d.status);
        assert_eq!(c.reason, reason::DUPLICATE_SERIAL);
        assert!(c.message.contains("meter-a"), "{}", c.message);
        let Requeue::After(after) = d.requeue else {
            panic!("duplicate must re-check")
        };
        assert!(after >= DUPLICATE_RECHECK && after <= DUPLICATE_RECHECK.mul_f64(1.2));
        // Re-check while still duplicate: no write.
        let again = settle(transition(&Input {
            duplicate_of: Some("meter-a"),
            ..input(&s, &d.status)
        }));
        assert!(!again.changed);
        // The other Meter is gone: call.
        assert_eq!(transition(&input(&s, &d.status)), Transition::Call);
    }

    #[test]
    fn rejected_is_failed_and_not_retried_until_the_spec_changes() {
        let s = spec("SN1");
        let st = MeterStatus::default();
        let resp = HubResponse::Rejected {
            message: "hesId must not be empty".into(),
        };
        let d = settle(transition(&Input {
            response: Some(&resp),
            ..input(&s, &st)
        }));
        assert_eq!(d.status.phase, MeterPhase::Failed);
        let c = ready(&d.status);
        assert_eq!(c.reason, reason::REJECTED);
        assert!(c.message.contains("hesId must not be empty"));
        assert_eq!(d.requeue, Requeue::AwaitChange);
        // Same generation: no call, no write.
        let same = settle(transition(&input(&s, &d.status)));
        assert!(!same.changed);
        assert_eq!(same.requeue, Requeue::AwaitChange);
        // New generation: try again.
        let next = Input {
            generation: Some(2),
            ..input(&s, &d.status)
        };
        assert_eq!(transition(&next), Transition::Call);
    }

    #[test]
    fn unavailable_is_pending_for_new_and_provisioning_for_known_meters() {
        let s = spec("SN1");
        let resp = HubResponse::Unavailable {
            message: "connect to demo-device-hub.park.svc:8443: connection refused".into(),
        };
        let st = MeterStatus::default();
        let d = settle(transition(&Input {
            response: Some(&resp),
            ..input(&s, &st)
        }));
        assert_eq!(d.status.phase, MeterPhase::Pending);
        assert_eq!(ready(&d.status).reason, reason::HUB_UNAVAILABLE);
        assert_eq!(d.status.failures, Some(1));
        assert_eq!(d.requeue, Requeue::After(backoff(1, 0.5)));

        let known = provisioned("SN1");
        let d = settle(transition(&Input {
            generation: Some(2),
            response: Some(&resp),
            ..input(&s, &known)
        }));
        assert_eq!(d.status.phase, MeterPhase::Provisioning);
        assert_eq!(d.status.device_id.as_deref(), Some("dev-1"));
        assert_eq!(ready(&d.status).status, ConditionStatus::False);
    }

    #[test]
    fn serial_number_is_immutable_after_provisioning() {
        let s = spec("SN2");
        let st = provisioned("SN1");
        let d = settle(transition(&Input {
            generation: Some(2),
            ..input(&s, &st)
        }));
        assert_eq!(d.status.phase, MeterPhase::Failed);
        let c = ready(&d.status);
        assert_eq!(c.reason, reason::SERIAL_NUMBER_IMMUTABLE);
        assert!(c.message.contains("SN1") && c.message.contains("SN2"));
        assert_eq!(d.status.provisioned_serial_number.as_deref(), Some("SN1"));
        assert_eq!(d.requeue, Requeue::AwaitChange);
        // Restoring the serial recovers.
        let restored = spec("SN1");
        let back = Input {
            generation: Some(3),
            ..input(&restored, &d.status)
        };
        assert_eq!(transition(&back), Transition::Call);
    }

    #[test]
    fn decommissioned_state_is_reported() {
        let mut s = spec("SN1");
        s.desired_state = DesiredState::Decommissioned;
        let st = provisioned("SN1");
        let resp = HubResponse::Applied(DeviceRecord {
            device_id: "dev-1".into(),
            state: "Decommissioned".into(),
            provisioned_at: Some("2024-01-01T00:00:00Z".into()),
        });
        let d = settle(transition(&Input {
            generation: Some(2),
            response: Some(&resp),
            ..input(&s, &st)
        }));
        assert_eq!(d.status.phase, MeterPhase::Decommissioned);
        let c = ready(&d.status);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, reason::DECOMMISSIONED)
        );
        assert_eq!(d.status.hub_state.as_deref(), Some("Decommissioned"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(5, 0.5), Duration::from_secs(32));
        assert_eq!(backoff(9, 0.5), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_CAP.mul_f64(0.8));
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_CAP);
        // Jitter spreads within ±20 %.
        assert_eq!(backoff(3, 0.0), Duration::from_millis(6400));
        assert_eq!(
            backoff(3, 0.999_999),
            Duration::from_secs(8).mul_f64(0.8 + 0.4 * 0.999_999)
        );
        assert!(backoff(0, 0.0) >= Duration::from_secs(1));
        assert!(backoff(1, f64::NAN) >= Duration::from_secs(1));
    }
}
