//! SPIFFE identities for mpm (contract: docs/contracts.md, "SPIFFE IDs").
//!
//! - [`id`]: building and checking SPIFFE IDs, and reading the one ID of an X509-SVID.
//! - [`pem`]: reading CA bundles, certificate chains and keys from PEM, with the same rules
//!   everywhere.
//! - [`verify`]: the rustls verifiers every mTLS endpoint uses: a server verifier that requires
//!   the expected SPIFFE ID, and a client verifier that requires a chain to the current trust
//!   anchors (and, for service-to-service calls, an X509-SVID). Trust anchors come from a
//!   [`verify::TrustSource`]: fixed, or the services' reloading material store.
//!
//! The operator's device-hub client and every service link this crate, so a rule changed here
//! changes on both ends of every connection.

pub mod id;
pub mod pem;
pub mod verify;

pub use id::{
    peer_spiffe_id, spiffe_id, svid_spiffe_id, validate_spiffe_id, SpiffeIdError, SvidError,
};
pub use pem::{certified_key, roots_from_pem, PemError};
pub use verify::{
    mtls_server_config, provider, spiffe_client_config, ClientIdentity, ClientVerifier, FixedTrust,
    SpiffeServerVerifier, TrustAnchors, TrustSource,
};
