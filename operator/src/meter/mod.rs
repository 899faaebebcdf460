//! Meters: provisioning smart meters in their hub's device-hub over mTLS.
//!
//! - [`state`]: the pure state machine (phase, conditions, backoff).
//! - [`hub_client`]: the device-hub API client (mTLS with SPIFFE server identity, batching, pooling).
//! - [`index`]: the Meters by (namespace, hub, serial), for the duplicate-serial checks.
//! - [`namespaces`]: which namespaces are being deleted (their Meters go without deprovisioning).
//! - [`controller`]: the Kubernetes controller with the `meterpark.io/deprovision` finalizer.

pub mod controller;
pub mod hub_client;
pub mod index;
pub mod namespaces;
pub mod state;
