//! Byte rates the hub holds an edge's traffic to (`bandwidth`, per edge and per port, each
//! direction). A limit is a schedule (the generic cell rate algorithm): each chunk books the
//! time its bytes take at the rate after everything booked before it, so the streams drawing
//! on one limit are served in the order they ask, a chunk at a time, and share it evenly. A
//! stream's chunk waits for its time, which holds back the stream's flow control (its sender
//! stops at its window); a datagram over the rate is dropped instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::Locked;

/// How far ahead of its rate a limit lets bytes go: the burst a quiet limit allows.
pub(crate) const BANDWIDTH_BURST: Duration = Duration::from_millis(100);

/// The booked time of one limit, without I/O.
#[derive(Debug)]
struct Schedule {
    bytes_per_second: u64,
    /// When what was booked so far is through at the rate.
    booked_until: Option<Instant>,
}

impl Schedule {
    /// When `bytes` booked at `now` would be through.
    fn through_at(&self, bytes: usize, now: Instant) -> Instant {
        let start = self.booked_until.map_or(now, |until| until.max(now));
        start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64)
    }

    /// Books `bytes` at `now`; how long they must wait for their turn.
    fn book(&mut self, bytes: usize, now: Instant) -> Duration {
        let until = self.through_at(bytes, now);
        self.booked_until = Some(until);
        until
            .saturating_duration_since(now)
            .saturating_sub(BANDWIDTH_BURST)
    }

    /// Whether `bytes` booked at `now` would not wait.
    fn has_room(&self, bytes: usize, now: Instant) -> bool {
        self.through_at(bytes, now).saturating_duration_since(now) <= BANDWIDTH_BURST
    }
}

