//! The order in which one tunnel's writer sends its frames. Three tiers: control frames
//! (PING, PONG, WINDOW_UPDATE, OPEN, resets, CONFIG) first, in the order they came; then
//! normal data and UDP, streams taking turns; then sustained (elephant) streams, which go ahead
//! of normal data while they have had less than their guaranteed rate in the current second.
//!
//! Pure: the writer feeds the frames its channels yield, asks which frame to write next and
//! passes the clock each time, so the policy runs the same under a test's made-up clock.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::protocol::frame::{Frame, FrameType};

use super::round_robin::RoundRobin;
use super::sustained::{FlowMeter, SustainedShare};

/// Streams metered at once for sustained-flow detection. Meters end with a stream's
/// half-close; a stream that ends by reset leaves one behind, so past this the table restarts
/// (costing at most a late demotion).
pub(crate) const MAX_METERED_STREAMS: usize = 65_536;

#[derive(Debug)]
pub(crate) struct TierScheduler {
    control: VecDeque<Frame>,
    /// Normal data and UDP, in the order the streams get their turns.
    data: RoundRobin<Frame>,
    sustained: RoundRobin<Frame>,
    /// Outgoing bytes per stream, to spot sustained flows.
    meters: HashMap<u32, FlowMeter>,
    /// How much of its guaranteed rate the sustained tier had this second.
    share: SustainedShare,
}

