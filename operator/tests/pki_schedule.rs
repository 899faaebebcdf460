//! Schedule: Go-style durations, settings validation, jittered renewal time, next action.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use mpm_operator::pki::{
    format_duration, next_action, parse_duration, renewal_time, CertInfo, CertificateSettings,
    NextAction, RenewReason,
};
use proptest::prelude::*;

const H: u64 = 3600;
const M: u64 = 60;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

#[test]
fn parses_go_durations() {
    let cases = [
        ("24h", 24 * H),
        ("90m", 90 * M),
        ("1h30m", H + 30 * M),
        ("3m", 3 * M),
        ("8760h", 8760 * H),
        ("45s", 45),
        ("1h0m0s", H),
        ("0", 0),
        ("2h3m4s", 2 * H + 3 * M + 4),
    ];
    for (input, secs) in cases {
        assert_eq!(
            parse_duration(input).unwrap(),
            Duration::from_secs(secs),
            "{input}"
        );
    }
    assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(90 * M));
    assert_eq!(
        parse_duration("1500ms").unwrap(),
        Duration::from_millis(1500)
    );
}

#[test]
fn rejects_bad_durations_with_clear_errors() {
    for (input, needle) in [
        ("", "empty"),
        ("24", "missing unit"),
        ("1d", "unknown unit"),
        ("h", "expected a number"),
        ("-5m", "expected a number"),
        ("5 m", "unknown unit"),
        ("1h30", "missing unit"),
        ("99999999999999999999999h", "too large"),
    ] {
        let err = parse_duration(input).unwrap_err();
        assert_eq!(err.reason(), "InvalidDuration", "{input}");
        assert!(err.to_string().contains(needle), "{input}: {err}");
        assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
    }
}

#[test]
fn formats_durations() {
    assert_eq!(format_duration(Duration::from_secs(24 * H)), "24h");
    assert_eq!(format_duration(Duration::from_secs(H + 30 * M)), "1h30m");
    assert_eq!(format_duration(Duration::from_secs(10 * M)), "10m");
    assert_eq!(format_duration(Duration::ZERO), "0s");
    for s in ["24h", "1h30m", "3m", "8760h", "45s"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
}

#[test]
fn settings_defaults() {
    let s = CertificateSettings::default();
    assert_eq!(s.duration, Duration::from_secs(24 * H));
    assert_eq!(s.renew_before, Duration::from_secs(8 * H));
    assert_eq!(s.ca_duration, Duration::from_secs(8760 * H));
    assert_eq!(CertificateSettings::new(None, None, None).unwrap(), s);
    // renewBefore defaults to a third of a custom duration (renewal at 2/3).
    let s = CertificateSettings::from_spec(Some("90m"), None, None).unwrap();
    assert_eq!(s.renew_before, Duration::from_secs(30 * M));
    s.validate().unwrap();
}

#[test]
fn settings_validation_reasons() {
    let cases = [
        ((Some("3m"), None, None), "DurationTooShort"),
        ((Some("9m59s"), None, None), "DurationTooShort"),
        ((Some("1h"), Some("1h"), None), "RenewBeforeTooLarge"),
        ((Some("1h"), Some("2h"), None), "RenewBeforeTooLarge"),
        ((Some("1h"), Some("0s"), None), "RenewBeforeNotPositive"),
        ((Some("24h"), None, Some("48h")), "CADurationTooShort"),
        ((Some("24x"), None, None), "InvalidDuration"),
    ];
    for ((d, rb, ca), reason) in cases {
        let err = CertificateSettings::from_spec(d, rb, ca).unwrap_err();
        assert_eq!(err.reason(), reason, "{d:?} {rb:?} {ca:?}: {err}");
    }
    assert!(CertificateSettings::from_spec(Some("10m"), Some("1m"), Some("30m")).is_ok());
    let err = CertificateSettings::from_spec(Some("3m"), None, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate duration 3m is shorter than the minimum 10m"
    );
}

#[test]
fn renewal_time_is_deterministic_and_earlier_than_base() {
    let nb = t0();
    let na = nb + TimeDelta::hours(24);
    let rb = Duration::from_secs(8 * H);
    let base = na - TimeDelta::hours(8);
    let a = renewal_time(nb, na, rb, "demo-device-hub-tls");
    assert_eq!(a, renewal_time(nb, na, rb, "demo-device-hub-tls"));
    assert!(a <= base && a >= base - TimeDelta::minutes(48), "{a}");
}

#[test]
fn jitter_spreads_a_fleet() {
    let nb = t0();
    let na = nb + TimeDelta::hours(24);
    let rb = Duration::from_secs(8 * H);
    let base = na - TimeDelta::hours(8);
    let times: Vec<_> = (0..1000)
        .map(|i| renewal_time(nb, na, rb, &format!("hub-{i}-svc-tls")))
        .collect();
    let earliest = *times.iter().min().unwrap();
    let latest = *times.iter().max().unwrap();
    assert!(earliest >= base - TimeDelta::minutes(48));
    assert!(latest <= base);
    // Spread over most of the 48-minute window, and no big cluster.
    assert!(latest - earliest > TimeDelta::minutes(40));
    let mut distinct = times.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 990);
}

