//! Process runtime of the operator: metrics, health endpoints, leader election, API write limits.

pub mod api_client;
pub mod cache_ready;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod process;
pub mod ratelimit;
pub mod shutdown;
