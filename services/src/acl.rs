//! `allowed-peers.json` (contract: allowed-peers.json): which peer identity may call which method and
//! path.

use serde::{Deserialize, Serialize};

/// One allowed peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerRule {
    pub spiffe_id: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

/// The parsed file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowedPeers {
    pub version: u32,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub peers: Vec<PeerRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("allowed-peers.json is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("allowed-peers.json has unsupported version {0} (expected 1)")]
    Version(u32),
    #[error("allowed-peers.json peer #{0} has an empty or non-spiffe spiffeId")]
    BadPeer(usize),
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
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

    pub fn parse(bytes: &[u8]) -> Result<Self, AclError> {
        let rules: AllowedPeers = serde_json::from_slice(bytes)?;
        if rules.version != 1 {
            return Err(AclError::Version(rules.version));
        }
        for (i, p) in rules.peers.iter().enumerate() {
            if !p.spiffe_id.starts_with("spiffe://") || p.spiffe_id.len() <= "spiffe://".len() {
                return Err(AclError::BadPeer(i));
            }
        }
        Ok(Self {
            rules,
            version_hash: crate::util::sha256_hex(bytes),
        })
    }

    /// Checks a request. Several rules for the same peer are OR-ed. A batch endpoint is checked
    /// as the single call it stands for ([`checked_as`]).
    pub fn check(&self, peer: Option<&str>, method: &str, path: &str) -> Decision {
        let Some(peer) = peer else {
            return Decision::UnknownPeer;
        };
        let (method, path) = checked_as(method, path);
        let mut best = Decision::UnknownPeer;
        for rule in self.rules.peers.iter().filter(|r| r.spiffe_id == peer) {
            let method_ok = rule.methods.is_empty()
                || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
            let path_ok = rule.path_prefixes.is_empty()
                || rule
                    .path_prefixes
                    .iter()
                    .any(|p| path.starts_with(p.as_str()));
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
