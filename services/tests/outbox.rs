//! device-hub's outbox against a real smoc-service: a backlog goes out in batches (`POST
//! /v1/batch`), in order, and one by one when smoc-service's ACL allows only the single paths.

mod common;

use std::net::SocketAddr;

use common::*;
use http::Method;
use mpm_services::util::TraceContext;

const METERS: usize = 250;

fn meter(serial: &str) -> serde_json::Value {
    serde_json::json!({"serialNumber": serial, "manufacturer": "Acme", "model": "X1",
        "protocol": "DLMS", "hesId": "hes-1", "desiredState": "Active"})
}

/// Provisions `METERS` meters through device-hub while smoc-service is down, then deletes the
/// first: a backlog of `METERS + 1` outbox items, the delete last.
async fn queue_backlog(w: &World, hub: &Svc) {
    let (_s, op) = client("op", &w.op);
    let hub_peer = peer(&hub.url(), HUB_SA);
    let items: Vec<_> = (0..METERS).map(|i| meter(&format!("B-{i:03}"))).collect();
    let r = op
        .call(
            "device-hub",
            &hub_peer,
            Method::POST,
            "/v1/meters:batch",
            Some(
                serde_json::json!({ "items": items })
                    .to_string()
                    .into_bytes(),
            ),
            &TraceContext::new_root(),
        )
        .await
        .expect("batch");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = op
        .call(
            "device-hub",
            &hub_peer,
            Method::DELETE,
            "/v1/meters/B-000",
            None,
            &TraceContext::new_root(),
        )
        .await
        .expect("delete");
    assert_eq!(r.status, 204);
}

/// Waits until smoc-service holds what the backlog says, then stops both and checks the store.
async fn assert_backlog_delivered(w: &World, hub: Svc, smoc: Svc) -> String {
    eventually(90, "device-hub's outbox drained", || {
        let health = hub.health;
        async move {
            let (_, m) = http(health, "GET", "/metrics", &[], b"").await;
            m.lines()
                .any(|l| l.starts_with("mpm_outbox_pending{") && l.ends_with(" 0"))
        }
    })
    .await;
    let (_, smoc_metrics) = http(smoc.health, "GET", "/metrics", &[], b"").await;
    hub.stop().await;
    smoc.stop().await;
    let store =
        mpm_services::store::Store::open(&w.smoc.data_dir(), mpm_services::smoc::STORE_FILE)
            .expect("open smoc store");
    let devices: Vec<(String, serde_json::Value)> = store
        .list_json(mpm_services::smoc::DEVICES)
        .expect("devices");
    assert_eq!(devices.len(), METERS - 1, "B-000 was deleted after its put");
    assert!(devices.iter().all(|(k, _)| k != "B-000"));
    let b001 = &devices[0].1;
    assert_eq!(b001["serialNumber"], "B-001");
    assert_eq!(b001["state"], "Provisioned");
    smoc_metrics
}

