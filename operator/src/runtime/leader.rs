//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! reconciles and another takes over within the lease duration when the leader dies.
//!
//! Plain get/create/replace with optimistic concurrency (resourceVersion): server-side apply of a
//! Lease is not used because Kubernetes 1.20 lacks fields newer clients send.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: Duration,
}

/// Whether this replica holds the lease after one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leader,
    Follower { holder: String },
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration,
        }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, now: Timestamp, acquire: Option<Timestamp>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquire.unwrap_or(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew the lease.
    pub async fn try_acquire(&self) -> Result<Attempt, LeaderError> {
        let now = Timestamp::now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leader),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower {
                    holder: "unknown".into(),
                }),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
        let expired = spec
            .renew_time
            .as_ref()
            .map(|t| {
                t.0.checked_add(duration)
                    .map(|end| end < now)
                    .unwrap_or(true)
            })
            .unwrap_or(true);
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(now, spec.acquire_time.map(|t| t.0), transitions)
        } else if expired || holder.is_empty() {
            info!(previous = %holder, "leader lease expired; taking over");
            self.spec(now, None, transitions + 1)
        } else {
            return Ok(Attempt::Follower { holder });
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower { holder }),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        let retry = self.lease_duration / 3;
        let mut last_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Leader) => {
                    info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(Attempt::Follower { holder }) => {
                    if holder != last_holder {
                        info!(%holder, "another replica leads; standing by");
                        last_holder = holder;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Gives the lease up if this replica holds it (graceful shutdown), so that a standby takes
    /// over at its next attempt instead of after the lease duration. Best effort.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                info!(identity = %self.identity, lease = %self.name, "released the leader lease")
            }
            Err(e) => {
                warn!(error = %e, "releasing the leader lease failed; a standby takes over when it expires")
            }
        }
    }

    /// Renews the lease until it is lost; returns when this replica must stop reconciling.
    pub async fn hold(&self) {
        let renew = self.lease_duration / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew).await;
            match self.try_acquire().await {
                Ok(Attempt::Leader) => last_renewed = tokio::time::Instant::now(),
                Ok(Attempt::Follower { holder }) => {
                    warn!(%holder, "leader lease lost");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "renewing the leader lease failed");
                    // Stop before another replica may legitimately take over.
                    if last_renewed.elapsed() + renew >= self.lease_duration {
                        warn!("could not renew the leader lease in time");
                        return;
                    }
                }
            }
        }
    }
}
