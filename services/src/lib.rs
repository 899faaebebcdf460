//! Shared library of the meter park services: mTLS with hot reload, per-peer ACLs, health and metrics
//! endpoints, an mTLS client with retries and a circuit breaker, a durable store, and the three
//! services themselves (`connector`, `device_hub`, `smoc`), which the binaries in `src/bin/` start.

pub mod acl;
pub mod client;
pub mod config;
pub mod connector;
pub mod device_hub;
pub mod iec;
pub mod ingest_auth;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod retry;
pub mod server;
pub mod smoc;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod util;