async fn start_hub_towards(w: &World) -> (Svc, SocketAddr) {
    let smoc_addr = free_addr();
    let hub = start_hub(&w.hub, w.hub_config(&format!("https://{smoc_addr}")), None).await;
    (hub, smoc_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_reaches_smoc_service_in_batches_and_in_order() {
    let w = World::new();
    let (hub, smoc_addr) = start_hub_towards(&w).await;
    queue_backlog(&w, &hub).await;
    let smoc = start_smoc_at(&w.smoc, w.smoc_config(None), Some(smoc_addr)).await;
    let metrics = assert_backlog_delivered(&w, hub, smoc).await;
    // 251 items in pages of 100: three batches, no single calls.
    assert_eq!(requests(&metrics, "/v1/batch", 200), 3, "{metrics}");
    assert_eq!(requests(&metrics, "/v1/devices/{serial}", 201), 0);
    assert_eq!(requests(&metrics, "/v1/devices/{serial}", 204), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_without_the_batch_path_gets_single_calls() {
    let w = World::new();
    let hub_id = spiffe(HUB_SA);
    w.smoc.set_acl(&[(
        hub_id.as_str(),
        &["PUT", "POST", "DELETE"],
        &["/v1/devices", "/v1/readings"],
    )]);
    let (hub, smoc_addr) = start_hub_towards(&w).await;
    queue_backlog(&w, &hub).await;
    let smoc = start_smoc_at(&w.smoc, w.smoc_config(None), Some(smoc_addr)).await;
    let metrics = assert_backlog_delivered(&w, hub, smoc).await;
    assert_eq!(requests(&metrics, "/v1/batch", 200), 0, "{metrics}");
    assert_eq!(
        requests(&metrics, "/v1/devices/{serial}", 201),
        METERS as u64,
        "{metrics}"
    );
    assert_eq!(requests(&metrics, "/v1/devices/{serial}", 204), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn items_wait_for_an_acl_that_allows_device_hub() {
    let w = World::new();
    // smoc-service allows nobody yet (a ServiceACL not applied so far).
    w.smoc.set_acl(&[]);
    let (hub, smoc_addr) = start_hub_towards(&w).await;
    let smoc = start_smoc_at(&w.smoc, w.smoc_config(None), Some(smoc_addr)).await;
    queue_backlog(&w, &hub).await;
    eventually(30, "smoc-service refused the outbox with 403", || {
        let health = smoc.health;
        async move {
            let (_, m) = http(health, "GET", "/metrics", &[], b"").await;
            m.lines().any(|l| l.starts_with("mpm_acl_denials_total{"))
        }
    })
    .await;
    let (_, m) = http(hub.health, "GET", "/metrics", &[], b"").await;
    assert!(
        outbox_pending(&m) > 0,
        "the refused items stay in the outbox: {m}"
    );
    // The ACL arrives: everything queued is delivered, nothing was dropped.
    let hub_id = spiffe(HUB_SA);
    w.smoc.set_acl(&[(hub_id.as_str(), &[], &[])]);
    assert_backlog_delivered(&w, hub, smoc).await;
}

/// device-hub's `mpm_outbox_pending` gauge.
fn outbox_pending(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("mpm_outbox_pending{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn put_meter_via_hub(w: &World, hub: &Svc, serial: &str) {
    let (_s, op) = client("op", &w.op);
    let r = op
        .call(
            "device-hub",
            &peer(&hub.url(), HUB_SA),
            Method::PUT,
            &format!("/v1/meters/{serial}"),
            Some(meter(serial).to_string().into_bytes()),
            &TraceContext::new_root(),
        )
        .await
        .expect("put");
    assert!(r.status == 201 || r.status == 200, "{}", r.status);
}

/// Waits (up to 60 s: the outbox backs off while smoc-service is down) until device-hub's outbox
/// holds `pending` items.
async fn outbox_reaches(hub: &Svc, pending: u64) -> bool {
    for _ in 0..240 {
        let (_, m) = http(hub.health, "GET", "/metrics", &[], b"").await;
        if m.lines().any(|l| l.starts_with("mpm_outbox_pending{")) && outbox_pending(&m) == pending
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    false
}

/// The devices smoc-service stored (read from its store after it stopped).
fn smoc_devices(w: &World) -> Vec<String> {
    let store =
        mpm_services::store::Store::open(&w.smoc.data_dir(), mpm_services::smoc::STORE_FILE)
            .expect("open smoc store");
    store
        .list_json::<serde_json::Value>(mpm_services::smoc::DEVICES)
        .expect("devices")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Attack: one meter whose calls smoc-service keeps refusing (here: its ACL allows only the path
/// of `A-1`) stalled every other meter's item behind it forever. Items of other meters
/// now pass; the refused one stays queued (in order for its own meter).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refused_meter_does_not_stall_the_others() {
    let w = World::new();
    let hub_id = spiffe(HUB_SA);
    w.smoc.set_acl(&[(
        hub_id.as_str(),
        &["GET", "PUT", "POST", "DELETE"],
        &["/v1/devices/A-1"],
    )]);
    let (hub, smoc_addr) = start_hub_towards(&w).await;
    put_meter_via_hub(&w, &hub, "B-1").await;
    put_meter_via_hub(&w, &hub, "A-1").await;
    assert!(outbox_reaches(&hub, 2).await, "both queued");
    let smoc = start_smoc_at(&w.smoc, w.smoc_config(None), Some(smoc_addr)).await;
    assert!(
        outbox_reaches(&hub, 1).await,
        "A-1 stalled behind the refused B-1"
    );
    hub.stop().await;
    smoc.stop().await;
    assert_eq!(smoc_devices(&w), vec!["A-1".to_string()]);
    // B-1 stays queued, its refusal counted.
    let store =
        mpm_services::store::Store::open(&w.hub.data_dir(), mpm_services::device_hub::STORE_FILE)
            .expect("reopen");
    let left: Vec<(String, mpm_services::device_hub::OutboxItem)> = store
        .list_json(mpm_services::device_hub::OUTBOX)
        .expect("outbox");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.path, "/v1/devices/B-1");
    assert!(left[0].1.attempts >= 1);
}

/// Attack: a stored outbox row that cannot be decoded (corrupt JSON) stopped the outbox for good.
/// It is now moved to `outbox_quarantine` (bytes unchanged, counted, logged) and the rest flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_outbox_row_is_quarantined_not_blocking() {
    let w = World::new();
    {
        let store = mpm_services::store::Store::open(
            &w.hub.data_dir(),
            mpm_services::device_hub::STORE_FILE,
        )
        .expect("open hub store");
        store
            .write_batch(
                mpm_services::device_hub::OUTBOX,
                &[("0".to_string(), b"{garbage".to_vec())],
                &[],
            )
            .expect("garbage row");
    }
    let (hub, smoc_addr) = start_hub_towards(&w).await;
    put_meter_via_hub(&w, &hub, "A-1").await;
    assert!(
        outbox_reaches(&hub, 1).await,
        "the corrupt row is moved aside, A-1 queued"
    );
    let smoc = start_smoc_at(&w.smoc, w.smoc_config(None), Some(smoc_addr)).await;
    assert!(
        outbox_reaches(&hub, 0).await,
        "A-1 stalled behind the corrupt row"
    );
    let (_, m) = http(hub.health, "GET", "/metrics", &[], b"").await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("mpm_store_quarantined_total{") && l.ends_with(" 1")),
        "{m}"
    );
    hub.stop().await;
    smoc.stop().await;
    assert_eq!(smoc_devices(&w), vec!["A-1".to_string()]);
    let store =
        mpm_services::store::Store::open(&w.hub.data_dir(), mpm_services::device_hub::STORE_FILE)
            .expect("reopen");
    assert_eq!(
        store
            .page_raw("outbox_quarantine", None, 10)
            .expect("quarantine"),
        vec![("0".to_string(), b"{garbage".to_vec())]
    );
}
