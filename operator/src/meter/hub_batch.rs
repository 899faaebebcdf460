//! Batching of the device-hub client: `PUT`s and `DELETE`s of Meters reconciled at the same moment
//! wait up to a window to travel together (contract: device-hub API, `POST /v1/meters:batch` and
//! `POST /v1/meters:batchDelete`), and each item gets its own result back.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::hub_client::{HubError, MeterPayload, RecordBody, MAX_BATCH};
use super::state::DeviceRecord;

#[derive(Debug, Deserialize)]
pub(super) struct BatchAnswer {
    pub(super) results: Vec<BatchResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BatchResult {
    #[serde(default)]
    serial_number: Option<String>,
    status: u16,
    #[serde(default)]
    meter: Option<RecordBody>,
    #[serde(default)]
    error: Option<String>,
}

/// An item waiting for its batch, and where its result goes.
pub(super) struct Pending<T, R> {
    pub(super) item: T,
    pub(super) reply: oneshot::Sender<Result<R, HubError>>,
}

pub(super) fn reply_all<T, R>(items: Vec<Pending<T, R>>, results: Vec<Result<R, HubError>>) {
    for (item, result) in items.into_iter().zip(results) {
        // The waiting reconcile may have been cancelled; nothing to do then.
        let _ = item.reply.send(result);
    }
}

/// Waits for one item, then collects more until `window` has passed since the first one or `max`
/// items are together. `None` when the channel is closed and empty.
pub async fn collect_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    window: Duration,
    max: usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut items = vec![first];
    let deadline = Instant::now() + window;
    while items.len() < max.max(1) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    Some(items)
}

/// Collects the items `rx` receives into batches of at most `max` within `window`, and hands each
/// to `flush` while collecting the next (what is in flight is bounded by `flush`).
pub(super) async fn batch_loop<T, R, F, Fut>(
    window: Duration,
    max: usize,
    mut rx: mpsc::Receiver<Pending<T, R>>,
    flush: F,
) where
    F: Fn(Vec<Pending<T, R>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let max = max.clamp(1, MAX_BATCH);
    while let Some(items) = collect_batch(&mut rx, window, max).await {
        tokio::spawn(flush(items));
    }
}

/// Pairs batch results with the serials sent: by position when the serial matches, else by serial.
fn pair_results(serials: &[&str], results: Vec<BatchResult>) -> Vec<Option<BatchResult>> {
    let mut by_serial: HashMap<String, usize> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        if let Some(s) = &r.serial_number {
            by_serial.entry(s.clone()).or_insert(i);
        }
    }
    let same_count = results.len() == serials.len();
    let mut slots: Vec<Option<BatchResult>> = results.into_iter().map(Some).collect();
    serials
        .iter()
        .enumerate()
        .map(|(i, serial)| {
            // A result without a serial counts by position only when there is one per item.
            let positional = slots.get(i).and_then(|s| s.as_ref()).is_some_and(|r| {
                match r.serial_number.as_deref() {
                    Some(s) => s == *serial,
                    None => same_count,
                }
            });
            let index = if positional {
                Some(i)
            } else {
                by_serial.get(*serial).copied()
            };
            index.and_then(|i| slots.get_mut(i).and_then(Option::take))
        })
        .collect()
}

/// What a batch result that is not a success means for its item: device-hub rejected it (`400`,
/// its message) or failed it (any other status), or did not answer for it.
fn item_error(addr: &str, path: &str, serial: &str, result: Option<BatchResult>) -> HubError {
    match result {
        None => HubError::Decode {
            addr: addr.to_string(),
            method: "POST".into(),
            path: path.into(),
            reason: format!("no result for meter {serial}"),
        },
        Some(r) if r.status == 400 => HubError::Rejected {
            serial: serial.to_string(),
            message: r
                .error
                .unwrap_or_else(|| "rejected without a message".into()),
        },
        Some(r) => HubError::Status {
            addr: addr.to_string(),
            method: "POST".into(),
            path: path.into(),
            status: r.status,
            body: r.error.unwrap_or_default(),
        },
    }
}

/// The results of a `POST /v1/meters:batch`, one per payload sent.
pub(super) fn match_batch_results(
    payloads: &[MeterPayload],
    results: Vec<BatchResult>,
    addr: &str,
) -> Vec<Result<DeviceRecord, HubError>> {
    let serials: Vec<&str> = payloads.iter().map(|p| p.serial_number.as_str()).collect();
    let path = "/v1/meters:batch";
    pair_results(&serials, results)
        .into_iter()
        .zip(serials)
        .map(|(result, serial)| match result {
            Some(BatchResult {
                status: 200 | 201,
                meter: Some(m),
                ..
            }) => Ok(m.into()),
            Some(BatchResult {
                status: 200 | 201,
                meter: None,
                ..
            }) => Err(HubError::Decode {
                addr: addr.to_string(),
                method: "POST".into(),
                path: path.into(),
                reason: format!("result for {serial} has no meter"),
            }),
            other => Err(item_error(addr, path, serial, other)),
        })
        .collect()
}

