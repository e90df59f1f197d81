//! Login attempts per source address. An attempt counts when its connection is accepted, so
//! concurrent attempts cannot all pass before the first one fails; a successful login clears
//! its source's record, and attempts the hub itself cut short are given back. A source with
//! too many attempts in the window is turned away before the TLS handshake, which costs the
//! hub nothing; everyone else is unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Login attempts a source may start within `AUTH_FAILURE_WINDOW` without a success.
pub(super) const MAX_AUTH_FAILURES: u32 = 10;
/// How long attempts count against a source.
pub(super) const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; past it, expired entries go first, then the table restarts, so a
/// flood of spoofed or rotating sources cannot grow it without bound.
pub(super) const MAX_TRACKED_SOURCES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    since: Instant,
}

#[derive(Debug, Default)]
pub(super) struct AuthThrottle {
    sources: HashMap<IpAddr, Attempts>,
}

impl AuthThrottle {
    /// Counts a login attempt from `source` that starts now; false (and nothing counted) when
    /// the source has used up its attempts for the window.
    pub(super) fn try_begin(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.sources.len() >= MAX_TRACKED_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, a| now.saturating_duration_since(a.since) < AUTH_FAILURE_WINDOW);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                self.sources.clear();
            }
        }
        let entry = self.sources.entry(source).or_insert(Attempts {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(entry.since) >= AUTH_FAILURE_WINDOW {
            *entry = Attempts {
                count: 0,
                since: now,
            };
        }
        if entry.count >= MAX_AUTH_FAILURES {
            return false;
        }
        entry.count += 1;
        true
    }

    /// Gives back an attempt the hub cut short (evicted from a full table, refused for its
    /// edge limit): not the source's doing.
    pub(super) fn give_back(&mut self, source: IpAddr) {
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.count = entry.count.saturating_sub(1);
        }
    }

    /// A successful login clears the source's record.
    pub(super) fn record_success(&mut self, source: IpAddr) {
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
    fn concurrent_attempts_count_before_any_of_them_fails() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        // Attempts that have all started and none finished: the limit holds already.
        let started = (0..200).filter(|_| throttle.try_begin(ip(1), t0)).count();
        assert_eq!(started, MAX_AUTH_FAILURES as usize);
        assert!(!throttle.try_begin(ip(1), t0 + Duration::from_secs(30)));
        assert!(
            throttle.try_begin(ip(2), t0),
            "other sources are unaffected"
        );
        assert!(throttle.try_begin(ip(1), t0 + AUTH_FAILURE_WINDOW));
    }

    #[test]
    fn success_clears_the_record_and_cut_short_attempts_are_given_back() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(throttle.try_begin(ip(1), t0));
        }
        assert!(!throttle.try_begin(ip(1), t0));
        throttle.give_back(ip(1));
        assert!(throttle.try_begin(ip(1), t0));
        throttle.record_success(ip(1));
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(throttle.try_begin(ip(1), t0));
        }
    }

    #[test]
    fn the_table_stays_bounded_under_rotating_sources() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for i in 0..(MAX_TRACKED_SOURCES as u32 * 3) {
            throttle.try_begin(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(throttle.sources.len() <= MAX_TRACKED_SOURCES);
    }
}
