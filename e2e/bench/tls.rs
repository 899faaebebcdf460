//! Issue 6: what mTLS costs device-hub (`mpm-bench tls`).
//!
//! **mTLS vs TLS** (`mpm-bench tls`, in-process, no cluster): device-hub's real API router and store
//! (`device_hub::App`, redb in a temp dir) served on two listeners of this process with the
//! library's own server (`server::serve_https`):
//!
//! - `mTLS`: `tls::server_config` (client certificate required, chained to the trust bundle) and
//!   `server::secure_app` (allowed-peers ACL on the caller's SPIFFE ID), exactly what
//!   `server::start_common` serves;
//! - `TLS`: the same certificate resolver without client authentication, and the same app layers
//!   with `AnonymousCallers::Permit` so the ACL layer lets the identity-less caller through (only
//!   this benchmark does that: no config of the binaries can).
//!
//! Certificates come from the operator's PKI (`mpm_operator::pki`: the CA and leaf profile of a
//! real hub); the client is the library's mTLS client config with the operator's identity, so both
//! variants verify the server the same way and differ only in client authentication. Each variant
//! runs with reused connections (one keep-alive connection per client) and with a new TCP + TLS
//! handshake per request; session resumption is off on both sides (client `Resumption::disabled`,
//! server without session cache or tickets), and every handshake is checked to be a full one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mpm_operator::pki::{self, LeafRequest};
use mpm_services::config::{RuntimePaths, ServiceConfig};
use mpm_services::device_hub;
use mpm_services::metrics::Metrics;
use mpm_services::reload::{MaterialPaths, MaterialStore};
use mpm_services::server::{self, AnonymousCallers, ServiceContext};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::common::{percentile, Row};

/// Target of issue 6: "mTLS within 10 % of plain TLS on reused connections".
const TARGET_RATIO_PERCENT: f64 = 90.0;
const TRUST_DOMAIN: &str = "cluster.local";
const BENCH_NAMESPACE: &str = "bench";
const HUB_SA: &str = "bench-device-hub";
/// Meters provisioned before the run; the clients read them round-robin.
const METERS: usize = 200;
const WARM_UP: Duration = Duration::from_millis(500);

/// Knobs of the mTLS/TLS comparison.
#[derive(Debug, Clone, Copy)]
pub struct TlsOptions {
    /// Measured seconds per variant and round.
    pub seconds: u64,
    /// Rounds; the order of mTLS and TLS alternates between rounds so drift (thermal, other load)
    /// hits both alike.
    pub rounds: usize,
    /// Concurrent clients.
    pub clients: usize,
}

impl Default for TlsOptions {
    fn default() -> Self {
        // Many short alternating rounds rather than a few long ones: on a shared 2-core machine
        // load comes in bursts, and pairing neighbouring runs cancels most of it.
        Self {
            seconds: 2,
            rounds: 5,
            clients: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    Mtls,
    Tls,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Mtls => "mTLS",
            Transport::Tls => "TLS (server-only)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reuse {
    Reused,
    HandshakePerRequest,
}

impl Reuse {
    fn label(self) -> &'static str {
        match self {
            Reuse::Reused => "reused connection",
            Reuse::HandshakePerRequest => "new handshake per request",
        }
    }
}

/// The transports in the order round `round` runs them (alternating).
fn round_order(round: usize) -> [Transport; 2] {
    if round.is_multiple_of(2) {
        [Transport::Mtls, Transport::Tls]
    } else {
        [Transport::Tls, Transport::Mtls]
    }
}

/// Raw results of one variant, summed over clients and rounds.
#[derive(Debug, Default)]
struct Tally {
    /// Requests per second of each run (one per round), in round order.
    per_round: Vec<f64>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    connections: usize,
    full_handshakes: usize,
    resumed_handshakes: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.per_round.extend(other.per_round);
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.connections += other.connections;
        self.full_handshakes += other.full_handshakes;
        self.resumed_handshakes += other.resumed_handshakes;
    }
}

