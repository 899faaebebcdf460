//! Desired state of a DeviceHub as plain Kubernetes objects, computed by pure functions.

pub mod hub;
pub mod ingest;
pub mod isolation;
pub mod names;
pub mod workload;
