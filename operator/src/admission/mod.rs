//! Admission webhook for Meters: adds the `meterpark.io/deprovision` finalizer when a Meter is
//! created, in the API server's own write. Without it the Meter controller spends one extra API
//! write per Meter on the finalizer (it still does when the webhook is not installed or not
//! reachable: the webhook's failure policy is `Ignore`, so Meter creation never depends on it).
//!
//! Every replica serves the webhook, leader or not.
//!
//! - [`mutate`]: the mutation (pure).
//! - [`cert`]: the serving certificate in a shared Secret and the `caBundle` of the configuration.
//! - [`server`]: the HTTPS endpoint.

pub mod cert;
pub mod mutate;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use tracing::{error, info, warn};

use crate::pki::PkiError;
use crate::runtime::metrics::Metrics;

/// How often each replica re-reads the webhook Secret (renewal, or another replica's new
/// certificate) and re-publishes the CA bundle.
pub const REFRESH: Duration = Duration::from_secs(3600);
/// Wait before retrying after the certificate could not be read or stored.
const RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "webhook Secret {name}: {source}; the operator needs get, create and update on Secrets in its namespace"
    )]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("webhook Secret {0} changed under every attempt to store a certificate; is another process writing it?")]
    SecretContended(String),
    #[error(
        "MutatingWebhookConfiguration {name}: {source}; the operator needs get and patch on it (RBAC)"
    )]
    WebhookConfiguration {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("webhook certificate: {0}")]
    Pki(#[from] PkiError),
    #[error("webhook certificate is unusable: {0}")]
    CertUnusable(String),
}

/// Where the webhook listens and the names it is known by (contract: Operator webhook).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    pub namespace: String,
    pub service: String,
    pub secret: String,
    pub configuration: String,
}

/// Reads (or issues) the serving certificate, publishes the CA bundle and serves until `shutdown`;
/// then keeps the certificate fresh every [`REFRESH`]. Failures are logged and retried: the
/// webhook is an optimisation, never a reason to stop the operator.
pub async fn run<F>(
    client: Client,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Fn() -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client);
    let request = match cert::leaf_request(&settings.namespace, &settings.service) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, service = %settings.service, "cannot serve the admission webhook");
            return;
        }
    };
    let refresh = || async {
        let cert = cert::ensure(&secrets, &settings.secret, &request).await?;
        if let Ok(info) = crate::pki::inspect_cert(&cert.cert_pem) {
            metrics
                .webhook_certificate_expiration
                .set(info.not_after.timestamp() as f64);
        }
        if !cert::publish_ca_bundle(&configs, &settings.configuration, &cert.ca_cert_pem).await? {
            warn!(
                configuration = %settings.configuration,
                "MutatingWebhookConfiguration not found; Meters get their finalizer from the controller instead"
            );
        }
        Ok::<_, AdmissionError>(cert)
    };
    // The first certificate, retried until it exists.
    let mut current = loop {
        match refresh().await {
            Ok(cert) => break cert,
            Err(e) => error!(error = %e, "admission webhook not started; retrying in 30 s"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown() => return,
        }
    };
    let store = match server::CertStore::new(&current) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!(error = %e, "admission webhook not started");
            return;
        }
    };
    let mut serving = tokio::spawn(server::serve(
        settings.addr,
        store.clone(),
        metrics.clone(),
        shutdown(),
    ));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown() => break,
            result = &mut serving => {
                log_end(result);
                return;
            }
        }
        match refresh().await {
            Ok(cert) if cert != current => match store.replace(&cert) {
                Ok(()) => {
                    info!("admission webhook serves a new certificate");
                    current = cert;
                }
                Err(e) => error!(error = %e, "new webhook certificate not loaded"),
            },
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "refreshing the webhook certificate failed; retrying in an hour")
            }
        }
    }
    log_end(serving.await);
}

fn log_end(result: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Err(e)) => {
            error!(error = %e, "admission webhook server failed; Meters get their finalizer from the controller")
        }
        Err(e) => error!(error = %e, "admission webhook server panicked"),
        Ok(Ok(())) => info!("admission webhook stopped"),
    }
}
