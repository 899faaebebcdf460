//! Waiting for a reflector cache's first list from many tasks at once.
//!
//! kube-runtime's `Store::wait_until_ready` waits on a `DelayedInit` that keeps a single waker:
//! each task that polls it replaces the previous task's waker, so when the first list completes
//! only the last task to poll is woken (kube-runtime 5.0.0; see `this_is_why` below). With 512
//! Meter reconciles waiting for the DeviceHub cache, 511 of them slept until their 30 s timeout
//! while the machine idled. Polling the wait again every [`SLICE`] re-registers each task's waker,
//! which bounds that delay to one slice; once the cache is ready the wait returns at once.

use std::time::Duration;

use kube::runtime::reflector::Store;
use tokio::time::Instant;

/// Longest a waiting task can miss the moment its cache became ready.
const SLICE: Duration = Duration::from_millis(100);

/// Waits until `store` has had its first list, at most `limit`; false when it did not (or when
/// its writer is gone).
pub async fn wait_ready<K>(store: &Store<K>, limit: Duration) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = Instant::now() + limit;
    loop {
        let slice = SLICE.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(slice, store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) if Instant::now() >= deadline => return false,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    /// Starts `n` waiting tasks, lets them all register, then completes the first list; returns
    /// how many finished within 1 s (virtual time) of it.
    async fn woken_within_a_second<F, Fut>(n: usize, wait: F) -> usize
    where
        F: Fn(Store<ConfigMap>) -> Fut,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let waiting = wait(store.clone());
                tokio::spawn(async move { (waiting.await, Instant::now()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        let ready_at = Instant::now();
        let mut woken = 0;
        for task in tasks {
            let (ready, at) = task.await.expect("task");
            if ready && at.duration_since(ready_at) <= Duration::from_secs(1) {
                woken += 1;
            }
        }
        woken
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiting_task_sees_the_cache_ready() {
        let woken = woken_within_a_second(50, |store| async move {
            wait_ready(&store, Duration::from_secs(30)).await
        })
        .await;
        assert_eq!(woken, 50);
    }

    /// The kube-runtime behaviour this module works around: of several tasks waiting on
    /// `wait_until_ready`, only the last to poll is woken. When this fails, kube-runtime wakes
    /// them all and `wait_ready` can become a plain timeout again.
    #[tokio::test(start_paused = true)]
    async fn this_is_why() {
        let woken = woken_within_a_second(3, |store| async move {
            tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready())
                .await
                .is_ok()
        })
        .await;
        assert!(
            woken < 3,
            "kube-runtime now wakes every waiter ({woken} of 3)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_limit_and_when_the_writer_is_gone() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let started = Instant::now();
        assert!(!wait_ready(&store, Duration::from_secs(2)).await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100));
        drop(writer);
        assert!(!wait_ready(&store, Duration::from_secs(30)).await);
    }
}