/// What the table shows for one variant.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    requests: usize,
    req_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(latencies: &[Duration], elapsed: Duration) -> Summary {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let secs = elapsed.as_secs_f64();
    Summary {
        requests: sorted.len(),
        req_per_s: if secs > 0.0 {
            sorted.len() as f64 / secs
        } else {
            0.0
        },
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
    }
}

/// mTLS throughput as a percentage of TLS throughput, and whether it meets the target.
fn throughput_verdict(mtls_req_per_s: f64, tls_req_per_s: f64) -> (f64, bool) {
    if tls_req_per_s <= 0.0 {
        return (0.0, false);
    }
    let pct = 100.0 * mtls_req_per_s / tls_req_per_s;
    (pct, pct >= TARGET_RATIO_PERCENT)
}

/// mTLS/TLS throughput of each round in percent (runs of the same round ran back to back), sorted.
fn round_ratios(mtls: &[f64], tls: &[f64]) -> Vec<f64> {
    let mut r: Vec<f64> = mtls
        .iter()
        .zip(tls)
        .filter(|(_, t)| **t > 0.0)
        .map(|(m, t)| 100.0 * m / t)
        .collect();
    r.sort_by(f64::total_cmp);
    r
}

fn ms2(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Serves the current certificate of the store (as the library's resolver does), for the
/// server-only config.
#[derive(Debug)]
struct CurrentCert(Arc<MaterialStore>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.identity().map(|i| i.certified_key.clone())
    }
}

/// `tls::server_config` without client authentication: same provider, protocol versions, resolver.
fn server_only_config(store: Arc<MaterialStore>) -> anyhow::Result<ServerConfig> {
    Ok(
        ServerConfig::builder_with_provider(mpm_services::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(store))),
    )
}

