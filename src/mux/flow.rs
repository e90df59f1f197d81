//! Per-stream credit accounting, one struct per direction, no I/O.
//!
//! The sender may only put `available` bytes of DATA on the wire; the receiver hands credit
//! back (WINDOW_UPDATE) as its socket drains, so a stream never buffers more than its window
//! however slow the reader at the far end is.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::autotune::WindowTuner;
use super::sustained::FlowMeter;

/// Bytes all streams of one tunnel may have in flight or buffered, per direction, by default.
pub(crate) const TUNNEL_WINDOW_BUDGET: u32 = 200 * 1024 * 1024;
/// Largest per-stream window: reached with up to 50 streams at the default budget.
pub(crate) const MAX_STREAM_WINDOW_TARGET: u32 = 4 * 1024 * 1024;
/// Smallest per-stream window, once the budget is shared among many streams (3,200 at the
/// default budget): what a stream holds however many others are open.
pub(crate) const MIN_STREAM_WINDOW: u32 = 64 * 1024;
/// The window of a stream that has carried data steadily for a while (an elephant flow): a
/// full-speed stream on a short path, no more, so smaller streams' data is not queued
/// behind megabytes of it.
pub(crate) const SUSTAINED_STREAM_WINDOW: u32 = 1024 * 1024;
/// Credit every stream starts with in each direction, before the receiver sizes its window
/// (part of the protocol: both ends assume it). Small, so a burst of new streams whose
/// clients never read costs each end little beyond the budget.
pub(crate) const INITIAL_STREAM_WINDOW: u32 = MIN_STREAM_WINDOW;

/// A 4.13 peer's window as its documentation gives it, the credit we start each stream with
/// when we send to one: 200 MB shared out among `active` streams, 4 MB with up to 50 and 1 MB
/// from 200 on. Read in decimal megabytes, the smaller reading, so what we send fits the
/// receiver's window however it reads "MB".
pub(crate) fn upstream_413_window(active: usize) -> u32 {
    const MB: u32 = 1_000_000;
    let share = u32::try_from(active.max(1))
        .map(|n| 200 * MB / n)
        .unwrap_or(0);
    share.clamp(MB, 4 * MB)
}

/// What a 4.13 peer may have outstanding on one stream when it sends to us: the largest window
/// its documentation allows (4 MB, read as MiB, the larger reading), from the first byte on.
pub(crate) const UPSTREAM_413_RECEIVE_WINDOW: u32 = MAX_STREAM_WINDOW_TARGET;
/// A 4.13 peer is given back what we consumed once this much has added up. Far below its
/// smallest documented window (1 MB), so it never waits for credit we hold back.
pub(crate) const UPSTREAM_413_GRANT_BATCH: u32 = 64 * 1024;

/// Largest credit a sender may accumulate (h2 uses the same bound). A peer that grants past it
/// is broken or hostile.
pub(crate) const MAX_STREAM_WINDOW: u32 = (1 << 31) - 1;

/// The window each stream gets with `active` streams open: `budget` shared out, within
/// [64 KiB, 4 MiB].
pub(crate) fn stream_window(active: usize, budget: u32) -> u32 {
    budget_share(active, budget).clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW_TARGET)
}

/// `budget` divided among `active` streams (at least one).
fn budget_share(active: usize, budget: u32) -> u32 {
    u32::try_from(active.max(1))
        .map(|n| budget / n)
        .unwrap_or(0)
}

/// The receive window of a stream with `active` streams open: [`stream_window`], held to
/// [`SUSTAINED_STREAM_WINDOW`] for an elephant flow, raised to `tuned` (what the stream's reader
/// calls for over the round trip, `autotune`) within the stream's share of the budget.
pub(crate) fn receive_window(active: usize, budget: u32, sustained: bool, tuned: u32) -> u32 {
    let share = stream_window(active, budget);
    let floor = if sustained {
        share.min(SUSTAINED_STREAM_WINDOW)
    } else {
        share
    };
    floor.max(tuned.min(budget_share(active, budget)))
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum FlowError {
    #[error("window update of {credit} bytes overflows the send window ({available} available)")]
    CreditOverflow { available: u32, credit: u32 },
    #[error("peer sent {len} bytes with only {remaining} bytes of window left")]
    WindowExceeded { remaining: u32, len: u32 },
}

/// What this side may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendWindow {
    available: u32,
    /// Taken by a sender that has not settled yet (it is reading its socket). Still the
    /// peer's grant, so it counts when a new grant is checked against the maximum.
    held: u32,
}

