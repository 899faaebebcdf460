//! device-hub's outbox: the calls to smoc-service that device-hub's own writes imply, stored in the
//! same transaction as those writes and delivered in order in the background (never lost; a crash
//! delivers some again, which smoc-service's idempotent writes allow). A page of items goes out as
//! one `POST /v1/batch` (contract: smoc-service API); when smoc-service does not take batches (an
//! older version, or an ACL that allows only the single paths) the items go one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;

use super::{Hub, OUTBOX};
use crate::client::{refused_for_good, ClientError};
use crate::config::PeerConfig;
use crate::retry::RoundBackoff;
use crate::smoc::writes::BatchOp;
use crate::store::WriteOp;
use crate::util::TraceContext;

/// Outbox items delivered per round (one batch), and deleted together after it.
const OUTBOX_PAGE: usize = 100;

/// Where items go that smoc-service kept refusing (see [`OutboxPolicy`]): kept for an operator,
/// never silently dropped.
pub const PARKED: &str = "outbox_parked";
/// Where stored rows go that cannot be decoded (bytes unchanged).
pub const QUARANTINE: &str = "outbox_quarantine";

/// When an item that smoc-service keeps refusing (403, 404, 409, 5xx ...) leaves the queue for
/// [`PARKED`], so it does not hold back its own meter forever. Items of other meters pass it
/// anyway; failures to reach smoc-service at all do not count (an outage parks nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxPolicy {
    /// Refusals after which an item is parked.
    pub max_attempts: u32,
    /// Age after which an item refused at least once is parked.
    pub max_age: Duration,
}

impl Default for OutboxPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 50,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why `item` is parked now, if it is.
pub fn park_reason(
    item: &OutboxItem,
    now: chrono::DateTime<chrono::Utc>,
    policy: &OutboxPolicy,
) -> Option<String> {
    if item.attempts >= policy.max_attempts {
        return Some(format!(
            "refused {} times (limit {})",
            item.attempts, policy.max_attempts
        ));
    }
    let queued = chrono::DateTime::parse_from_rfc3339(&item.enqueued_at).ok()?;
    let age = now.signed_duration_since(queued).to_std().ok()?;
    (item.attempts > 0 && age > policy.max_age).then(|| {
        format!(
            "refused and queued for {}s (limit {}s)",
            age.as_secs(),
            policy.max_age.as_secs()
        )
    })
}

/// The meter an item belongs to: one meter's items go in order, other meters' items pass them.
pub fn meter_of(item: &OutboxItem) -> String {
    if let Some(serial) = item.path.strip_prefix("/v1/devices/") {
        return serial.to_string();
    }
    item.body
        .as_ref()
        .and_then(|b| b.get("serialNumber"))
        .and_then(|v| v.as_str())
        .map_or_else(|| item.path.clone(), str::to_string)
}

/// A call to smoc-service waiting to be delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxItem {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    pub traceparent: String,
    #[serde(default)]
    pub attempts: u32,
    pub enqueued_at: String,
}

/// The batch write that does what `item`'s single call does; `None` for a call the batch
/// cannot carry.
pub fn batch_op(item: &OutboxItem) -> Option<BatchOp> {
    let device = item.path.strip_prefix("/v1/devices/");
    match (item.method.as_str(), device, item.path.as_str()) {
        ("PUT", Some(serial), _) if !serial.contains('/') => Some(BatchOp::PutDevice {
            serial_number: serial.to_string(),
            device: item.body.clone()?,
        }),
        ("DELETE", Some(serial), _) if !serial.contains('/') => Some(BatchOp::DeleteDevice {
            serial_number: serial.to_string(),
        }),
        ("POST", None, "/v1/readings") => Some(BatchOp::PostReading {
            reading: item.body.clone()?,
        }),
        _ => None,
    }
}

/// What an answer of smoc-service (to a single call or to one batch item) means for the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Stored: the item leaves the outbox.
    Stored,
    /// Refused for good (400, 413, 422): logged, and the item leaves the outbox.
    Refused,
    /// Not taken now (403 before an ACL allows device-hub, 404 during a rollout, ...): the item
    /// and those after it stay, retried with backoff.
    NotNow,
}

