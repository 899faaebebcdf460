//! The connector's ingest port against an attacker (issue 16): it answers only an authenticated
//! HES (bearer token or client certificate), limits each source's request rate, and no longer
//! serves the dead letters, which moved behind mTLS and allowed-peers.json on port 8443.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use mpm_services::reload::MaterialStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENT: &[u8] =
    br#"{"kind": "reading", "serialNumber": "MTR-1", "timestamp": "2026-11-22T10:00:00Z",
    "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": 1.5, "unit": "kWh"}"#;

fn json_ct(auth: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    h
}

/// Status line and headers of a raw HTTP/1.1 exchange, for headers such as `Retry-After`.
async fn raw_head(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_requires_the_configured_bearer_token() {
    let w = World::new();
    let conn = start_connector(&w.conn, w.conn_config("https://127.0.0.1:1")).await;
    let ingest = conn.ingest.expect("ingest");

    let (code, body) = http(ingest, "POST", "/ingest", &json_ct(None), EVENT).await;
    assert_eq!(code, 401, "no credentials: {body}");
    let wrong = format!("Bearer {INGEST_TOKEN}-not");
    let (code, body) = http(ingest, "POST", "/ingest", &json_ct(Some(&wrong)), EVENT).await;
    assert_eq!(code, 401, "wrong token: {body}");
    assert!(!body.contains(INGEST_TOKEN), "{body}");
    let (code, body) = http(
        ingest,
        "POST",
        "/ingest",
        &json_ct(Some(INGEST_AUTH)),
        EVENT,
    )
    .await;
    assert_eq!(code, 202, "right token: {body}");

    let (_, metrics) = http(conn.health, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("mpm_ingest_refusals_total{") && metrics.contains("unauthenticated"),
        "{metrics}"
    );
    conn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_token_file_replaces_the_token() {
    let w = World::new();
    let conn = start_connector(&w.conn, w.conn_config("https://127.0.0.1:1")).await;
    let ingest = conn.ingest.expect("ingest");
    let (code, _) = http(
        ingest,
        "POST",
        "/ingest",
        &json_ct(Some(INGEST_AUTH)),
        EVENT,
    )
    .await;
    assert_eq!(code, 202);
    let rotated = "rotated-ingest-token-abcdefghijklmnop";
    write_atomic(&w.conn.ingest_token_file(), rotated.as_bytes());
    eventually(10, "old token refused after the rotation", || async {
        let (code, _) = http(
            ingest,
            "POST",
            "/ingest",
            &json_ct(Some(INGEST_AUTH)),
            EVENT,
        )
        .await;
        code == 401
    })
    .await;
    let new = format!("Bearer {rotated}");
    let (code, body) = http(ingest, "POST", "/ingest", &json_ct(Some(&new)), EVENT).await;
    assert_eq!(code, 202, "{body}");
    // A token too short to be one does not replace the good one.
    write_atomic(&w.conn.ingest_token_file(), b"short");
    eventually(10, "unusable token file reported", || async {
        let (_, m) = http(conn.health, "GET", "/metrics", &[], b"").await;
        m.lines().any(|l| {
            l.starts_with("mpm_material_reload_failures_total{")
                && l.contains("ingest-token")
                && !l.ends_with(" 0")
        })
    })
    .await;
    let (code, body) = http(ingest, "POST", "/ingest", &json_ct(Some(&new)), EVENT).await;
    assert_eq!(code, 202, "{body}");
    conn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ingest_authentication_the_port_is_closed() {
    let w = World::new();
    let conn = start_connector(
        &w.conn,
        w.conn_config_with("https://127.0.0.1:1", serde_json::json!({})),
    )
    .await;
    let ingest = conn.ingest.expect("ingest");
    for auth in [None, Some(INGEST_AUTH)] {
        let (code, body) = http(ingest, "POST", "/ingest", &json_ct(auth), EVENT).await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("spec.hes.auth.tokenSecret"), "{body}");
    }
    conn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_served_only_over_mtls_to_allowed_peers() {
    let w = World::new();
    let conn = start_connector(&w.conn, w.conn_config("https://127.0.0.1:1")).await;
    let ingest = conn.ingest.expect("ingest");

    // The ingest port does not know them, with or without the HES token.
    for auth in [vec![], vec![("authorization", INGEST_AUTH)]] {
        let (code, body) = http(ingest, "GET", "/dead-letters", &auth, b"").await;
        assert_eq!(code, 404, "GET /dead-letters on ingest: {body}");
        let (code, body) = http(ingest, "POST", "/dead-letters/replay", &auth, b"").await;
        assert_eq!(code, 404, "POST /dead-letters/replay on ingest: {body}");
    }

    // On the mTLS port: a peer outside allowed-peers.json is refused...
    let (_s, hub_client) = client("hub", &w.hub);
    let r = hub_client
        .call(
            "iec61968-connector",
            &peer(&conn.url(), CONN_SA),
            Method::GET,
            "/dead-letters",
            None,
            &mpm_services::util::TraceContext::new_root(),
        )
        .await
        .expect("call");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // ...and an allowed one reads them.
    let (code, body) = w.conn_api(&conn, Method::GET, "/dead-letters").await;
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["items"].is_array(), "{body}");
    let (code, body) = w
        .conn_api(&conn, Method::POST, "/dead-letters/replay")
        .await;
    assert_eq!(code, 200, "{body}");
    conn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_limit_is_refused_with_retry_after() {
    let w = World::new();
    let cfg = w.conn_config_with(
        "https://127.0.0.1:1",
        serde_json::json!({"tokenFile": w.conn.ingest_token_file(),
                           "rateLimit": {"perSecond": 1, "burst": 5}}),
    );
    let conn = start_connector(&w.conn, cfg).await;
    let ingest = conn.ingest.expect("ingest");
    // Unauthenticated requests count too: a flood of bad guesses is limited like anything else.
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            http(ingest, "POST", "/ingest", &json_ct(None), EVENT)
                .await
                .0,
        );
    }
    assert_eq!(&codes[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    let head = raw_head(
        ingest,
        &format!(
            "POST /ingest HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: {INGEST_AUTH}\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await
    .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let (_, metrics) = http(conn.health, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mpm_ingest_refusals_total{") && l.contains("rate_limited")),
        "{metrics}"
    );
    conn.stop().await;
}

/// A TLS client with `mounts`' certificate that verifies the connector's SPIFFE ID.
fn hes_tls(mounts: &Mounts) -> Arc<rustls::ClientConfig> {
    let store = MaterialStore::new(
        "hes",
        mounts.material_paths(),
        Arc::new(mpm_services::metrics::Metrics::new("hes")),
    );
    mpm_services::tls::client_config(store, &spiffe(CONN_SA)).expect("client config")
}

/// One HTTP/1.1 request over TLS: `Ok(status)`, or `Err` when the handshake or the exchange
/// failed.
async fn https_status(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request: &str,
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("connector").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    match text.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(code) => Ok(code),
        None => Err(format!("no HTTP answer ({read:?})")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_client_ca_requires_a_certificate_from_that_ca() {
    let w = World::new();
    let hes_ca = Ca::new("HES client CA");
    write_atomic(&w.conn.ingest_ca_file(), hes_ca.pem.as_bytes());
    let cfg = w.conn_config_with(
        "https://127.0.0.1:1",
        serde_json::json!({"clientCaFile": w.conn.ingest_ca_file()}),
    );
    let conn = start_connector(&w.conn, cfg).await;
    let ingest = conn.ingest.expect("ingest");
    let request = format!(
        "POST /ingest HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        EVENT.len(),
        String::from_utf8_lossy(EVENT)
    );

    // The HES, with a certificate from the configured CA (and the hub CA to check the connector).
    let hes = Mounts::new(w.dir.path(), "hes");
    hes.set_identity(&hes_ca.leaf("spiffe://hes.example/hes"));
    hes.set_bundle(&[&w.ca.pem]);
    assert_eq!(
        https_status(ingest, hes_tls(&hes), &request).await,
        Ok(202),
        "HES certificate from the configured CA"
    );

    // A certificate from another CA (here: a hub identity, which is not the HES) is refused.
    let intruder = Mounts::new(w.dir.path(), "intruder");
    intruder.set_identity(&w.ca.leaf(&spiffe(HUB_SA)));
    intruder.set_bundle(&[&w.ca.pem]);
    let refused = https_status(ingest, hes_tls(&intruder), &request).await;
    assert!(refused.is_err(), "{refused:?}");

    // No certificate at all: refused as well.
    let anonymous = Mounts::new(w.dir.path(), "anonymous");
    anonymous.set_bundle(&[&w.ca.pem]);
    let refused = https_status(ingest, hes_tls(&anonymous), &request).await;
    assert!(refused.is_err(), "{refused:?}");
    conn.stop().await;
}
