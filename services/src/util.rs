//! Small helpers shared by every module.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 3339 in UTC with a `Z` suffix and whole seconds, as in contracts.md.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 3339 in UTC with milliseconds: fixed width, so it sorts lexicographically.
pub fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp into UTC.
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// A random identifier shaped like a UUID v4.
pub fn uuid_like() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
}

impl TraceContext {
    /// A new root context.
    pub fn new_root() -> Self {
        let t: [u8; 16] = rand::rng().random();
        let p: [u8; 8] = rand::rng().random();
        Self {
            trace_id: hex::encode(t),
            parent_id: hex::encode(p),
            flags: "01".to_string(),
        }
    }

    /// Parses a `traceparent` header; `None` when malformed.
    pub fn parse(header: &str) -> Option<Self> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        if parts.len() < 4 {
            return None;
        }
        let hex_of = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        let (version, trace_id, parent_id, flags) = (parts[0], parts[1], parts[2], parts[3]);
        if !hex_of(version, 2) || version == "ff" || (version == "00" && parts.len() != 4) {
            return None;
        }
        if !hex_of(trace_id, 32) || trace_id.bytes().all(|c| c == b'0') {
            return None;
        }
        if !hex_of(parent_id, 16) || parent_id.bytes().all(|c| c == b'0') || !hex_of(flags, 2) {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            flags: flags.to_string(),
        })
    }

    /// The context parsed from a header or a new root.
    pub fn from_header_or_new(header: Option<&str>) -> Self {
        header.and_then(Self::parse).unwrap_or_else(Self::new_root)
    }

    /// A child context for an outgoing call: same trace, new span id.
    pub fn child(&self) -> Self {
        let p: [u8; 8] = rand::rng().random();
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: hex::encode(p),
            flags: self.flags.clone(),
        }
    }

    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_roundtrip_and_rejects_garbage() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = TraceContext::parse(h).expect("valid header");
        assert_eq!(tc.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.header_value(), h);
        let child = tc.child();
        assert_eq!(child.trace_id, tc.trace_id);
        assert_ne!(child.parent_id, tc.parent_id);
        assert!(TraceContext::parse("00-zz-00f067aa0ba902b7-01").is_none());
        assert!(
            TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .is_none()
        );
        let fresh = TraceContext::from_header_or_new(Some("nonsense"));
        assert!(TraceContext::parse(&fresh.header_value()).is_some());
    }

    #[test]
    fn uuid_like_shape() {
        let u = uuid_like();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
    }
}