impl Answer {
    fn of(status: u16) -> Self {
        match status {
            200..=299 => Answer::Stored,
            s if refused_for_good(s) => Answer::Refused,
            _ => Answer::NotNow,
        }
    }
}

/// smoc-service's answer to `POST /v1/batch`.
#[derive(Debug, Deserialize)]
struct BatchAnswer {
    results: Vec<ItemAnswer>,
}

#[derive(Debug, Deserialize)]
struct ItemAnswer {
    status: u16,
    #[serde(default)]
    error: Option<String>,
}

/// What a round did with its page.
#[derive(Debug, Default)]
struct Delivery {
    /// Keys of items delivered, or refused by smoc-service for good (logged and dropped).
    done: Vec<String>,
    /// Items smoc-service did not take now, with their refusal counted: they stay, and hold back
    /// the later items of their meter (not those of other meters) until the next round.
    not_taken: Vec<(String, OutboxItem)>,
    /// Meters with an item not taken this round.
    blocked: std::collections::HashSet<String>,
    /// smoc-service could not be reached: the rest waits for backoff.
    failed: bool,
}

impl Delivery {
    /// Whether `item` waits because an earlier item of its meter was not taken.
    fn holds_back(&self, item: &OutboxItem) -> bool {
        !self.blocked.is_empty() && self.blocked.contains(&meter_of(item))
    }

    /// Records smoc-service's answer for `item`.
    fn settle(&mut self, key: &str, item: &OutboxItem, status: u16, error: &str) {
        match Answer::of(status) {
            Answer::Stored => {}
            Answer::Refused => {
                tracing::error!(path = %item.path, status, error, "smoc-service refused outbox item; dropping it");
            }
            Answer::NotNow => {
                tracing::warn!(path = %item.path, status, error, attempts = item.attempts + 1, "smoc-service did not take outbox item; retrying");
                self.blocked.insert(meter_of(item));
                let mut counted = item.clone();
                counted.attempts = counted.attempts.saturating_add(1);
                self.not_taken.push((key.to_string(), counted));
                return;
            }
        }
        self.done.push(key.to_string());
    }
}

/// How a batch call went.
enum BatchOutcome {
    Delivered(Delivery),
    /// smoc-service did not take the batch (no such route, not allowed, malformed answer):
    /// deliver the items one by one.
    NotTaken(String),
}

/// After a batch was not taken, pages go one by one for this long before a batch is tried again
/// (an ACL without `/v1/batch` would otherwise see a refused batch per page).
const BATCH_RETRY_AFTER: Duration = Duration::from_secs(60);

struct Outbox {
    hub: Arc<Hub>,
    smoc: PeerConfig,
    shutdown: watch::Receiver<bool>,
    /// Set when a batch was not taken: until then, pages go one by one.
    singles_until: Option<Instant>,
}

impl Outbox {
    async fn deliver(&mut self, page: Vec<(String, OutboxItem)>) -> Delivery {
        let batches_paused = self.singles_until.is_some_and(|t| Instant::now() < t);
        if page.len() > 1 && !batches_paused {
            let ops: Option<Vec<BatchOp>> = page.iter().map(|(_, item)| batch_op(item)).collect();
            if let Some(ops) = ops {
                match self.deliver_batch(&page, ops).await {
                    BatchOutcome::Delivered(d) => {
                        self.singles_until = None;
                        return d;
                    }
                    BatchOutcome::NotTaken(why) => {
                        tracing::warn!(reason = %why, retry_in_s = BATCH_RETRY_AFTER.as_secs(), "smoc-service did not take a batch; delivering one by one");
                        self.singles_until = Some(Instant::now() + BATCH_RETRY_AFTER);
                    }
                }
            }
        }
        self.deliver_singly(page).await
    }

