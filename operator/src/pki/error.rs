//! The one error type of the PKI core.
//!
//! Every variant maps to a stable, machine-readable [`PkiError::reason`] that the controller copies
//! into a Kubernetes condition's `reason` field. `Display` texts are for humans (condition `message`)
//! and never contain key material: key parsing errors are reported with fixed texts only, never with
//! the text of an underlying parser error (which could echo bytes of the input).

use chrono::{DateTime, Utc};

/// Errors of the PKI core (CA handling, issuance, parsing, schedule, rotation state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The CA certificate's `notAfter` is in the past.
    #[error("CA certificate expired at {not_after}")]
    CaExpired {
        /// `notAfter` of the CA certificate.
        not_after: DateTime<Utc>,
    },
    /// The CA certificate's `notBefore` is in the future.
    #[error("CA certificate is not valid before {not_before}")]
    CaNotYetValid {
        /// `notBefore` of the CA certificate.
        not_before: DateTime<Utc>,
    },
    /// The CA certificate or key could not be decoded (PEM framing, DER, X.509 structure).
    #[error("CA {what} is malformed: {detail}")]
    CaMalformed {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// What is wrong. For keys this is a fixed text, never parser output.
        detail: String,
    },
    /// The certificate is not a CA (basicConstraints missing or CA:FALSE, or keyCertSign missing).
    #[error("certificate is not a CA: {detail}")]
    NotACa {
        /// Which check failed.
        detail: String,
    },
    /// The private key does not belong to the CA certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    CaKeyMismatch,
    /// The key type or curve cannot be used for signing here.
    #[error("unsupported key: {detail}")]
    UnsupportedKey {
        /// Which key type was found (never key bytes).
        detail: String,
    },
    /// The CA certificate is well formed but cannot be used as issuer (for example a subject name
    /// that cannot be reproduced byte for byte in issued certificates).
    #[error("unsupported CA certificate: {detail}")]
    UnsupportedCa {
        /// Why.
        detail: String,
    },
    /// The SPIFFE trust domain is not valid.
    #[error("invalid trust domain {value:?}: {detail}")]
    InvalidTrustDomain {
        /// The rejected trust domain.
        value: String,
        /// Why.
        detail: &'static str,
    },
    /// A namespace, service account or SPIFFE ID is not valid.
    #[error("invalid SPIFFE ID component {value:?}: {detail}")]
    InvalidSpiffeId {
        /// The rejected value.
        value: String,
        /// Why.
        detail: &'static str,
    },
    /// A DNS name for a SAN is not valid.
    #[error("invalid DNS name {value:?}: {detail}")]
    InvalidDnsName {
        /// The rejected name.
        value: String,
        /// Why.
        detail: &'static str,
    },
    /// A duration string could not be parsed.
    #[error("invalid duration {input:?}: {detail}")]
    InvalidDuration {
        /// The rejected input.
        input: String,
        /// Why.
        detail: &'static str,
    },
    /// `duration` is shorter than the minimum.
    #[error("certificate duration {actual} is shorter than the minimum {minimum}")]
    DurationTooShort {
        /// Requested duration (Go syntax).
        actual: String,
        /// Minimum (Go syntax).
        minimum: String,
    },
    /// `renewBefore` is not smaller than `duration`.
    #[error("renewBefore {renew_before} must be shorter than duration {duration}")]
    RenewBeforeTooLarge {
        /// Requested renewBefore (Go syntax).
        renew_before: String,
        /// Requested duration (Go syntax).
        duration: String,
    },
    /// `renewBefore` is zero.
    #[error("renewBefore must be greater than zero")]
    RenewBeforeNotPositive,
    /// The CA lifetime is too short for the leaf lifetime.
    #[error("CA duration {ca_duration} must be at least {minimum} (3 x certificate duration)")]
    CaDurationTooShort {
        /// Requested CA duration (Go syntax).
        ca_duration: String,
        /// Minimum (Go syntax).
        minimum: String,
    },
    /// A certificate (not a CA being loaded) could not be parsed.
    #[error("certificate is malformed: {detail}")]
    CertificateMalformed {
        /// What is wrong.
        detail: String,
    },
    /// Key generation or signing failed (an internal error of the crypto library).
    #[error("certificate issuance failed: {detail}")]
    IssuanceFailed {
        /// Fixed description of the failing step.
        detail: String,
    },
    /// A validity period is unusable (zero, overflowing, or ends before it starts).
    #[error("invalid validity period: {detail}")]
    InvalidValidity {
        /// Why.
        detail: &'static str,
    },
    /// A persisted CA rotation state could not be decoded.
    #[error("CA rotation state is malformed: {detail}")]
    RotationStateMalformed {
        /// The JSON error.
        detail: String,
    },
}

impl PkiError {
    /// Stable machine-readable reason for Kubernetes conditions (`CamelCase`, never changes).
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::CaExpired { .. } => "CAExpired",
            PkiError::CaNotYetValid { .. } => "CANotYetValid",
            PkiError::CaMalformed { .. } => "CAMalformed",
            PkiError::NotACa { .. } => "NotACA",
            PkiError::CaKeyMismatch => "CAKeyMismatch",
            PkiError::UnsupportedKey { .. } => "UnsupportedKey",
            PkiError::UnsupportedCa { .. } => "UnsupportedCA",
            PkiError::InvalidTrustDomain { .. } => "InvalidTrustDomain",
            PkiError::InvalidSpiffeId { .. } => "InvalidSpiffeID",
            PkiError::InvalidDnsName { .. } => "InvalidDNSName",
            PkiError::InvalidDuration { .. } => "InvalidDuration",
            PkiError::DurationTooShort { .. } => "DurationTooShort",
            PkiError::RenewBeforeTooLarge { .. } => "RenewBeforeTooLarge",
            PkiError::RenewBeforeNotPositive => "RenewBeforeNotPositive",
            PkiError::CaDurationTooShort { .. } => "CADurationTooShort",
            PkiError::CertificateMalformed { .. } => "CertificateMalformed",
            PkiError::IssuanceFailed { .. } => "IssuanceFailed",
            PkiError::InvalidValidity { .. } => "InvalidValidity",
            PkiError::RotationStateMalformed { .. } => "RotationStateMalformed",
        }
    }
}

/// Result alias of the PKI core.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
