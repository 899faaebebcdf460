//! Test harness: a real PKI (rcgen CA and SPIFFE leaves), on-disk material laid out like the
//! mounted volumes, in-process services on ephemeral ports, and small HTTP helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mpm_services::client::{ClientPolicy, MtlsClient};
use mpm_services::config::{JwtConfig, PeerConfig, RuntimePaths, ServiceConfig};
use mpm_services::metrics::Metrics;
use mpm_services::reload::{MaterialPaths, MaterialStore};
use mpm_services::server::{Running, ServiceContext};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/park/sa/{sa}")
}

pub const HUB_SA: &str = "demo-device-hub";
pub const SMOC_SA: &str = "demo-smoc-service";
pub const CONN_SA: &str = "demo-iec61968-connector";
pub const OPERATOR_SA: &str = "mpm-operator";

/// The HES's ingest token in [`World::conn_config`], and the header value that carries it.
pub const INGEST_TOKEN: &str = "test-ingest-token-0123456789abcdef";
pub const INGEST_AUTH: &str = "Bearer test-ingest-token-0123456789abcdef";

/// A CA that issues SPIFFE leaves.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed ca");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM) for a SPIFFE ID.
    pub fn leaf(&self, spiffe_id: &str) -> (String, String) {
        self.leaf_with(spiffe_id, |_| {})
    }

    pub fn leaf_with(
        &self,
        spiffe_id: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("ia5"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a file atomically (temp + rename), as the kubelet's symlink swap appears to readers.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("parent");
    std::fs::create_dir_all(dir).expect("mkdir");
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, bytes).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One service's (or client's) mounted-volume layout under a temp dir.
pub struct Mounts {
    pub root: PathBuf,
}

impl Mounts {
    pub fn new(root: &Path, name: &str) -> Self {
        let root = root.join(name);
        std::fs::create_dir_all(&root).expect("mkdir");
        Self { root }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn trust_dir(&self) -> PathBuf {
        self.root.join("trust")
    }
    pub fn acl_file(&self) -> PathBuf {
        self.root.join("acl/allowed-peers.json")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn ingest_token_file(&self) -> PathBuf {
        self.root.join("ingest-token/token")
    }
    pub fn ingest_ca_file(&self) -> PathBuf {
        self.root.join("ingest-ca/ca.crt")
    }

    pub fn set_identity(&self, cert_key: &(String, String)) {
        // Key first then cert: a reader may see a mismatched pair for a moment, which must be
        // rejected without replacing the good material.
        write_atomic(&self.tls_dir().join("tls.key"), cert_key.1.as_bytes());
        write_atomic(&self.tls_dir().join("tls.crt"), cert_key.0.as_bytes());
    }

    pub fn set_bundle(&self, pems: &[&str]) -> String {
        let bundle = pems.concat();
        write_atomic(&self.trust_dir().join("ca-bundle.pem"), bundle.as_bytes());
        bundle
    }

    pub fn set_acl(&self, peers: &[(&str, &[&str], &[&str])]) {
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|(id, methods, prefixes)| {
                // An empty list is written as an absent field (any), as the operator does: a
                // present empty list makes the file invalid (contract: allowed-peers.json).
                let mut entry = serde_json::json!({"spiffeId": id});
                if !methods.is_empty() {
                    entry["methods"] = serde_json::json!(methods);
                }
                if !prefixes.is_empty() {
                    entry["pathPrefixes"] = serde_json::json!(prefixes);
                }
                entry
            })
            .collect();
        let doc = serde_json::json!({"version": 1, "service": "x", "peers": peers});
        write_atomic(&self.acl_file(), doc.to_string().as_bytes());
    }

    pub fn runtime_paths(&self) -> RuntimePaths {
        RuntimePaths {
            config_file: self.root.join("config/config.json"),
            tls_dir: self.tls_dir(),
            trust_dir: self.trust_dir(),
            acl_file: self.acl_file(),
            data_dir: self.data_dir(),
            https_addr: "127.0.0.1:0".parse().expect("addr"),
            health_addr: "127.0.0.1:0".parse().expect("addr"),
        }
    }

    pub fn material_paths(&self) -> MaterialPaths {
        MaterialPaths::from_runtime(&self.runtime_paths())
    }
}

pub fn config(
    service: &str,
    peers: &[(&str, String, String)],
    jwt: Option<JwtConfig>,
) -> ServiceConfig {
    let mut map = BTreeMap::new();
    for (name, url, id) in peers {
        map.insert(
            name.to_string(),
            PeerConfig {
                url: url.clone(),
                spiffe_id: id.clone(),
            },
        );
    }
    ServiceConfig {
        hub: "demo".into(),
        namespace: "park".into(),
        service: service.into(),
        trust_domain: "cluster.local".into(),
        peers: map,
        hes: None,
        ingest: Default::default(),
        jwt,
    }
}

/// A started in-process service.
pub struct Svc {
    pub running: Option<Running>,
    pub https: SocketAddr,
    pub health: SocketAddr,
    pub ingest: Option<SocketAddr>,
    stop: watch::Sender<bool>,
}

impl Svc {
    pub fn url(&self) -> String {
        format!("https://{}", self.https)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("service stops in time")
                .expect("service stops cleanly");
        }
    }
}

