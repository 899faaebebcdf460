//! device-hub, connector and the chain connector -> device-hub -> smoc-service; persistence.

mod common;

use common::*;
use http::Method;
use mpm_services::util::TraceContext;

fn meter(serial: &str, model: &str) -> Vec<u8> {
    serde_json::json!({"serialNumber": serial, "manufacturer": "Acme", "model": model,
        "protocol": "DLMS", "hesId": "hes-1", "location": {"lat": 1.0}, "desiredState": "Active"})
    .to_string()
    .into_bytes()
}

const READINGS_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<m:MeterReadings xmlns:m="http://iec.ch/TC57/2011/MeterReadings#">
  <m:MeterReading>
    <m:Meter><m:mRID>MTR-9</m:mRID></m:Meter>
    <m:Readings>
      <m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:timeStamp>2026-11-22T10:00:00Z</m:timeStamp><m:value>42.5</m:value>
    </m:Readings>
  </m:MeterReading>
</m:MeterReadings>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_hub_api_idempotent_put_and_persistence_across_restart() {
    let w = World::new();
    let smoc_addr = free_addr(); // nothing listens: provisioning stays in the outbox
    let hub = start_hub(&w.hub, w.hub_config(&format!("https://{smoc_addr}")), None).await;
    let (_s, op) = client("op", &w.op);
    let p = peer(&hub.url(), HUB_SA);
    let tc = TraceContext::new_root();
    let call = |m: Method, path: String, body: Option<Vec<u8>>| {
        let (op, p, tc) = (&op, p.clone(), tc.clone());
        async move {
            let r = op
                .call("device-hub", &p, m, &path, body, &tc)
                .await
                .expect("call");
            (r.status, String::from_utf8_lossy(&r.body).to_string())
        }
    };

    let (code, body) = call(
        Method::PUT,
        "/v1/meters/MTR-1".into(),
        Some(meter("MTR-1", "X1")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let first = json(&body);
    assert!(first["deviceId"]
        .as_str()
        .is_some_and(|d| d.starts_with("dev-")));
    assert_eq!(first["state"], "Provisioned");
    let (code, body) = call(
        Method::PUT,
        "/v1/meters/MTR-1".into(),
        Some(meter("MTR-1", "X1")),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["deviceId"], first["deviceId"]);
    let (code, body) = call(
        Method::PUT,
        "/v1/meters/MTR-1".into(),
        Some(meter("MTR-1", "X2")),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["deviceId"], first["deviceId"]);
    assert_eq!(json(&body)["model"], "X2");

    // Bad payloads.
    let (code, body) = call(
        Method::PUT,
        "/v1/meters/MTR-1".into(),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid meter JSON")),
        "{body}"
    );
    let (code, body) = call(
        Method::PUT,
        "/v1/meters/OTHER".into(),
        Some(meter("MTR-1", "X1")),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("does not match"), "{body}");
    let (code, body) = call(
        Method::PUT,
        "/v1/meters/M2".into(),
        Some(br#"{"serialNumber":"M2"}"#.to_vec()),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("missing field"), "{body}");

    // Batch.
    let batch = serde_json::json!({"items": [
        serde_json::from_slice::<serde_json::Value>(&meter("B-1", "X1")).expect("json"),
        {"serialNumber": "B-2"},
        serde_json::from_slice::<serde_json::Value>(&meter("MTR-1", "X2")).expect("json"),
    ]});
    let (code, body) = call(
        Method::POST,
        "/v1/meters:batch".into(),
        Some(batch.to_string().into_bytes()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let res = json(&body)["results"].as_array().cloned().expect("results");
    let statuses: Vec<u64> = res
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, vec![201, 400, 200]);
    let too_many = serde_json::json!({"items": vec![serde_json::json!({}); 501]});
    assert_eq!(
        call(
            Method::POST,
            "/v1/meters:batch".into(),
            Some(too_many.to_string().into_bytes())
        )
        .await
        .0,
        400
    );

    // Delete is idempotent.
    assert_eq!(
        call(Method::DELETE, "/v1/meters/B-1".into(), None).await.0,
        204
    );
    assert_eq!(
        call(Method::DELETE, "/v1/meters/B-1".into(), None).await.0,
        204
    );
    assert_eq!(
        call(Method::GET, "/v1/meters/B-1".into(), None).await.0,
        404
    );
    // ... but a path that is no serial is refused, as in a batch.
    let (code, body) = call(Method::DELETE, "/v1/meters/bad*serial".into(), None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("may only contain"), "{body}");

    // Batch delete: one result per serial, in order; absent serials are done too.
    for serial in ["D-1", "D-2"] {
        let (code, _) = call(
            Method::PUT,
            format!("/v1/meters/{serial}"),
            Some(meter(serial, "X1")),
        )
        .await;
        assert_eq!(code, 201);
    }
    let deletes = serde_json::json!({"serialNumbers": ["D-1", "B-1", "not a serial", "D-2"]});
    let (code, body) = call(
        Method::POST,
        "/v1/meters:batchDelete".into(),
        Some(deletes.to_string().into_bytes()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let res = json(&body)["results"].as_array().cloned().expect("results");
    let answers: Vec<(String, u64)> = res
        .iter()
        .map(|r| {
            (
                r["serialNumber"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        answers,
        vec![
            ("D-1".to_string(), 204),
            ("B-1".to_string(), 204),
            ("not a serial".to_string(), 400),
            ("D-2".to_string(), 204)
        ]
    );
    for serial in ["D-1", "D-2"] {
        assert_eq!(
            call(Method::GET, format!("/v1/meters/{serial}"), None)
                .await
                .0,
            404
        );
    }
    for bad in [
        serde_json::json!({"serialNumbers": vec!["S"; 501]}),
        serde_json::json!({"items": []}),
    ] {
        let (code, body) = call(
            Method::POST,
            "/v1/meters:batchDelete".into(),
            Some(bad.to_string().into_bytes()),
        )
        .await;
        assert_eq!(code, 400, "{body}");
    }

    // Restart on the same data dir: state is still there.
    hub.stop().await;
    let hub = start_hub(&w.hub, w.hub_config(&format!("https://{smoc_addr}")), None).await;
    let p2 = peer(&hub.url(), HUB_SA);
    let r = op
        .call(
            "device-hub",
            &p2,
            Method::GET,
            "/v1/meters/MTR-1",
            None,
            &tc,
        )
        .await
        .expect("get");
    assert_eq!(r.status, 200);
    let after = json(&String::from_utf8_lossy(&r.body));
    assert_eq!(after["deviceId"], first["deviceId"]);
    assert_eq!(after["model"], "X2");
    let r = op
        .call("device-hub", &p2, Method::GET, "/v1/meters", None, &tc)
        .await
        .expect("list");
    assert_eq!(
        json(&String::from_utf8_lossy(&r.body))["items"]
            .as_array()
            .map(|a| a.len()),
        Some(1)
    );
    // Lists come in pages: `limit` (at most 1000) and a `continue` token while more follow.
    for serial in ["MTR-2", "MTR-3"] {
        let body = serde_json::json!({"serialNumber": serial, "manufacturer": "Acme", "model": "X1",
            "protocol": "DLMS", "hesId": "hes-1", "desiredState": "Active"});
        let r = op
            .call(
                "device-hub",
                &p2,
                Method::PUT,
                &format!("/v1/meters/{serial}"),
                Some(body.to_string().into_bytes()),
                &tc,
            )
            .await
            .expect("put");
        assert_eq!(r.status, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/meters?limit=2".to_string();
    for _ in 0..3 {
        let r = op
            .call("device-hub", &p2, Method::GET, &path, None, &tc)
            .await
            .expect("page");
        assert_eq!(r.status, 200);
        let page = json(&String::from_utf8_lossy(&r.body));
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|m| m["serialNumber"].clone()));
        match page["continue"].as_str() {
            Some(token) => path = format!("/v1/meters?limit=2&continue={token}"),
            None => break,
        }
    }
    assert_eq!(seen, vec!["MTR-1", "MTR-2", "MTR-3"]);
    let r = op
        .call(
            "device-hub",
            &p2,
            Method::GET,
            "/v1/meters?limit=5000",
            None,
            &tc,
        )
        .await
        .expect("too large a page");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let (_, metrics) = http(hub.health, "GET", "/metrics", &[], b"").await;
    assert!(metrics.contains("mpm_outbox_pending"), "{metrics}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_to_device_hub_to_smoc_end_to_end() {
    let w = World::new();
    let smoc = start_smoc(&w.smoc, w.smoc_config(None)).await;
    let hub = start_hub(&w.hub, w.hub_config(&smoc.url()), None).await;
    let conn = start_connector(&w.conn, w.conn_config(&hub.url())).await;
    let ingest = conn.ingest.expect("ingest addr");

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &[
            ("content-type", "application/xml"),
            ("traceparent", tp),
            ("authorization", INGEST_AUTH),
        ],
        READINGS_XML.as_bytes(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["forwarded"], 1, "{body}");

    // Provision a meter through device-hub: it must reach smoc via the outbox.
    let (_s, op) = client("op", &w.op);
    let r = op
        .call(
            "device-hub",
            &peer(&hub.url(), HUB_SA),
            Method::PUT,
            "/v1/meters/MTR-9",
            Some(meter("MTR-9", "X1")),
            &TraceContext::new_root(),
        )
        .await
        .expect("put");
    assert_eq!(r.status, 201);

    // smoc-service gets the device and the reading through device-hub's outbox.
    eventually(15, "device and reading delivered to smoc", || {
        let smoc_health = smoc.health;
        async move {
            // One call each, or both in one batch when they were queued together.
            let (_, m) = http(smoc_health, "GET", "/metrics", &[], b"").await;
            let singles = requests(&m, "/v1/readings", 201) > 0
                && requests(&m, "/v1/devices/{serial}", 201) > 0;
            singles || requests(&m, "/v1/batch", 200) > 0
        }
    })
    .await;
    let (_, hub_metrics) = http(hub.health, "GET", "/metrics", &[], b"").await;
    assert!(hub_metrics.contains("mpm_outbox_pending"), "{hub_metrics}");

    // Malformed ingest bodies: 400 naming the problem.
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &[
            ("content-type", "application/xml"),
            ("authorization", INGEST_AUTH),
        ],
        b"<MeterReadings><MeterReading></MeterReadings>",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed XML")),
        "{body}"
    );
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &[
            ("content-type", "application/json"),
            ("authorization", INGEST_AUTH),
        ],
        b"{\"kind\": ",
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("malformed JSON"), "{body}");
    let missing_value = READINGS_XML.replace("<m:value>42.5</m:value>", "");
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &[
            ("content-type", "application/xml"),
            ("authorization", INGEST_AUTH),
        ],
        missing_value.as_bytes(),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("missing value"), "{body}");
    let (code, _) = http(
        ingest,
        "POST",
        "/ingest",
        &[("content-type", "text/csv"), ("authorization", INGEST_AUTH)],
        b"a,b",
    )
    .await;
    assert_eq!(code, 400);

    conn.stop().await;
    hub.stop().await;
    smoc.stop().await;

    // What smoc-service persisted, read from its store after shutdown.
    let store =
        mpm_services::store::Store::open(&w.smoc.data_dir(), mpm_services::smoc::STORE_FILE)
            .expect("open smoc store");
    let device: serde_json::Value = store
        .get_json(mpm_services::smoc::DEVICES, "MTR-9")
        .expect("read")
        .expect("device provisioned to smoc");
    assert_eq!(device["state"], "Provisioned");
    assert!(device["deviceId"]
        .as_str()
        .is_some_and(|d| d.starts_with("dev-")));
    let readings: Vec<(String, mpm_services::smoc::Reading)> = store
        .list_json(mpm_services::smoc::READINGS)
        .expect("readings");
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0].1.value, 42.5);
    assert_eq!(readings[0].1.unit.as_deref(), Some("kWh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_persist_and_are_redelivered_once_device_hub_answers() {
    let w = World::new();
    let hub_addr = free_addr();
    let conn_cfg = w.conn_config(&format!("https://{hub_addr}"));
    let conn = start_connector(&w.conn, conn_cfg.clone()).await;
    let ingest = conn.ingest.expect("ingest");
    let json_body = br#"{"EndDeviceEvents": {"EndDeviceEvent": [{"mRID": "e2",
        "createdDateTime": "2026-11-22T10:00:00Z", "Assets": {"mRID": "MTR-3"},
        "EndDeviceEventType": {"ref": "3.26.0.185"}, "reason": "tamper"}]}}"#;
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &[
            ("content-type", "application/json"),
            ("authorization", INGEST_AUTH),
        ],
        json_body,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["deadLettered"], 1, "{body}");

    // Survives a restart.
    conn.stop().await;
    let conn = start_connector(&w.conn, conn_cfg).await;
    let (code, body) = w.conn_api(&conn, Method::GET, "/dead-letters").await;
    assert_eq!(code, 200);
    let items = json(&body)["items"].as_array().cloned().expect("items");
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["event"]["serialNumber"], "MTR-3");
    assert_eq!(items[0]["event"]["kind"], "endDeviceEvent");
    assert_eq!(items[0]["rejected"], false, "{body}");

    // A manual replay while device-hub is still down: the event stays.
    let (code, body) = w
        .conn_api(&conn, Method::POST, "/dead-letters/replay")
        .await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["remaining"], 1, "{body}");

    // device-hub comes up on the configured address: the connector redelivers by itself (after
    // its backoff and the client's circuit cool-down) and empties the store.
    let smoc_addr = free_addr();
    let hub = start_hub(
        &w.hub,
        w.hub_config(&format!("https://{smoc_addr}")),
        Some(hub_addr),
    )
    .await;
    eventually(
        90,
        "dead letter redelivered without a replay call",
        || async {
            let (_, body) = w.conn_api(&conn, Method::GET, "/dead-letters").await;
            json(&body)["items"]
                .as_array()
                .is_some_and(|a| a.is_empty())
        },
    )
    .await;
    let (_, body) = w
        .conn_api(&conn, Method::POST, "/dead-letters/replay")
        .await;
    assert_eq!(
        json(&body),
        serde_json::json!({"replayed": 0, "remaining": 0})
    );
    conn.stop().await;
    hub.stop().await;

    // device-hub holds the event exactly once.
    let store =
        mpm_services::store::Store::open(&w.hub.data_dir(), mpm_services::device_hub::STORE_FILE)
            .expect("open device-hub store");
    let events: Vec<(String, serde_json::Value)> = store
        .list_json(mpm_services::device_hub::EVENTS)
        .expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["serialNumber"], "MTR-3");
}

/// A stopped service has let go of everything it held: a restart in the same process (as the
/// tests above do) opens the same store at once. Stopping right after a request is the case
/// that once raced (a connection task still held the ingest router, and so the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_connector_has_released_its_store() {
    let w = World::new();
    let cfg = w.conn_config(&format!("https://{}", free_addr()));
    for round in 0..200 {
        let conn = start_connector(&w.conn, cfg.clone()).await;
        let ingest = conn.ingest.expect("ingest");
        let (code, body) = http(
            ingest,
            "POST",
            "/ingest",
            &[("content-type", "text/csv"), ("authorization", INGEST_AUTH)],
            b"a,b",
        )
        .await;
        assert_eq!(code, 400, "{body}");
        conn.stop().await;
        let reopened = mpm_services::store::Store::open(
            &w.conn.data_dir(),
            mpm_services::connector::STORE_FILE,
        );
        assert!(
            reopened.is_ok(),
            "round {round}: the store is still held after stop: {reopened:?}"
        );
    }
}