    async fn deliver_batch(
        &mut self,
        page: &[(String, OutboxItem)],
        ops: Vec<BatchOp>,
    ) -> BatchOutcome {
        let trace =
            TraceContext::from_header_or_new(page.first().map(|(_, i)| i.traceparent.as_str()));
        let body = match serde_json::to_vec(&serde_json::json!({ "items": ops })) {
            Ok(b) => b,
            Err(e) => return BatchOutcome::NotTaken(format!("cannot encode the batch: {e}")),
        };
        let span = tracing::info_span!("outbox", trace_id = %trace.trace_id, items = page.len());
        let call = self.hub.client.call(
            "smoc-service",
            &self.smoc,
            http::Method::POST,
            "/v1/batch",
            Some(body),
            &trace,
        );
        let outcome = tokio::select! {
            r = call.instrument(span) => r,
            _ = self.shutdown.changed() => return BatchOutcome::Delivered(Delivery::default()),
        };
        let resp = match outcome {
            Ok(resp) if (200..300).contains(&resp.status) => resp,
            Ok(resp) => {
                return BatchOutcome::NotTaken(format!(
                    "answered {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                ))
            }
            Err(e) => {
                record_failure(&page[0].1, &e);
                return BatchOutcome::Delivered(Delivery {
                    failed: true,
                    ..Delivery::default()
                });
            }
        };
        let answer = match serde_json::from_slice::<BatchAnswer>(&resp.body) {
            Ok(a) if a.results.len() == page.len() => a,
            Ok(a) => {
                return BatchOutcome::NotTaken(format!(
                    "{} results for {} items",
                    a.results.len(),
                    page.len()
                ))
            }
            Err(e) => return BatchOutcome::NotTaken(format!("unreadable answer: {e}")),
        };
        // Items go in order per meter: the first one of a meter not stored (and not refused for
        // good) and its meter's items after it wait for the next round (sent again then, in
        // order); other meters' items are settled.
        let mut delivery = Delivery::default();
        for ((key, item), result) in page.iter().zip(&answer.results) {
            if delivery.holds_back(item) {
                continue;
            }
            let error = result.error.as_deref().unwrap_or("");
            delivery.settle(key, item, result.status, error);
        }
        BatchOutcome::Delivered(delivery)
    }

    async fn deliver_singly(&mut self, page: Vec<(String, OutboxItem)>) -> Delivery {
        let mut delivery = Delivery::default();
        for (key, item) in page {
            if *self.shutdown.borrow() {
                break;
            }
            if delivery.holds_back(&item) {
                continue;
            }
            let method =
                http::Method::from_bytes(item.method.as_bytes()).unwrap_or(http::Method::POST);
            let trace = TraceContext::from_header_or_new(Some(&item.traceparent));
            let body = item.body.as_ref().and_then(|b| serde_json::to_vec(b).ok());
            let span = tracing::info_span!("outbox", trace_id = %trace.trace_id, path = %item.path);
            let call =
                self.hub
                    .client
                    .call("smoc-service", &self.smoc, method, &item.path, body, &trace);
            let outcome = tokio::select! {
                r = call.instrument(span) => r,
                _ = self.shutdown.changed() => break,
            };
            match outcome {
                Ok(resp) => {
                    let body = String::from_utf8_lossy(&resp.body);
                    delivery.settle(&key, &item, resp.status, &body);
                }
                Err(e) => {
                    record_failure(&item, &e);
                    delivery.failed = true;
                    break;
                }
            }
        }
        delivery
    }
}

/// Logs a failed delivery. Not counted as a refusal: an outage of smoc-service parks nothing.
fn record_failure(item: &OutboxItem, e: &ClientError) {
    let permanent = !e.is_transient() && !matches!(e, ClientError::CircuitOpen(_));
    tracing::warn!(path = %item.path, error = %e, permanent, "outbox delivery failed");
}

/// Reads the head of the outbox: rows that cannot be decoded are moved to [`QUARANTINE`]
/// (counted, logged) and items refused too often to [`PARKED`]; the rest is returned, with
/// whether the page was full.
async fn next_page(hub: &Arc<Hub>) -> (Vec<(String, OutboxItem)>, bool) {
    let raw = match hub
        .store
        .run(|s| s.page_raw(OUTBOX, None, OUTBOX_PAGE))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read outbox");
            return (Vec::new(), false);
        }
    };
    let full = raw.len() >= OUTBOX_PAGE;
    let now = chrono::Utc::now();
    let mut page = Vec::with_capacity(raw.len());
    for (key, bytes) in raw {
        let item = match serde_json::from_slice::<OutboxItem>(&bytes) {
            Ok(item) => item,
            Err(e) => {
                let k = key.clone();
                let moved = hub
                    .store
                    .run(move |s| s.move_row(OUTBOX, &k, QUARANTINE))
                    .await;
                hub.metrics
                    .store_quarantined
                    .get_or_create(&crate::metrics::Metrics::labels(&[("table", OUTBOX)]))
                    .inc();
                tracing::error!(key = %key, error = %e, bytes = bytes.len(), moved = ?moved.as_ref().map_err(ToString::to_string), to = QUARANTINE, "outbox row cannot be decoded; moved aside");
                continue;
            }
        };
        if let Some(reason) = park_reason(&item, now, &hub.outbox_policy) {
            let ops = WriteOp::put_json(PARKED, &key, &item)
                .map(|put| vec![put, WriteOp::delete(OUTBOX, &key)]);
            let r = match ops {
                Ok(ops) => hub.store.run(move |s| s.apply(&ops)).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => {
                    hub.metrics.outbox_parked.inc();
                    tracing::error!(key = %key, path = %item.path, attempts = item.attempts, %reason, to = PARKED, "smoc-service keeps refusing outbox item; parked");
                }
                Err(e) => tracing::error!(key = %key, error = %e, "cannot park outbox item"),
            }
            continue;
        }
        page.push((key, item));
    }
    (page, full)
}

