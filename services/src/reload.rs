//! Mounted material (certificate and key, trust bundle, allowed peers) loaded from files and polled
//! for changes. Content hashes, not mtimes, decide whether a file changed (the kubelet swaps a
//! `..data` symlink). Invalid new material never replaces good material.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;

use crate::acl::Acl;
use crate::metrics::Metrics;
use crate::tls::{Identity, Trust};
use crate::util::sha256_hex;

/// Poll interval (contract: Mounted files, "polling every 2 s is fine").
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Which files to watch.
#[derive(Debug, Clone)]
pub struct MaterialPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub acl: PathBuf,
}

impl MaterialPaths {
    pub fn from_runtime(p: &crate::config::RuntimePaths) -> Self {
        Self {
            cert: p.cert_file(),
            key: p.key_file(),
            bundle: p.bundle_file(),
            acl: p.acl_file.clone(),
        }
    }
}

/// Parses and installs a watched file's new content (see [`WatchedFile::load`]).
pub type LoadFn = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// A service-specific file polled with the rest of the material (the connector's ingest CA bundle
/// and token): same content-hash change detection, metrics (`kind`) and keep-the-old-one rule.
pub struct WatchedFile {
    pub kind: &'static str,
    pub path: PathBuf,
    /// Parses and installs new content; `Err` says why it is not usable (the previous content then
    /// stays). The message must not contain the content (it may be a secret).
    pub load: LoadFn,
}

/// A registered [`WatchedFile`] and the hash of the content it last saw (or `missing`).
struct Watched {
    file: WatchedFile,
    seen: Option<String>,
}

#[derive(Default)]
struct Seen {
    identity: Option<String>,
    trust: Option<String>,
    acl: Option<String>,
}

/// The `/status` document (contract: Health port).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub service: String,
    pub trust_bundle_sha256: Option<String>,
    pub certificate_serial: Option<String>,
    pub certificate_not_after: Option<String>,
    pub allowed_peers_version: String,
}

/// The current material; readers take an `Arc` snapshot, the poller swaps it.
pub struct MaterialStore {
    service: String,
    paths: MaterialPaths,
    identity: RwLock<Option<Arc<Identity>>>,
    trust: RwLock<Option<Arc<Trust>>>,
    acl: RwLock<Arc<Acl>>,
    errors: RwLock<BTreeMap<&'static str, String>>,
    seen: std::sync::Mutex<Seen>,
    watched: std::sync::Mutex<Vec<Watched>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MaterialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterialStore")
            .field("service", &self.service)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl MaterialStore {
    /// Creates the store and loads what is there (errors are recorded, not returned).
    pub fn new(service: &str, paths: MaterialPaths, metrics: Arc<Metrics>) -> Arc<Self> {
        let store = Arc::new(Self {
            service: service.to_string(),
            paths,
            identity: RwLock::new(None),
            trust: RwLock::new(None),
            acl: RwLock::new(Arc::new(Acl::deny_all())),
            errors: RwLock::new(BTreeMap::new()),
            seen: std::sync::Mutex::new(Seen::default()),
            watched: std::sync::Mutex::new(Vec::new()),
            metrics,
        });
        store.poll_once();
        store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.read().ok().and_then(|g| g.clone())
    }

    pub fn trust(&self) -> Option<Arc<Trust>> {
        self.trust.read().ok().and_then(|g| g.clone())
    }

    pub fn acl(&self) -> Arc<Acl> {
        self.acl
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|_| Arc::new(Acl::deny_all()))
    }

    fn set_error(&self, kind: &'static str, err: Option<String>) {
        if let Ok(mut g) = self.errors.write() {
            match err {
                Some(e) => {
                    g.insert(kind, e);
                }
                None => {
                    g.remove(kind);
                }
            }
        }
    }

    /// Current load errors by kind (`identity`, `trust`, `acl`).
    pub fn errors(&self) -> BTreeMap<&'static str, String> {
        self.errors.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn failed(&self, kind: &'static str, msg: String) {
        tracing::error!(kind, error = %msg, "rejected new {kind} material; keeping the previous one");
        self.metrics
            .reload_failures
            .get_or_create(&Metrics::labels(&[("kind", kind)]))
            .inc();
        self.set_error(kind, Some(msg));
    }

    fn loaded(&self, kind: &'static str) {
        self.metrics
            .reloads
            .get_or_create(&Metrics::labels(&[("kind", kind)]))
            .inc();
        self.set_error(kind, None);
    }

    /// Adds a service-specific file to the poll and loads it now.
    pub fn watch_file(&self, file: WatchedFile) {
        let mut w = Watched { file, seen: None };
        self.poll_watched(&mut w);
        if let Ok(mut g) = self.watched.lock() {
            g.push(w);
        }
    }

    fn poll_watched(&self, w: &mut Watched) {
        let kind = w.file.kind;
        match read_opt(&w.file.path) {
            Ok(Some(bytes)) => {
                let h = sha256_hex(&bytes);
                if w.seen.as_deref() != Some(h.as_str()) {
                    w.seen = Some(h);
                    match (w.file.load)(&bytes) {
                        Ok(()) => {
                            tracing::info!(kind, path = %w.file.path.display(), "loaded {kind}");
                            self.loaded(kind);
                        }
                        Err(e) => self.failed(kind, format!("{}: {e}", w.file.path.display())),
                    }
                }
            }
            Ok(None) => {
                if w.seen.as_deref() != Some("missing") {
                    w.seen = Some("missing".into());
                    self.failed(kind, format!("{} missing", w.file.path.display()));
                }
            }
            Err(e) => self.failed(kind, format!("{}: read error: {e}", w.file.path.display())),
        }
    }