/// No session cache and no tickets: every handshake is a full one.
fn without_resumption(mut cfg: ServerConfig) -> Arc<ServerConfig> {
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Arc::new(cfg)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A client identity (or none) laid out like the mounted volumes, loaded into a material store.
fn client_store(
    dir: &Path,
    name: &str,
    leaf: Option<&pki::IssuedCert>,
    bundle: &str,
) -> anyhow::Result<Arc<MaterialStore>> {
    let root = dir.join(name);
    if let Some(leaf) = leaf {
        write(&root.join("tls/tls.crt"), leaf.cert_pem.as_bytes())?;
        write(&root.join("tls/tls.key"), leaf.key_pem.as_bytes())?;
    }
    write(&root.join("trust/ca-bundle.pem"), bundle.as_bytes())?;
    let paths = MaterialPaths {
        cert: root.join("tls/tls.crt"),
        key: root.join("tls/tls.key"),
        bundle: root.join("trust/ca-bundle.pem"),
        acl: root.join("acl/allowed-peers.json"),
    };
    Ok(MaterialStore::new(
        name,
        paths,
        Arc::new(Metrics::new(name)),
    ))
}

/// The library's mTLS client config for calls to device-hub, without session resumption.
fn client_config(store: Arc<MaterialStore>, hub_id: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut cfg = (*mpm_services::tls::client_config(store, hub_id)?).clone();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// device-hub on two listeners, and the clients' TLS configs.
struct Bench {
    _dir: tempfile::TempDir,
    addrs: BTreeMap<Transport, SocketAddr>,
    /// The operator's identity (allowed by the ACL).
    operator: Arc<ClientConfig>,
    /// An identity of the hub's CA that the ACL does not list.
    intruder: Arc<ClientConfig>,
    /// No client certificate at all.
    anonymous: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), server::ServerError>>,
}

impl Bench {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let now = chrono::Utc::now();
        let ca = pki::generate_ca("mpm bench CA", pki::DEFAULT_CA_VALIDITY, now)?;
        let bundle = pki::bundle_pem(&[ca.cert_pem()]);
        let id = |sa: &str| pki::spiffe_id(TRUST_DOMAIN, BENCH_NAMESPACE, sa);
        let hub_id = id(HUB_SA)?;
        let hub_leaf = pki::issue_leaf(
            &ca,
            &LeafRequest::new(
                hub_id.clone(),
                pki::service_dns_names(HUB_SA, BENCH_NAMESPACE)?,
            ),
            now,
        )?;
        let operator_leaf =
            pki::issue_leaf(&ca, &LeafRequest::new(id("mpm-operator")?, vec![]), now)?;
        let intruder_leaf =
            pki::issue_leaf(&ca, &LeafRequest::new(id("bench-intruder")?, vec![]), now)?;

        // device-hub's mounts, with the allowed peers the operator compiles for a hub whose
        // connector may post events (plus the operator itself, always).
        let hub = dir.path().join("device-hub");
        write(&hub.join("tls/tls.crt"), hub_leaf.cert_pem.as_bytes())?;
        write(&hub.join("tls/tls.key"), hub_leaf.key_pem.as_bytes())?;
        write(&hub.join("trust/ca-bundle.pem"), bundle.as_bytes())?;
        let acl = serde_json::json!({"version": 1, "service": device_hub::SERVICE, "peers": [
            {"spiffeId": id("bench-iec61968-connector")?.as_str(), "methods": ["POST"], "pathPrefixes": ["/v1/events"]},
            {"spiffeId": id("mpm-operator")?.as_str()},
        ]});
        write(
            &hub.join("acl/allowed-peers.json"),
            acl.to_string().as_bytes(),
        )?;
        let paths = RuntimePaths {
            config_file: hub.join("config/config.json"),
            tls_dir: hub.join("tls"),
            trust_dir: hub.join("trust"),
            acl_file: hub.join("acl/allowed-peers.json"),
            data_dir: hub.join("data"),
            https_addr: "127.0.0.1:0".parse()?,
            health_addr: "127.0.0.1:0".parse()?,
        };
        let config = ServiceConfig {
            hub: "bench".into(),
            namespace: BENCH_NAMESPACE.into(),
            service: device_hub::SERVICE.into(),
            trust_domain: TRUST_DOMAIN.into(),
            peers: BTreeMap::new(),
            hes: None,
            ingest: Default::default(),
            jwt: None,
        };
        let (stop, shutdown) = watch::channel(false);
        let ctx = ServiceContext::new(device_hub::SERVICE, paths, config, shutdown.clone());
        ctx.material
            .readiness()
            .map_err(|e| anyhow::anyhow!("device-hub material: {e}"))?;
        let app = device_hub::App::open(&ctx)?;
        let router = app.router();

        let mtls_tls =
            without_resumption((*mpm_services::tls::server_config(ctx.material.clone())?).clone());
        let plain_tls = without_resumption(server_only_config(ctx.material.clone())?);
        let mut tasks = JoinSet::new();
        let mut addrs = BTreeMap::new();
        for (transport, tls, app) in [
            (
                Transport::Mtls,
                mtls_tls,
                server::secure_app(router.clone(), &ctx),
            ),
            (
                Transport::Tls,
                plain_tls,
                server::secure_app_with(router.clone(), &ctx, AnonymousCallers::Permit),
            ),
        ] {
            let listener = server::bind("127.0.0.1:0".parse()?).await?;
            addrs.insert(transport, listener.local_addr()?);
            tasks.spawn(server::serve_https(
                listener,
                tls,
                app,
                ctx.metrics.clone(),
                shutdown.clone(),
                Duration::from_secs(2),
            ));
        }

        let operator = client_config(
            client_store(dir.path(), "operator", Some(&operator_leaf), &bundle)?,
            hub_id.as_str(),
        )?;
        let intruder = client_config(
            client_store(dir.path(), "intruder", Some(&intruder_leaf), &bundle)?,
            hub_id.as_str(),
        )?;
        let anonymous = client_config(
            client_store(dir.path(), "anonymous", None, &bundle)?,
            hub_id.as_str(),
        )?;
        Ok(Self {
            _dir: dir,
            addrs,
            operator,
            intruder,
            anonymous,
            server_name: ServerName::try_from(format!("{HUB_SA}.{BENCH_NAMESPACE}.svc"))?,
            stop,
            tasks,
        })
    }

    fn addr(&self, t: Transport) -> SocketAddr {
        self.addrs[&t]
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One HTTP/1.1 connection over TLS: the request sender and how the handshake went.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    kind: Option<HandshakeKind>,
    protocol: String,
}

async fn connect(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name.clone(), tcp)
        .await
        .context("TLS handshake")?;
    let state = stream.get_ref().1;
    let kind = state.handshake_kind();
    let protocol = match (state.protocol_version(), state.negotiated_cipher_suite()) {
        (Some(v), Some(s)) => format!("{v:?} {:?}", s.suite()),
        _ => "unknown protocol".into(),
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        sender,
        kind,
        protocol,
    })
}

