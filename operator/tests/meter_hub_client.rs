//! The device-hub client against a fake device-hub over real mTLS: SPIFFE server identity, client
//! certificate, batching of concurrent PUTs and DELETEs, the single-call fallbacks, rejections and
//! idempotent DELETEs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mpm_operator::crd::meter::DesiredState;
use mpm_operator::meter::hub_client::{
    client_config, ClientSettings, HubClient, HubError, HubTarget, MeterPayload,
};
use mpm_operator::runtime::metrics::Metrics;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const HUB_ID: &str = "spiffe://cluster.local/ns/park/sa/demo-device-hub";
const OPERATOR_ID: &str = "spiffe://cluster.local/ns/park/sa/mpm-operator";

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn leaf(&self, spiffe_id: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["demo-device-hub.park.svc".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().expect("uri")));
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

#[derive(Default)]
struct Seen {
    batches: Mutex<Vec<usize>>,
    puts: AtomicUsize,
    deletes: AtomicUsize,
    batch_404: AtomicUsize,
    delete_batches: Mutex<Vec<usize>>,
    delete_batch_404: AtomicUsize,
    connections: AtomicUsize,
    client_ids: Mutex<HashSet<String>>,
}

fn record(serial: &str) -> Value {
    json!({"deviceId": format!("dev-{serial}"), "serialNumber": serial, "state": "Provisioned",
           "provisionedAt": "2024-01-01T00:00:00Z"})
}

async fn handle(
    req: hyper::Request<Incoming>,
    seen: Arc<Seen>,
    batch: Arc<AtomicBool>,
) -> hyper::Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = |status: u16, v: Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("response")
    };
    match (method.as_str(), path.as_str()) {
        ("POST", "/v1/meters:batch") => {
            if !batch.load(Ordering::SeqCst) {
                seen.batch_404.fetch_add(1, Ordering::SeqCst);
                return reply(404, json!({"error": "not found"}));
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let items = v["items"].as_array().cloned().unwrap_or_default();
            seen.batches.lock().expect("lock").push(items.len());
            let results: Vec<Value> = items
                .iter()
                .map(|i| {
                    let serial = i["serialNumber"].as_str().unwrap_or_default();
                    if serial.starts_with("BAD") {
                        json!({"serialNumber": serial, "status": 400, "error": "hesId must not be empty"})
                    } else {
                        json!({"serialNumber": serial, "status": 201, "meter": record(serial)})
                    }
                })
                .collect();
            reply(200, json!({ "results": results }))
        }
        ("POST", "/v1/meters:batchDelete") => {
            if !batch.load(Ordering::SeqCst) {
                seen.delete_batch_404.fetch_add(1, Ordering::SeqCst);
                return reply(404, json!({"error": "not found"}));
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let serials = v["serialNumbers"].as_array().cloned().unwrap_or_default();
            seen.delete_batches
                .lock()
                .expect("lock")
                .push(serials.len());
            // Answered in reverse order: the client pairs results by serial.
            let results: Vec<Value> = serials
                .iter()
                .rev()
                .map(|s| {
                    let serial = s.as_str().unwrap_or_default();
                    if serial.starts_with("BAD") {
                        json!({"serialNumber": serial, "status": 400, "error": "not a serial"})
                    } else {
                        json!({"serialNumber": serial, "status": 204})
                    }
                })
                .collect();
            reply(200, json!({ "results": results }))
        }
        ("PUT", p) if p.starts_with("/v1/meters/") => {
            seen.puts.fetch_add(1, Ordering::SeqCst);
            let serial = &p["/v1/meters/".len()..];
            if serial.starts_with("BAD") {
                return reply(400, json!({"error": "hesId must not be empty"}));
            }
            reply(201, record(serial))
        }
        ("DELETE", p) if p.starts_with("/v1/meters/") => {
            seen.deletes.fetch_add(1, Ordering::SeqCst);
            hyper::Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .expect("response")
        }
        _ => reply(404, json!({"error": "no route"})),
    }
}

/// Starts a fake device-hub presenting `server` and requiring client certificates of `pki`.
async fn serve(pki: &Pki, server: Leaf, batch: bool) -> (SocketAddr, Arc<Seen>, Arc<AtomicBool>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).expect("ca der"))
        .expect("root");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let batch = Arc::new(AtomicBool::new(batch));
    let (s, b) = (seen.clone(), batch.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, batch) = (acceptor.clone(), s.clone(), b.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                if let Some(peer) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    for id in mpm_operator::meter::hub_client::spiffe_ids(peer.as_ref())
                        .unwrap_or_default()
                    {
                        seen.client_ids.lock().expect("lock").insert(id);
                    }
                }
                let svc = service_fn(move |req| {
                    let (seen, batch) = (seen.clone(), batch.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(req, seen, batch).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen, batch)
}

fn target() -> HubTarget {
    HubTarget {
        namespace: "park".into(),
        hub: "demo".into(),
        trust_domain: "cluster.local".into(),
        port: 8443,
    }
}

fn client(pki: &Pki, addr: SocketAddr, settings: ClientSettings) -> HubClient {
    let operator = pki.leaf(OPERATOR_ID);
    let tls = client_config(
        operator.cert_pem.as_bytes(),
        operator.key_pem.as_bytes(),
        pki.ca_pem().as_bytes(),
        &target().spiffe_id(),
    )
    .expect("client config");
    HubClient::new(
        target(),
        tls,
        settings,
        Arc::new(Metrics::default()),
        Some(addr),
    )
    .expect("client")
}

fn payload(serial: &str) -> MeterPayload {
    MeterPayload {
        serial_number: serial.into(),
        manufacturer: "Landis+Gyr".into(),
        model: "E450".into(),
        protocol: "DLMS/COSEM".into(),
        hes_id: "hes-1".into(),
        location: None,
        desired_state: DesiredState::Active,
    }
}

#[tokio::test]
async fn concurrent_puts_travel_in_batches_over_mtls() {
    let pki = Pki::new();
    let (addr, seen, _) = serve(&pki, pki.leaf(HUB_ID), true).await;
    let client = Arc::new(client(&pki, addr, ClientSettings::default()));
    let results = futures::future::join_all((0..100).map(|i| {
        let c = client.clone();
        async move { c.put(payload(&format!("SN-{i:03}"))).await }
    }))
    .await;
    let mut ids = HashSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let record = r.unwrap_or_else(|e| panic!("meter {i}: {e}"));
        assert_eq!(record.device_id, format!("dev-SN-{i:03}"));
        assert_eq!(record.state, "Provisioned");
        ids.insert(record.device_id);
    }
    assert_eq!(ids.len(), 100);
    let batches = seen.batches.lock().expect("lock").clone();
    assert_eq!(
        batches.iter().sum::<usize>(),
        100,
        "every meter travelled in a batch: {batches:?}"
    );
    assert!(
        batches.len() <= 3,
        "100 simultaneous PUTs need few batches, got {batches:?}"
    );
    assert_eq!(seen.puts.load(Ordering::SeqCst), 0);
    assert!(
        seen.client_ids.lock().expect("lock").contains(OPERATOR_ID),
        "the operator presented its certificate"
    );
}

