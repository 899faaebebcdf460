//! `allowed-peers.json` (contract: allowed-peers.json): which peer identity may call which method and
//! path.

use serde::{Deserialize, Serialize};

/// Largest allowed-peers.json accepted (it is read from a mounted file).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most entries in `peers`.
pub const MAX_PEERS: usize = 4096;
/// Most prefixes in one entry.
pub const MAX_PREFIXES: usize = 64;
/// Longest prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 256;
/// The methods an entry may name (uppercase, compared exactly).
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// One grant: `spiffe_id` may use any of `methods` on any path under any of `path_prefixes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerRule {
    pub spiffe_id: String,
    /// Absent: any method. Present: non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Absent: any path. Present: non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefixes: Option<Vec<String>>,
}

/// The parsed file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedPeers {
    pub version: u32,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub peers: Vec<PeerRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("allowed-peers.json has {0} bytes, more than the limit of {MAX_FILE_BYTES}")]
    TooLarge(usize),
    #[error("allowed-peers.json is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("allowed-peers.json has unsupported version {0} (expected 1)")]
    Version(u32),
    #[error("allowed-peers.json has {0} peers, more than the limit of {MAX_PEERS}")]
    TooManyPeers(usize),
    #[error("allowed-peers.json peer #{0} has a spiffeId that is not a valid SPIFFE ID")]
    BadPeer(usize),
    #[error("allowed-peers.json peer #{index} field {field}: {reason}")]
    BadField {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

/// Checks one method name (contract: allowed-peers.json).
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

/// Checks one path prefix (contract: allowed-peers.json): starts with `/`, at most
/// [`MAX_PREFIX_LEN`] bytes of printable ASCII without space, `%`, `?`, `#`, no empty, `.` or `..`
/// segment.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "prefix is {} bytes long, more than {MAX_PREFIX_LEN}",
            prefix.len()
        ));
    }
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} does not start with /"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '%' | '?' | '#'))
    {
        return Err(format!(
            "prefix {prefix:?} contains {c:?} (only printable ASCII without space, %, ?, #)"
        ));
    }
    let segments: Vec<&str> = prefix[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        // Only the last segment may be empty: a trailing `/` (or the prefix `/`).
        if seg.is_empty() && i != last {
            return Err(format!("prefix {prefix:?} has an empty segment (//)"));
        }
        if matches!(*seg, "." | "..") {
            return Err(format!("prefix {prefix:?} has a {seg:?} segment"));
        }
    }
    Ok(())
}

/// Checks a request path (without query): starts with `/`, no empty segment (`//`), no `.` or
/// `..` segment, no percent-encoded `/`, `.` or `%`. Such a path is refused for every caller so
/// that no spelling of a path can step outside a prefix.
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

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The path could step outside a prefix ([`validate_path`]); refused for every caller.
    MalformedPath(&'static str),
    /// The peer is not in the list at all.
    UnknownPeer,
    /// The peer is listed, but not for this method.
    MethodNotAllowed,
    /// The peer is listed, but not for this path.
    PathNotAllowed,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The message for the `403` body, naming the peer (and, for a batch endpoint, the single call
    /// it was checked as).
    pub fn message(&self, peer: &str, method: &str, path: &str) -> String {
        let (method, path) = match checked_as(method, path) {
            (m, p) if (m, p) == (method, path) => (m.to_string(), p.to_string()),
            (m, p) => (
                format!("{m} (for {method} {path})"),
                format!("{p} (for {path})"),
            ),
        };
        match self {
            Decision::Allow => String::new(),
            Decision::MalformedPath(why) => {
                format!("path refused for peer {peer}: {why}")
            }
            Decision::UnknownPeer => format!("peer {peer} not allowed: not in allowed-peers"),
            Decision::MethodNotAllowed => {
                format!("peer {peer} not allowed to use method {method}")
            }
            Decision::PathNotAllowed => format!("peer {peer} not allowed to access path {path}"),
        }
    }
}

/// An ACL with the hash of the bytes it was parsed from.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    pub rules: AllowedPeers,
    /// Hex SHA-256 of allowed-peers.json as loaded; empty when the file is missing.
    pub version_hash: String,
}

