//! BBR with its window bounded on short paths. BBR paces to the bottleneck it measures and does
//! not read random loss as congestion, so one lost packet in a thousand on a long path does not
//! halve a tunnel's window (quinn's CUBIC never recovered from it: docs/PERFORMANCE.md, "The
//! WAN bench"). On loopback or a LAN the queue a window fills is the peer's UDP receive buffer
//! (megabytes, so bursts are not lost), and every other connection's packets wait behind a
//! bulk transfer's whole window there. The TCP+TLS transport bounds its receive buffer by the
//! same rule (`transport::short_path_bound`): no more than the fastest rate we size for
//! fills in the path's round trip, with a floor that keeps one busy peer's pauses covered.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The smallest bound: what the TCP+TLS tunnel's smallest receive buffer holds (the kernel
/// doubles the 128 KiB asked). On loopback the round trip is tens of microseconds, but a peer
/// on one busy thread acknowledges a whole batch of packets at once, and a window smaller
/// than what arrives between its acknowledgements leaves the path idle. A smaller floor costs
/// throughput, a larger one latency: docs/PERFORMANCE.md, "QUIC congestion window bound".
pub(crate) const MIN_WINDOW_BOUND: u64 = 256 * 1024;

/// The window bound for a path whose shortest round trip is `min_rtt`: what 10 Gbit/s fills
/// in it, at least [`MIN_WINDOW_BOUND`]; None on paths longer than about 3.4 ms, where the
/// queue a window builds is small against the path's own delay and CUBIC decides alone.
pub(crate) fn window_bound(min_rtt: Duration) -> Option<u64> {
    super::short_path_bound(min_rtt, MIN_WINDOW_BOUND)
}

/// Builds [`Bounded`] controllers around the controllers `inner` builds.
pub(crate) struct BoundedConfig {
    pub inner: Arc<dyn ControllerFactory + Send + Sync>,
}

impl ControllerFactory for BoundedConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bounded {
            inner: self.inner.clone().build(now, current_mtu),
            bound: None,
        })
    }
}

/// A controller whose window is at most [`window_bound`] of the shortest round trip seen.
pub(crate) struct Bounded {
    inner: Box<dyn Controller>,
    /// None until the first round trip is measured, and on long paths.
    bound: Option<u64>,
}

impl Bounded {
    /// The bound in force: None until a round trip is measured, and on long paths.
    #[cfg(test)]
    pub fn bound(&self) -> Option<u64> {
        self.bound
    }

    /// Whether the controller's own window already reaches the bound. Acknowledgements then do not
    /// grow it: a window that is never used would only make a later loss halve it from far
    /// above the bound, which would not slow the sender at all.
    fn at_bound(&self) -> bool {
        self.bound.is_some_and(|bound| self.inner.window() >= bound)
    }
}

impl Controller for Bounded {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.bound = window_bound(rtt.min());
        let app_limited = app_limited || self.at_bound();
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        let window = self.inner.window();
        self.bound.map_or(window, |bound| window.min(bound))
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            bound: self.bound,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_tcp_rule_with_a_floor_of_its_own() {
        assert_eq!(
            window_bound(Duration::from_micros(40)),
            Some(MIN_WINDOW_BOUND)
        );
        assert_eq!(window_bound(Duration::from_millis(1)), Some(1_250_000));
        assert_eq!(window_bound(Duration::from_millis(4)), None);
    }
}
