//! Byte rates the hub holds an edge's traffic to (`bandwidth`, per edge and per port, each
//! direction). A limit is a schedule (the generic cell rate algorithm): each chunk books the
//! time its bytes take at the rate after everything booked before it, so the streams drawing
//! on one limit are served in the order they ask, a chunk at a time, and share it evenly. A
//! stream's chunk waits for its time, which holds back the stream's flow control (its sender
//! stops at its window); a datagram over the rate is dropped instead. A limit whose rate
//! changes starts its schedule afresh, and chunks waiting for it book their turn again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::Locked;

/// How far ahead of its rate a limit lets bytes go: the burst a quiet limit allows.
pub(crate) const BANDWIDTH_BURST: Duration = Duration::from_millis(100);
/// How often a waiting chunk looks whether its limits' rates changed: seldom enough that
/// thousands of waiting streams cost little.
pub(crate) const RATE_RECHECK: Duration = Duration::from_secs(1);

/// The booked time of one limit, without I/O. No rate: the limit was lifted, nothing waits.
#[derive(Debug)]
struct Schedule {
    bytes_per_second: Option<u64>,
    /// When what was booked so far is through at the rate.
    booked_until: Option<Instant>,
}

impl Schedule {
    /// Books `bytes` at `now`; how long they must wait for their turn.
    fn book(&mut self, bytes: usize, now: Instant) -> Duration {
        let Some(rate) = self.bytes_per_second else {
            return Duration::ZERO;
        };
        let start = self.booked_until.map_or(now, |until| until.max(now));
        let until = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        self.booked_until = Some(until);
        until
            .saturating_duration_since(now)
            .saturating_sub(BANDWIDTH_BURST)
    }

    /// Whether something booked at `now` would start without waiting: a datagram of any size
    /// fits a limit with no more than its burst booked ahead.
    fn has_room(&self, now: Instant) -> bool {
        self.bytes_per_second.is_none()
            || self
                .booked_until
                .is_none_or(|until| until.saturating_duration_since(now) <= BANDWIDTH_BURST)
    }
}

/// One limit (an edge's or a port's, one direction), shared by the streams and sessions under
/// it; its rate can change while they run.
#[derive(Debug)]
pub(crate) struct RateLimit {
    schedule: Mutex<Schedule>,
    /// Counts rate changes, so waiting chunks notice one.
    changes: AtomicU64,
    /// Time chunks waited for their turn here, in nanoseconds.
    delayed_nanos: AtomicU64,
    /// Datagrams dropped for this limit.
    dropped_datagrams: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(bytes_per_second: u64) -> Arc<Self> {
        Arc::new(Self {
            schedule: Mutex::new(Schedule {
                bytes_per_second: Some(bytes_per_second.max(1)),
                booked_until: None,
            }),
            changes: AtomicU64::new(0),
            delayed_nanos: AtomicU64::new(0),
            dropped_datagrams: AtomicU64::new(0),
        })
    }

    /// The rate; None once the limit was lifted.
    pub(crate) fn bytes_per_second(&self) -> Option<u64> {
        self.schedule.locked().bytes_per_second
    }

