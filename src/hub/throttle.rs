//! Failed logins per source address. A source that failed too often recently is turned away
//! before the TLS handshake, which costs the hub nothing; everyone else is unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed logins a source may have within `AUTH_FAILURE_WINDOW` before it is refused.
pub const MAX_AUTH_FAILURES: u32 = 10;
/// How long failures count against a source.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; past it, expired entries go first, then the table restarts, so a
/// flood of spoofed or rotating sources cannot grow it without bound.
pub const MAX_TRACKED_SOURCES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    sources: HashMap<IpAddr, Failures>,
}

impl AuthThrottle {
    /// Whether `source` may try to log in now.
    pub fn allows(&mut self, source: IpAddr, now: Instant) -> bool {
        match self.sources.get(&source) {
            Some(f) if now.saturating_duration_since(f.since) >= AUTH_FAILURE_WINDOW => {
                self.sources.remove(&source);
                true
            }
            Some(f) => f.count < MAX_AUTH_FAILURES,
            None => true,
        }
    }

    /// Counts a failed login; true when this failure is the one that gets the source refused.
    pub fn record_failure(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= MAX_TRACKED_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, f| now.saturating_duration_since(f.since) < AUTH_FAILURE_WINDOW);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                self.sources.clear();
            }
        }
        let entry = self.sources.entry(source).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(entry.since) >= AUTH_FAILURE_WINDOW {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
        entry.count == MAX_AUTH_FAILURES
    }

    /// A successful login clears the source's record.
    pub fn record_success(&mut self, source: IpAddr) {
        self.sources.remove(&source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_source_is_refused_after_too_many_failures_until_the_window_passes() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for i in 1..=MAX_AUTH_FAILURES {
            assert!(
                throttle.allows(ip(1), t0),
                "refused after {} failures",
                i - 1
            );
            assert_eq!(throttle.record_failure(ip(1), t0), i == MAX_AUTH_FAILURES);
        }
        assert!(!throttle.allows(ip(1), t0 + Duration::from_secs(30)));
        assert!(throttle.allows(ip(2), t0), "other sources are unaffected");
        assert!(throttle.allows(ip(1), t0 + AUTH_FAILURE_WINDOW));
    }

    #[test]
    fn success_clears_the_record() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for _ in 0..MAX_AUTH_FAILURES - 1 {
            throttle.record_failure(ip(1), t0);
        }
        throttle.record_success(ip(1));
        throttle.record_failure(ip(1), t0);
        assert!(throttle.allows(ip(1), t0));
    }

    #[test]
    fn the_table_stays_bounded_under_rotating_sources() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for i in 0..(MAX_TRACKED_SOURCES as u32 * 3) {
            throttle.record_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(throttle.sources.len() <= MAX_TRACKED_SOURCES);
    }
}