impl Acl {
    /// "No peers allowed" (missing file).
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Parses and validates the file; any malformed entry refuses the whole file (fail closed).
    pub fn parse(bytes: &[u8]) -> Result<Self, AclError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(AclError::TooLarge(bytes.len()));
        }
        let rules: AllowedPeers = serde_json::from_slice(bytes)?;
        if rules.version != 1 {
            return Err(AclError::Version(rules.version));
        }
        if rules.peers.len() > MAX_PEERS {
            return Err(AclError::TooManyPeers(rules.peers.len()));
        }
        for (i, p) in rules.peers.iter().enumerate() {
            if mpm_spiffe::validate_spiffe_id(&p.spiffe_id).is_err() {
                return Err(AclError::BadPeer(i));
            }
            validate_entry(p).map_err(|(field, reason)| AclError::BadField {
                index: i,
                field,
                reason,
            })?;
        }
        Ok(Self {
            rules,
            version_hash: crate::util::sha256_hex(bytes),
        })
    }

    /// Checks a request. A request is allowed when one single entry for the peer allows both its
    /// method and its path (entries are OR-ed, never combined). A batch endpoint is checked as the
    /// single call it stands for ([`checked_as`]).
    pub fn check(&self, peer: Option<&str>, method: &str, path: &str) -> Decision {
        let Some(peer) = peer else {
            return Decision::UnknownPeer;
        };
        if let Err(why) = validate_path(path) {
            return Decision::MalformedPath(why);
        }
        let (method, path) = checked_as(method, path);
        let mut best = Decision::UnknownPeer;
        for rule in self.rules.peers.iter().filter(|r| r.spiffe_id == peer) {
            let method_ok = rule
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == method));
            let path_ok = rule
                .path_prefixes
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| prefix_matches(p, path)));
            match (method_ok, path_ok) {
                (true, true) => return Decision::Allow,
                (false, _) => best = Decision::MethodNotAllowed,
                (true, false) => {
                    if best == Decision::UnknownPeer {
                        best = Decision::PathNotAllowed
                    }
                }
            }
        }
        best
    }
}

/// Validates one entry's lists: `(field, reason)` on the first problem.
fn validate_entry(p: &PeerRule) -> Result<(), (&'static str, String)> {
    if let Some(ms) = &p.methods {
        if ms.is_empty() {
            return Err((
                "methods",
                "empty list (omit the field to allow any method)".into(),
            ));
        }
        if ms.len() > METHODS.len() {
            return Err(("methods", format!("more than {} methods", METHODS.len())));
        }
        for m in ms {
            validate_method(m).map_err(|r| ("methods", r))?;
        }
    }
    if let Some(ps) = &p.path_prefixes {
        if ps.is_empty() {
            return Err((
                "pathPrefixes",
                "empty list (omit the field to allow any path)".into(),
            ));
        }
        if ps.len() > MAX_PREFIXES {
            return Err(("pathPrefixes", format!("more than {MAX_PREFIXES} prefixes")));
        }
        for pre in ps {
            validate_prefix(pre).map_err(|r| ("pathPrefixes", r))?;
        }
    }
    Ok(())
}