impl SendWindow {
    pub(crate) fn new(initial: u32) -> Self {
        Self {
            available: initial,
            held: 0,
        }
    }

    #[cfg(test)]
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Takes up to `wanted` bytes of credit and returns how much was taken; settle it with
    /// [`SendWindow::settle`].
    pub(crate) fn take(&mut self, wanted: u32) -> u32 {
        let taken = wanted.min(self.available);
        self.available -= taken;
        self.held += taken;
        taken
    }

    /// Of `taken` bytes of credit from `take`, `used` were sent; the rest comes back.
    pub(crate) fn settle(&mut self, taken: u32, used: u32) {
        let taken = taken.min(self.held);
        self.held -= taken;
        // available + held never exceeds MAX_STREAM_WINDOW, so this cannot either.
        self.available += taken - used.min(taken);
    }

    /// Applies a WINDOW_UPDATE from the peer; the peer's whole outstanding credit, held
    /// credit included, may not exceed the maximum window.
    pub(crate) fn grant(&mut self, credit: u32) -> Result<(), FlowError> {
        let outstanding = self.available + self.held;
        match outstanding.checked_add(credit) {
            Some(sum) if sum <= MAX_STREAM_WINDOW => {
                self.available += credit;
                Ok(())
            }
            _ => Err(FlowError::CreditOverflow {
                available: outstanding,
                credit,
            }),
        }
    }
}

/// What the peer may still send us, and when to give it more.
///
/// The peer holds `peer_credit`; `buffered` bytes arrived and are not yet written out. Credit is
/// granted so that the two add up to the current window, which may shrink or grow at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvWindow {
    peer_credit: u32,
    buffered: u32,
}

impl RecvWindow {
    /// `initial` is the credit the peer starts with (both ends use INITIAL_STREAM_WINDOW).
    pub(crate) fn new(initial: u32) -> Self {
        Self {
            peer_credit: initial,
            buffered: 0,
        }
    }

    /// Accounts for a DATA frame from the peer; a peer that overruns its credit is an error.
    pub(crate) fn on_data(&mut self, len: u32) -> Result<(), FlowError> {
        if len > self.peer_credit {
            return Err(FlowError::WindowExceeded {
                remaining: self.peer_credit,
                len,
            });
        }
        self.peer_credit -= len;
        self.buffered = self.buffered.saturating_add(len);
        Ok(())
    }

    /// Accounts for bytes written to the local socket and returns the credit to grant, if
    /// any: enough to bring the peer back to `window`, sent once it is `batch` or more, which
    /// keeps the pipe full without a frame per write.
    pub(crate) fn on_consumed(&mut self, len: u32, window: u32, batch: u32) -> Option<u32> {
        // Saturating: `len` comes from our own writes of data already counted by `on_data`.
        self.buffered = self.buffered.saturating_sub(len);
        let committed = self.peer_credit.saturating_add(self.buffered);
        let credit = window.saturating_sub(committed);
        if credit > 0 && credit >= batch {
            self.peer_credit += credit;
            Some(credit)
        } else {
            None
        }
    }

    /// [`RecvWindow::on_consumed`] for a `remoteingress/1` peer: credit goes back in batches of
    /// a quarter window.
    pub(crate) fn on_consumed_in_window(&mut self, len: u32, window: u32) -> Option<u32> {
        self.on_consumed(len, window, window / 4)
    }

    /// Bytes the peer may still send before it must wait for credit.
    #[cfg(test)]
    pub fn remaining(&self) -> u32 {
        self.peer_credit
    }
}

/// What a `remoteingress/1` stream's receive window is sized from: the tunnel's open streams,
/// its buffer budget and its round trip (None until measured).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelShare {
    pub active: usize,
    pub budget: u32,
    pub round_trip: Option<Duration>,
}

