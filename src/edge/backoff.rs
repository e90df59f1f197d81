//! Reconnect delays: capped exponential backoff with full jitter, so a fleet of edges that lost
//! their hub at the same moment does not come back in lockstep.

use std::time::Duration;

/// A tunnel that stayed up this long was stable: the next reconnect starts again from the
/// minimum delay. One that ends sooner keeps the delays growing, so a hub that accepts and
/// then drops an edge is not hammered.
pub(super) const STABLE_TUNNEL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in [min, min(max, min * 2^attempt)],
    /// `random` supplying the jitter.
    pub(super) fn next_delay(&mut self, random: u32) -> Duration {
        let ceiling = self
            .min
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(f64::from(random) / f64::from(u32::MAX))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A tunnel that was up for `lasted` has ended.
    pub(super) fn tunnel_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE_TUNNEL {
            self.reset();
        }
    }
}

/// A random u32 for jitter from the system's generator.
pub(super) fn jitter() -> u32 {
    let mut bytes = [0u8; 4];
    // The system RNG does not fail on Linux; without it, no jitter is still a valid delay.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let tops: Vec<u64> = (0..8).map(|_| b.next_delay(u32::MAX).as_secs()).collect();
        assert_eq!(tops, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        for _ in 0..100 {
            b.next_delay(u32::MAX);
        }
        assert_eq!(b.next_delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.next_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn only_a_stable_tunnel_starts_the_delays_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..3 {
            b.next_delay(u32::MAX);
        }
        b.tunnel_ended(Duration::from_secs(59));
        assert_eq!(
            b.next_delay(u32::MAX),
            Duration::from_secs(8),
            "a short tunnel escalates"
        );
        b.tunnel_ended(STABLE_TUNNEL);
        assert_eq!(
            b.next_delay(u32::MAX),
            Duration::from_secs(1),
            "a stable one starts over"
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for _ in 0..5 {
            b.next_delay(u32::MAX);
        }
        b.reset();
        assert_eq!(b.next_delay(u32::MAX), Duration::from_millis(10));
    }
}
