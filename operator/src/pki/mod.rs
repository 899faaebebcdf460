//! The per-hub CA, leaf certificates and the renewal schedule (pure functions).
//!
//! Nothing here talks to the API server; the controller reads Secrets/ConfigMaps, calls these
//! functions and writes the results back.
//!
//! - [`ca`]: generate the hub CA or load and validate a user-supplied one ([`CaKeyPair`]).
//! - [`leaf`]: SPIFFE identities, Service DNS names and leaf issuance ([`issue_leaf`]).
//! - [`bundle`]: the trust bundle (`ca-bundle.pem`) and its SHA-256 (contract: Health port `/status`).
//! - [`inspect`]: read back certificates stored in Secrets ([`inspect_cert`], [`leaf_matches`]).
//! - [`schedule`]: certificate settings, Go-style durations and the jittered renewal time.
//! - [`rotation`]: the CA rotation state machine ([`rotation::step`]).
//!
//! Key material never appears in `Display`/`Debug` output of any type of this module.

pub mod bundle;
pub mod ca;
mod der;
pub mod error;
pub mod inspect;
pub mod leaf;
pub mod rotation;
pub mod schedule;

pub use bundle::{bundle_pem, bundle_sha256};
pub use ca::{generate_ca, load_user_ca, CaKeyKind, CaKeyPair, CaSource, DEFAULT_CA_VALIDITY};
pub use error::{PkiError, Result};
pub use inspect::{
    cert_fingerprint, identify_issuer, inspect_cert, inspect_cert_with_issuers, leaf_matches,
    leaf_mismatch, CertInfo, ExistingLeaf, LeafMismatch,
};
pub use leaf::{
    issue_leaf, service_dns_names, spiffe_id, validate_trust_domain, IssuedCert, LeafRequest,
    SpiffeId, DEFAULT_BACKDATE, DEFAULT_LEAF_VALIDITY,
};
pub use rotation::{
    step, Action, CaInfo, CaRotationState, RotationInputs, RotationPhase, RotationTrigger,
};
pub use schedule::{
    format_duration, next_action, parse_duration, renewal_time, CertificateSettings, NextAction,
    RenewReason,
};