    /// Reads all files once and swaps in whatever changed and is valid.
    pub fn poll_once(&self) {
        if let Ok(mut watched) = self.watched.lock() {
            for w in watched.iter_mut() {
                self.poll_watched(w);
            }
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        // Identity: cert + key together.
        match (read_opt(&self.paths.cert), read_opt(&self.paths.key)) {
            (Ok(Some(cert)), Ok(Some(key))) => {
                let mut both = cert.clone();
                both.extend_from_slice(&key);
                let h = sha256_hex(&both);
                if seen.identity.as_deref() != Some(h.as_str()) {
                    seen.identity = Some(h);
                    match Identity::from_pem(&cert, &key) {
                        Ok(id) => {
                            tracing::info!(
                                serial = %id.info.serial_hex,
                                not_after = %id.info.not_after,
                                spiffe_id = ?id.info.spiffe_ids,
                                "loaded certificate"
                            );
                            self.metrics
                                .cert_not_after
                                .set(id.info.not_after.timestamp());
                            if let Ok(mut g) = self.identity.write() {
                                *g = Some(Arc::new(id));
                            }
                            self.loaded("identity");
                        }
                        Err(e) => self.failed("identity", e.to_string()),
                    }
                }
            }
            (Ok(None), _) | (_, Ok(None)) => {
                if seen.identity.as_deref() != Some("missing") {
                    seen.identity = Some("missing".into());
                    self.failed("identity", "tls.crt or tls.key missing".into());
                }
            }
            (Err(e), _) | (_, Err(e)) => self.failed("identity", format!("read error: {e}")),
        }
        // Trust bundle.
        match read_opt(&self.paths.bundle) {
            Ok(Some(bundle)) => {
                let h = sha256_hex(&bundle);
                if seen.trust.as_deref() != Some(h.as_str()) {
                    seen.trust = Some(h);
                    match Trust::from_pem(&bundle) {
                        Ok(t) => {
                            tracing::info!(sha256 = %t.sha256, cas = t.ca_count, "loaded trust bundle");
                            self.metrics.set_trust_bundle(&t.sha256);
                            if let Ok(mut g) = self.trust.write() {
                                *g = Some(Arc::new(t));
                            }
                            self.loaded("trust");
                        }
                        Err(e) => self.failed("trust", e.to_string()),
                    }
                }
            }
            Ok(None) => {
                if seen.trust.as_deref() != Some("missing") {
                    seen.trust = Some("missing".into());
                    self.failed("trust", "ca-bundle.pem missing".into());
                }
            }
            Err(e) => self.failed("trust", format!("read error: {e}")),
        }
        // ACL: a missing file means "no peers allowed".
        match read_opt(&self.paths.acl) {
            Ok(Some(bytes)) => {
                let h = sha256_hex(&bytes);
                if seen.acl.as_deref() != Some(h.as_str()) {
                    seen.acl = Some(h);
                    match Acl::parse(&bytes) {
                        Ok(acl) => {
                            tracing::info!(version = %acl.version_hash, peers = acl.rules.peers.len(), "loaded allowed peers");
                            if let Ok(mut g) = self.acl.write() {
                                *g = Arc::new(acl);
                            }
                            self.loaded("acl");
                        }
                        Err(e) => self.failed("acl", e.to_string()),
                    }
                }
            }
            Ok(None) => {
                if seen.acl.as_deref() != Some("missing") {
                    seen.acl = Some("missing".into());
                    tracing::warn!("allowed-peers.json missing: no peers allowed");
                    if let Ok(mut g) = self.acl.write() {
                        *g = Arc::new(Acl::deny_all());
                    }
                    self.set_error("acl", None);
                }
            }
            Err(e) => self.failed("acl", format!("read error: {e}")),
        }
    }

    /// Polls every `interval` until `shutdown` flips.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let s = self.clone();
                    if tokio::task::spawn_blocking(move || s.poll_once()).await.is_err() {
                        tracing::error!("material poll task failed");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }

    /// `Ok(())` when certificate, key and bundle are loaded and the certificate is current.
    pub fn readiness(&self) -> Result<(), String> {
        let id = self
            .identity()
            .ok_or_else(|| self.reason("identity", "certificate and key not loaded"))?;
        if !id.is_current(Utc::now()) {
            return Err(format!(
                "certificate {} not valid now (notBefore {}, notAfter {})",
                id.info.serial_hex, id.info.not_before, id.info.not_after
            ));
        }
        self.trust()
            .ok_or_else(|| self.reason("trust", "trust bundle not loaded"))?;
        Ok(())
    }

    fn reason(&self, kind: &'static str, default: &str) -> String {
        self.errors()
            .get(kind)
            .map(|e| format!("{default}: {e}"))
            .unwrap_or_else(|| default.to_string())
    }

    pub fn status(&self) -> Status {
        let id = self.identity();
        Status {
            service: self.service.clone(),
            trust_bundle_sha256: self.trust().map(|t| t.sha256.clone()),
            certificate_serial: id.as_ref().map(|i| i.info.serial_hex.clone()),
            certificate_not_after: id.as_ref().map(|i| crate::util::rfc3339(i.info.not_after)),
            allowed_peers_version: self.acl().version_hash.clone(),
        }
    }
}