#[tokio::test]
async fn without_batch_endpoint_single_puts_are_used() {
    let pki = Pki::new();
    let (addr, seen, _) = serve(&pki, pki.leaf(HUB_ID), false).await;
    let client = Arc::new(client(&pki, addr, ClientSettings::default()));
    let run = |n: usize, offset: usize| {
        let client = client.clone();
        async move {
            futures::future::join_all((0..n).map(|i| {
                let c = client.clone();
                async move { c.put(payload(&format!("SN-{}", i + offset))).await }
            }))
            .await
        }
    };
    assert!(run(20, 0).await.iter().all(Result::is_ok));
    assert_eq!(seen.batch_404.load(Ordering::SeqCst), 1);
    assert_eq!(seen.puts.load(Ordering::SeqCst), 20);
    // The fallback sticks: no more batch attempts.
    assert!(run(10, 100).await.iter().all(Result::is_ok));
    assert_eq!(seen.batch_404.load(Ordering::SeqCst), 1);
    assert_eq!(seen.puts.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn rejections_are_per_meter() {
    let pki = Pki::new();
    let (addr, _, _) = serve(&pki, pki.leaf(HUB_ID), true).await;
    let client = Arc::new(client(&pki, addr, ClientSettings::default()));
    let (good, bad) = tokio::join!(client.put(payload("GOOD-1")), client.put(payload("BAD-1")));
    assert!(good.is_ok());
    let err = bad.expect_err("BAD-1 is rejected");
    assert!(err.is_rejection(), "{err}");
    assert!(err.to_string().contains("hesId must not be empty"), "{err}");
    // A single PUT path reports the same.
    let err = client.put(payload("BAD-2")).await.expect_err("rejected");
    assert!(err.is_rejection(), "{err}");
}

#[tokio::test]
async fn server_with_another_identity_is_refused() {
    let pki = Pki::new();
    let impostor = pki.leaf("spiffe://cluster.local/ns/park/sa/demo-smoc-service");
    let (addr, seen, _) = serve(&pki, impostor, true).await;
    let client = client(&pki, addr, ClientSettings::default());
    let err = client
        .put(payload("SN-1"))
        .await
        .expect_err("wrong SPIFFE ID");
    assert!(matches!(err, HubError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains(HUB_ID), "{err}");
    assert!(!err.is_rejection());
    assert!(seen.batches.lock().expect("lock").is_empty());
    assert_eq!(seen.puts.load(Ordering::SeqCst), 0);
}

/// Attack: a server certificate from the trusted CA carrying device-hub's SPIFFE ID and another
/// URI SAN. X509-SVID allows exactly one; before the fix any matching URI was enough.
#[tokio::test]
async fn server_with_several_uri_sans_is_refused() {
    let pki = Pki::new();
    for ids in [
        [
            "spiffe://cluster.local/ns/park/sa/demo-smoc-service",
            HUB_ID,
        ],
        [HUB_ID, "https://example.org/"],
    ] {
        let mut two = pki.leaf(ids[0]);
        let mut params =
            CertificateParams::new(vec!["demo-device-hub.park.svc".to_string()]).expect("params");
        for id in ids {
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().expect("uri")));
        }
        let key = KeyPair::generate().expect("key");
        two.cert_pem = params.signed_by(&key, &pki.ca).expect("leaf").pem();
        two.key_pem = key.serialize_pem();
        let (addr, seen, _) = serve(&pki, two, true).await;
        let client = client(&pki, addr, ClientSettings::default());
        let err = client.put(payload("SN-1")).await.expect_err("two URI SANs");
        assert!(matches!(err, HubError::Handshake { .. }), "{ids:?}: {err}");
        assert_eq!(seen.puts.load(Ordering::SeqCst), 0);
        assert!(seen.batches.lock().expect("lock").is_empty());
    }
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let (addr, _, _) = serve(&pki, other.leaf(HUB_ID), true).await;
    let client = client(&pki, addr, ClientSettings::default());
    let err = client.put(payload("SN-1")).await.expect_err("unknown CA");
    assert!(matches!(err, HubError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn delete_is_idempotent_and_connections_are_reused() {
    let pki = Pki::new();
    let (addr, seen, _) = serve(&pki, pki.leaf(HUB_ID), true).await;
    let client = client(&pki, addr, ClientSettings::default());
    for _ in 0..5 {
        client.delete("SN-1").await.expect("delete");
    }
    assert_eq!(seen.deletes.load(Ordering::SeqCst), 5);
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "keep-alive: one connection for sequential calls"
    );
}

#[tokio::test]
async fn concurrent_deletes_travel_in_batches() {
    let pki = Pki::new();
    let (addr, seen, _) = serve(&pki, pki.leaf(HUB_ID), true).await;
    let client = Arc::new(client(&pki, addr, ClientSettings::default()));
    let serials: Vec<String> = (0..100)
        .map(|i| format!("SN-{i:03}"))
        .chain(["BAD-1".to_string()])
        .collect();
    let results = futures::future::join_all(serials.iter().map(|s| {
        let c = client.clone();
        async move { c.delete(s).await }
    }))
    .await;
    for (serial, r) in serials.iter().zip(&results) {
        if serial == "BAD-1" {
            let err = r.as_ref().expect_err("BAD-1 is rejected");
            assert!(err.is_rejection(), "{err}");
            assert!(err.to_string().contains("not a serial"), "{err}");
        } else {
            r.as_ref().unwrap_or_else(|e| panic!("{serial}: {e}"));
        }
    }
    let batches = seen.delete_batches.lock().expect("lock").clone();
    assert_eq!(batches.iter().sum::<usize>(), 101, "{batches:?}");
    assert!(
        batches.len() <= 3,
        "101 simultaneous DELETEs need few batches: {batches:?}"
    );
    assert_eq!(seen.deletes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn without_batch_delete_endpoint_single_deletes_are_used() {
    let pki = Pki::new();
    let (addr, seen, _) = serve(&pki, pki.leaf(HUB_ID), false).await;
    let client = Arc::new(client(&pki, addr, ClientSettings::default()));
    let run = |n: usize| {
        let client = client.clone();
        async move {
            futures::future::join_all((0..n).map(|i| {
                let c = client.clone();
                async move { c.delete(&format!("SN-{i}")).await }
            }))
            .await
        }
    };
    assert!(run(20).await.iter().all(Result::is_ok));
    assert_eq!(seen.delete_batch_404.load(Ordering::SeqCst), 1);
    assert_eq!(seen.deletes.load(Ordering::SeqCst), 20);
    // The fallback sticks.
    assert!(run(10).await.iter().all(Result::is_ok));
    assert_eq!(seen.delete_batch_404.load(Ordering::SeqCst), 1);
    assert_eq!(seen.deletes.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn unreachable_device_hub_times_out_or_fails_to_connect() {
    let pki = Pki::new();
    // A bound but never accepting socket: connect succeeds at the TCP level only if the backlog has
    // room, the TLS handshake then never completes; either way the request must end in time.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let settings = ClientSettings {
        timeout: Duration::from_millis(300),
        ..ClientSettings::default()
    };
    let client = client(&pki, addr, settings);
    let started = std::time::Instant::now();
    let err = client.put(payload("SN-1")).await.expect_err("no server");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            err,
            HubError::Timeout { .. } | HubError::Connect { .. } | HubError::Handshake { .. }
        ),
        "{err}"
    );
    drop(listener);
}