pub fn context(
    name: &str,
    mounts: &Mounts,
    cfg: ServiceConfig,
    https: Option<SocketAddr>,
) -> (ServiceContext, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let mut paths = mounts.runtime_paths();
    if let Some(a) = https {
        paths.https_addr = a;
    }
    let mut ctx = ServiceContext::new(name, paths, cfg, rx);
    ctx.poll_interval = Duration::from_millis(100);
    ctx.drain_deadline = Duration::from_secs(5);
    (ctx, tx)
}

pub async fn start_hub(mounts: &Mounts, cfg: ServiceConfig, https: Option<SocketAddr>) -> Svc {
    let (ctx, stop) = context("device-hub", mounts, cfg, https);
    let running = mpm_services::device_hub::start(ctx)
        .await
        .expect("device-hub starts");
    wrap(running, stop)
}

pub async fn start_smoc(mounts: &Mounts, cfg: ServiceConfig) -> Svc {
    start_smoc_at(mounts, cfg, None).await
}

/// smoc-service on a fixed HTTPS address (one a device-hub already points at).
pub async fn start_smoc_at(mounts: &Mounts, cfg: ServiceConfig, https: Option<SocketAddr>) -> Svc {
    let (ctx, stop) = context("smoc-service", mounts, cfg, https);
    let running = mpm_services::smoc::start(ctx).await.expect("smoc starts");
    wrap(running, stop)
}