    /// A new rate (None: no limit), from now on: the schedule starts afresh, and what waits
    /// books its turn again within [`RATE_RECHECK`].
    pub(crate) fn set_rate(&self, bytes_per_second: Option<u64>) {
        let mut schedule = self.schedule.locked();
        let rate = bytes_per_second.map(|r| r.max(1));
        if schedule.bytes_per_second != rate {
            schedule.bytes_per_second = rate;
            schedule.booked_until = None;
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
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

    /// Changes so far to the rates of these limits: a booking made before a change is stale.
    pub(crate) fn rate_changes(&self) -> u64 {
        self.limits
            .iter()
            .map(|limit| limit.changes.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until `bytes` may go on, by every limit; booked again if a rate changes meanwhile.
    /// Boxed, so the state of a stream that is never paced holds no timer (an idle stream's
    /// memory is mostly that state).
    pub(crate) fn take(&self, bytes: usize) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut changes = self.rate_changes();
            let mut until = Instant::now() + self.book(bytes);
            loop {
                let now = Instant::now();
                if until <= now {
                    return;
                }
                tokio::time::sleep_until(until.min(now + RATE_RECHECK)).await;
                let current = self.rate_changes();
                if current != changes {
                    changes = current;
                    until = Instant::now() + self.book(bytes);
                }
            }
        })
    }

    /// Whether a datagram of `bytes` may go now, booked by every limit; one that may not is
    /// dropped, counted by the limits that had no room for it.
    pub(crate) fn admit_datagram(&self, bytes: usize) -> bool {
        let now = Instant::now();
        // Always locked in the same order (the edge's, then the port's).
        let mut schedules: Vec<_> = self.limits.iter().map(|l| l.schedule.locked()).collect();
        let full: Vec<bool> = schedules.iter().map(|s| !s.has_room(now)).collect();
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
/// Boxed: most streams have no limit, and each carries this for its whole life.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacing(Option<Box<Paces>>);

#[derive(Debug, Clone)]
struct Paces {
    read: Option<Pace>,
    written: Option<Pace>,
}

impl Pacing {
    /// `read`: bytes read from the local socket, before they enter the tunnel; `written`:
    /// bytes from the tunnel, before they are written to the local socket.
    pub(crate) fn new(read: Option<Pace>, written: Option<Pace>) -> Self {
        if read.is_none() && written.is_none() {
            return Self(None);
        }
        Self(Some(Box::new(Paces { read, written })))
    }

    pub(crate) fn read(&self) -> Option<&Pace> {
        self.0.as_ref().and_then(|paces| paces.read.as_ref())
    }

    pub(crate) fn written(&self) -> Option<&Pace> {
        self.0.as_ref().and_then(|paces| paces.written.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_limits_carries_one_empty_pointer() {
        assert_eq!(std::mem::size_of::<Pacing>(), std::mem::size_of::<usize>());
        let unpaced = Pacing::new(None, None);
        assert!(unpaced.0.is_none());
        let limit = Pace::new([RateLimit::new(1_000)]);
        let paced = Pacing::new(None, limit);
        assert!(paced.read().is_none() && paced.written().is_some());
    }

    #[test]
    fn chunks_wait_for_their_turn_at_the_rate_after_a_burst() {
        let t0 = Instant::now();
        let mut schedule = Schedule {
            bytes_per_second: Some(1_000_000),
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
            bytes_per_second: Some(1_000_000),
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
    fn a_datagram_starts_within_the_burst_whatever_its_size() {
        let t0 = Instant::now();
        let mut schedule = Schedule {
            bytes_per_second: Some(10_000),
            booked_until: None,
        };
        // A quiet limit takes a datagram larger than its burst (100 ms at 10 kB/s: 1,000 bytes).
        assert!(schedule.has_room(t0));
        schedule.book(1_200, t0);
        // 120 ms booked ahead: no room until 20 ms have passed.
        assert!(!schedule.has_room(t0));
        assert!(!schedule.has_room(t0 + Duration::from_millis(19)));
        assert!(schedule.has_room(t0 + Duration::from_millis(20)));
        // One a second at 1,200 bytes is a tenth of the rate: each finds room.
        for second in 1..10 {
            let at = t0 + Duration::from_secs(second);
            assert!(schedule.has_room(at));
            schedule.book(1_200, at);
        }
        let mut lifted = Schedule {
            bytes_per_second: None,
            booked_until: Some(t0 + Duration::from_secs(60)),
        };
        assert!(lifted.has_room(t0));
        assert_eq!(lifted.book(1 << 20, t0), Duration::ZERO);
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
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_reaches_chunks_already_waiting() {
        let limit = RateLimit::new(1_000);
        let pace = Pace::new([limit.clone()]).unwrap();
        // 10 chunks of 64 KiB booked at 1 kB/s: the last would wait almost 11 minutes.
        let t0 = Instant::now();
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move { pace.take(64 * 1024).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        limit.set_rate(Some(1_000_000_000));
        for chunk in waiting {
            chunk.await.unwrap();
        }
        assert!(Instant::now() - t0 <= Duration::from_secs(1) + 2 * RATE_RECHECK);
        assert!(
            Instant::now() - t0 < Duration::from_secs(60),
            "not the old rate's minutes"
        );
        limit.set_rate(None);
        assert_eq!(limit.bytes_per_second(), None);
        let t1 = Instant::now();
        pace.take(1 << 30).await;
        assert_eq!(Instant::now(), t1, "a lifted limit holds nothing back");
    }

    #[test]
    fn a_datagram_passes_only_if_every_limit_has_room() {
        let edge = RateLimit::new(1_000_000);
        let port = RateLimit::new(10_000);
        let pace = Pace::new([edge.clone(), port.clone()]).unwrap();
        // The port's 100 ms burst is 1,000 bytes: the second starts as it is used up.
        assert!(pace.admit_datagram(1_000));
        assert!(pace.admit_datagram(1_000));
        assert!(!pace.admit_datagram(1_000));
        assert_eq!(port.dropped_datagrams(), 1);
        assert_eq!(edge.dropped_datagrams(), 0, "the edge's limit had room");
    }
}
