//! The connector's ingest port under hostile documents (issue 16, item 1): each is refused with
//! `400`/`413` naming the limit, and the connector keeps answering.

mod common;

use std::time::{Duration, Instant};

use common::*;

const READINGS_XML: &str = r#"<m:MeterReadings xmlns:m="http://iec.ch/TC57/2011/MeterReadings#">
  <m:MeterReading><m:Meter><m:mRID>MTR-9</m:mRID></m:Meter>
    <m:Readings><m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:timeStamp>2026-11-22T10:00:00Z</m:timeStamp><m:value>42.5</m:value></m:Readings>
  </m:MeterReading>
</m:MeterReadings>"#;

fn error_of(body: &str) -> String {
    json(body)["error"].as_str().unwrap_or_default().to_string()
}

/// `<a>` x 100,000 then `</a>` x 100,000 overflowed the stack of the connector's worker thread and
/// aborted the process (here: the test process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ingest_documents_are_refused_naming_the_limit_and_the_connector_keeps_answering() {
    let w = World::new();
    let mut cfg = w.conn_config(&format!("https://{}", free_addr()));
    cfg.ingest.limits.max_body_bytes = 1 << 20;
    let conn = start_connector(&w.conn, cfg).await;
    let ingest = conn.ingest.expect("ingest");
    let post = |ct: &'static str, body: Vec<u8>| async move {
        http(
            ingest,
            "POST",
            "/ingest",
            &[("content-type", ct), ("authorization", INGEST_AUTH)],
            &body,
        )
        .await
    };

    let nested = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    assert_eq!(nested.len(), 700_000);
    let started = Instant::now();
    let (code, body) = post("application/xml", nested.into_bytes()).await;
    let took = started.elapsed();
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        error_of(&body),
        "document exceeds maxDepth 32 at byte 99",
        "{body}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");

    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, body) = post("application/json", deep_json.into_bytes()).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        error_of(&body).starts_with("document exceeds maxDepth 32"),
        "{body}"
    );

    let flat = format!("<r>{}</r>", "<x/>".repeat(150_000));
    let (code, body) = post("application/xml", flat.into_bytes()).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        error_of(&body).starts_with("document exceeds maxElements 100000"),
        "{body}"
    );

    // One byte over the configured maxBodyBytes.
    let (code, body) = post("application/xml", vec![b' '; (1 << 20) + 1]).await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        error_of(&body),
        "body exceeds maxBodyBytes 1048576",
        "{body}"
    );

    // Still serving: a valid document is taken (dead-lettered, device-hub is not there).
    let (code, body) = post("application/xml", READINGS_XML.as_bytes().to_vec()).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["accepted"], 1, "{body}");
    let (code, _) = http(conn.health, "GET", "/healthz", &[], b"").await;
    assert_eq!(code, 200);
    conn.stop().await;
}