/// Delivers outbox items in order;/// Delivers outbox items in order; items smoc-service refuses for good (400, 413, 422) are dropped
/// with an error log, every other failure waits with backoff and is retried.
pub(super) async fn outbox_worker(hub: Arc<Hub>, shutdown: watch::Receiver<bool>) {
    let Some(smoc) = hub.smoc.clone() else {
        tracing::warn!("no smoc-service peer configured; outbox will not be delivered");
        return;
    };
    let mut outbox = Outbox {
        hub: hub.clone(),
        smoc,
        shutdown: shutdown.clone(),
        singles_until: None,
    };
    let mut shutdown = shutdown;
    let mut backoff = RoundBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (pending, more) = next_page(&hub).await;
        match hub.store.run(|s| s.count(OUTBOX)).await {
            Ok(n) => {
                hub.metrics.outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::error!(error = %e, "cannot count the outbox"),
        }
        // A full page means more is waiting: go on without waiting for the next notification.
        let Delivery {
            done,
            not_taken,
            mut failed,
            ..
        } = outbox.deliver(pending).await;
        // An item not taken is retried after backoff (other meters' items went meanwhile).
        failed |= !not_taken.is_empty();
        let counted: Vec<(String, Vec<u8>)> = not_taken
            .iter()
            .filter_map(|(k, item)| Some((k.clone(), serde_json::to_vec(item).ok()?)))
            .collect();
        // Delivered (or refused) items leave the outbox together, in one transaction per round:
        // a crash before that delivers them again, which smoc-service's idempotent calls allow.
        if !done.is_empty() || !counted.is_empty() {
            let delivered = done.len();
            if let Err(e) = hub
                .store
                .run(move |s| s.write_batch(OUTBOX, &counted, &done))
                .await
            {
                tracing::error!(error = %e, delivered, "cannot delete delivered outbox items; they will be delivered again");
                // Back off rather than resend the same page at once.
                failed = true;
            }
        }
        if *shutdown.borrow() {
            return;
        }
        if !failed {
            backoff.succeeded();
            if more {
                continue;
            }
        }
        let wait = if failed {
            backoff.failed()
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = hub.outbox_notify.notified(), if !failed => {},
            _ = tokio::time::sleep(wait) => {},
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(method: &str, path: &str, body: Option<serde_json::Value>) -> OutboxItem {
        OutboxItem {
            method: method.into(),
            path: path.into(),
            body,
            traceparent: String::new(),
            attempts: 0,
            enqueued_at: "2026-11-23T05:00:00Z".into(),
        }
    }

    #[test]
    fn every_call_device_hub_queues_has_its_batch_write() {
        assert_eq!(
            batch_op(&item(
                "PUT",
                "/v1/devices/M-1",
                Some(json!({"state": "Provisioned"}))
            )),
            Some(BatchOp::PutDevice {
                serial_number: "M-1".into(),
                device: json!({"state": "Provisioned"})
            })
        );
        assert_eq!(
            batch_op(&item("DELETE", "/v1/devices/M-1", None)),
            Some(BatchOp::DeleteDevice {
                serial_number: "M-1".into()
            })
        );
        assert_eq!(
            batch_op(&item("POST", "/v1/readings", Some(json!({"value": 1.0})))),
            Some(BatchOp::PostReading {
                reading: json!({"value": 1.0})
            })
        );
    }

    #[test]
    fn only_stored_and_refused_items_leave_the_outbox() {
        assert_eq!(Answer::of(200), Answer::Stored);
        assert_eq!(Answer::of(204), Answer::Stored);
        for status in [400, 413, 422] {
            assert_eq!(Answer::of(status), Answer::Refused, "{status}");
        }
        for status in [401, 403, 404, 409, 429, 500] {
            assert_eq!(Answer::of(status), Answer::NotNow, "{status}");
        }
        let mut delivery = Delivery::default();
        let put = item("PUT", "/v1/devices/M-1", Some(json!({})));
        delivery.settle("1", &put, 201, "");
        delivery.settle("2", &put, 400, "invalid serial");
        delivery.settle("3", &put, 403, "not allowed");
        assert_eq!(delivery.done, vec!["1".to_string(), "2".to_string()]);
        assert_eq!(delivery.not_taken.len(), 1);
        assert_eq!(delivery.not_taken[0].1.attempts, 1);
        // M-1's later items wait; another meter's pass.
        assert!(delivery.holds_back(&item("DELETE", "/v1/devices/M-1", None)));
        assert!(!delivery.holds_back(&item("PUT", "/v1/devices/M-2", Some(json!({})))));
        assert!(delivery.holds_back(&item(
            "POST",
            "/v1/readings",
            Some(json!({"serialNumber": "M-1"}))
        )));
    }

    #[test]
    fn items_refused_too_often_or_too_long_are_parked() {
        let policy = OutboxPolicy {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T05:30:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let mut it = item("PUT", "/v1/devices/M-1", Some(json!({})));
        assert_eq!(park_reason(&it, now, &policy), None);
        it.attempts = 3;
        assert!(park_reason(&it, now, &policy).is_some_and(|r| r.contains("3 times")));
        // Old but never refused (smoc-service was down): stays.
        it.attempts = 0;
        let later = now + chrono::Duration::hours(2);
        assert_eq!(park_reason(&it, later, &policy), None);
        it.attempts = 1;
        assert!(park_reason(&it, later, &policy).is_some());
        assert_eq!(park_reason(&it, now, &policy), None);
    }

    #[test]
    fn calls_a_batch_cannot_carry_go_one_by_one() {
        for (method, path, body) in [
            ("PUT", "/v1/devices/M-1", None),
            ("PUT", "/v1/devices/M-1/extra", Some(json!({}))),
            ("PATCH", "/v1/devices/M-1", Some(json!({}))),
            ("POST", "/v1/readings", None),
            ("POST", "/v1/other", Some(json!({}))),
        ] {
            assert_eq!(batch_op(&item(method, path, body)), None, "{method} {path}");
        }
    }
}
