//! Errors of the NetworkPolicy evaluator.

use thiserror::Error;

/// A NetworkPolicy (or selector) the evaluator cannot interpret. The API server would have rejected
/// such an object, so this points at hand-written input files.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NetpolError {
    /// A label selector requirement uses an operator other than In, NotIn, Exists, DoesNotExist, or
    /// values that do not fit the operator.
    #[error("NetworkPolicy {policy}: invalid label selector: {detail}")]
    InvalidSelector {
        /// `<namespace>/<name>` of the policy.
        policy: String,
        /// What is wrong.
        detail: String,
    },
    /// An `ipBlock.cidr` or `ipBlock.except` entry is not a valid CIDR.
    #[error("NetworkPolicy {policy}: invalid CIDR {cidr:?}")]
    InvalidCidr {
        /// `<namespace>/<name>` of the policy.
        policy: String,
        /// The offending text.
        cidr: String,
    },
    /// A peer sets neither selectors nor an ipBlock, or an ipBlock together with selectors.
    #[error("NetworkPolicy {policy}: invalid peer: {detail}")]
    InvalidPeer {
        /// `<namespace>/<name>` of the policy.
        policy: String,
        /// What is wrong.
        detail: String,
    },
    /// A port is out of range, has an unknown protocol, or an `endPort` without a numeric port.
    #[error("NetworkPolicy {policy}: invalid port: {detail}")]
    InvalidPort {
        /// `<namespace>/<name>` of the policy.
        policy: String,
        /// What is wrong.
        detail: String,
    },
    /// A `policyTypes` entry other than `Ingress` or `Egress`.
    #[error("NetworkPolicy {policy}: invalid policyType {value:?}")]
    InvalidPolicyType {
        /// `<namespace>/<name>` of the policy.
        policy: String,
        /// The offending value.
        value: String,
    },
}
