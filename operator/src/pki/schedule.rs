//! Certificate settings, Go-style durations and the renewal schedule (pure).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest as _, Sha256};

use super::error::{PkiError, Result};
use super::inspect::CertInfo;
use super::leaf::DEFAULT_BACKDATE;

/// Smallest accepted leaf lifetime.
pub const MIN_DURATION: Duration = Duration::from_secs(10 * 60);
/// Default leaf lifetime.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Default CA lifetime.
pub const DEFAULT_CA_DURATION: Duration = super::ca::DEFAULT_CA_VALIDITY;
/// Jitter spreads renewals up to this fraction (1/10) of `renewBefore` earlier.
pub const JITTER_DIVISOR: u32 = 10;

/// Lifetimes from the DeviceHub spec, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateSettings {
    /// Leaf lifetime (`duration`), at least [`MIN_DURATION`].
    pub duration: Duration,
    /// Renew this long before `notAfter` (`renewBefore`), `0 < renewBefore < duration`.
    pub renew_before: Duration,
    /// CA lifetime (`caDuration`), at least 3 x `duration`.
    pub ca_duration: Duration,
}

impl Default for CertificateSettings {
    /// 24h leaves renewed after 2/3 of their lifetime (renewBefore 8h), one-year CA.
    fn default() -> Self {
        Self {
            duration: DEFAULT_DURATION,
            renew_before: DEFAULT_DURATION / 3,
            ca_duration: DEFAULT_CA_DURATION,
        }
    }
}