/// Sends one request on `conn`; returns the status and body.
async fn send(
    conn: &mut Conn,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
    close: bool,
) -> anyhow::Result<(u16, Bytes)> {
    let mut req = http::Request::builder().method(method).uri(path).header(
        http::header::HOST,
        format!("{HUB_SA}.{BENCH_NAMESPACE}.svc"),
    );
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    if close {
        req = req.header(http::header::CONNECTION, "close");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    conn.sender.ready().await.context("connection not ready")?;
    let resp = conn.sender.send_request(req).await.context("request")?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.context("body")?.to_bytes();
    Ok((status, body))
}

fn serial(i: usize) -> String {
    format!("BENCH-{i:05}")
}

/// The body the operator PUTs for a Meter (contract: device-hub API).
fn meter_body(i: usize) -> Vec<u8> {
    serde_json::json!({
        "serialNumber": serial(i), "manufacturer": "Landis+Gyr", "model": "E450",
        "protocol": "DLMS/COSEM", "hesId": "hes-1",
        "location": {"feeder": "F-12", "substation": "S-3"}, "desiredState": "Active"
    })
    .to_string()
    .into_bytes()
}

/// Provisions the meters and checks that each listener does what its variant claims. Returns the
/// negotiated protocol and the size of one answer, for the table.
async fn prepare(b: &Bench) -> anyhow::Result<(String, usize)> {
    let mtls = b.addr(Transport::Mtls);
    let tls = b.addr(Transport::Tls);
    let mut c = connect(mtls, &b.operator, &b.server_name).await?;
    for i in 0..METERS {
        let (status, body) = send(
            &mut c,
            http::Method::PUT,
            &format!("/v1/meters/{}", serial(i)),
            Some(meter_body(i)),
            false,
        )
        .await?;
        if status != 201 && status != 200 {
            bail!(
                "provisioning {}: HTTP {status}: {}",
                serial(i),
                String::from_utf8_lossy(&body)
            );
        }
    }
    let protocol = c.protocol.clone();
    let get = format!("/v1/meters/{}", serial(0));
    // mTLS: the operator's identity is allowed...
    let (status, answer) = send(&mut c, http::Method::GET, &get, None, true).await?;
    if status != 200 {
        bail!("mTLS GET as the operator: HTTP {status}");
    }
    // ...an identity the ACL does not list gets 403...
    let mut i = connect(mtls, &b.intruder, &b.server_name).await?;
    let (status, _) = send(&mut i, http::Method::GET, &get, None, true).await?;
    if status != 403 {
        bail!("mTLS GET as an unlisted identity: HTTP {status}, expected 403");
    }
    // ...and a client without certificate gets nothing (TLS 1.3 reports the refusal after the
    // client's side of the handshake, so look at the request).
    let refused = match connect(mtls, &b.anonymous, &b.server_name).await {
        Err(_) => true,
        Ok(mut a) => send(&mut a, http::Method::GET, &get, None, true)
            .await
            .is_err(),
    };
    if !refused {
        bail!("the mTLS listener served a client without certificate");
    }
    // TLS: nobody is asked for a certificate, so even the unlisted identity is served (as an
    // anonymous caller): proof that no identity reaches the ACL layer on this listener.
    let mut t = connect(tls, &b.intruder, &b.server_name).await?;
    let (status, _) = send(&mut t, http::Method::GET, &get, None, true).await?;
    if status != 200 {
        bail!("server-only TLS GET: HTTP {status}");
    }
    Ok((protocol, answer.len()))
}

/// What every client of one variant run does.
#[derive(Clone)]
struct Plan {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    name: ServerName<'static>,
    reuse: Reuse,
    /// Serial index stride (the number of clients), so clients read different meters.
    step: usize,
    warm_until: Instant,
    end: Instant,
}

/// One client of one variant: requests until `end`, counting those started after `warm_until`.
async fn client_loop(plan: Plan, first: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let mut i = first;
    loop {
        let started = Instant::now();
        if started >= plan.end {
            break;
        }
        let measured = started >= plan.warm_until;
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let c = connect(plan.addr, &plan.tls, &plan.name).await?;
                tally.connections += 1;
                if measured {
                    match c.kind {
                        Some(HandshakeKind::Resumed) => tally.resumed_handshakes += 1,
                        _ => tally.full_handshakes += 1,
                    }
                }
                c
            }
        };
        let close = plan.reuse == Reuse::HandshakePerRequest;
        let path = format!("/v1/meters/{}", serial(i % METERS));
        let (status, body) = send(&mut c, http::Method::GET, &path, None, close).await?;
        if status != 200 {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        if measured {
            tally.latencies.push(started.elapsed());
        }
        if !close {
            conn = Some(c);
        }
        i += plan.step;
    }
    Ok(tally)
}

