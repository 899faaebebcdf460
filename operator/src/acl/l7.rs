//! The L7 (HTTP) rules of `allowed-peers.json` (contract: docs/contracts.md, "allowed-peers.json"):
//! which methods and path prefixes are valid, and how a prefix matches a path (by whole segments).
//!
//! The services enforce the same rules (`services/src/acl.rs`); both test suites check the shared
//! case table `docs/allowed-peers-cases.json`.

use std::collections::BTreeSet;

/// The methods a rule may name (uppercase, compared exactly).
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Longest path prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;
/// Most path prefixes in one rule.
pub const MAX_PREFIXES: usize = 64;

/// JSON-schema pattern of a valid prefix (RE2 and ECMA compatible, no look-around): `/`, then
/// segments of printable ASCII without space, `%`, `?`, `#`, `/`, none of them empty, `.` or `..`,
/// separated by `/`, with an optional trailing `/`.
pub const PREFIX_PATTERN: &str = concat!(
    r"^/((\.{0,2}[\x21\x22\x24\x26-\x2d\x30-\x3e\x40-\x7e]|\.{3,})",
    r"[\x21\x22\x24\x26-\x2e\x30-\x3e\x40-\x7e]*/)*",
    r"((\.{0,2}[\x21\x22\x24\x26-\x2d\x30-\x3e\x40-\x7e]|\.{3,})",
    r"[\x21\x22\x24\x26-\x2e\x30-\x3e\x40-\x7e]*)?$"
);

/// Checks one method name; the reason on error.
pub fn validate_method(method: &str) -> Result<(), String> {
    if METHODS.contains(&method) {
        Ok(())
    } else {
        Err(format!(
            "method {method:?} is not one of {}",
            METHODS.join(", ")
        ))
    }
}

/// Checks one path prefix: starts with `/`, at most [`MAX_PREFIX_LEN`] bytes of printable ASCII
/// without space, `%`, `?`, `#`, no empty (`//`), `.` or `..` segment. The reason on error.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "prefix is {} bytes long, more than {MAX_PREFIX_LEN}",
            prefix.len()
        ));
    }
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(format!("prefix {prefix:?} does not start with /"));
    };
    if let Some(c) = prefix
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '%' | '?' | '#'))
    {
        return Err(format!(
            "prefix {prefix:?} contains {c:?} (only printable ASCII without space, %, ?, #)"
        ));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err(format!("prefix {prefix:?} has an empty segment (//)"));
        }
        if matches!(*seg, "." | "..") {
            return Err(format!("prefix {prefix:?} has a {seg:?} segment"));
        }
    }
    Ok(())
}

/// Checks a request path as the services do: starts with `/`, no empty, `.` or `..` segment, no
/// percent-encoded `/`, `.` or `%`.
pub fn validate_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path does not start with /");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err("the path has an empty segment (//)");
        }
        if matches!(*seg, "." | "..") {
            return Err("the path has a . or .. segment");
        }
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let code = bytes.get(i + 1..i + 3).map(|h| h.to_ascii_uppercase());
            if matches!(code.as_deref(), Some(b"2F") | Some(b"2E") | Some(b"25")) {
                return Err("the path has a percent-encoded /, . or %");
            }
        }
    }
    Ok(())
}

/// Whether a valid `prefix` admits a valid `path`, by whole segments: `/a/b` admits `/a/b` and
/// `/a/b/...`, not `/a/bc`; a prefix ending in `/` admits every path starting with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

/// Whether every path `inner` admits is admitted by `outer`. Every path `inner` admits starts with
/// `inner` itself, so this holds exactly when `outer` admits the path `inner`.
pub fn prefix_covers(outer: &str, inner: &str) -> bool {
    prefix_matches(outer, inner)
}

/// One L7 grant: any of `methods` (`None`: any) on any path under any of `path_prefixes`
/// (`None`: any path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// Allowed methods; `None`: any.
    pub methods: Option<BTreeSet<String>>,
    /// Allowed path prefixes; `None`: any path.
    pub path_prefixes: Option<BTreeSet<String>>,
}

impl Grant {
    /// Any method, any path.
    pub fn unrestricted() -> Self {
        Self {
            methods: None,
            path_prefixes: None,
        }
    }

