//! Events are recorded off the reconcile path: a bounded queue feeds one worker that publishes at
//! its own bounded rate, so reconciles never wait for Events and an Event storm cannot exhaust the
//! write budget of the objects themselves (when the queue is full, Events are dropped and counted,
//! as client-go's broadcaster does).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;

use crate::runtime::metrics::Metrics;
use crate::runtime::ratelimit::RateLimiter;

/// How many Events may wait to be published.
const QUEUE: usize = 2048;

#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
}

impl EventQueue {
    /// Starts the publishing worker (needs a Tokio runtime).
    pub fn start(recorder: Recorder, metrics: Arc<Metrics>, per_second: f64, burst: u32) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let limiter = RateLimiter::new(per_second, burst);
        let worker_metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some((event, regarding)) = rx.recv().await {
                limiter.acquire().await;
                worker_metrics.write("Event", "create");
                if let Err(e) = recorder.publish(&event, &regarding).await {
                    tracing::warn!(error = %e, reason = %event.reason, "recording an event failed");
                }
            }
        });
        Self { tx, metrics }
    }

    pub fn send(&self, event: Event, regarding: ObjectReference) {
        if self.tx.try_send((event, regarding)).is_err() {
            self.metrics.write("Event", "dropped");
            tracing::warn!("event queue full; dropping an event");
        }
    }
}
