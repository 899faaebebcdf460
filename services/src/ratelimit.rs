//! Per-source token buckets for the connector's ingest port (contract: ingest API, rate limit).
//! The number of sources tracked is bounded: a flood from many addresses costs memory up to the
//! bound, and then the least recently seen source is forgotten first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Sources tracked at most (contract: ingest API).
pub const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by source key (an IP address, a client certificate fingerprint).
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig, max_sources: usize) -> Self {
        Self {
            per_second: f64::from(cfg.per_second.max(1)),
            burst: f64::from(cfg.burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `source`'s bucket at `now`; `Err(retry_after)` when it is empty
    /// (whole seconds, at least one).
    pub fn check(&self, source: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(source) && buckets.len() >= self.max_sources {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
        let bucket = buckets.entry(source.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs(wait.ceil().max(1.0) as u64))
        }
    }

    /// Sources currently tracked.
    pub fn sources(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32, max: usize) -> RateLimiter {
        RateLimiter::new(RateLimitConfig { per_second, burst }, max)
    }

    #[test]
    fn a_burst_passes_then_refusals_until_tokens_refill() {
        let l = limiter(2, 3, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("ip:1.2.3.4", t0), Ok(()));
        }
        assert_eq!(l.check("ip:1.2.3.4", t0), Err(Duration::from_secs(1)));
        // Another source has its own bucket.
        assert_eq!(l.check("ip:5.6.7.8", t0), Ok(()));
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check("ip:1.2.3.4", t1), Ok(()));
        assert!(l.check("ip:1.2.3.4", t1).is_err());
        // Never more than the burst, however long the source was idle.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check("ip:1.2.3.4", t2), Ok(()));
        }
        assert!(l.check("ip:1.2.3.4", t2).is_err());
    }

    #[test]
    fn retry_after_covers_the_wait_for_one_token() {
        let l = limiter(1, 1, 10);
        let t0 = Instant::now();
        assert!(l.check("a", t0).is_ok());
        assert_eq!(l.check("a", t0), Err(Duration::from_secs(1)));
        let slow = RateLimiter::new(
            RateLimitConfig {
                per_second: 1,
                burst: 1,
            },
            10,
        );
        assert!(slow.check("b", t0).is_ok());
        assert_eq!(
            slow.check("b", t0 + Duration::from_millis(100)),
            Err(Duration::from_secs(1))
        );
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_least_recently_seen_source() {
        let l = limiter(1, 1, 3);
        let t0 = Instant::now();
        for (i, s) in ["a", "b", "c"].iter().enumerate() {
            assert!(l.check(s, t0 + Duration::from_millis(i as u64)).is_ok());
        }
        // "a" is seen again (refused, but it is the most recent now).
        assert!(l.check("a", t0 + Duration::from_millis(10)).is_err());
        assert!(l.check("d", t0 + Duration::from_millis(11)).is_ok());
        assert_eq!(l.sources(), 3);
        // "b" was the oldest and was forgotten: it starts with a full bucket again, while "a" is
        // still limited.
        assert!(l.check("a", t0 + Duration::from_millis(12)).is_err());
        assert!(l.check("c", t0 + Duration::from_millis(13)).is_err());
        assert!(l.check("b", t0 + Duration::from_millis(14)).is_ok());
        assert_eq!(l.sources(), 3);
    }
}
