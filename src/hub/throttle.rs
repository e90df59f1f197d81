//! Login attempts per source address. An attempt counts when its connection is accepted, so
//! concurrent attempts cannot all pass before the first one fails; a successful login clears
//! its source's count, and attempts the hub itself cut short are given back. A source with
//! too many attempts in the window is turned away before the TLS handshake, which costs the
//! hub nothing; everyone else is unaffected.
//!
//! Except for edges that have logged in from that source before: a source past its attempts
//! still gets the handshake when an edge logged in from it within `TRUSTED_LOGIN_TTL`, and
//! then only those edge ids have their secret checked. So a failing client behind a shared
//! address cannot lock out an edge that logged in there, at the price that someone sharing the
//! address may try that edge's secret as fast as they finish TLS handshakes.

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
/// How long a successful login keeps its edge id exempt from its source's throttle.
pub(super) const TRUSTED_LOGIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Edge ids remembered per source (the most recent); edges behind one NAT are usually few.
pub(super) const MAX_TRUSTED_EDGES_PER_SOURCE: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    since: Instant,
}

/// How a login attempt got its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within the source's attempts: any edge id is checked.
    Counted,
    /// Past them, let through for the edges that logged in from the source before: only
    /// their ids are checked.
    TrustedEdgesOnly,
}

/// An edge id that logged in from a source, and when it last did.
#[derive(Debug)]
struct TrustedEdge {
    edge_id: Box<str>,
    at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct AuthThrottle {
    sources: HashMap<IpAddr, Attempts>,
    trusted: HashMap<IpAddr, Vec<TrustedEdge>>,
}

impl AuthThrottle {
    /// Admits a login attempt from `source` that starts now, counting it while the source has
    /// attempts left; None (nothing counted) when it has none and no edge logged in from it.
    pub(super) fn try_begin(&mut self, source: IpAddr, now: Instant) -> Option<Admission> {
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
        if entry.count < MAX_AUTH_FAILURES {
            entry.count += 1;
            return Some(Admission::Counted);
        }
        self.has_trusted(source, now)
            .then_some(Admission::TrustedEdgesOnly)
    }

    /// Whether an attempt admitted as `admission` may have `edge_id`'s secret checked.
    pub(super) fn may_check(
        &self,
        source: IpAddr,
        edge_id: &str,
        admission: Admission,
        now: Instant,
    ) -> bool {
        admission == Admission::Counted
            || self.trusted.get(&source).is_some_and(|edges| {
                edges
                    .iter()
                    .any(|e| &*e.edge_id == edge_id && !expired(e, now))
            })
    }

    fn has_trusted(&self, source: IpAddr, now: Instant) -> bool {
        self.trusted
            .get(&source)
            .is_some_and(|edges| edges.iter().any(|e| !expired(e, now)))
    }

    /// Gives back an attempt the hub cut short (evicted from a full table, refused for its
    /// edge limit): not the source's doing.
    pub(super) fn give_back(&mut self, source: IpAddr) {
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.count = entry.count.saturating_sub(1);
        }
    }

    /// A successful login clears the source's count and exempts `edge_id` from it.
    pub(super) fn record_success(&mut self, source: IpAddr, edge_id: &str, now: Instant) {
        self.sources.remove(&source);
        if self.trusted.len() >= MAX_TRACKED_SOURCES && !self.trusted.contains_key(&source) {
            self.trusted.retain(|_, edges| {
                edges.retain(|e| !expired(e, now));
                !edges.is_empty()
            });
            if self.trusted.len() >= MAX_TRACKED_SOURCES {
                self.trusted.clear();
            }
        }
        let edges = self.trusted.entry(source).or_default();
        edges.retain(|e| &*e.edge_id != edge_id && !expired(e, now));
        if edges.len() >= MAX_TRUSTED_EDGES_PER_SOURCE {
            edges.remove(0);
        }
        edges.push(TrustedEdge {
            edge_id: edge_id.into(),
            at: now,
        });
    }
}

fn expired(edge: &TrustedEdge, now: Instant) -> bool {
    now.saturating_duration_since(edge.at) >= TRUSTED_LOGIN_TTL
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
        let started = (0..200)
            .filter(|_| throttle.try_begin(ip(1), t0).is_some())
            .count();
        assert_eq!(started, MAX_AUTH_FAILURES as usize);
        assert_eq!(
            throttle.try_begin(ip(1), t0 + Duration::from_secs(30)),
            None
        );
        assert_eq!(
            throttle.try_begin(ip(2), t0),
            Some(Admission::Counted),
            "other sources are unaffected"
        );
        assert_eq!(
            throttle.try_begin(ip(1), t0 + AUTH_FAILURE_WINDOW),
            Some(Admission::Counted)
        );
    }

    #[test]
    fn success_clears_the_record_and_cut_short_attempts_are_given_back() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(throttle.try_begin(ip(1), t0).is_some());
        }
        assert!(throttle.try_begin(ip(1), t0).is_none());
        throttle.give_back(ip(1));
        assert!(throttle.try_begin(ip(1), t0).is_some());
        throttle.record_success(ip(1), "edge-1", t0);
        for _ in 0..MAX_AUTH_FAILURES {
            assert_eq!(throttle.try_begin(ip(1), t0), Some(Admission::Counted));
        }
    }

    #[test]
    fn a_source_past_its_attempts_still_reaches_the_edges_that_logged_in_from_it() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        throttle.record_success(ip(1), "edge-1", t0);
        for _ in 0..MAX_AUTH_FAILURES {
            assert_eq!(throttle.try_begin(ip(1), t0), Some(Admission::Counted));
        }
        let admission = throttle
            .try_begin(ip(1), t0)
            .expect("edge-1 logged in from here");
        assert_eq!(admission, Admission::TrustedEdgesOnly);
        assert!(throttle.may_check(ip(1), "edge-1", admission, t0));
        assert!(!throttle.may_check(ip(1), "edge-2", admission, t0));
        assert!(throttle.may_check(ip(1), "edge-2", Admission::Counted, t0));
        // Another source is not exempted by edge-1's login from the first.
        for _ in 0..MAX_AUTH_FAILURES {
            throttle.try_begin(ip(2), t0);
        }
        assert_eq!(throttle.try_begin(ip(2), t0), None);
        // The exemption lapses a day after the edge's last login from there.
        let later = t0 + TRUSTED_LOGIN_TTL;
        assert!(!throttle.may_check(ip(1), "edge-1", admission, later));
        for _ in 0..MAX_AUTH_FAILURES {
            throttle.try_begin(ip(1), later);
        }
        assert_eq!(throttle.try_begin(ip(1), later), None);
    }

    #[test]
    fn trusted_edges_are_bounded_per_source_keeping_the_latest() {
        let t0 = Instant::now();
        let mut throttle = AuthThrottle::default();
        for i in 0..=MAX_TRUSTED_EDGES_PER_SOURCE {
            throttle.record_success(ip(1), &format!("edge-{i}"), t0);
        }
        throttle.record_success(ip(1), "edge-1", t0);
        let edges = &throttle.trusted[&ip(1)];
        assert_eq!(edges.len(), MAX_TRUSTED_EDGES_PER_SOURCE);
        assert!(!throttle.may_check(ip(1), "edge-0", Admission::TrustedEdgesOnly, t0));
        assert!(throttle.may_check(ip(1), "edge-1", Admission::TrustedEdgesOnly, t0));
        let last = format!("edge-{MAX_TRUSTED_EDGES_PER_SOURCE}");
        assert!(throttle.may_check(ip(1), &last, Admission::TrustedEdgesOnly, t0));
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