/// Runs one variant with `clients` concurrent clients for `measure` after a warm-up.
async fn run_variant(
    b: &Bench,
    transport: Transport,
    reuse: Reuse,
    clients: usize,
    measure: Duration,
) -> anyhow::Result<Tally> {
    let warm_until = Instant::now() + WARM_UP;
    let plan = Plan {
        addr: b.addr(transport),
        tls: b.operator.clone(),
        name: b.server_name.clone(),
        reuse,
        step: clients,
        warm_until,
        end: warm_until + measure,
    };
    let mut set = JoinSet::new();
    for k in 0..clients {
        set.spawn(client_loop(plan.clone(), k));
    }
    let mut total = Tally::default();
    while let Some(r) = set.join_next().await {
        total.merge(r.context("client task")??);
    }
    total.elapsed = Instant::now().saturating_duration_since(warm_until);
    total.per_round = vec![summarize(&total.latencies, total.elapsed).req_per_s];
    Ok(total)
}

/// The mTLS vs server-only TLS comparison (no cluster needed).
pub async fn tls(opts: &TlsOptions) -> anyhow::Result<Vec<Row>> {
    let b = Bench::start().await?;
    let result = measure(&b, opts).await;
    b.stop().await;
    result
}

async fn measure(b: &Bench, opts: &TlsOptions) -> anyhow::Result<Vec<Row>> {
    let (protocol, answer_bytes) = prepare(b).await?;
    let clients = opts.clients.max(1);
    let measure = Duration::from_secs(opts.seconds.max(1));
    // One unrecorded pass over both listeners first: the first seconds after provisioning (store
    // caches, allocator growth, lazily built state) would otherwise count against whichever
    // variant happens to run first.
    for transport in round_order(0) {
        run_variant(b, transport, Reuse::Reused, clients, Duration::from_secs(1)).await?;
    }
    let mut tallies: BTreeMap<(Reuse, Transport), Tally> = BTreeMap::new();
    for reuse in [Reuse::Reused, Reuse::HandshakePerRequest] {
        for round in 0..opts.rounds.max(1) {
            for transport in round_order(round) {
                let t = run_variant(b, transport, reuse, clients, measure).await?;
                eprintln!(
                    "  tls: round {} {}, {}: {:.0} req/s",
                    round + 1,
                    transport.label(),
                    reuse.label(),
                    t.per_round.first().copied().unwrap_or_default()
                );
                tallies.entry((reuse, transport)).or_default().merge(t);
            }
        }
    }

    let request = "GET /v1/meters/{serial}";
    let mut rows = vec![Row::info(
        "tls: setup",
        format!(
            "device-hub {request} ({METERS} meters, {answer_bytes} B JSON answer), {clients} clients, \
             {} rounds x {} s per variant, {protocol}, resumption off; mTLS refuses no-cert and unlisted clients (checked)",
            opts.rounds.max(1),
            measure.as_secs()
        ),
    )];
    let mut summaries = BTreeMap::new();
    for ((reuse, transport), t) in &tallies {
        let s = summarize(&t.latencies, t.elapsed);
        summaries.insert((*reuse, *transport), s);
        let handshakes = match reuse {
            Reuse::Reused => format!(
                "{} connections, {} per run",
                t.connections,
                t.connections / t.per_round.len().max(1)
            ),
            Reuse::HandshakePerRequest => format!(
                "{} full / {} resumed handshakes",
                t.full_handshakes, t.resumed_handshakes
            ),
        };
        rows.push(Row::info(
            &format!("tls: {}, {}", transport.label(), reuse.label()),
            format!(
                "{:.0} req/s, p50 {}, p99 {} ({} requests, {handshakes})",
                s.req_per_s,
                ms2(s.p50),
                ms2(s.p99),
                s.requests
            ),
        ));
        if *reuse == Reuse::HandshakePerRequest && t.resumed_handshakes > 0 {
            bail!(
                "{} handshakes were resumed; the comparison needs full ones",
                t.resumed_handshakes
            );
        }
    }
    for reuse in [Reuse::Reused, Reuse::HandshakePerRequest] {
        let (Some(m), Some(t)) = (
            summaries.get(&(reuse, Transport::Mtls)),
            summaries.get(&(reuse, Transport::Tls)),
        ) else {
            continue;
        };
        let (pct, pass) = throughput_verdict(m.req_per_s, t.req_per_s);
        let rounds = round_ratios(
            &tallies[&(reuse, Transport::Mtls)].per_round,
            &tallies[&(reuse, Transport::Tls)].per_round,
        );
        let spread = match (rounds.first(), rounds.last()) {
            (Some(lo), Some(hi)) => format!("; rounds {lo:.0}-{hi:.0} %"),
            _ => String::new(),
        };
        let figure = format!(
            "{pct:.1} % ({:.0} / {:.0} req/s{spread}; p99 {} vs {})",
            m.req_per_s,
            t.req_per_s,
            ms2(m.p99),
            ms2(t.p99)
        );
        rows.push(match reuse {
            Reuse::Reused => Row::new(
                "mTLS / TLS reused-connection throughput",
                figure,
                &format!(">= {TARGET_RATIO_PERCENT:.0} %"),
                Some(pass),
            ),
            Reuse::HandshakePerRequest => Row::info("mTLS / TLS new-handshake throughput", figure),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_requests_per_second_and_percentiles() {
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summarize(&lat, Duration::from_secs(4));
        assert_eq!(s.requests, 100);
        assert!((s.req_per_s - 25.0).abs() < 1e-9);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        let empty = summarize(&[], Duration::ZERO);
        assert_eq!(
            (empty.requests, empty.req_per_s, empty.p99),
            (0, 0.0, Duration::ZERO)
        );
    }

    #[test]
    fn verdict_needs_mtls_within_ten_percent_of_tls() {
        assert_eq!(throughput_verdict(900.0, 1000.0), (90.0, true));
        let (pct, pass) = throughput_verdict(899.0, 1000.0);
        assert!(!pass && (pct - 89.9).abs() < 1e-9);
        assert!(throughput_verdict(1100.0, 1000.0).1, "faster mTLS passes");
        assert_eq!(throughput_verdict(5.0, 0.0), (0.0, false), "no TLS figure");
    }

    #[test]
    fn round_ratios_pair_runs_of_the_same_round() {
        assert_eq!(
            round_ratios(&[90.0, 120.0, 50.0], &[100.0, 100.0, 100.0]),
            vec![50.0, 90.0, 120.0]
        );
        assert!(round_ratios(&[1.0], &[0.0]).is_empty());
    }

    #[test]
    fn rounds_alternate_the_order() {
        assert_eq!(round_order(0), [Transport::Mtls, Transport::Tls]);
        assert_eq!(round_order(1), [Transport::Tls, Transport::Mtls]);
        assert_eq!(round_order(2), round_order(0));
    }

    #[test]
    fn meter_bodies_are_valid_put_bodies() {
        let spec = device_hub::parse_spec(&meter_body(7)).expect("valid PUT body");
        assert_eq!(spec.serial_number, serial(7));
    }
}