impl CertificateSettings {
    /// Builds settings from optional values: `duration` defaults to 24h, `renew_before` to
    /// `duration / 3` (renewal at 2/3 of the lifetime), `ca_duration` to 8760h; then validates.
    pub fn new(
        duration: Option<Duration>,
        renew_before: Option<Duration>,
        ca_duration: Option<Duration>,
    ) -> Result<Self> {
        let duration = duration.unwrap_or(DEFAULT_DURATION);
        let settings = Self {
            duration,
            renew_before: renew_before.unwrap_or(duration / 3),
            ca_duration: ca_duration.unwrap_or(DEFAULT_CA_DURATION),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Same as [`CertificateSettings::new`] from Go duration strings (`"24h"`, `"90m"`, ...).
    pub fn from_spec(
        duration: Option<&str>,
        renew_before: Option<&str>,
        ca_duration: Option<&str>,
    ) -> Result<Self> {
        Self::new(
            duration.map(parse_duration).transpose()?,
            renew_before.map(parse_duration).transpose()?,
            ca_duration.map(parse_duration).transpose()?,
        )
    }

    /// Checks `duration >= 10m`, `renewBefore > 0`, `renewBefore < duration`,
    /// `caDuration >= 3 x duration`.
    pub fn validate(&self) -> Result<()> {
        if self.duration < MIN_DURATION {
            return Err(PkiError::DurationTooShort {
                actual: format_duration(self.duration),
                minimum: format_duration(MIN_DURATION),
            });
        }
        if self.renew_before.is_zero() {
            return Err(PkiError::RenewBeforeNotPositive);
        }
        if self.renew_before >= self.duration {
            return Err(PkiError::RenewBeforeTooLarge {
                renew_before: format_duration(self.renew_before),
                duration: format_duration(self.duration),
            });
        }
        let minimum = self.duration.saturating_mul(3);
        if self.ca_duration < minimum {
            return Err(PkiError::CaDurationTooShort {
                ca_duration: format_duration(self.ca_duration),
                minimum: format_duration(minimum),
            });
        }
        Ok(())
    }
}

/// Parses a Go-style duration: one or more `<number><unit>` with units `h`, `m`, `s` (and `ms`),
/// numbers may have a decimal fraction (`"1.5h"`); `"0"` alone is zero. Examples: `"24h"`,
/// `"90m"`, `"1h30m"`, `"3m"`, `"8760h"`. Signs, spaces and other units are rejected.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let err = |detail| PkiError::InvalidDuration {
        input: input.to_owned(),
        detail,
    };
    if input.is_empty() {
        return Err(err("empty duration"));
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &input[start..i];
        let mut frac_part = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fstart = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &input[fstart..i];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err(
                "expected a number (durations look like 24h, 90m, 1h30m, 45s)",
            ));
        }
        let ustart = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
            i += 1;
        }
        let unit_nanos: u128 = match &input[ustart..i] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "" => return Err(err("missing unit after number (use h, m or s)")),
            _ => return Err(err("unknown unit (use h, m or s)")),
        };
        let too_large = || err("duration too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut value = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(18);
            let frac: u128 = frac_part[..digits].parse().map_err(|_| too_large())?;
            let scale = 10u128.pow(digits as u32);
            value = value
                .checked_add(frac * unit_nanos / scale)
                .ok_or_else(too_large)?;
        }
        total_nanos = total_nanos.checked_add(value).ok_or_else(too_large)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("duration too large"))?;
    // Keep durations representable as chrono deltas (about 292 years).
    if secs > i64::MAX as u64 / 1_000 {
        return Err(err("duration too large"));
    }
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration compactly in Go units: `24h`, `1h30m`, `90s`, `1m0.5s` → `1m500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s, ms) = (secs / 3600, (secs / 60) % 60, secs % 60, d.subsec_millis());
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// Base time is `not_after - renew_before` (if `renew_before` is not shorter than the lifetime,
/// `renew_before = lifetime / 3`, i.e. renewal at 2/3 of the lifetime). A deterministic jitter
/// derived from SHA-256 of `jitter_key` (e.g. the Secret name) moves it up to
/// `renew_before / 10` EARLIER, never later, and never before `not_before`. The result depends
/// only on the arguments, so an operator restart does not change the schedule, while a fleet of
/// Secrets does not renew in one burst.
pub fn renewal_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before: Duration,
    jitter_key: &str,
) -> DateTime<Utc> {
    let lifetime = not_after - not_before;
    if lifetime <= TimeDelta::zero() {
        return not_before;
    }
    let mut rb = delta(renew_before);
    if rb >= lifetime || rb <= TimeDelta::zero() {
        rb = lifetime / 3;
    }
    let base = not_after - rb;
    let max_jitter_ms = (rb.num_milliseconds() / i64::from(JITTER_DIVISOR)).max(0) as u64;
    let digest = Sha256::digest(jitter_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let jitter_ms = u64::from_be_bytes(first) % (max_jitter_ms + 1);
    let jitter = TimeDelta::milliseconds(i64::try_from(jitter_ms).unwrap_or(0));
    (base - jitter).max(not_before)
}

/// Why a certificate must be renewed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewReason {
    /// The renewal time has passed.
    DueForRenewal,
    /// `notAfter` has passed.
    Expired,
    /// `notBefore` lies further in the future than the backdating allows (clock jumped).
    NotYetValid,
    /// The certificate lives longer than the configured `duration` (settings were shortened).
    SettingsChanged,
}

impl RenewReason {
    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RenewReason::DueForRenewal => "DueForRenewal",
            RenewReason::Expired => "Expired",
            RenewReason::NotYetValid => "NotYetValid",
            RenewReason::SettingsChanged => "SettingsChanged",
        }
    }
}

/// What to do with an existing (otherwise matching) leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAction {
    /// Issue a new certificate now.
    Renew(RenewReason),
    /// Nothing to do; requeue at this time.
    WaitUntil(DateTime<Utc>),
}

/// Decides whether the certificate described by `cert` must be renewed at `now`, using the
/// jittered [`renewal_time`] keyed by `jitter_key` (use the Secret name).
pub fn next_action(
    now: DateTime<Utc>,
    cert: &CertInfo,
    settings: &CertificateSettings,
    jitter_key: &str,
) -> NextAction {
    if now >= cert.not_after {
        return NextAction::Renew(RenewReason::Expired);
    }
    if cert.not_before > now + delta(DEFAULT_BACKDATE) {
        return NextAction::Renew(RenewReason::NotYetValid);
    }
    let allowed = delta(settings.duration) + delta(DEFAULT_BACKDATE) + TimeDelta::minutes(1);
    if cert.not_after - cert.not_before > allowed {
        return NextAction::Renew(RenewReason::SettingsChanged);
    }
    let at = renewal_time(
        cert.not_before,
        cert.not_after,
        settings.renew_before,
        jitter_key,
    );
    if now >= at {
        NextAction::Renew(RenewReason::DueForRenewal)
    } else {
        NextAction::WaitUntil(at)
    }
}
