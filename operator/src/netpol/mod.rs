//! Kubernetes NetworkPolicy v1 evaluator (pure functions) and the reachability matrix.
//!
//! [`Evaluator`] implements the `networking.k8s.io/v1` NetworkPolicy semantics: a connection from a
//! source to a destination on `(port, protocol)` is allowed iff the source's egress allows it (or no
//! policy isolates the source for egress) AND the destination's ingress allows it (or no policy
//! isolates the destination for ingress). Policies are additive. Addresses outside the cluster
//! ([`Endpoint::External`]) have no policies of their own.
//!
//! The evaluator pre-computes, once, which policies select each pod and which pods each rule's
//! peers match, so that [`Evaluator::allowed`] is a handful of bit tests.
//!
//! [`matrix`] enumerates the reachability between workloads, [`verify()`] compares a ServiceACL
//! with the NetworkPolicies actually present in the namespace.

mod cidr;
mod error;
mod eval;
mod matrix;
mod model;
mod selector;
mod verify;

pub use cidr::Cidr;
pub use error::NetpolError;
pub use eval::{Decision, DirectionDecision, Evaluator};
pub use matrix::{external_ports, matrix};
pub use model::{ContainerPort, Endpoint, NamespaceInfo, PodId, PodInfo, NAMESPACE_NAME_LABEL};
pub use selector::Selector;
pub use verify::{model_pods, verify, Verification, VerifyError, DEFAULT_ACTION_RULE};

pub use crate::crd::service_acl::Protocol;
