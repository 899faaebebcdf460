//! Meters: provisioning smart meters in their hub's device-hub over mTLS.
//!
//! - [`state`]: the pure state machine (phase, conditions, backoff).
//! - [`hub_client`]: the device-hub API client (pooling, rate limits, the client cache), with
//!   [`hub_tls`] (mTLS with SPIFFE server identity) and [`hub_batch`] (batches of PUTs and DELETEs).
//! - [`index`]: the Meters by (namespace, hub, serial), for the duplicate-serial checks.
//! - [`namespaces`]: which namespaces are being deleted (their Meters go without deprovisioning).
//! - [`controller`]: the Kubernetes controller with the `meterpark.io/deprovision` finalizer.

pub mod controller;
pub mod hub_batch;
pub mod hub_client;
pub mod hub_tls;
pub mod index;
pub mod namespaces;
pub mod state;
