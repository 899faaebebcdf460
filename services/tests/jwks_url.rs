//! `jwt.jwksUrl`: the key set fetched over HTTPS from a local identity provider (axum + rustls with
//! a test CA), refreshed on an unknown `kid` (rate-limited) and periodically, kept when the IdP
//! fails; smoc-service readiness and configuration errors.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mpm_services::client::ClientError;
use mpm_services::config::JwtConfig;
use mpm_services::jwks::{idp_roots, JwksError, JwksFetcher, JwksUrl, RefreshPolicy};
use mpm_services::jwt::{JwtError, JwtVerifier};
use mpm_services::metrics::Metrics;
use mpm_services::server::ReadinessCheck;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

const ISSUER: &str = "https://idp.test/realms/utility";
const AUDIENCE: &str = "smoc-api";

/// An ES256 signing key of the IdP with its `kid`.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate().expect("ec key");
        let raw = kp.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Self {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
            jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    /// A valid reader token, signed by this key, naming `kid` (normally its own).
    fn token_as(&self, kid: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
            "iat": now, "exp": now + 300, "realm_access": {"roles": ["reader"]}});
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_string());
        encode(&h, &claims, &self.encoding).expect("encode token")
    }

    fn token(&self) -> String {
        self.token_as(&self.kid)
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// What the IdP answers on `/jwks`.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

struct IdpState {
    answer: Mutex<Answer>,
    hits: AtomicUsize,
}

/// A local HTTPS identity provider serving `/jwks`.
struct Idp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

async fn jwks_handler(State(st): State<Arc<IdpState>>) -> axum::response::Response {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let a = st.answer.lock().expect("lock").clone();
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let status = StatusCode::from_u16(a.status).expect("status");
    (
        status,
        [(http::header::CONTENT_TYPE, "application/jwk-set+json")],
        a.body,
    )
        .into_response()
}

impl Idp {
    async fn start(first: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test IdP CA");
        let (cert, key) = ca.leaf_with("spiffe://idp.test/idp", |p| {
            p.subject_alt_names = vec![
                rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
                rcgen::SanType::DnsName("localhost".try_into().expect("ia5")),
            ];
        });
        let ca_file = dir.path().join("idp-ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("write ca");
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
        let tls = rustls::ServerConfig::builder_with_provider(mpm_services::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let state = Arc::new(IdpState {
            answer: Mutex::new(Answer {
                status: 200,
                body: first.to_string(),
                delay: Duration::ZERO,
            }),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks", get(jwks_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = watch::channel(false);
        tokio::spawn(mpm_services::server::serve_https(
            listener,
            Arc::new(tls),
            app,
            Arc::new(Metrics::new("idp")),
            rx,
            Duration::from_secs(1),
        ));
        Self {
            addr,
            state,
            ca_file,
            _dir: dir,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/jwks", self.addr)
    }

    fn answer(&self, status: u16, body: String) {
        *self.state.answer.lock().expect("lock") = Answer {
            status,
            body,
            delay: Duration::ZERO,
        };
    }

    fn stall(&self, delay: Duration) {
        self.state.answer.lock().expect("lock").delay = delay;
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn fetcher(&self, timeout: Duration) -> JwksFetcher {
        let url = JwksUrl::parse(&self.url()).expect("url");
        let roots = idp_roots(Some(&self.ca_file)).expect("roots");
        JwksFetcher::new(url, roots, timeout).expect("fetcher")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn policy(min_unknown_kid: Duration, interval: Duration) -> RefreshPolicy {
    RefreshPolicy {
        interval,
        min_interval_unknown_kid: min_unknown_kid,
        retry_base: Duration::from_millis(100),
        max_retry: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refreshes_rate_limited_and_failures_keep_the_last_good_keys() {
    let k1 = SigningKey::new("k1");
    let k2 = SigningKey::new("k2");
    let idp = Idp::start(&jwks(&[&k1])).await;
    let metrics = Arc::new(Metrics::new("smoc-service"));
    let limit = Duration::from_millis(800);
    let v = Arc::new(JwtVerifier::from_url(
        ISSUER,
        AUDIENCE,
        idp.fetcher(Duration::from_millis(500)),
        policy(limit, Duration::from_secs(3600)),
        Some(metrics.clone()),
    ));

    // No key set before the first fetch: not ready, and that is our problem (503), not the token's.
    let why = v.readiness().expect_err("not ready without keys");
    assert!(why.contains("JWT key set not loaded"), "{why}");
    v.refresh_now().await.expect("first fetch");
    assert_eq!(idp.hits(), 1);
    v.readiness().expect("ready with keys");
    v.verify(&k1.token()).await.expect("k1 accepted");

    // The IdP rotates: a token with the new kid triggers one fetch and is accepted.
    idp.answer(200, jwks(&[&k1, &k2]));
    tokio::time::sleep(limit + Duration::from_millis(100)).await;
    v.verify(&k2.token())
        .await
        .expect("k2 accepted after refresh");
    assert_eq!(idp.hits(), 2);
    assert_eq!(v.kids(), vec!["k1", "k2"]);

    // A flood of made-up kids right after a fetch does not reach the IdP.
    let forged = k2.token_as("made-up");
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (v, t) = (v.clone(), forged.clone());
        flood.spawn(async move { v.verify(&t).await });
    }
    while let Some(r) = flood.join_next().await {
        assert!(matches!(r.expect("task"), Err(JwtError::Invalid(_))));
    }
    assert_eq!(idp.hits(), 2, "rate limit holds");
    // After the period, one more fetch (and still refused: the kid does not exist).
    tokio::time::sleep(limit + Duration::from_millis(100)).await;
    let e = v.verify(&forged).await.expect_err("unknown kid");
    assert_eq!(e.status(), 401);
    let _ = v.verify(&forged).await;
    assert_eq!(idp.hits(), 3);

    // Failures of every kind keep the last good key set.
    idp.answer(500, "oops".into());
    let e = v.refresh_now().await.expect_err("500");
    assert!(matches!(e, JwksError::Status { status: 500, .. }), "{e}");
    idp.answer(200, "<html>login</html>".into());
    let e = v.refresh_now().await.expect_err("garbage");
    assert!(matches!(e, JwksError::Invalid(_)), "{e}");
    idp.answer(200, r#"{"keys": []}"#.into());
    let e = v.refresh_now().await.expect_err("empty set");
    assert!(matches!(e, JwksError::Invalid(_)), "{e}");
    idp.answer(
        200,
        format!(
            r#"{{"keys": [{}], "pad": "{}"}}"#,
            k1.jwk,
            "x".repeat(2 << 20)
        ),
    );
    let e = v.refresh_now().await.expect_err("too large");
    assert!(matches!(e, JwksError::TooLarge(_)), "{e}");
    idp.answer(200, jwks(&[&k1]));
    idp.stall(Duration::from_secs(2));
    let e = v.refresh_now().await.expect_err("stalled IdP");
    assert!(matches!(e, JwksError::Timeout { .. }), "{e}");
    // The unknown-kid path fails the same way and keeps the keys too.
    idp.answer(503, String::new());
    tokio::time::sleep(limit + Duration::from_millis(100)).await;
    let before = idp.hits();
    assert!(v.verify(&k2.token_as("k3")).await.is_err());
    assert_eq!(idp.hits(), before + 1);
    assert_eq!(v.kids(), vec!["k1", "k2"], "last good set kept");
    v.verify(&k2.token()).await.expect("k2 still accepted");
    v.readiness().expect("still ready");

    let text = metrics.encode();
    let line = |trigger: &str, outcome: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("mpm_jwks_fetches_total{")
                    && l.contains(&format!("trigger=\"{trigger}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(line("initial", "error"), Some(5), "{text}");
    assert_eq!(line("unknown_kid", "ok"), Some(2), "{text}");
    assert_eq!(line("unknown_kid", "error"), Some(1), "{text}");
    assert!(
        text.contains("mpm_jwks_keys{service=\"smoc-service\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_refresh_picks_up_rotation_and_retries_failures() {
    let k1 = SigningKey::new("k1");
    let k2 = SigningKey::new("k2");
    let idp = Idp::start(&jwks(&[&k1])).await;
    let v = Arc::new(JwtVerifier::from_url(
        ISSUER,
        AUDIENCE,
        idp.fetcher(Duration::from_secs(2)),
        policy(Duration::from_secs(3600), Duration::from_millis(300)),
        None,
    ));
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(v.clone().run(Duration::from_secs(3600), rx));
    eventually(10, "initial fetch", || async { v.kids() == ["k1"] }).await;
    // Rotation without any token asking for it.
    idp.answer(200, jwks(&[&k2]));
    eventually(10, "periodic refresh", || async { v.kids() == ["k2"] }).await;
    v.verify(&k2.token()).await.expect("k2 accepted");
    // A dead IdP is retried (backoff) while the keys stay.
    idp.answer(500, String::new());
    let before = idp.hits();
    eventually(10, "retries", || async { idp.hits() >= before + 3 }).await;
    assert_eq!(v.kids(), ["k2"]);
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("refresh loop stops on shutdown")
        .expect("no panic");
}

fn url_config(idp: &Idp) -> JwtConfig {
    JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: None,
        jwks_url: Some(idp.url()),
        jwks_ca_file: Some(idp.ca_file.to_string_lossy().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smoc_service_is_ready_only_with_a_key_set_from_the_url() {
    let w = World::new();
    let k1 = SigningKey::new("k1");
    let idp = Idp::start("").await;
    idp.answer(503, String::new());
    let smoc = start_smoc(&w.smoc, w.smoc_config(Some(url_config(&idp)))).await;
    let (_s, op_client) = client("op", &w.op);
    let p = peer(&smoc.url(), SMOC_SA);
    let query = |token: String| {
        let (c, p) = (&op_client, p.clone());
        async move {
            let r = c
                .call_with_headers(
                    "smoc",
                    &p,
                    http::Method::GET,
                    "/v1/meters",
                    None,
                    &mpm_services::util::TraceContext::new_root(),
                    &[("authorization".into(), format!("Bearer {token}"))],
                )
                .await;
            match r {
                Ok(r) => (r.status, String::from_utf8_lossy(&r.body).to_string()),
                // The client reports 5xx as an error (retryable).
                Err(ClientError::Status { status, body, .. }) => (status, body),
                Err(e) => panic!("query call: {e}"),
            }
        }
    };

    eventually(10, "a failed first fetch", || async { idp.hits() >= 1 }).await;
    let (code, body) = http(smoc.health, "GET", "/readyz", &[], b"").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("JWT key set not loaded") && body.contains("503"),
        "{body}"
    );
    let (code, body) = query(k1.token()).await;
    assert_eq!(code, 503, "no keys yet: {body}");

    idp.answer(200, jwks(&[&k1]));
    eventually(15, "ready after the IdP recovers", || async {
        http(smoc.health, "GET", "/readyz", &[], b"").await.0 == 200
    })
    .await;
    let (code, body) = query(k1.token()).await;
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = http(smoc.health, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("mpm_jwks_keys{service=\"smoc-service\"} 1"),
        "{metrics}"
    );
    smoc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_or_neither_key_source_stops_smoc_service_at_start() {
    let w = World::new();
    let base = JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: None,
        jwks_url: None,
        jwks_ca_file: None,
    };
    let cases = [
        (
            JwtConfig {
                jwks_file: Some("/etc/mpm/jwks/jwks.json".into()),
                jwks_url: Some("https://idp.example/certs".into()),
                ..base.clone()
            },
            "both",
        ),
        (base.clone(), "must be set"),
        (
            JwtConfig {
                jwks_url: Some("http://idp.example/certs".into()),
                ..base.clone()
            },
            "https://",
        ),
        (
            JwtConfig {
                jwks_url: Some("https://idp.example/certs".into()),
                jwks_ca_file: Some("/nonexistent/ca.pem".into()),
                ..base.clone()
            },
            "jwt.jwksCaFile",
        ),
    ];
    for (cfg, expect) in cases {
        let (ctx, _stop) = context("smoc-service", &w.smoc, w.smoc_config(Some(cfg)), None);
        match mpm_services::smoc::start(ctx).await {
            Ok(_) => panic!("started with an invalid jwt section ({expect})"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("jwt.jwks") && msg.contains(expect), "{msg}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoc_service_with_a_missing_jwks_file_is_not_ready() {
    let w = World::new();
    let path = w.smoc.root.join("jwks/jwks.json");
    let cfg = JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(path.to_string_lossy().to_string()),
        jwks_url: None,
        jwks_ca_file: None,
    };
    let smoc = start_smoc(&w.smoc, w.smoc_config(Some(cfg))).await;
    let (code, body) = http(smoc.health, "GET", "/readyz", &[], b"").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("jwt.jwksFile"), "{body}");
    // The file appears (kubelet mount): ready without a restart.
    write_atomic(&path, jwks(&[&SigningKey::new("k1")]).as_bytes());
    eventually(10, "ready once the file is there", || async {
        http(smoc.health, "GET", "/readyz", &[], b"").await.0 == 200
    })
    .await;
    smoc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_idp_ca_bundle_is_used_from_the_next_fetch() {
    let k1 = SigningKey::new("k1");
    let idp = Idp::start(&jwks(&[&k1])).await;
    let url = || JwksUrl::parse(&idp.url()).expect("url");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("ca.crt");

    // The mounted bundle still holds another CA: the IdP's certificate is refused.
    std::fs::write(&bundle, &Ca::new("previous IdP CA").pem).expect("write");
    let fetcher =
        JwksFetcher::with_ca_file(url(), &bundle, Duration::from_secs(2)).expect("fetcher");
    let refused = fetcher.fetch().await.expect_err("unknown CA");
    assert!(matches!(refused, JwksError::Tls { .. }), "{refused}");

    // The kubelet swaps in the new bundle: the next fetch trusts it, without a restart.
    std::fs::copy(&idp.ca_file, &bundle).expect("rotate");
    let keys = fetcher.fetch().await.expect("fetch with the rotated CA");
    assert!(!keys.keys.keys.is_empty());

    // A broken bundle does not replace the working roots.
    std::fs::write(&bundle, b"not a certificate").expect("write");
    fetcher.fetch().await.expect("previous roots kept");

    // A bundle that cannot be read at start is a configuration error naming the file.
    let missing = dir.path().join("absent.crt");
    let e =
        JwksFetcher::with_ca_file(url(), &missing, Duration::from_secs(2)).expect_err("missing");
    assert!(e.to_string().contains("absent.crt"), "{e}");
}