/// The results of a `POST /v1/meters:batchDelete`, one per serial sent (`204`, and `200`, `202` or
/// `404` as for a single `DELETE`, mean gone).
pub(super) fn match_delete_results(
    serials: &[String],
    results: Vec<BatchResult>,
    addr: &str,
) -> Vec<Result<(), HubError>> {
    let serials: Vec<&str> = serials.iter().map(String::as_str).collect();
    pair_results(&serials, results)
        .into_iter()
        .zip(serials)
        .map(|(result, serial)| match result {
            Some(BatchResult {
                status: 200 | 202 | 204 | 404,
                ..
            }) => Ok(()),
            other => Err(item_error(addr, "/v1/meters:batchDelete", serial, other)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::hub_client::test_payload as payload;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_close_after_the_window() {
        let (tx, mut rx) = mpsc::channel(100);
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            late.send(3).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            late.send(4).await.unwrap();
        });
        let first = collect_batch(&mut rx, Duration::from_millis(50), 500)
            .await
            .unwrap();
        assert_eq!(
            first,
            vec![0, 1, 2, 3],
            "item 3 arrived inside the window, item 4 after it"
        );
        let second = collect_batch(&mut rx, Duration::from_millis(50), 500)
            .await
            .unwrap();
        assert_eq!(second, vec![4]);
        drop(tx);
        assert!(collect_batch(&mut rx, Duration::from_millis(50), 500)
            .await
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_capped() {
        let (tx, mut rx) = mpsc::channel(2000);
        for i in 0..1200 {
            tx.send(i).await.unwrap();
        }
        let sizes = [
            collect_batch(&mut rx, Duration::from_millis(50), MAX_BATCH)
                .await
                .unwrap()
                .len(),
            collect_batch(&mut rx, Duration::from_millis(50), MAX_BATCH)
                .await
                .unwrap()
                .len(),
            collect_batch(&mut rx, Duration::from_millis(50), MAX_BATCH)
                .await
                .unwrap()
                .len(),
        ];
        assert_eq!(sizes, [500, 500, 200]);
    }

    #[test]
    fn batch_results_pair_by_position_or_serial() {
        let sent = vec![payload("A"), payload("B"), payload("C")];
        let results: BatchAnswer = serde_json::from_value(serde_json::json!({"results": [
            {"serialNumber": "B", "status": 400, "error": "hesId must not be empty"},
            {"serialNumber": "A", "status": 201, "meter": {"deviceId": "dev-a", "serialNumber": "A", "state": "Provisioned", "provisionedAt": "2024-01-01T00:00:00Z"}},
        ]}))
        .unwrap();
        let out = match_batch_results(&sent, results.results, "hub:8443");
        assert_eq!(out[0].as_ref().unwrap().device_id, "dev-a");
        assert!(out[1].as_ref().unwrap_err().is_rejection());
        assert!(matches!(out[2], Err(HubError::Decode { .. })));
    }

    #[test]
    fn delete_results_count_absent_as_done_and_keep_rejections() {
        let sent: Vec<String> = ["A", "B", "C", "D"].map(String::from).to_vec();
        let results: BatchAnswer = serde_json::from_value(serde_json::json!({"results": [
            {"serialNumber": "A", "status": 204},
            {"serialNumber": "C", "status": 400, "error": "serialNumber may only contain ..."},
            {"serialNumber": "B", "status": 404},
        ]}))
        .unwrap();
        let out = match_delete_results(&sent, results.results, "hub:8443");
        assert!(out[0].is_ok() && out[1].is_ok(), "{out:?}");
        assert!(out[2].as_ref().unwrap_err().is_rejection());
        assert!(
            matches!(out[3], Err(HubError::Decode { .. })),
            "no result for D"
        );
    }

    #[test]
    fn results_without_serials_pair_by_position_only_when_complete() {
        let sent: Vec<String> = ["A", "B"].map(String::from).to_vec();
        let answer = |v: serde_json::Value| -> Vec<BatchResult> {
            serde_json::from_value::<BatchAnswer>(v).unwrap().results
        };
        let all = answer(serde_json::json!({"results": [{"status": 204}, {"status": 400}]}));
        let out = match_delete_results(&sent, all, "hub:8443");
        assert!(out[0].is_ok() && out[1].is_err(), "{out:?}");
        // One result missing: which item it belongs to is unknown, so neither counts as deleted.
        let short = answer(serde_json::json!({"results": [{"status": 204}]}));
        let out = match_delete_results(&sent, short, "hub:8443");
        assert!(out.iter().all(Result::is_err), "{out:?}");
    }
}
