//! ServiceACL compiler: ACL → NetworkPolicies and allowed-peer lists (pure functions).
//!
//! [`compile`] merges every `ServiceACL` spec of one hub, validates it against the hub's
//! [`HubTopology`] and produces, per service, the two NetworkPolicies
//! (`<hub>-<svc>-default-deny`, `<hub>-<svc>-acl`) and the `allowed-peers.json` content
//! (contract: docs/contracts.md, "allowed-peers.json"). On error nothing is produced: the caller
//! keeps the policies currently in force (see [`AclError`]).

mod compile;
mod error;
pub mod l7;
mod peers;
mod policies;
mod topology;
mod verify_l7;

pub use compile::{compile, CompiledAcl, CompiledService, DenyInvariant, Edge, RuleGrant};
pub use error::AclError;
pub use peers::{AllowedPeer, AllowedPeers};
pub use topology::{
    service_labels, service_pod_selector, spiffe_id, HubTopology, NamedPort, OperatorAccess,
    ServicePorts, DEVICE_HUB_SERVICE, HEALTH_PORT, HTTPS_PORT, INGEST_PORT,
    OPERATOR_SERVICE_ACCOUNT,
};
pub use verify_l7::verify_l7;
