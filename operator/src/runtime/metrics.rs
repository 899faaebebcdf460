//! Prometheus metrics of the operator (served on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::crd::meter::Meter;

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
pub struct PhaseLabels {
    pub namespace: String,
    pub phase: String,
}

/// `mpm_operator_meters{namespace, phase}`: Meters by phase, counted from the Meter controller's
/// cache at each scrape (so it costs nothing between scrapes and is never stale by more than the
/// watch). Empty until the controller runs (standby replicas export nothing).
#[derive(Debug, Default)]
pub struct MeterPhases {
    store: RwLock<Option<Store<Meter>>>,
}

impl MeterPhases {
    pub fn attach(&self, store: Store<Meter>) {
        if let Ok(mut slot) = self.store.write() {
            *slot = Some(store);
        }
    }

    /// (namespace, phase) → count; a Meter without status counts as Pending.
    pub fn counts(&self) -> BTreeMap<(String, &'static str), i64> {
        let store = self.store.read().ok().and_then(|s| s.clone());
        let meters = store.map(|s| s.state()).unwrap_or_default();
        // Counted under borrowed namespaces: a scrape copies one string per namespace and
        // phase, not one per Meter.
        let mut borrowed: HashMap<(&str, &'static str), i64> = HashMap::new();
        for meter in &meters {
            let phase = meter.status.as_ref().map(|s| s.phase).unwrap_or_default();
            let namespace = meter.metadata.namespace.as_deref().unwrap_or_default();
            *borrowed.entry((namespace, phase.as_str())).or_insert(0) += 1;
        }
        borrowed
            .into_iter()
            .map(|((namespace, phase), n)| ((namespace.to_string(), phase), n))
            .collect()
    }
}

impl Collector for MeterPhases {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        if counts.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "meters",
            "Meters by namespace and phase, from the operator's cache",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, phase), count) in counts {
            let labels = PhaseLabels {
                namespace,
                phase: phase.to_string(),
            };
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
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
    pub meter_phases: Arc<MeterPhases>,
}

impl Default for Metrics {
    fn default() -> Self {
        // `process_*` unprefixed, as every exporter names them; the operator's own under `mpm_operator_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("mpm_operator");
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
        let meter_phases = Arc::new(MeterPhases::default());
        registry.register_collector(Box::new(meter_phases.clone()));
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
            registry: root,
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
            meter_phases,
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

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn meter(ns: &str, name: &str, phase: Option<&str>) -> Meter {
        let mut m: Meter = serde_json::from_value(json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "Meter",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hubRef": {"name": "hub"}, "serialNumber": name, "manufacturer": "L+G",
                     "model": "E450", "protocol": "DLMS/COSEM", "hesId": "hes-1"}
        }))
        .unwrap();
        if let Some(p) = phase {
            m.status = Some(serde_json::from_value(json!({ "phase": p })).unwrap());
        }
        m
    }

    #[test]
    fn process_metrics_are_unprefixed_and_the_operators_prefixed() {
        let metrics = Metrics::default();
        metrics.write("Meter/status", "patch");
        let text = metrics.encode();
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("mpm_operator_leader "), "{text}");
        assert!(
            text.contains(
                "\nmpm_operator_api_writes_total{resource=\"Meter/status\",verb=\"patch\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn meters_by_phase_are_counted_from_the_cache_at_scrape() {
        let metrics = Metrics::default();
        assert!(!metrics.encode().contains("mpm_operator_meters{"));
        let (store, mut writer) = reflector::store::<Meter>();
        for m in [
            meter("park", "a", Some("Provisioned")),
            meter("park", "b", Some("Provisioned")),
            meter("park", "c", None),
            meter("other", "d", Some("Failed")),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(m));
        }
        metrics.meter_phases.attach(store);
        let text = metrics.encode();
        for line in [
            r#"mpm_operator_meters{namespace="park",phase="Provisioned"} 2"#,
            r#"mpm_operator_meters{namespace="park",phase="Pending"} 1"#,
            r#"mpm_operator_meters{namespace="other",phase="Failed"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