/// One limit (an edge's or a port's, one direction), shared by the streams and sessions under
/// it; its rate can change while they run.
#[derive(Debug)]
pub(crate) struct RateLimit {
    schedule: Mutex<Schedule>,
    /// Time chunks waited for their turn here, in nanoseconds.
    delayed_nanos: AtomicU64,
    /// Datagrams dropped for this limit.
    dropped_datagrams: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_second: u64) -> Arc<Self> {
        Arc::new(Self {
            schedule: Mutex::new(Schedule {
                bytes_per_second: bytes_per_second.max(1),
                booked_until: None,
            }),
            delayed_nanos: AtomicU64::new(0),
            dropped_datagrams: AtomicU64::new(0),
        })
    }

    pub(crate) fn bytes_per_second(&self) -> u64 {
        self.schedule.locked().bytes_per_second
    }

    /// A new rate for what is booked from now on.
    pub(crate) fn set_rate(&self, bytes_per_second: u64) {
        self.schedule.locked().bytes_per_second = bytes_per_second.max(1);
    }

    /// How long chunks have waited for this limit in all.
    pub(crate) fn delayed(&self) -> Duration {
        Duration::from_nanos(self.delayed_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn dropped_datagrams(&self) -> u64 {
        self.dropped_datagrams.load(Ordering::Relaxed)
    }

    fn book(&self, bytes: usize, now: Instant) -> Duration {
        let wait = self.schedule.locked().book(bytes, now);
        if !wait.is_zero() {
            let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            self.delayed_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        wait
    }
}

/// The limits one direction of a stream or session passes: its edge's, its port's, or both.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pace {
    limits: Vec<Arc<RateLimit>>,
}

impl Pace {
    pub(crate) fn new(limits: impl IntoIterator<Item = Arc<RateLimit>>) -> Option<Self> {
        let limits: Vec<_> = limits.into_iter().collect();
        (!limits.is_empty()).then_some(Self { limits })
    }

    #[cfg(test)]
    pub(crate) fn limits_len(&self) -> usize {
        self.limits.len()
    }

    /// Books `bytes` with every limit; how long they must wait for their turn.
    pub(crate) fn book(&self, bytes: usize) -> Duration {
        let now = Instant::now();
        self.limits
            .iter()
            .map(|limit| limit.book(bytes, now))
            .max()
            .unwrap_or_default()
    }

    /// Waits until `bytes` may go on, by every limit.
    pub(crate) async fn take(&self, bytes: usize) {
        let wait = self.book(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether a datagram of `bytes` may go now, booked by every limit; one that may not is
    /// dropped, counted by the limits that had no room for it.
    pub(crate) fn admit_datagram(&self, bytes: usize) -> bool {
        let now = Instant::now();
        // Always locked in the same order (the edge's, then the port's).
        let mut schedules: Vec<_> = self.limits.iter().map(|l| l.schedule.locked()).collect();
        let full: Vec<bool> = schedules.iter().map(|s| !s.has_room(bytes, now)).collect();
        if !full.contains(&true) {
            for schedule in &mut schedules {
                schedule.book(bytes, now);
            }
            return true;
        }
        drop(schedules);
        for (limit, _) in self.limits.iter().zip(full).filter(|(_, full)| *full) {
            limit.dropped_datagrams.fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}

/// What a stream's local socket reads and is written, paced (none: as fast as it goes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacing {
    /// Bytes read from the local socket, before they enter the tunnel.
    pub read: Option<Pace>,
    /// Bytes from the tunnel, before they are written to the local socket.
    pub written: Option<Pace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_wait_for_their_turn_at_the_rate_after_a_burst() {
        let t0 = Instant::now();
        let mut schedule = Schedule {
            bytes_per_second: 1_000_000,
            booked_until: None,
        };
        // 100 ms of burst: the first 100,000 bytes go at once.
        assert_eq!(schedule.book(50_000, t0), Duration::ZERO);
        assert_eq!(schedule.book(50_000, t0), Duration::ZERO);
        // Then each 100,000 bytes waits 100 ms more.
        assert_eq!(schedule.book(100_000, t0), Duration::from_millis(100));
        assert_eq!(schedule.book(100_000, t0), Duration::from_millis(200));
        // Time that passes pays for what was booked; an idle limit is fresh again.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(schedule.book(100_000, later), Duration::ZERO);
    }

    #[test]
    fn two_streams_asking_in_turn_share_the_rate_evenly() {
        let t0 = Instant::now();
        let mut schedule = Schedule {
            bytes_per_second: 1_000_000,
            booked_until: None,
        };
        // Each asks for its next chunk when its previous one was let through.
        let mut ready = [t0, t0];
        let mut sent = [0usize, 0];
        while ready.iter().min().copied().unwrap() < t0 + Duration::from_secs(10) {
            let who = if ready[0] <= ready[1] { 0 } else { 1 };
            let chunk = if who == 0 { 64 * 1024 } else { 16 * 1024 };
            let now = ready[who];
            ready[who] = now + schedule.book(chunk, now);
            sent[who] += chunk;
        }
        // Ten seconds at 1 MB/s (plus the burst), split by bytes, not by chunks: the stream
        // with four times the chunk gets no more than its share.
        let total = sent[0] + sent[1];
        assert!((10_000_000..=10_300_000).contains(&total), "{sent:?}");
        assert!(sent[0] <= 4 * sent[1] + 64 * 1024, "{sent:?}");
    }

    #[test]
    fn a_datagram_fits_only_within_the_burst() {
        let t0 = Instant::now();
        let mut schedule = Schedule {
            bytes_per_second: 10_000,
            booked_until: None,
        };
        // 100 ms at 10 kB/s: 1,000 bytes of burst.
        assert!(schedule.has_room(600, t0));
        schedule.book(600, t0);
        assert!(!schedule.has_room(600, t0));
        assert!(schedule.has_room(400, t0));
        schedule.book(400, t0);
        assert!(schedule.has_room(100, t0 + Duration::from_millis(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_waits_for_the_slowest_of_its_limits_and_counts_the_wait() {
        let edge = RateLimit::new(1_000_000);
        let port = RateLimit::new(100_000);
        let pace = Pace::new([edge.clone(), port.clone()]).unwrap();
        let t0 = Instant::now();
        pace.take(10_000).await; // within both bursts
        assert_eq!(Instant::now(), t0);
        pace.take(100_000).await; // the port's: 1.1 s booked, 1 s past its burst
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        // Each limit counts the wait its own schedule asked for.
        assert_eq!(port.delayed(), Duration::from_secs(1));
        assert_eq!(edge.delayed(), Duration::from_millis(10));
        assert!(Pace::new([]).is_none());
        port.set_rate(1_000_000_000);
        assert_eq!(port.bytes_per_second(), 1_000_000_000);
    }

    #[test]
    fn a_datagram_passes_only_if_every_limit_has_room() {
        let edge = RateLimit::new(1_000_000);
        let port = RateLimit::new(10_000);
        let pace = Pace::new([edge.clone(), port.clone()]).unwrap();
        assert!(pace.admit_datagram(1_000));
        assert!(!pace.admit_datagram(1_000));
        assert_eq!(port.dropped_datagrams(), 1);
        assert_eq!(edge.dropped_datagrams(), 0, "the edge's limit had room");
    }
}
