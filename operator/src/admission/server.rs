//! The webhook's HTTPS endpoint: `POST /mutate/meters` with an `admission.k8s.io/v1`
//! AdmissionReview. The serving certificate can be swapped while serving (renewal, or another
//! replica having issued a new one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::task::JoinSet;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::cert::WebhookCert;
use super::mutate::{review_body, review_meter};
use super::AdmissionError;
use crate::runtime::metrics::Metrics;

/// Path of the Meter mutation (contract: the webhook configuration in the chart points here).
pub const MUTATE_METERS_PATH: &str = "/mutate/meters";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// AdmissionReviews of one object are small; the API server never sends more than a few MiB.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The certificate presented to the API server, replaceable while serving.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified_key(cert: &WebhookCert) -> Result<Arc<CertifiedKey>, AdmissionError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |detail: &str| AdmissionError::CertUnusable(detail.to_string());
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("tls.crt is not PEM"))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| invalid("tls.key is not a PEM private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| invalid("tls.key is not a supported key"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

impl CertStore {
    pub fn new(cert: &WebhookCert) -> Result<Self, AdmissionError> {
        Ok(Self {
            current: RwLock::new(certified_key(cert)?),
        })
    }

    /// Serves `cert` from the next handshake on.
    pub fn replace(&self, cert: &WebhookCert) -> Result<(), AdmissionError> {
        let key = certified_key(cert)?;
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
}

async fn mutate_meters(
    State(state): State<AppState>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Response {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            state.metrics.admission("invalid");
            return (StatusCode::BAD_REQUEST, "AdmissionReview without a request").into_response();
        }
    };
    let (response, outcome): (AdmissionResponse, _) = review_meter(&request);
    state.metrics.admission(outcome.as_str());
    debug!(
        namespace = request.namespace.as_deref().unwrap_or_default(),
        name = %request.name,
        outcome = outcome.as_str(),
        "Meter admission"
    );
    Json(review_body(response)).into_response()
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(MUTATE_METERS_PATH, post(mutate_meters))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(AppState { metrics })
}

/// Serves the webhook on `addr` over TLS until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    certs: Arc<CertStore>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut tls =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = router(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, path = MUTATE_METERS_PATH, "admission webhook listening");
    let mut conns: JoinSet<()> = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                conns.spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            warn!(%remote, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            warn!(%remote, "webhook TLS handshake timed out");
                            return;
                        }
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move {
                            let resp: Result<Response, Infallible> = app.oneshot(req.map(axum::body::Body::new)).await;
                            resp
                        }
                    });
                    if let Err(e) = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HANDSHAKE_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        debug!(%remote, error = %e, "webhook connection ended with error");
                    }
                });
            }
        }
    }
    // In-flight reviews are short; the API server retries nothing, so let them finish briefly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
