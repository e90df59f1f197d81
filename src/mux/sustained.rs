//! Spotting elephant flows: a stream that has run for more than 10 s at more than 2.5 MB/s on
//! average is "sustained". Its frames then wait behind everyone else's (with a guaranteed
//! minimum rate) and its receive window locks to the floor, so bulk transfers cannot add
//! latency to interactive traffic on the same tunnel. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// A flow must be this old before it can be classified.
pub(crate) const SUSTAINED_AFTER: Duration = Duration::from_secs(10);
/// Average rate (bytes per second) above which an old enough flow is sustained: 20 Mbit/s.
pub(crate) const SUSTAINED_RATE: u64 = 2_500_000;
/// The sustained tier is served at least this fast (bytes per second) however busy the others.
pub(crate) const SUSTAINED_GUARANTEED_RATE: u64 = 1_000_000;

/// Byte and time accounting of one stream in one direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowMeter {
    started: Instant,
    bytes: u64,
    sustained: bool,
}

impl FlowMeter {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            started: now,
            bytes: 0,
            sustained: false,
        }
    }

    /// Counts `len` bytes and says whether the flow is sustained now. Once sustained, a flow
    /// stays so: demotion is for the rest of its life, which keeps the classification stable.
    pub(crate) fn record(&mut self, len: usize, now: Instant) -> bool {
        self.bytes = self.bytes.saturating_add(len as u64);
        if !self.sustained {
            let age = now.saturating_duration_since(self.started);
            if age > SUSTAINED_AFTER {
                let rate = u128::from(self.bytes) * 1000 / age.as_millis().max(1);
                self.sustained = rate > u128::from(SUSTAINED_RATE);
            }
        }
        self.sustained
    }

    pub(crate) fn is_sustained(&self) -> bool {
        self.sustained
    }

    /// Bytes counted so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Decides when the sustained tier may go ahead of normal data: whenever it has received less
/// than its guaranteed rate, measured over one-second windows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SustainedShare {
    window_start: Instant,
    served_in_window: u64,
}

impl SustainedShare {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            served_in_window: 0,
        }
    }

    /// True when the sustained tier is owed bandwidth and should be served before normal data.
    pub(crate) fn owed(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.served_in_window = 0;
        }
        self.served_in_window < SUSTAINED_GUARANTEED_RATE
    }

    pub(crate) fn served(&mut self, len: usize) {
        self.served_in_window = self.served_in_window.saturating_add(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_fast_flow_becomes_sustained_only_after_ten_seconds() {
        let t0 = Instant::now();
        let mut meter = FlowMeter::new(t0);
        // 5 MB/s for 10 s: old enough only once past 10 s.
        for s in 1..=10 {
            assert!(
                !meter.record(5_000_000, t0 + SECOND * s),
                "classified at {s} s"
            );
        }
        assert!(meter.record(5_000_000, t0 + SECOND * 11));
        assert!(meter.is_sustained());
        // It stays sustained even if it slows down.
        assert!(meter.record(0, t0 + SECOND * 100));
    }

    #[test]
    fn a_slow_or_short_flow_stays_normal() {
        let t0 = Instant::now();
        let mut slow = FlowMeter::new(t0);
        for s in 1..=60 {
            assert!(!slow.record(2_000_000, t0 + SECOND * s)); // 2 MB/s, under the threshold
        }
        let mut short = FlowMeter::new(t0);
        assert!(!short.record(500_000_000, t0 + SECOND * 5)); // huge but young
    }

    #[test]
    fn a_small_stream_beside_an_elephant_stays_normal() {
        let t0 = Instant::now();
        let mut elephant = FlowMeter::new(t0);
        let mut mouse = FlowMeter::new(t0);
        let mut classified_at = None;
        for tick in 1..=300u32 {
            let now = t0 + Duration::from_millis(u64::from(tick) * 100);
            if elephant.record(1_000_000, now) && classified_at.is_none() {
                classified_at = Some(tick);
            }
            assert!(!mouse.record(1_000, now));
        }
        assert_eq!(
            classified_at,
            Some(101),
            "10 MB/s flow demoted just after 10 s"
        );
    }

    #[test]
    fn the_sustained_tier_is_owed_its_guaranteed_rate_each_second() {
        let t0 = Instant::now();
        let mut share = SustainedShare::new(t0);
        assert!(share.owed(t0));
        share.served(600_000);
        assert!(share.owed(t0 + Duration::from_millis(300)));
        share.served(400_000);
        assert!(!share.owed(t0 + Duration::from_millis(600)));
        // A new second starts a new allowance.
        assert!(share.owed(t0 + Duration::from_millis(1000)));
    }
}
