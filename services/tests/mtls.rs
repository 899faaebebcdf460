//! mTLS handshake and ACL matrix, material reload and rotation, readiness and status.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use mpm_services::client::ClientError;
use mpm_services::util::{sha256_hex, TraceContext};

fn meter_body(serial: &str) -> Vec<u8> {
    serde_json::json!({"serialNumber": serial, "manufacturer": "Acme", "model": "X1",
        "protocol": "DLMS", "hesId": "hes-1", "desiredState": "Active"})
    .to_string()
    .into_bytes()
}

fn event_body(serial: &str) -> Vec<u8> {
    serde_json::json!({"kind": "reading", "serialNumber": serial, "timestamp": "2026-11-22T10:00:00Z",
        "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": 1.5, "unit": "kWh"})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshake_and_acl_matrix() {
    let w = World::new();
    let smoc = start_smoc(&w.smoc, w.smoc_config(None)).await;
    let hub = start_hub(&w.hub, w.hub_config(&smoc.url()), None).await;
    let tc = TraceContext::new_root();

    // connector -> device-hub: allowed.
    let (_s, conn_client) = client("conn", &w.conn);
    let r = conn_client
        .call(
            "device-hub",
            &peer(&hub.url(), HUB_SA),
            Method::POST,
            "/v1/events",
            Some(event_body("M1")),
            &tc,
        )
        .await
        .expect("connector reaches device-hub");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));

    // connector -> device-hub on a path its ACL does not list: 403.
    let r = conn_client
        .call(
            "device-hub",
            &peer(&hub.url(), HUB_SA),
            Method::GET,
            "/v1/meters",
            None,
            &tc,
        )
        .await
        .expect("handshake ok");
    assert_eq!(r.status, 403);

    // device-hub -> smoc: allowed.
    let (_s, hub_client) = client("hub", &w.hub);
    let r = hub_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::PUT,
            "/v1/devices/M1",
            Some(b"{\"state\":\"Provisioned\"}".to_vec()),
            &tc,
        )
        .await
        .expect("device-hub reaches smoc");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // connector -> smoc: TLS succeeds, request refused with 403 naming the peer.
    let r = conn_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::PUT,
            "/v1/devices/M1",
            Some(b"{}".to_vec()),
            &tc,
        )
        .await
        .expect("handshake ok");
    assert_eq!(r.status, 403);
    let body = json(&String::from_utf8_lossy(&r.body));
    let err = body["error"].as_str().expect("error field");
    assert!(err.contains(&spiffe(CONN_SA)), "{err}");
    let (_, metrics) = http(smoc.health, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mpm_acl_denials_total") && l.contains(CONN_SA)),
        "{metrics}"
    );

    // operator -> smoc writes: the ACL allows only GET /v1/meters.
    let (_s, op_client) = client("op", &w.op);
    let r = op_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::POST,
            "/v1/readings",
            Some(event_body("M1")),
            &tc,
        )
        .await
        .expect("handshake ok");
    assert_eq!(r.status, 403);

    // A client from an unknown CA is refused at the TLS layer.
    let rogue_ca = Ca::new("rogue");
    let rogue = Mounts::new(w.dir.path(), "rogue");
    rogue.set_identity(&rogue_ca.leaf(&spiffe(HUB_SA)));
    rogue.set_bundle(&[&w.ca.pem]);
    let (_s, rogue_client) = client("rogue", &rogue);
    let e = rogue_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::GET,
            "/v1/meters",
            None,
            &tc,
        )
        .await
        .expect_err("unknown CA refused");
    assert!(
        matches!(e, ClientError::Tls { .. } | ClientError::Http { .. }),
        "{e}"
    );
    let (_, metrics) = http(smoc.health, "GET", "/metrics", &[], b"").await;
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("mpm_tls_handshake_failures_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("handshake failure metric");
    assert!(failures >= 1.0, "{metrics}");

    // The client refuses a server whose SPIFFE ID is not the expected one.
    let e = hub_client
        .call(
            "smoc",
            &peer(&smoc.url(), CONN_SA),
            Method::GET,
            "/v1/meters",
            None,
            &tc,
        )
        .await
        .expect_err("wrong server identity refused");
    assert!(matches!(e, ClientError::Tls { .. }), "{e}");

    hub.stop().await;
    smoc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_status_and_bad_material_is_not_loaded() {
    let w = World::new();
    let empty = Mounts::new(w.dir.path(), "empty");
    let smoc = start_smoc(&empty, w.smoc_config(None)).await;
    let (code, body) = http(smoc.health, "GET", "/readyz", &[], b"").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not loaded"), "{body}");
    let (code, _) = http(smoc.health, "GET", "/healthz", &[], b"").await;
    assert_eq!(code, 200);

    // Material appears: ready, status matches the files.
    empty.set_identity(&w.ca.leaf(&spiffe(SMOC_SA)));
    let bundle = empty.set_bundle(&[&w.ca.pem]);
    empty.set_acl(&[]);
    let acl_bytes = std::fs::read(empty.acl_file()).expect("acl");
    eventually(10, "ready", || async {
        http(smoc.health, "GET", "/readyz", &[], b"").await.0 == 200
    })
    .await;
    let st = status_json(smoc.health).await;
    assert_eq!(st["service"], "smoc-service");
    assert_eq!(st["trustBundleSha256"], sha256_hex(bundle.as_bytes()));
    assert_eq!(st["allowedPeersVersion"], sha256_hex(&acl_bytes));
    assert!(st["certificateSerial"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(st["certificateNotAfter"], "2099-01-01T00:00:00Z");

    // A broken bundle and a mismatched key never replace good material.
    std::fs::write(
        empty.trust_dir().join("ca-bundle.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage",
    )
    .expect("write");
    let other = w.ca.leaf(&spiffe(SMOC_SA));
    std::fs::write(empty.tls_dir().join("tls.key"), other.1.as_bytes()).expect("write");
    eventually(10, "reload failure counted", || async {
        let (_, m) = http(smoc.health, "GET", "/metrics", &[], b"").await;
        m.contains("mpm_material_reload_failures_total{")
            && m.contains("kind=\"trust\"")
            && m.contains("kind=\"identity\"")
    })
    .await;
    let st2 = status_json(smoc.health).await;
    assert_eq!(st2["trustBundleSha256"], st["trustBundleSha256"]);
    assert_eq!(st2["certificateSerial"], st["certificateSerial"]);
    assert_eq!(http(smoc.health, "GET", "/readyz", &[], b"").await.0, 200);

    // An expired certificate makes the service unready.
    let expired = w.ca.leaf_with(&spiffe(SMOC_SA), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    empty.set_identity(&expired);
    eventually(10, "unready with expired cert", || async {
        let (code, body) = http(smoc.health, "GET", "/readyz", &[], b"").await;
        code == 503 && body.contains("not valid now")
    })
    .await;
    smoc.stop().await;
}

/// Rotates leaves and the CA the way the operator does (bundle old+new, then new leaves, then new
/// bundle only) while a client keeps opening new connections; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_of_leaf_and_ca_under_load_has_zero_failures() {
    let w = World::new();
    let smoc = start_smoc(&w.smoc, w.smoc_config(None)).await;
    let hub = start_hub(&w.hub, w.hub_config(&smoc.url()), None).await;
    let (op_store, op_client) = client("op", &w.op);
    let op_client = Arc::new(op_client);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..3 {
        let (c, ok, failed, rx, url) = (
            op_client.clone(),
            ok.clone(),
            failed.clone(),
            stop_rx.clone(),
            hub.url(),
        );
        workers.push(tokio::spawn(async move {
            let serial = format!("ROT-{i}");
            while !*rx.borrow() {
                let r = c
                    .call(
                        "device-hub",
                        &peer(&url, HUB_SA),
                        Method::PUT,
                        &format!("/v1/meters/{serial}"),
                        Some(meter_body(&serial)),
                        &TraceContext::new_root(),
                    )
                    .await;
                match r {
                    Ok(r) if r.status == 200 || r.status == 201 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("request failed during rotation: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let poll_client = {
        let s = op_store.clone();
        move || s.poll_once()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. leaf rotation under the old CA.
    let before = status_json(hub.health).await;
    w.hub.set_identity(&w.ca.leaf(&spiffe(HUB_SA)));
    w.op.set_identity(&w.ca.leaf(&spiffe(OPERATOR_SA)));
    eventually(10, "new hub leaf", || async {
        status_json(hub.health).await["certificateSerial"] != before["certificateSerial"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. CA rotation: bundle with both CAs everywhere first.
    let new_ca = Ca::new("next CA");
    let both = w.hub.set_bundle(&[&w.ca.pem, &new_ca.pem]);
    w.smoc.set_bundle(&[&w.ca.pem, &new_ca.pem]);
    w.op.set_bundle(&[&w.ca.pem, &new_ca.pem]);
    poll_client();
    let both_hash = sha256_hex(both.as_bytes());
    eventually(10, "bundle old+new loaded", || async {
        status_json(hub.health).await["trustBundleSha256"] == both_hash.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. leaves from the new CA.
    let serial_before = status_json(hub.health).await["certificateSerial"].clone();
    w.hub.set_identity(&new_ca.leaf(&spiffe(HUB_SA)));
    w.smoc.set_identity(&new_ca.leaf(&spiffe(SMOC_SA)));
    w.op.set_identity(&new_ca.leaf(&spiffe(OPERATOR_SA)));
    poll_client();
    eventually(10, "hub leaf from new CA", || async {
        status_json(hub.health).await["certificateSerial"] != serial_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4. drop the old CA.
    let only_new = w.hub.set_bundle(&[&new_ca.pem]);
    w.smoc.set_bundle(&[&new_ca.pem]);
    w.op.set_bundle(&[&new_ca.pem]);
    poll_client();
    let new_hash = sha256_hex(only_new.as_bytes());
    eventually(10, "new bundle only", || async {
        status_json(hub.health).await["trustBundleSha256"] == new_hash.as_str()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop_tx.send(true).expect("stop workers");
    for wk in workers {
        wk.await.expect("worker");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests failed during rotation ({ok} ok)"
    );
    assert!(ok > 20, "load loop made only {ok} requests");

    // The old CA is no longer trusted: a client with an old-CA leaf is refused now.
    let stale = Mounts::new(w.dir.path(), "stale");
    stale.set_identity(&w.ca.leaf(&spiffe(OPERATOR_SA)));
    stale.set_bundle(&[&w.ca.pem, &new_ca.pem]);
    let (_s, stale_client) = client("stale", &stale);
    let e = stale_client
        .call(
            "device-hub",
            &peer(&hub.url(), HUB_SA),
            Method::GET,
            "/v1/meters",
            None,
            &TraceContext::new_root(),
        )
        .await;
    assert!(e.is_err(), "old-CA client still accepted: {e:?}");
    hub.stop().await;
    smoc.stop().await;
}

/// Attack: a certificate from the trusted CA carrying two URI SANs, one of them the identity the
/// other side expects. X509-SVID allows exactly one; before the fix the caller was taken for
/// device-hub (its first SPIFFE URI) and a server was accepted when any URI matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_with_several_uri_sans_are_refused_both_ways() {
    let w = World::new();
    let smoc = start_smoc(&w.smoc, w.smoc_config(None)).await;
    let tc = TraceContext::new_root();
    let two_sans = |first: String, second: String| {
        w.ca.leaf_with(&first, |p| {
            p.subject_alt_names
                .push(rcgen::SanType::URI(second.try_into().expect("ia5")));
        })
    };

    // Client side: a caller presenting device-hub's ID and another one.
    let mallory = Mounts::new(w.dir.path(), "mallory");
    mallory.set_identity(&two_sans(spiffe(HUB_SA), spiffe("mallory")));
    mallory.set_bundle(&[&w.ca.pem]);
    let (_s, mallory_client) = client("mallory", &mallory);
    let r = mallory_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::PUT,
            "/v1/devices/EVIL",
            Some(b"{\"state\":\"Provisioned\"}".to_vec()),
            &tc,
        )
        .await;
    assert!(
        r.is_err(),
        "a two-URI certificate must not pass the handshake: {:?}",
        r.map(|r| r.status)
    );

    // Server side: a server presenting another ID and smoc-service's.
    let fake = Mounts::new(w.dir.path(), "fake-smoc");
    fake.set_identity(&two_sans(spiffe("fake"), spiffe(SMOC_SA)));
    fake.set_bundle(&[&w.ca.pem]);
    fake.set_acl(&[(spiffe(HUB_SA).as_str(), &["PUT"], &["/v1/"])]);
    let fake_smoc = start_smoc(&fake, w.smoc_config(None)).await;
    let (_s, hub_client) = client("hub", &w.hub);
    let r = hub_client
        .call(
            "smoc",
            &peer(&fake_smoc.url(), SMOC_SA),
            Method::PUT,
            "/v1/devices/M1",
            Some(b"{\"state\":\"Provisioned\"}".to_vec()),
            &tc,
        )
        .await;
    assert!(
        r.is_err(),
        "a server with two URI SANs must be refused: {:?}",
        r.map(|r| r.status)
    );
    // The real one still works.
    let r = hub_client
        .call(
            "smoc",
            &peer(&smoc.url(), SMOC_SA),
            Method::PUT,
            "/v1/devices/M1",
            Some(b"{\"state\":\"Provisioned\"}".to_vec()),
            &tc,
        )
        .await
        .expect("device-hub reaches smoc");
    assert_eq!(r.status, 201);
    fake_smoc.stop().await;
    smoc.stop().await;
}

/// Attack: a peer (or anything holding a trusted certificate on its address) answering an endless
/// body made the caller buffer all of it. Bodies are now read up to a bound and refused beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_answering_a_huge_body_is_cut_off() {
    let w = World::new();
    let metrics = Arc::new(mpm_services::metrics::Metrics::new("fake"));
    let material =
        mpm_services::reload::MaterialStore::new("fake", w.smoc.material_paths(), metrics.clone());
    let tls = mpm_services::tls::server_config(material).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route(
            "/huge",
            axum::routing::get(|| async { vec![b'x'; 64 << 20] }),
        )
        .route("/small", axum::routing::get(|| async { "ok" }));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(mpm_services::server::serve_https(
        listener,
        tls,
        app,
        metrics,
        rx,
        Duration::from_secs(1),
    ));
    let (_s, hub_client) = client("hub", &w.hub);
    let target = peer(&format!("https://{addr}"), SMOC_SA);
    let tc = TraceContext::new_root();
    let small = hub_client
        .call("smoc", &target, Method::GET, "/small", None, &tc)
        .await
        .expect("small body");
    assert_eq!(small.body, b"ok");
    let r = hub_client
        .call("smoc", &target, Method::GET, "/huge", None, &tc)
        .await;
    match r {
        Err(e) => assert!(e.to_string().contains("exceeds"), "{e}"),
        Ok(resp) => panic!("read a {} byte body", resp.body.len()),
    }
    let _ = tx.send(true);
    let _ = server.await;
}
