//! Validation errors of the ServiceACL compiler.

use thiserror::Error;

/// Why a set of ServiceACLs cannot be compiled.
///
/// Compilation is all-or-nothing: on any error no NetworkPolicy or allowed-peers file is produced,
/// and the caller (the controller) must keep the policies and ConfigMaps currently in force
/// unchanged and report the error in the ServiceACL status, so that a bad edit never opens or
/// closes traffic. Every variant names the offending rule (`name` of the rule when set, otherwise
/// `allow[i]`, `deny[i]`, `ingress[i]`, `egress[i]` or `metricsScrape`, prefixed with `acl[k].` when
/// several ServiceACLs are merged).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AclError {
    /// The ServiceACL references another DeviceHub than the one being compiled.
    #[error("ServiceACL hubRef {found:?} does not reference hub {expected:?}")]
    WrongHub {
        /// The hub being compiled.
        expected: String,
        /// `hubRef.name` of the ACL.
        found: String,
    },
    /// `from` or `to` names a service the hub does not run.
    #[error("rule {rule}: unknown service {service:?} (the hub runs: {known})")]
    UnknownService {
        /// The offending rule.
        rule: String,
        /// The unknown name.
        service: String,
        /// Comma-separated list of the hub's services.
        known: String,
    },
    /// A port the target service does not expose.
    #[error("rule {rule}: service {service:?} does not expose port {port} (exposed: {exposed})")]
    PortNotExposed {
        /// The offending rule.
        rule: String,
        /// The target service.
        service: String,
        /// The port.
        port: u16,
        /// Comma-separated list of the exposed ports.
        exposed: String,
    },
    /// An allow rule for a pair a deny invariant forbids.
    #[error("rule {rule}: allowing {from} -> {to} contradicts deny invariant {deny_rule}")]
    ContradictsDeny {
        /// The allow rule.
        rule: String,
        /// The deny rule.
        deny_rule: String,
        /// Source service.
        from: String,
        /// Destination service.
        to: String,
    },
    /// A rule from a service to itself (loopback is never subject to policy).
    #[error("rule {rule}: self edge {service} -> {service} is not allowed")]
    SelfEdge {
        /// The offending rule.
        rule: String,
        /// The service.
        service: String,
    },
    /// A peer without selectors and ipBlock, with both, an empty peer list or an empty port list.
    #[error("rule {rule}: {detail}")]
    InvalidRule {
        /// The offending rule.
        rule: String,
        /// What is wrong.
        detail: String,
    },
    /// An `http.methods` or `http.pathPrefixes` that is empty or holds a malformed entry.
    #[error("rule {rule}: http.{field}: {detail}")]
    InvalidHttp {
        /// The offending rule.
        rule: String,
        /// The field (`methods`, `pathPrefixes[2]`, ...).
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// An `ipBlock.cidr` or `except` entry that is not a CIDR.
    #[error("rule {rule}: invalid CIDR {cidr:?}")]
    InvalidCidr {
        /// The offending rule.
        rule: String,
        /// The offending text.
        cidr: String,
    },
    /// A label selector with an unknown operator or values not fitting it.
    #[error("rule {rule}: invalid label selector: {detail}")]
    InvalidSelector {
        /// The offending rule.
        rule: String,
        /// What is wrong.
        detail: String,
    },
    /// A generated object name longer than 63 characters.
    #[error(
        "generated name {name:?} is longer than 63 characters (hub {hub:?}, service {service:?})"
    )]
    NameTooLong {
        /// The name.
        name: String,
        /// The hub.
        hub: String,
        /// The service.
        service: String,
    },
}
