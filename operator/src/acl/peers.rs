//! The `allowed-peers.json` document (contract: docs/contracts.md, "allowed-peers.json").

use serde::{Deserialize, Serialize};

/// One allowed caller of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedPeer {
    /// SPIFFE ID of the caller.
    pub spiffe_id: String,
    /// Allowed methods; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Allowed path prefixes; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefixes: Option<Vec<String>>,
}

/// The content of `/etc/mpm/acl/allowed-peers.json` of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedPeers {
    /// Format version, always 1.
    pub version: u32,
    /// The service the file belongs to.
    pub service: String,
    /// Allowed callers, sorted by SPIFFE ID.
    pub peers: Vec<AllowedPeer>,
}

impl AllowedPeers {
    /// Deterministic JSON text (pretty-printed, trailing newline): the same ACL always yields the
    /// same bytes, so the SHA-256 services report is stable.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
