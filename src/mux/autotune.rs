//! Receive windows that grow with the round trip (`remoteingress/1` over TCP+TLS), by dynamic
//! right-sizing, as Linux sizes a TCP receive buffer: what a stream's reader consumed in one
//! round trip is what its sender could have in flight, and a window of twice that never holds
//! the sender up. A reader slower than the path consumes less, so its window does not grow.
//! Pure: the caller passes the clock and the round trip.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The largest window a stream grows to: 2.7 Gbit/s at a 100 ms round trip.
pub(crate) const MAX_TUNED_STREAM_WINDOW: u32 = 32 * 1024 * 1024;

/// A tunnel's round trip as its transport last measured it, shared by its streams.
#[derive(Debug, Default)]
pub(crate) struct RoundTrip {
    /// Microseconds; 0 until measured.
    micros: AtomicU32,
}

impl RoundTrip {
    pub(crate) fn set(&self, rtt: Duration) {
        let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        self.micros.store(micros, Ordering::Relaxed);
    }

    /// None until a round trip has been measured.
    pub(crate) fn get(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros.into())),
        }
    }
}

/// The window one stream's reader calls for, measured once per round trip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowTuner {
    /// Start of the current measurement.
    since: Instant,
    /// Consumed since `since`.
    consumed: u32,
    /// The largest window measured so far; 0 before the first.
    window: u32,
}

impl WindowTuner {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            since: now,
            consumed: 0,
            window: 0,
        }
    }

    /// Counts `len` bytes the reader consumed at `now`, on a path whose round trip is `rtt`
    /// (None while unknown), and returns the window they call for: 0 until a round trip has
    /// been measured, never less than before, at most [`MAX_TUNED_STREAM_WINDOW`].
    pub(crate) fn on_consumed(&mut self, len: u32, now: Instant, rtt: Option<Duration>) -> u32 {
        self.consumed = self.consumed.saturating_add(len);
        let Some(rtt) = rtt else {
            return self.window;
        };
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= rtt && !elapsed.is_zero() {
            // Scaled to one round trip, so a burst after a pause does not count as a rate.
            let per_round_trip = u128::from(self.consumed) * rtt.as_nanos() / elapsed.as_nanos();
            let called_for = (2 * per_round_trip).min(u128::from(MAX_TUNED_STREAM_WINDOW));
            // At most MAX_TUNED_STREAM_WINDOW, so it fits.
            self.window = self.window.max(called_for as u32);
            self.since = now;
            self.consumed = 0;
        }
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);
    const MIB: u32 = 1024 * 1024;

    #[test]
    fn a_reader_that_empties_the_window_each_round_trip_doubles_it_up_to_the_maximum() {
        let start = Instant::now();
        let mut tuner = WindowTuner::new(start);
        let mut window = 4 * MIB;
        let mut seen = Vec::new();
        for round in 1..=6 {
            // The sender fills the window; the reader consumes it within the round trip.
            let now = start + RTT * round;
            tuner.on_consumed(window - 1, now - Duration::from_millis(1), Some(RTT));
            window = window.max(tuner.on_consumed(1, now, Some(RTT)));
            seen.push(window / MIB);
        }
        assert_eq!(seen, [8, 16, 32, 32, 32, 32]);
    }

    #[test]
    fn a_reader_slower_than_the_path_gets_twice_what_it_reads_per_round_trip() {
        let start = Instant::now();
        let mut tuner = WindowTuner::new(start);
        // 1 MiB per round trip, in 64 KiB writes, for ten round trips.
        let mut window = 0;
        for write in 1..=160u32 {
            window = tuner.on_consumed(64 * 1024, start + RTT * write / 16, Some(RTT));
        }
        assert_eq!(window, 2 * MIB);
    }

    #[test]
    fn a_burst_after_a_pause_is_spread_over_the_pause() {
        let start = Instant::now();
        let mut tuner = WindowTuner::new(start);
        // 8 MiB consumed at once after ten quiet round trips: 0.8 MiB per round trip.
        let window = tuner.on_consumed(8 * MIB, start + RTT * 10, Some(RTT));
        assert_eq!(window, 8 * MIB / 10 * 2);
    }

    #[test]
    fn nothing_is_called_for_before_a_round_trip_is_known_or_has_passed() {
        let start = Instant::now();
        let mut tuner = WindowTuner::new(start);
        assert_eq!(tuner.on_consumed(MIB, start + RTT * 5, None), 0);
        assert_eq!(tuner.on_consumed(MIB, start + RTT * 5, Some(RTT * 6)), 0);
        // Both megabytes count once the round trip has passed.
        assert_eq!(
            tuner.on_consumed(0, start + RTT * 6, Some(RTT * 6)),
            4 * MIB
        );
    }

    #[test]
    fn the_window_never_shrinks() {
        let start = Instant::now();
        let mut tuner = WindowTuner::new(start);
        assert_eq!(tuner.on_consumed(4 * MIB, start + RTT, Some(RTT)), 8 * MIB);
        assert_eq!(tuner.on_consumed(1, start + RTT * 2, Some(RTT)), 8 * MIB);
    }

    #[test]
    fn round_trips_are_kept_in_microseconds_and_zero_is_unknown() {
        let rtt = RoundTrip::default();
        assert_eq!(rtt.get(), None);
        rtt.set(Duration::from_micros(1500));
        assert_eq!(rtt.get(), Some(Duration::from_micros(1500)));
        rtt.set(Duration::MAX);
        assert_eq!(rtt.get(), Some(Duration::from_micros(u32::MAX.into())));
    }
}