/// One TCP+TLS stream's credit in both directions: what we may send, what the peer may send,
/// and what sizes the window we give it.
#[derive(Debug)]
pub(crate) struct StreamCredit {
    pub send: SendWindow,
    pub recv: RecvWindow,
    /// Incoming bytes over time, to lock an elephant flow's window to the floor.
    pub received: FlowMeter,
    /// The window the stream's reader calls for over the tunnel's round trip.
    tuner: WindowTuner,
}

impl StreamCredit {
    /// A stream whose sender starts with `send` bytes of credit and whose peer with `recv`.
    pub(crate) fn new(send: u32, recv: u32, now: Instant) -> Self {
        Self {
            send: SendWindow::new(send),
            recv: RecvWindow::new(recv),
            received: FlowMeter::new(now),
            tuner: WindowTuner::new(now),
        }
    }

    /// `len` bytes of data from the peer arrived at `now`; a peer that overruns its credit is
    /// an error.
    pub(crate) fn on_data(&mut self, len: u32, now: Instant) -> Result<(), FlowError> {
        self.recv.on_data(len)?;
        self.received.record(len as usize, now);
        Ok(())
    }

    /// `len` bytes reached the local socket at `now`; returns the credit to grant the peer, if
    /// due. The streams share the tunnel's budget; an elephant flow gets no more than it
    /// needs, which on a long path is what it consumes per round trip.
    pub(crate) fn on_consumed(
        &mut self,
        len: u32,
        now: Instant,
        tunnel: TunnelShare,
    ) -> Option<u32> {
        let tuned = self.tuner.on_consumed(len, now, tunnel.round_trip);
        let window = receive_window(
            tunnel.active,
            tunnel.budget,
            self.received.is_sustained(),
            tuned,
        );
        self.recv.on_consumed_in_window(len, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_takes_at_most_what_is_available() {
        let mut w = SendWindow::new(10);
        assert_eq!(w.take(4), 4);
        assert_eq!(w.take(100), 6);
        assert_eq!(w.take(1), 0);
        w.settle(6, 3);
        assert_eq!(w.available(), 3);
        w.settle(4, 4);
        assert_eq!(w.available(), 3);
    }

    #[test]
    fn credit_held_by_a_sender_still_counts_against_the_maximum() {
        let mut w = SendWindow::new(MAX_STREAM_WINDOW - 10);
        assert_eq!(w.take(64 * 1024), 64 * 1024);
        // While 64 KiB are held, the peer's credit is still MAX - 10: 11 more overflows.
        assert_eq!(
            w.grant(11),
            Err(FlowError::CreditOverflow {
                available: MAX_STREAM_WINDOW - 10,
                credit: 11
            })
        );
        assert_eq!(w.grant(10), Ok(()));
        w.settle(64 * 1024, 0);
        assert_eq!(w.available(), MAX_STREAM_WINDOW);
    }

    #[test]
    fn grant_past_the_maximum_is_an_error_and_changes_nothing() {
        let mut w = SendWindow::new(MAX_STREAM_WINDOW - 5);
        assert_eq!(
            w.grant(6),
            Err(FlowError::CreditOverflow {
                available: MAX_STREAM_WINDOW - 5,
                credit: 6
            })
        );
        assert_eq!(w.available(), MAX_STREAM_WINDOW - 5);
        assert_eq!(w.grant(5), Ok(()));
        assert_eq!(w.available(), MAX_STREAM_WINDOW);
        assert!(SendWindow::new(1).grant(u32::MAX).is_err());
    }

    #[test]
    fn receiver_rejects_data_past_the_peers_credit() {
        let mut r = RecvWindow::new(100);
        assert_eq!(r.on_data(60), Ok(()));
        assert_eq!(r.on_data(40), Ok(()));
        assert_eq!(
            r.on_data(1),
            Err(FlowError::WindowExceeded {
                remaining: 0,
                len: 1
            })
        );
    }

    #[test]
    fn credit_is_returned_in_quarter_window_batches() {
        let mut r = RecvWindow::new(100);
        r.on_data(100).unwrap();
        assert_eq!(r.on_consumed(10, 100, 100 / 4), None);
        assert_eq!(r.on_consumed(14, 100, 100 / 4), None);
        assert_eq!(r.on_consumed(1, 100, 100 / 4), Some(25));
        assert_eq!(r.remaining(), 25);
        assert_eq!(r.on_consumed(75, 100, 100 / 4), Some(75));
        assert_eq!(r.remaining(), 100);
    }

    #[test]
    fn window_follows_the_number_of_streams() {
        let mib = 1024 * 1024;
        let window = |active| stream_window(active, TUNNEL_WINDOW_BUDGET);
        assert_eq!(window(0), 4 * mib);
        assert_eq!(window(1), 4 * mib);
        assert_eq!(window(50), 4 * mib);
        assert_eq!(window(100), 2 * mib);
        assert!(window(51) < 4 * mib && window(51) > 3 * mib);
        assert_eq!(window(200), mib);
        assert_eq!(window(1_000), TUNNEL_WINDOW_BUDGET / 1_000);
        assert_eq!(window(3_200), MIN_STREAM_WINDOW);
        assert_eq!(window(65_536), MIN_STREAM_WINDOW);
        assert_eq!(window(usize::MAX), MIN_STREAM_WINDOW);
        // A smaller budget is shared the same way.
        assert_eq!(stream_window(10, 10 * mib), mib);
    }

    #[test]
    fn the_budget_bounds_what_all_streams_together_may_hold() {
        for active in [1usize, 50, 200, 1_000, 3_200] {
            let held = stream_window(active, TUNNEL_WINDOW_BUDGET) as u64 * active as u64;
            assert!(
                held <= u64::from(TUNNEL_WINDOW_BUDGET),
                "{active} streams hold {held}"
            );
        }
    }

    #[test]
    fn a_tuned_window_raises_the_share_but_stays_within_the_budget() {
        let mib = 1024 * 1024;
        let budget = TUNNEL_WINDOW_BUDGET;
        // Nothing tuned: the share, an elephant flow held to its floor.
        assert_eq!(receive_window(1, budget, false, 0), 4 * mib);
        assert_eq!(receive_window(1, budget, true, 0), SUSTAINED_STREAM_WINDOW);
        // A long path calls for more, for elephants too.
        assert_eq!(receive_window(1, budget, false, 24 * mib), 24 * mib);
        assert_eq!(receive_window(1, budget, true, 24 * mib), 24 * mib);
        // Less than the share changes nothing.
        assert_eq!(receive_window(1, budget, false, mib), 4 * mib);
        // 40 streams share 200 MiB: 5 MiB each at most, whatever is called for.
        assert_eq!(receive_window(40, budget, false, 24 * mib), 5 * mib);
        assert_eq!(receive_window(40, budget, true, 24 * mib), 5 * mib);
        // Past 3,200 streams the floor is above the share, as before.
        assert_eq!(
            receive_window(10_000, budget, false, 24 * mib),
            MIN_STREAM_WINDOW
        );
    }

    #[test]
    fn a_stream_grows_to_its_window_and_shrinks_when_streams_are_added() {
        let mib = 1024 * 1024;
        let mut r = RecvWindow::new(INITIAL_STREAM_WINDOW);
        let window = |active| stream_window(active, TUNNEL_WINDOW_BUDGET);
        // Alone on the tunnel: the first write out brings the peer up to 4 MiB.
        r.on_data(64 * 1024).unwrap();
        assert_eq!(
            r.on_consumed(64 * 1024, window(1), window(1) / 4),
            Some(4 * mib)
        );
        assert_eq!(r.remaining(), 4 * mib);
        // 400 streams now: no credit until the peer's holdings fall below 512 KiB...
        let crowded = window(400);
        assert_eq!(crowded, mib / 2);
        r.on_data(3 * mib + mib / 2).unwrap();
        assert_eq!(r.on_consumed(3 * mib + mib / 2, crowded, crowded / 4), None);
        assert_eq!(r.remaining(), mib / 2);
        // ...then only what keeps it at 512 KiB.
        r.on_data(mib / 4).unwrap();
        assert_eq!(r.on_consumed(mib / 4, crowded, crowded / 4), Some(mib / 4));
        assert_eq!(r.remaining(), mib / 2);
        // Back to one stream: the window grows again.
        r.on_data(mib / 2).unwrap();
        assert_eq!(
            r.on_consumed(mib / 2, window(1), window(1) / 4),
            Some(4 * mib)
        );
    }

    #[test]
    fn sender_and_receiver_agree_over_a_long_exchange() {
        let mut s = SendWindow::new(INITIAL_STREAM_WINDOW);
        let mut r = RecvWindow::new(INITIAL_STREAM_WINDOW);
        let mut delivered = 0u64;
        for round in 0..10_000u32 {
            let window = stream_window(1 + (round as usize / 1000) * 60, TUNNEL_WINDOW_BUDGET);
            let chunk = s.take(1 + (round * 7919) % 300_000);
            if chunk > 0 {
                r.on_data(chunk).unwrap();
                delivered += u64::from(chunk);
            }
            if let Some(credit) = r.on_consumed(chunk, window, window / 4) {
                s.grant(credit).unwrap();
            }
            assert_eq!(s.available(), r.remaining());
            assert!(r.remaining() <= MAX_STREAM_WINDOW_TARGET);
        }
        assert!(delivered > 100_000_000);
    }

    #[test]
    fn the_413_window_is_the_documented_table_in_decimal_megabytes() {
        let mb = 1_000_000;
        assert_eq!(upstream_413_window(0), 4 * mb);
        assert_eq!(upstream_413_window(50), 4 * mb);
        assert_eq!(upstream_413_window(100), 2 * mb);
        assert!(upstream_413_window(51) < 4 * mb && upstream_413_window(199) > mb);
        assert_eq!(upstream_413_window(200), mb);
        assert_eq!(upstream_413_window(65_536), mb);
        assert_eq!(upstream_413_window(usize::MAX), mb);
    }

    /// A 4.13 sender holds its documented window from the start and gets back what was
    /// consumed: whatever window it assumes (1 to 4 MB), it never overruns ours and never
    /// waits for credit that is not coming.
    #[test]
    fn a_413_sender_neither_overruns_nor_stalls() {
        for sender_window in [1_000_000u32, 1_048_576, 2_500_000, 4_000_000, 4_194_304] {
            let mut sender = SendWindow::new(sender_window);
            let mut r = RecvWindow::new(UPSTREAM_413_RECEIVE_WINDOW);
            let mut delivered = 0u64;
            for round in 0..2_000u32 {
                let chunk = sender.take(1 + (round * 7919) % 70_000);
                assert!(
                    chunk > 0,
                    "the sender stalled in round {round} ({sender_window})"
                );
                r.on_data(chunk).unwrap();
                delivered += u64::from(chunk);
                let granted =
                    r.on_consumed(chunk, UPSTREAM_413_RECEIVE_WINDOW, UPSTREAM_413_GRANT_BATCH);
                if let Some(credit) = granted {
                    sender.grant(credit).unwrap();
                }
                // Never more than one batch held back from the sender.
                assert!(sender.available() + UPSTREAM_413_GRANT_BATCH >= sender_window);
            }
            assert!(delivered > 10_000_000);
        }
    }

    /// We start with the documented window when sending to a 4.13 receiver, which returns
    /// what it consumed: we never exceed what it allows.
    #[test]
    fn our_sends_to_a_413_receiver_stay_within_its_window() {
        for active in [1usize, 60, 200, 5_000] {
            let window = upstream_413_window(active);
            let mut s = SendWindow::new(window);
            let mut outstanding = 0u32;
            for round in 0..1_000u32 {
                let sent = s.take(MAX_DATA_CHUNK);
                outstanding += sent;
                assert!(outstanding <= window);
                // The receiver consumes some of it and reports it.
                let consumed = outstanding.min(1 + (round * 104_729) % 300_000);
                outstanding -= consumed;
                if consumed > 0 {
                    s.grant(consumed).unwrap();
                }
            }
        }
    }

    const MAX_DATA_CHUNK: u32 = 64 * 1024;
}