/// The call a request is checked as (contract: allowed-peers.json): a batch endpoint as the single
/// call each of its items would be, so that a rule withholding `DELETE` withholds batch deletes.
pub fn checked_as<'a>(method: &'a str, path: &'a str) -> (&'a str, &'a str) {
    match (method, path) {
        ("POST", "/v1/meters:batch") => ("PUT", "/v1/meters/"),
        ("POST", "/v1/meters:batchDelete") => ("DELETE", "/v1/meters/"),
        _ => (method, path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &[u8] = br#"{
  "version": 1,
  "service": "smoc-service",
  "peers": [
    { "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-device-hub",
      "methods": ["GET", "PUT", "POST"],
      "pathPrefixes": ["/v1/"] },
    { "spiffeId": "spiffe://cluster.local/ns/park/sa/any" }
  ]
}"#;

    const TOOL: &str = "spiffe://cluster.local/ns/park/sa/demo-tool";

    fn one(entry: &str) -> Result<Acl, AclError> {
        let doc = format!(r#"{{"version": 1, "service": "device-hub", "peers": [{entry}]}}"#);
        Acl::parse(doc.as_bytes())
    }

    /// Issue 16 item 3: the operator now writes one entry per rule; this is its exact output for
    /// the rules `GET /v1/meters/` and `DELETE /v1/admin/` of one caller (see the operator test
    /// `two_rules_of_one_pair_stay_two_entries`).
    #[test]
    fn two_rules_of_one_caller_do_not_widen_each_other() {
        let file = br#"{
  "version": 1,
  "service": "device-hub",
  "peers": [
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": [
        "DELETE"
      ],
      "pathPrefixes": [
        "/v1/admin/"
      ]
    },
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": [
        "GET"
      ],
      "pathPrefixes": [
        "/v1/meters/"
      ]
    },
    {
      "spiffeId": "spiffe://cluster.local/ns/park/sa/mpm-operator"
    }
  ]
}
"#;
        let acl = Acl::parse(file).expect("valid");
        let c = Some("spiffe://cluster.local/ns/park/sa/demo-iec61968-connector");
        assert_eq!(acl.check(c, "GET", "/v1/meters/x"), Decision::Allow);
        assert_eq!(acl.check(c, "DELETE", "/v1/admin/x"), Decision::Allow);
        assert!(!acl.check(c, "DELETE", "/v1/meters/x").is_allowed());
        assert!(!acl.check(c, "GET", "/v1/admin/x").is_allowed());
        assert!(!acl.check(c, "POST", "/v1/meters:batchDelete").is_allowed());
    }

    /// Issue 16 item 4: prefixes match whole path segments.
    #[test]
    fn prefixes_match_whole_segments() {
        let acl = one(&format!(
            r#"{{"spiffeId": "{TOOL}", "pathPrefixes": ["/v1/meters/SN-1"]}}"#
        ))
        .expect("valid");
        assert_eq!(
            acl.check(Some(TOOL), "GET", "/v1/meters/SN-1"),
            Decision::Allow
        );
        assert_eq!(
            acl.check(Some(TOOL), "GET", "/v1/meters/SN-1/readings"),
            Decision::Allow
        );
        assert_eq!(
            acl.check(Some(TOOL), "GET", "/v1/meters/SN-10"),
            Decision::PathNotAllowed
        );
    }

    /// Issue 16 item 4: an empty prefix (or list) would admit every path; the file is refused.
    #[test]
    fn empty_and_malformed_entries_are_refused_naming_entry_and_field() {
        let cases = [
            (
                r#"{"spiffeId": "spiffe://x/a", "pathPrefixes": [""]}"#,
                "pathPrefixes",
            ),
            (
                r#"{"spiffeId": "spiffe://x/a", "pathPrefixes": []}"#,
                "pathPrefixes",
            ),
            (r#"{"spiffeId": "spiffe://x/a", "methods": []}"#, "methods"),
            (
                r#"{"spiffeId": "spiffe://x/a", "methods": ["get"]}"#,
                "methods",
            ),
            (
                r#"{"spiffeId": "spiffe://x/a", "pathPrefixes": ["/v1/../admin"]}"#,
                "pathPrefixes",
            ),
            (
                r#"{"spiffeId": "spiffe://x/a", "pathPrefixes": ["v1/"]}"#,
                "pathPrefixes",
            ),
        ];
        for (entry, field) in cases {
            let doc =
                format!(r#"{{"version": 1, "peers": [{{"spiffeId": "spiffe://x/ok"}}, {entry}]}}"#);
            let err = Acl::parse(doc.as_bytes()).expect_err(entry).to_string();
            assert!(
                err.contains("peer #1") && err.contains(field),
                "{entry}: {err}"
            );
        }
        // An unknown (perhaps restricting) field is not silently ignored.
        assert!(one(r#"{"spiffeId": "spiffe://x/a", "hosts": ["a"]}"#).is_err());
    }

    /// Dot segments, empty segments and encoded separators cannot step outside a prefix.
    #[test]
    fn paths_that_could_escape_a_prefix_are_refused() {
        let acl = one(&format!(
            r#"{{"spiffeId": "{TOOL}", "pathPrefixes": ["/v1/meters/"]}}"#
        ))
        .expect("valid");
        for path in [
            "/v1/meters/../admin",
            "/v1/meters/./x",
            "/v1/meters/%2e%2e/admin",
            "/v1/meters/x%2F..%2Fadmin",
            "/v1/meters//x",
            "/v1/meters/%252e",
        ] {
            let d = acl.check(Some(TOOL), "GET", path);
            assert!(matches!(d, Decision::MalformedPath(_)), "{path}: {d:?}");
            assert!(d.message(TOOL, "GET", path).contains("path"), "{path}");
        }
    }

    #[test]
    fn file_size_and_entry_count_are_bounded() {
        let entry = r#"{"spiffeId": "spiffe://x/a"}"#;
        let many = vec![entry; MAX_PEERS + 1].join(",");
        let err = one(&many).expect_err("too many peers").to_string();
        assert!(err.contains("4096"), "{err}");
        assert!(one(&vec![entry; MAX_PEERS].join(",")).is_ok());
        let big = vec![b' '; MAX_FILE_BYTES + 1];
        let err = Acl::parse(&big).expect_err("too big").to_string();
        assert!(err.contains("1048576"), "{err}");
    }

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

    /// The case table shared with the operator's tests (docs/allowed-peers-cases.json).
    #[test]
    fn shared_case_table() {
        let text = include_str!("../../docs/allowed-peers-cases.json");
        let cases: Cases = serde_json::from_str(text).expect("case table");
        for c in &cases.methods {
            assert_eq!(
                validate_method(&c.method).is_ok(),
                c.valid,
                "method {:?}",
                c.method
            );
            let r = one(&format!(
                r#"{{"spiffeId": "{TOOL}", "methods": [{:?}]}}"#,
                c.method
            ));
            assert_eq!(r.is_ok(), c.valid, "method {:?} in a file", c.method);
        }
        for c in &cases.prefixes {
            assert_eq!(
                validate_prefix(&c.prefix).is_ok(),
                c.valid,
                "prefix {:?}",
                c.prefix
            );
            let entry = serde_json::json!({"spiffeId": TOOL, "pathPrefixes": [c.prefix]});
            assert_eq!(
                one(&entry.to_string()).is_ok(),
                c.valid,
                "prefix {:?} in a file",
                c.prefix
            );
        }
        let any = one(&format!(r#"{{"spiffeId": "{TOOL}"}}"#)).expect("valid");
        for c in &cases.paths {
            assert_eq!(validate_path(&c.path).is_ok(), c.valid, "path {:?}", c.path);
            assert_eq!(
                any.check(Some(TOOL), "GET", &c.path).is_allowed(),
                c.valid,
                "path {:?} for an unrestricted peer",
                c.path
            );
        }
        for c in &cases.matches {
            let entry = serde_json::json!({"spiffeId": TOOL, "pathPrefixes": [c.prefix]});
            let acl = one(&entry.to_string()).expect("valid prefix");
            assert_eq!(
                acl.check(Some(TOOL), "GET", &c.path).is_allowed(),
                c.matches,
                "{:?} vs {:?}",
                c.prefix,
                c.path
            );
        }
    }

    #[test]
    fn batch_endpoints_are_checked_as_their_single_calls() {
        let acl = Acl::parse(FILE).expect("valid");
        // GET, PUT and POST on /v1/: batch PUTs yes, batch deletes no (no DELETE).
        let hub = "spiffe://cluster.local/ns/park/sa/demo-device-hub";
        assert_eq!(
            acl.check(Some(hub), "POST", "/v1/meters:batch"),
            Decision::Allow
        );
        let d = acl.check(Some(hub), "POST", "/v1/meters:batchDelete");
        assert_eq!(d, Decision::MethodNotAllowed);
        assert!(
            d.message(hub, "POST", "/v1/meters:batchDelete")
                .contains("method DELETE (for POST /v1/meters:batchDelete)"),
            "{}",
            d.message(hub, "POST", "/v1/meters:batchDelete")
        );
        // A rule for one meter's path does not cover a batch, which may hold any meter.
        let one: &[u8] = br#"{"version": 1, "service": "device-hub", "peers": [
            {"spiffeId": "spiffe://x/ns/p/sa/tool", "pathPrefixes": ["/v1/meters/SN-1"]}]}"#;
        let acl = Acl::parse(one).expect("valid");
        let tool = Some("spiffe://x/ns/p/sa/tool");
        assert_eq!(
            acl.check(tool, "DELETE", "/v1/meters/SN-1"),
            Decision::Allow
        );
        assert_eq!(
            acl.check(tool, "POST", "/v1/meters:batchDelete"),
            Decision::PathNotAllowed
        );
    }

    #[test]
    fn checks_peer_method_and_path() {
        let acl = Acl::parse(FILE).expect("valid");
        let hub = "spiffe://cluster.local/ns/park/sa/demo-device-hub";
        assert_eq!(
            acl.check(Some(hub), "PUT", "/v1/devices/x"),
            Decision::Allow
        );
        assert_eq!(
            acl.check(Some(hub), "DELETE", "/v1/devices/x"),
            Decision::MethodNotAllowed
        );
        assert_eq!(
            acl.check(Some(hub), "GET", "/admin"),
            Decision::PathNotAllowed
        );
        assert_eq!(
            acl.check(
                Some("spiffe://cluster.local/ns/park/sa/any"),
                "DELETE",
                "/x"
            ),
            Decision::Allow
        );
        let other = "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector";
        let d = acl.check(Some(other), "GET", "/v1/meters");
        assert_eq!(d, Decision::UnknownPeer);
        assert!(d.message(other, "GET", "/v1/meters").contains(other));
        assert_eq!(acl.check(None, "GET", "/v1/meters"), Decision::UnknownPeer);
        assert_eq!(acl.version_hash, crate::util::sha256_hex(FILE));
    }

    #[test]
    fn missing_file_denies_everything_and_bad_files_error() {
        let acl = Acl::deny_all();
        assert_eq!(
            acl.check(Some("spiffe://x/y"), "GET", "/"),
            Decision::UnknownPeer
        );
        assert!(Acl::parse(b"{").is_err());
        assert!(Acl::parse(br#"{"version": 2, "peers": []}"#).is_err());
        assert!(Acl::parse(br#"{"version": 1, "peers": [{"spiffeId": "x"}]}"#).is_err());
    }
}
