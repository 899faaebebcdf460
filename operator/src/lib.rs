//! mpm-operator: declarative meter park management on Kubernetes.
//!
//! Layout follows "read → compute → apply → status": the pure parts (`crd` validation, `resources`
//! builders, `pki`, `acl`, `netpol`) never touch the API server; `controller` does the I/O.

pub mod acl;
pub mod admission;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod meter;
pub mod netpol;
pub mod pki;
pub mod resources;
pub mod run;
pub mod runtime;
pub mod telemetry;
