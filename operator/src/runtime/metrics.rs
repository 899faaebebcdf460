//! Prometheus metrics of the operator (served on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub resource: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub namespace: String,
    pub hub: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubLabels {
    pub namespace: String,
    pub hub: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub api_writes: Family<WriteLabels, Counter>,
    pub certificate_expiration: Family<CertLabels, Gauge<f64, AtomicU64>>,
    pub certificate_renewals: Family<CertLabels, Counter>,
    pub certificate_issuance_errors: Family<HubLabels, Counter>,
    pub hub_requests: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    pub admission_reviews: Family<OutcomeLabels, Counter>,
    pub webhook_certificate_expiration: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mpm_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let api_writes = Family::<WriteLabels, Counter>::default();
        let certificate_expiration = Family::<CertLabels, Gauge<f64, AtomicU64>>::default();
        let certificate_renewals = Family::<CertLabels, Counter>::default();
        let certificate_issuance_errors = Family::<HubLabels, Counter>::default();
        let hub_requests = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        let admission_reviews = Family::<OutcomeLabels, Counter>::default();
        let webhook_certificate_expiration = Gauge::<f64, AtomicU64>::default();
        registry.register("reconciles", "Reconciliations by kind", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by kind and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconciliation duration by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests to the API server by resource and verb",
            api_writes.clone(),
        );
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "notAfter of each leaf certificate (unix seconds)",
            certificate_expiration.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Leaf certificates renewed",
            certificate_renewals.clone(),
        );
        registry.register(
            "certificate_issuance_errors",
            "Failures to issue or load certificates",
            certificate_issuance_errors.clone(),
        );
        registry.register(
            "device_hub_requests",
            "Requests to device-hub APIs by operation and result",
            hub_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "admission_reviews",
            "Meter admission reviews by outcome (added, present, ignored, invalid)",
            admission_reviews.clone(),
        );
        registry.register(
            "webhook_certificate_expiration_timestamp_seconds",
            "notAfter of the admission webhook's serving certificate (Unix seconds)",
            webhook_certificate_expiration.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            api_writes,
            certificate_expiration,
            certificate_renewals,
            certificate_issuance_errors,
            hub_requests,
            leader,
            admission_reviews,
            webhook_certificate_expiration,
        }
    }
}

impl Metrics {
    pub fn write(&self, resource: &str, verb: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                resource: resource.to_string(),
                verb: verb.to_string(),
            })
            .inc();
    }

    pub fn admission(&self, outcome: &str) {
        self.admission_reviews
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Total API writes so far (all resources and verbs).
    pub fn total_writes(&self) -> u64 {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return 0;
        }
        text.lines()
            .filter(|l| l.starts_with("mpm_operator_api_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