    /// Whether the grant admits one request (path validity included).
    pub fn allows(&self, method: &str, path: &str) -> bool {
        validate_path(path).is_ok()
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
            && self
                .path_prefixes
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| prefix_matches(p, path)))
    }

    /// Whether everything `other` admits, `self` admits too (methods subset AND every prefix of
    /// `other` covered by one of `self`).
    pub fn covers(&self, other: &Grant) -> bool {
        let methods = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.is_subset(a),
        };
        let paths = match (&self.path_prefixes, &other.path_prefixes) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b
                .iter()
                .all(|inner| a.iter().any(|o| prefix_covers(o, inner))),
        };
        methods && paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Cases {
        methods: Vec<MethodCase>,
        prefixes: Vec<PrefixCase>,
        paths: Vec<PathCase>,
        matches: Vec<MatchCase>,
    }
    #[derive(Deserialize)]
    struct MethodCase {
        method: String,
        valid: bool,
    }
    #[derive(Deserialize)]
    struct PrefixCase {
        prefix: String,
        valid: bool,
    }
    #[derive(Deserialize)]
    struct PathCase {
        path: String,
        valid: bool,
    }
    #[derive(Deserialize)]
    struct MatchCase {
        prefix: String,
        path: String,
        matches: bool,
    }

    /// The case table shared with the services' tests (docs/allowed-peers-cases.json); the schema
    /// pattern agrees with the validator on every prefix.
    #[test]
    fn shared_case_table() {
        let text = include_str!("../../../docs/allowed-peers-cases.json");
        let cases: Cases = serde_json::from_str(text).expect("case table");
        let pattern = regex::Regex::new(PREFIX_PATTERN).expect("pattern");
        for c in &cases.methods {
            assert_eq!(
                validate_method(&c.method).is_ok(),
                c.valid,
                "{:?}",
                c.method
            );
        }
        for c in &cases.prefixes {
            assert_eq!(
                validate_prefix(&c.prefix).is_ok(),
                c.valid,
                "{:?}",
                c.prefix
            );
            let by_schema = pattern.is_match(&c.prefix) && c.prefix.len() <= MAX_PREFIX_LEN;
            assert_eq!(by_schema, c.valid, "schema pattern on {:?}", c.prefix);
        }
        for c in &cases.paths {
            assert_eq!(validate_path(&c.path).is_ok(), c.valid, "{:?}", c.path);
            assert_eq!(Grant::unrestricted().allows("GET", &c.path), c.valid);
        }
        for c in &cases.matches {
            let g = Grant {
                methods: None,
                path_prefixes: Some(BTreeSet::from([c.prefix.clone()])),
            };
            assert_eq!(
                g.allows("GET", &c.path),
                c.matches,
                "{:?} vs {:?}",
                c.prefix,
                c.path
            );
        }
    }

    #[test]
    fn covers_is_by_segment_and_per_dimension() {
        let g = |m: Option<&[&str]>, p: Option<&[&str]>| Grant {
            methods: m.map(|m| m.iter().map(|s| s.to_string()).collect()),
            path_prefixes: p.map(|p| p.iter().map(|s| s.to_string()).collect()),
        };
        let rule = g(Some(&["GET"]), Some(&["/v1/meters/SN-1"]));
        assert!(rule.covers(&g(Some(&["GET"]), Some(&["/v1/meters/SN-1/x"]))));
        assert!(!rule.covers(&g(Some(&["GET"]), Some(&["/v1/meters/SN-10"]))));
        assert!(!rule.covers(&g(Some(&["GET", "DELETE"]), Some(&["/v1/meters/SN-1"]))));
        assert!(!rule.covers(&g(None, Some(&["/v1/meters/SN-1"]))));
        assert!(!rule.covers(&g(Some(&["GET"]), None)));
        assert!(Grant::unrestricted().covers(&rule));
        assert!(g(Some(&["GET"]), Some(&["/v1/"]))
            .covers(&g(Some(&["GET"]), Some(&["/v1/a", "/v1/b/"]))));
        assert!(!g(Some(&["GET"]), Some(&["/v1/"])).covers(&g(Some(&["GET"]), Some(&["/v1"]))));
    }
}
