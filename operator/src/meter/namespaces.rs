//! Which namespaces are being deleted. A Meter deleted with its namespace is let go without a
//! `DELETE` to device-hub: its hub, device-hub and device-hub's volume go with the namespace, and
//! the namespace controller deletes the trust bundle and client Secret the call would need before
//! it reaches the DeviceHub, so every such call would fail and hold the namespace up until it
//! times out. Namespaces are few: a metadata-only reflector of them costs little.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tracing::warn;

/// A cache of the namespaces' metadata, filled by a background task.
#[derive(Clone)]
pub struct TerminatingNamespaces {
    store: Store<PartialObjectMeta<Namespace>>,
}

impl TerminatingNamespaces {
    /// Starts the watch (call inside a Tokio runtime). Until its first list, no namespace counts
    /// as terminating: a Meter is then deprovisioned as usual.
    pub fn start(client: kube::Client) -> Self {
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer);
        tokio::spawn(stream.for_each(|event| async move {
            if let Err(e) = event {
                warn!(error = %e, "watching Namespaces (needed to let Meters of a deleted namespace go)");
            }
        }));
        Self { store }
    }

    pub fn is_terminating(&self, namespace: &str) -> bool {
        self.store
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
    }
}
