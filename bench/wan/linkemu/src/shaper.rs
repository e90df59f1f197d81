//! What happens to one packet on the emulated link, without I/O: lost at random, dropped when
//! the queue in front of the rate limit holds more than its bound, else delivered when it has
//! been serialized at the link rate and has crossed the one-way delay (plus jitter). Packets
//! leave in the order they came, as on a real link.

use std::time::{Duration, Instant};

/// One direction of the link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkProfile {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±jitter (order is kept).
    pub jitter: Duration,
    /// Probability that a packet is lost, 0..1.
    pub loss: f64,
    /// Bits per second; 0 = no limit.
    pub rate_bps: u64,
    /// The most a packet may wait behind others for the rate limit before it is dropped.
    pub queue: Duration,
}

/// What became of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this instant.
    DeliverAt(Instant),
    /// Lost at random.
    Lost,
    /// Dropped: the queue was full.
    Dropped,
}

/// A small, seeded generator: runs are repeatable.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction's state: when the link is free again, and the last delivery time.
#[derive(Debug)]
pub struct Shaper {
    profile: LinkProfile,
    rng: XorShift,
    link_free_at: Instant,
    last_delivery: Instant,
}

impl Shaper {
    pub fn new(profile: LinkProfile, seed: u64, now: Instant) -> Self {
        Self {
            profile,
            rng: XorShift::new(seed),
            link_free_at: now,
            last_delivery: now,
        }
    }

    /// The fate of a packet of `len` bytes that arrives at `now`.
    pub fn admit(&mut self, now: Instant, len: usize) -> Fate {
        let p = self.profile;
        if p.loss > 0.0 && self.rng.unit() < p.loss {
            return Fate::Lost;
        }
        let mut sent = now;
        let bits = len as u64 * 8;
        if let Some(nanos) = bits.saturating_mul(1_000_000_000).checked_div(p.rate_bps) {
            let start = self.link_free_at.max(now);
            if start - now > p.queue {
                return Fate::Dropped;
            }
            self.link_free_at = start + Duration::from_nanos(nanos);
            sent = self.link_free_at;
        }
        let mut delivery = sent + p.delay;
        if !p.jitter.is_zero() {
            let offset = p.jitter.mul_f64(self.rng.unit() * 2.0);
            delivery = (delivery + offset)
                .checked_sub(p.jitter)
                .unwrap_or(delivery);
        }
        // Jitter never reorders: a packet is not delivered before the one ahead of it.
        delivery = delivery.max(self.last_delivery);
        self.last_delivery = delivery;
        Fate::DeliverAt(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> LinkProfile {
        LinkProfile {
            delay: Duration::from_millis(50),
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: 0,
            queue: Duration::from_millis(10),
        }
    }

    #[test]
    fn without_a_rate_a_packet_arrives_after_the_delay() {
        let start = Instant::now();
        let mut shaper = Shaper::new(profile(), 1, start);
        assert_eq!(
            shaper.admit(start, 1500),
            Fate::DeliverAt(start + Duration::from_millis(50))
        );
    }

    #[test]
    fn the_rate_serializes_packets_and_a_full_queue_drops() {
        let start = Instant::now();
        // 12 Mbit/s: a 1500-byte packet takes 1 ms; the queue holds 10 ms.
        let mut shaper = Shaper::new(
            LinkProfile {
                rate_bps: 12_000_000,
                ..profile()
            },
            1,
            start,
        );
        let mut delivered = Vec::new();
        let mut dropped = 0;
        for _ in 0..20 {
            match shaper.admit(start, 1500) {
                Fate::DeliverAt(at) => delivered.push(at - start),
                Fate::Dropped => dropped += 1,
                Fate::Lost => unreachable!("no loss configured"),
            }
        }
        // Waits of 0..=10 ms are admitted: 11 packets, each 1 ms after the one before.
        assert_eq!(delivered.len(), 11);
        assert_eq!(dropped, 9);
        for (i, at) in delivered.iter().enumerate() {
            assert_eq!(*at, Duration::from_millis(51 + i as u64));
        }
        // Once the queue has drained, packets go through again.
        let later = start + Duration::from_millis(100);
        assert_eq!(
            shaper.admit(later, 1500),
            Fate::DeliverAt(later + Duration::from_millis(51))
        );
    }

    #[test]
    fn loss_follows_its_probability_and_jitter_keeps_the_order() {
        let start = Instant::now();
        let lossy = LinkProfile {
            loss: 0.01,
            jitter: Duration::from_millis(5),
            ..profile()
        };
        let mut shaper = Shaper::new(lossy, 7, start);
        let (mut lost, mut last) = (0, start);
        for i in 0..100_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 10);
            match shaper.admit(now, 100) {
                Fate::Lost => lost += 1,
                Fate::DeliverAt(at) => {
                    assert!(at >= last, "reordered");
                    assert!(
                        at >= now + Duration::from_millis(45)
                            && at <= now + Duration::from_millis(55)
                            || at == last
                    );
                    last = at;
                }
                Fate::Dropped => unreachable!("no rate configured"),
            }
        }
        assert!((800..1200).contains(&lost), "{lost} of 100,000 lost at 1%");
    }
}
