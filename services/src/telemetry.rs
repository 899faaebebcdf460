//! JSON logs. Request spans carry `trace_id` (from `traceparent`), so every log line inside a request
//! names its trace.

use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber (`RUST_LOG` filters, default `info`). Safe to call twice.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .try_init();
    if result.is_ok() {
        tracing::info!(service, "starting");
    }
}