#[test]
fn renew_before_not_shorter_than_lifetime_falls_back_to_two_thirds() {
    let nb = t0();
    let na = nb + TimeDelta::hours(3);
    let at = renewal_time(nb, na, Duration::from_secs(5 * H), "k");
    let two_thirds = nb + TimeDelta::hours(2);
    assert!(at <= two_thirds && at >= two_thirds - TimeDelta::minutes(6));
    // Degenerate certificate.
    assert_eq!(renewal_time(na, nb, Duration::from_secs(H), "k"), na);
}

fn info(nb: DateTime<Utc>, na: DateTime<Utc>) -> CertInfo {
    CertInfo {
        serial_hex: "01".into(),
        not_before: nb,
        not_after: na,
        uri_sans: vec![],
        dns_sans: vec![],
        is_ca: false,
        fingerprint: String::new(),
        subject_key_id: None,
        authority_key_id: None,
        issuer_fingerprint: None,
        pem_certificates: 1,
    }
}

#[test]
fn next_action_decisions() {
    let s = CertificateSettings::default();
    let issued = t0();
    let cert = info(
        issued - TimeDelta::minutes(5),
        issued + TimeDelta::hours(24),
    );
    let at = renewal_time(cert.not_before, cert.not_after, s.renew_before, "x-tls");
    assert_eq!(
        next_action(issued, &cert, &s, "x-tls"),
        NextAction::WaitUntil(at)
    );
    assert_eq!(
        next_action(at - TimeDelta::seconds(1), &cert, &s, "x-tls"),
        NextAction::WaitUntil(at)
    );
    assert_eq!(
        next_action(at, &cert, &s, "x-tls"),
        NextAction::Renew(RenewReason::DueForRenewal)
    );
    assert_eq!(
        next_action(cert.not_after, &cert, &s, "x-tls"),
        NextAction::Renew(RenewReason::Expired)
    );
    // A certificate from the future (clock went back).
    let future = info(issued + TimeDelta::hours(1), issued + TimeDelta::hours(25));
    assert_eq!(
        next_action(issued, &future, &s, "x-tls"),
        NextAction::Renew(RenewReason::NotYetValid)
    );
    // Settings shortened from 24h to 1h: the 24h certificate is replaced.
    let short = CertificateSettings::from_spec(Some("1h"), None, None).unwrap();
    assert_eq!(
        next_action(issued, &cert, &short, "x-tls"),
        NextAction::Renew(RenewReason::SettingsChanged)
    );
    assert_eq!(RenewReason::DueForRenewal.reason(), "DueForRenewal");
}

proptest! {
    #[test]
    fn jitter_bounds_hold(
        lifetime_min in 10u64..(400 * 24 * 60),
        rb_frac in 1u64..100,
        key in "[a-z0-9-]{1,40}",
        start in 0i64..4_000_000_000,
    ) {
        let nb = DateTime::from_timestamp(start, 0).unwrap();
        let lifetime = TimeDelta::minutes(lifetime_min as i64);
        let na = nb + lifetime;
        let rb = Duration::from_secs(lifetime_min * 60 * rb_frac / 100).max(Duration::from_secs(1));
        let at = renewal_time(nb, na, rb, &key);
        let rb_d = TimeDelta::from_std(rb).unwrap();
        let base = na - rb_d;
        prop_assert!(at <= base, "later than base");
        prop_assert!(at >= base - rb_d / 10 - TimeDelta::milliseconds(1), "more than 10% earlier");
        prop_assert!(at >= nb);
        prop_assert_eq!(at, renewal_time(nb, na, rb, &key));
    }

    #[test]
    fn parse_format_roundtrip(h in 0u64..10_000, m in 0u64..60, s in 0u64..60) {
        let d = Duration::from_secs(h * 3600 + m * 60 + s);
        prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
}
