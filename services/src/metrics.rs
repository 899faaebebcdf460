//! Prometheus metrics shared by the services (exposed on the health port at `/metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric a service exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub acl_denials: Family<Labels, Counter>,
    pub handshake_failures: Counter,
    pub reload_failures: Family<Labels, Counter>,
    pub reloads: Family<Labels, Counter>,
    pub cert_not_after: Gauge,
    pub trust_bundle_info: Family<Labels, Gauge<f64, AtomicU64>>,
    pub outgoing: Family<Labels, Counter>,
    pub dead_letters: Gauge,
    pub outbox: Gauge,
    pub outbox_parked: Counter,
    pub store_quarantined: Family<Labels, Counter>,
    pub jwks_fetches: Family<Labels, Counter>,
    pub jwks_keys: Gauge,
    pub jwks_last_success: Gauge,
    pub ingest_refusals: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "mpm",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Owned(service.to_string()),
            )]
            .into_iter(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status",
            requests.clone(),
        );
        let acl_denials = Family::<Labels, Counter>::default();
        registry.register(
            "acl_denials",
            "Requests refused by the allowed-peers ACL, by peer identity",
            acl_denials.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "Failed inbound TLS handshakes",
            handshake_failures.clone(),
        );
        let reload_failures = Family::<Labels, Counter>::default();
        registry.register(
            "material_reload_failures",
            "Rejected reloads of mounted material (old material kept), by kind",
            reload_failures.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "material_reloads",
            "Successful loads of mounted material, by kind",
            reloads.clone(),
        );
        let cert_not_after = Gauge::default();
        registry.register(
            "certificate_not_after_seconds",
            "notAfter of the serving certificate, Unix seconds",
            cert_not_after.clone(),
        );
        let trust_bundle_info = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "trust_bundle_info",
            "SHA-256 of the loaded trust bundle (value 1)",
            trust_bundle_info.clone(),
        );
        let outgoing = Family::<Labels, Counter>::default();
        registry.register(
            "outgoing_requests",
            "Outgoing mTLS calls, by peer and outcome",
            outgoing.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "dead_letters",
            "Events waiting in the dead-letter store",
            dead_letters.clone(),
        );
        let outbox = Gauge::default();
        registry.register(
            "outbox_pending",
            "Messages waiting in the outbox",
            outbox.clone(),
        );
        let outbox_parked = Counter::default();
        registry.register(
            "outbox_parked",
            "Outbox items moved to outbox_parked after too many refusals or too long a wait",
            outbox_parked.clone(),
        );
        let store_quarantined = Family::<Labels, Counter>::default();
        registry.register(
            "store_quarantined",
            "Stored rows that could not be decoded, moved to <table>_quarantine, by table",
            store_quarantined.clone(),
        );
        let jwks_fetches = Family::<Labels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Fetches of the JWT key set from jwt.jwksUrl, by trigger and outcome",
            jwks_fetches.clone(),
        );
        let jwks_keys = Gauge::default();
        registry.register(
            "jwks_keys",
            "Signing keys in the JWT key set in use",
            jwks_keys.clone(),
        );
        let jwks_last_success = Gauge::default();
        registry.register(
            "jwks_last_success_seconds",
            "When the JWT key set was last loaded or confirmed unchanged, Unix seconds",
            jwks_last_success.clone(),
        );
        let ingest_refusals = Family::<Labels, Counter>::default();
        registry.register(
            "ingest_refusals",
            "Requests refused on the connector's ingest port, by reason",
            ingest_refusals.clone(),
        );
        Self {
            registry,
            requests,
            acl_denials,
            handshake_failures,
            reload_failures,
            reloads,
            cert_not_after,
            trust_bundle_info,
            outgoing,
            dead_letters,
            outbox,
            outbox_parked,
            store_quarantined,
            jwks_fetches,
            jwks_keys,
            jwks_last_success,
            ingest_refusals,
        }
    }

    /// A request method as a label value: one of a fixed set, anything else `OTHER` (a client
    /// choosing method names must not create series without limit).
    pub fn method_label(method: &str) -> &'static str {
        const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
        KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
    }

    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Sets the trust bundle info metric to exactly one series.
    pub fn set_trust_bundle(&self, sha256: &str) {
        self.trust_bundle_info.clear();
        self.trust_bundle_info
            .get_or_create(&Self::labels(&[("sha256", sha256)]))
            .set(1.0);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