impl TierScheduler {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            control: VecDeque::new(),
            data: RoundRobin::default(),
            sustained: RoundRobin::default(),
            meters: HashMap::new(),
            share: SustainedShare::new(now),
        }
    }

    /// A control frame: it goes before every data frame, after the control frames before it.
    pub(crate) fn push_control(&mut self, frame: Frame) {
        self.control.push_back(frame);
    }

    /// A data-tier frame (DATA, a half-close, UDP) into its stream's tier. Stream data is
    /// metered; a half-close ends the stream's meter (it sends nothing more). A frame always
    /// joins the tier that already holds frames of its stream, so a stream changing tier never
    /// overtakes itself.
    pub(crate) fn push_data(&mut self, frame: Frame, now: Instant) {
        let id = frame.stream_id;
        let metered_sustained = match frame.frame_type {
            FrameType::Data | FrameType::DataBack => {
                if self.meters.len() >= MAX_METERED_STREAMS && !self.meters.contains_key(&id) {
                    self.meters.clear(); // streams that ended by reset leave meters behind
                }
                self.meters
                    .entry(id)
                    .or_insert_with(|| FlowMeter::new(now))
                    .record(frame.payload.len(), now)
            }
            FrameType::Close | FrameType::CloseBack => self
                .meters
                .remove(&id)
                .is_some_and(|meter| meter.is_sustained()),
            _ => false,
        };
        let sustained =
            self.sustained.contains(id) || (!self.data.contains(id) && metered_sustained);
        if sustained {
            self.sustained.push(id, frame);
        } else {
            self.data.push(id, frame);
        }
    }

    /// The frame to write next, if any: control first, then normal data, then sustained
    /// streams (ahead of normal data while they are owed their guaranteed rate).
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Frame> {
        if let Some(frame) = self.control.pop_front() {
            return Some(frame);
        }
        // Asked only while sustained frames wait, as before the move: `owed` starts a new
        // one-second window only when asked, so that is when windows start.
        let sustained_first = !self.sustained.is_empty() && self.share.owed(now);
        if !sustained_first {
            if let Some(frame) = self.data.pop() {
                return Some(frame);
            }
        }
        let frame = self.sustained.pop()?;
        self.share.served(frame.payload.len());
        Some(frame)
    }

    /// Frames waiting in all tiers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.control.len() + self.data.len() + self.sustained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::sustained::{SUSTAINED_AFTER, SUSTAINED_GUARANTEED_RATE};
    use bytes::Bytes;
    use std::time::Duration;

    const SECOND: Duration = Duration::from_secs(1);

    fn data(id: u32, len: usize) -> Frame {
        Frame::new(id, FrameType::DataBack, Bytes::from(vec![0u8; len]))
    }

    fn close(id: u32) -> Frame {
        Frame::new(id, FrameType::CloseBack, Bytes::new())
    }

    /// Pops everything at `now`: (stream, type, payload length) in order.
    fn drain(tiers: &mut TierScheduler, now: Instant) -> Vec<(u32, FrameType, usize)> {
        std::iter::from_fn(|| tiers.pop(now))
            .map(|f| (f.stream_id, f.frame_type, f.payload.len()))
            .collect()
    }

    /// A scheduler at `t0` whose stream `id` was classified sustained long ago.
    fn with_sustained(t0: Instant, id: u32) -> TierScheduler {
        let mut tiers = TierScheduler::new(t0);
        let mut meter = FlowMeter::new(t0 - SUSTAINED_AFTER - SECOND);
        assert!(meter.record(100_000_000, t0));
        tiers.meters.insert(id, meter);
        tiers
    }

    #[test]
    fn control_goes_first_and_data_streams_take_turns() {
        let t0 = Instant::now();
        let mut tiers = TierScheduler::new(t0);
        for len in 1..=3 {
            tiers.push_data(data(1, len), t0);
        }
        tiers.push_data(data(2, 9), t0);
        tiers.push_data(
            Frame::new(7, FrameType::UdpDataBack, Bytes::from_static(b"u")),
            t0,
        );
        tiers.push_control(Frame::ping([0; 8]));
        tiers.push_control(Frame::window_update(2, FrameType::WindowUpdateBack, 5));
        assert_eq!(tiers.len(), 7);
        assert_eq!(
            drain(&mut tiers, t0),
            vec![
                (0, FrameType::Ping, 8),
                (2, FrameType::WindowUpdateBack, 4),
                (1, FrameType::DataBack, 1),
                (2, FrameType::DataBack, 9),
                (7, FrameType::UdpDataBack, 1),
                (1, FrameType::DataBack, 2),
                (1, FrameType::DataBack, 3),
            ]
        );
        assert_eq!(tiers.len(), 0);
        assert!(!tiers.meters.contains_key(&7), "UDP is not metered");
    }

    #[test]
    fn a_control_frame_pushed_mid_stream_overtakes_queued_data() {
        let t0 = Instant::now();
        let mut tiers = TierScheduler::new(t0);
        tiers.push_data(data(1, 1), t0);
        tiers.push_data(data(1, 2), t0);
        assert_eq!(tiers.pop(t0).map(|f| f.payload.len()), Some(1));
        tiers.push_control(Frame::ping([1; 8]));
        assert_eq!(tiers.pop(t0).map(|f| f.frame_type), Some(FrameType::Ping));
        assert_eq!(tiers.pop(t0).map(|f| f.payload.len()), Some(2));
        assert_eq!(tiers.pop(t0), None);
    }

    #[test]
    fn an_elephant_moves_to_the_lowest_tier_without_overtaking_itself() {
        let t0 = Instant::now();
        let mut tiers = TierScheduler::new(t0);
        let chunk = Bytes::from(vec![0u8; 1_000_000]);
        let frame = |id: u32, tag: usize| {
            let mut payload = chunk.slice(..);
            payload.truncate(chunk.len() - tag); // distinct lengths tag the frames
            Frame::new(id, FrameType::DataBack, payload)
        };
        // Stream 1 runs at about 6 MB/s and is classified with its 60th frame, while its
        // earlier frames still wait in the normal tier: the later ones must queue behind them.
        for tag in 0..60 {
            tiers.push_data(frame(1, tag), t0 + Duration::from_millis(170 * tag as u64));
        }
        let late = t0 + SUSTAINED_AFTER + SECOND;
        assert!(tiers.meters[&1].is_sustained());
        tiers.push_data(frame(1, 60), late);
        tiers.push_data(close(1), late);
        assert!(
            tiers.sustained.is_empty(),
            "stream 1 has normal frames queued"
        );
        assert!(
            !tiers.meters.contains_key(&1),
            "the half-close ended the meter"
        );
        let order: Vec<usize> = std::iter::from_fn(|| tiers.pop(late))
            .map(|f| chunk.len() - f.payload.len())
            .collect();
        assert_eq!(order.len(), 62);
        assert_eq!(&order[..61], &(0..61).collect::<Vec<_>>()[..]);
        // Classified with nothing queued, a stream goes to the sustained tier.
        let mut tiers = with_sustained(late, 3);
        tiers.push_data(frame(3, 0), late);
        tiers.push_data(frame(4, 0), late);
        assert_eq!(tiers.sustained.len(), 1);
        assert_eq!(tiers.data.len(), 1);
        // Its half-close follows it there.
        tiers.push_data(close(3), late);
        assert_eq!(tiers.sustained.len(), 2);
    }

    /// Both tiers full: the sustained tier goes first until it has had its guaranteed bytes
    /// this second, then normal data goes first until the next second starts.
    #[test]
    fn the_sustained_tier_gets_its_floor_each_second_and_no_more() {
        let t0 = Instant::now();
        let mut tiers = with_sustained(t0, 1);
        let share = SUSTAINED_GUARANTEED_RATE as usize * 2 / 5; // 400 KB frames
        for _ in 0..6 {
            tiers.push_data(data(1, share), t0);
        }
        for _ in 0..6 {
            tiers.push_data(data(2, 100), t0);
        }
        let mut next = |now| tiers.pop(now).map(|f| f.stream_id);
        // 0, 400 and 800 KB served: owed; 1.2 MB: not.
        assert_eq!(next(t0), Some(1));
        assert_eq!(next(t0 + SECOND / 4), Some(1));
        assert_eq!(next(t0 + SECOND / 2), Some(1));
        assert_eq!(next(t0 + SECOND / 2), Some(2));
        assert_eq!(next(t0 + SECOND * 9 / 10), Some(2));
        // A new second, a new allowance.
        assert_eq!(next(t0 + SECOND), Some(1));
        assert_eq!(next(t0 + SECOND), Some(1));
        assert_eq!(next(t0 + SECOND), Some(1));
        // Stream 1 is empty: normal data, then nothing.
        for _ in 0..4 {
            assert_eq!(next(t0 + SECOND), Some(2));
        }
        assert_eq!(next(t0 + SECOND), None);
    }

    /// With normal data empty the sustained tier takes all it wants, and that counts against
    /// its allowance: normal data arriving later in the same second goes first.
    #[test]
    fn an_idle_normal_tier_leaves_the_sustained_tier_all_the_bandwidth() {
        let t0 = Instant::now();
        let mut tiers = with_sustained(t0, 1);
        for _ in 0..5 {
            tiers.push_data(data(1, 500_000), t0);
        }
        for _ in 0..3 {
            assert_eq!(tiers.pop(t0).map(|f| f.stream_id), Some(1));
        }
        tiers.push_data(data(2, 10), t0);
        assert_eq!(tiers.pop(t0).map(|f| f.stream_id), Some(2));
        assert_eq!(tiers.pop(t0).map(|f| f.stream_id), Some(1));
        // The second after the sustained tier was last owed: it is owed again.
        tiers.push_data(data(2, 10), t0 + SECOND);
        assert_eq!(tiers.pop(t0 + SECOND).map(|f| f.stream_id), Some(1));
        assert_eq!(tiers.pop(t0 + SECOND).map(|f| f.stream_id), Some(2));
    }

    #[test]
    fn the_meter_table_restarts_when_full() {
        let t0 = Instant::now();
        let mut tiers = TierScheduler::new(t0);
        for id in 0..MAX_METERED_STREAMS as u32 {
            tiers.push_data(data(id, 0), t0);
        }
        assert_eq!(tiers.meters.len(), MAX_METERED_STREAMS);
        // A known stream keeps the table; a new one restarts it.
        tiers.push_data(data(5, 0), t0);
        assert_eq!(tiers.meters.len(), MAX_METERED_STREAMS);
        tiers.push_data(data(MAX_METERED_STREAMS as u32, 0), t0);
        assert_eq!(tiers.meters.len(), 1);
        assert_eq!(tiers.len(), MAX_METERED_STREAMS + 2);
    }
}