pub async fn start_connector(mounts: &Mounts, cfg: ServiceConfig) -> Svc {
    let (ctx, stop) = context("iec61968-connector", mounts, cfg, None);
    let running = mpm_services::connector::start(ctx, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("connector starts");
    wrap(running, stop)
}

fn wrap(running: Running, stop: watch::Sender<bool>) -> Svc {
    Svc {
        https: running.https_addr,
        health: running.health_addr,
        ingest: running.ingest_addr,
        running: Some(running),
        stop,
    }
}

/// An mTLS client with its own identity from `mounts` (no retries, so failures show).
pub fn client(name: &str, mounts: &Mounts) -> (Arc<MaterialStore>, MtlsClient) {
    let metrics = Arc::new(Metrics::new(name));
    let store = MaterialStore::new(name, mounts.material_paths(), metrics.clone());
    let policy = ClientPolicy {
        max_attempts: 1,
        breaker_threshold: 1_000_000,
        ..ClientPolicy::default()
    };
    (store.clone(), MtlsClient::new(store, metrics, policy))
}

/// Plain HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_string(),
        None => String::new(),
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn status_json(health: SocketAddr) -> serde_json::Value {
    let (code, body) = http(health, "GET", "/status", &[], b"").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status json")
}

/// Polls `f` until it returns true (panics after `secs`).
/// The sum of the `mpm_http_requests_total` series in `metrics` for `route` and `status`.
pub fn requests(metrics: &str, route: &str, status: u16) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("mpm_http_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")))
        .filter(|l| l.contains(&format!("status=\"{status}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A hub's worth of identities and mounts sharing one CA.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub hub: Mounts,
    pub smoc: Mounts,
    pub conn: Mounts,
    pub op: Mounts,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("meter park test CA");
        let hub = Mounts::new(dir.path(), "hub");
        let smoc = Mounts::new(dir.path(), "smoc");
        let conn = Mounts::new(dir.path(), "conn");
        let op = Mounts::new(dir.path(), "op");
        for (m, sa) in [
            (&hub, HUB_SA),
            (&smoc, SMOC_SA),
            (&conn, CONN_SA),
            (&op, OPERATOR_SA),
        ] {
            m.set_identity(&ca.leaf(&spiffe(sa)));
            m.set_bundle(&[&ca.pem]);
        }
        let conn_id = spiffe(CONN_SA);
        let hub_id = spiffe(HUB_SA);
        let op_id = spiffe(OPERATOR_SA);
        hub.set_acl(&[
            (conn_id.as_str(), &["POST"], &["/v1/events"]),
            (op_id.as_str(), &[], &[]),
        ]);
        smoc.set_acl(&[
            (
                hub_id.as_str(),
                &["GET", "PUT", "POST", "DELETE"],
                &["/v1/"],
            ),
            (op_id.as_str(), &["GET"], &["/v1/meters"]),
        ]);
        // The operator may read and replay the connector's dead letters; nobody else.
        conn.set_acl(&[(op_id.as_str(), &["GET", "POST"], &["/dead-letters"])]);
        write_atomic(
            &conn.ingest_token_file(),
            format!("{INGEST_TOKEN}\n").as_bytes(),
        );
        Self {
            dir,
            ca,
            hub,
            smoc,
            conn,
            op,
        }
    }

    pub fn hub_config(&self, smoc_url: &str) -> ServiceConfig {
        config(
            "device-hub",
            &[("smoc-service", smoc_url.to_string(), spiffe(SMOC_SA))],
            None,
        )
    }

    pub fn smoc_config(&self, jwt: Option<JwtConfig>) -> ServiceConfig {
        config(
            "smoc-service",
            &[(
                "device-hub",
                "https://127.0.0.1:1".to_string(),
                spiffe(HUB_SA),
            )],
            jwt,
        )
    }

    /// The connector, with the HES authenticating by [`INGEST_TOKEN`].
    pub fn conn_config(&self, hub_url: &str) -> ServiceConfig {
        self.conn_config_with(
            hub_url,
            serde_json::json!({"tokenFile": self.conn.ingest_token_file()}),
        )
    }

    /// The connector with `hes` as its config.json `hes` section.
    pub fn conn_config_with(&self, hub_url: &str, hes: serde_json::Value) -> ServiceConfig {
        let mut cfg = config(
            "iec61968-connector",
            &[("device-hub", hub_url.to_string(), spiffe(HUB_SA))],
            None,
        );
        cfg.hes = serde_json::from_value(hes).expect("hes section");
        cfg
    }

    /// `method path` on the connector's mTLS port as the operator (allowed for `/dead-letters`).
    pub async fn conn_api(&self, conn: &Svc, method: http::Method, path: &str) -> (u16, String) {
        let (_s, op) = client("op", &self.op);
        let r = op
            .call(
                "iec61968-connector",
                &peer(&conn.url(), CONN_SA),
                method,
                path,
                None,
                &mpm_services::util::TraceContext::new_root(),
            )
            .await
            .expect("call the connector");
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    }
}

pub fn peer(url: &str, sa: &str) -> PeerConfig {
    PeerConfig {
        url: url.to_string(),
        spiffe_id: spiffe(sa),
    }
}

/// A free localhost port (bound and released) for a service started later at a fixed address,
/// below Linux's ephemeral range (32768-60999). An ephemeral port could be taken meanwhile: by
/// another test's connection, or by a client's own connection attempt to it, which the kernel can
/// complete as a TCP self-connect while nothing listens (seen in CI: `AddrInUse` on the restart).
pub fn free_addr() -> SocketAddr {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port: u16 = rng.random_range(20_000..32_000);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free port in 20000..32000 after 1000 tries")
}
