//! Flow control of QUIC connection streams: the credit TCP+TLS streams get (windows that share
//! the tunnel's budget and shrink as streams open: `mux::flow`), granted in WINDOW_UPDATE
//! messages on the control stream. Unlike TCP+TLS windows they do not grow with the round
//! trip: quinn paces a window's worth per round trip whatever BBR measured, and larger windows
//! overfilled long paths' queues, at the cost of the small exchanges beside a bulk transfer.
//! quinn's own stream window is set above any window granted here, and a relay reads its QUIC
//! stream as soon as data arrives, so a stream whose local reader stopped holds only its own
//! window, in the relay, and never quinn's connection window, which every stream shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quinn::Connection;
use tokio::sync::Notify;

use crate::lock::Locked;
use crate::mux::flow::{stream_window, FlowError, RecvWindow, SendWindow, INITIAL_STREAM_WINDOW};
use crate::transport::quic_endpoint::{relay_reads_budget, CLOSE_PROTOCOL_ERROR};

use super::take_credit;

/// The most a relay reads from its socket or its QUIC stream at once.
const RELAY_CHUNK_BYTES: usize = 64 * 1024;
/// The least, however many relays share the budget for reads in hand.
const MIN_RELAY_CHUNK_BYTES: usize = 4 * 1024;

/// Sends this end's credit for a connection stream (by index) to the peer; false when the
/// tunnel is gone.
pub(crate) type GrantSender = Box<dyn Fn(u32, u32) -> bool + Send + Sync>;

/// The QUIC connection a tunnel's streams run on, and how their credit reaches the peer.
pub(crate) struct QuicPeer {
    pub connection: Connection,
    pub grant: GrantSender,
}

/// A tunnel's QUIC connection streams: how many are open, and the credit of each by index.
pub(crate) struct QuicStreams {
    shared: Arc<Shared>,
}

struct Shared {
    flows: Mutex<HashMap<u32, Arc<QuicFlow>>>,
    /// Relays running, counted from before their stream has an index.
    open: AtomicUsize,
    /// The tunnel's buffer budget per direction, which the streams' windows share.
    budget: u32,
    /// None on a TCP+TLS tunnel, which has no QUIC streams.
    peer: Option<QuicPeer>,
    /// The first credit overrun a relay found: the peer broke the protocol.
    overrun: Mutex<Option<FlowError>>,
}

/// One stream's credit, shared by its relay and the control reader that delivers grants.
struct QuicFlow {
    credit: Mutex<QuicCredit>,
    credit_arrived: Notify,
}

/// What this end may send on a stream, and what its peer may.
struct QuicCredit {
    send: SendWindow,
    recv: RecvWindow,
}

/// A relay's place among the tunnel's streams, and its stream's credit.
pub(crate) struct OpenStream {
    shared: Arc<Shared>,
    flow: Arc<QuicFlow>,
    /// The QUIC stream's index, once known: what grants name.
    index: Option<u32>,
}

impl QuicStreams {
    /// Streams whose windows share `budget` bytes per direction, on `peer`'s connection.
    pub(crate) fn new(budget: u32, peer: Option<QuicPeer>) -> Self {
        Self {
            shared: Arc::new(Shared {
                flows: Mutex::default(),
                open: AtomicUsize::new(0),
                budget,
                peer,
                overrun: Mutex::new(None),
            }),
        }
    }

    /// A new relay's stream, with the credit every stream starts with each way.
    pub(crate) fn open(&self) -> OpenStream {
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        OpenStream {
            shared: self.shared.clone(),
            flow: Arc::new(QuicFlow {
                credit: Mutex::new(QuicCredit {
                    send: SendWindow::new(INITIAL_STREAM_WINDOW),
                    recv: RecvWindow::new(INITIAL_STREAM_WINDOW),
                }),
                credit_arrived: Notify::new(),
            }),
            index: None,
        }
    }

    /// Streams open now.
    pub(crate) fn get(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// The peer's WINDOW_UPDATE for stream `index`; one for a stream that has ended is
    /// dropped (it crossed our reset).
    pub(crate) fn grant(&self, index: u32, credit: u32) -> Result<(), FlowError> {
        let flow = self.shared.flows.locked().get(&index).cloned();
        let Some(flow) = flow else {
            return Ok(());
        };
        flow.credit.locked().send.grant(credit)?;
        flow.credit_arrived.notify_one();
        Ok(())
    }

    /// The credit overrun that made a relay close the connection, if one did.
    pub(crate) fn take_overrun(&self) -> Option<FlowError> {
        self.shared.overrun.locked().take()
    }
}

impl OpenStream {
    /// The QUIC stream now has `index`: grants naming it reach this stream.
    pub(crate) fn attach(&mut self, index: u32) {
        self.shared.flows.locked().insert(index, self.flow.clone());
        self.index = Some(index);
    }

    /// The most this relay reads at once: the open relays' share of the budget for reads in
    /// hand, within [`MIN_RELAY_CHUNK_BYTES`, `RELAY_CHUNK_BYTES`].
    pub(crate) fn read_size(&self) -> usize {
        relay_read_size(self.shared.open.load(Ordering::Relaxed), self.shared.budget)
    }

    /// Waits for send credit and takes up to `max` bytes of it; settle it with `settle`.
    pub(crate) async fn acquire_send(&self, max: u32) -> u32 {
        let flow = &self.flow;
        take_credit(&flow.credit_arrived, || flow.credit.locked().send.take(max)).await
    }

    /// Of `taken` credit from `acquire_send`, `used` bytes were sent; the rest comes back.
    pub(crate) fn settle(&self, taken: u32, used: u32) {
        self.flow.credit.locked().send.settle(taken, used);
    }

    /// `len` bytes arrived from the peer; past its credit it broke the protocol.
    pub(crate) fn on_data(&self, len: usize) -> Result<(), FlowError> {
        // A read is at most RELAY_CHUNK_BYTES.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.flow.credit.locked().recv.on_data(len)
    }

    /// `len` bytes reached the local socket: grants the peer more credit when it is due, and
    /// returns that credit.
    pub(crate) fn on_consumed(&self, len: usize) -> Option<u32> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        // The share alone: see the module's documentation.
        let window = stream_window(self.shared.open.load(Ordering::Relaxed), self.shared.budget);
        let credit = self
            .flow
            .credit
            .locked()
            .recv
            .on_consumed_in_window(len, window)?;
        if let (Some(index), Some(peer)) = (self.index, &self.shared.peer) {
            // False only when the tunnel is gone, which ends this stream too.
            (peer.grant)(index, credit);
        }
        Some(credit)
    }

    /// The peer sent past its credit: the tunnel ends as a protocol error.
    pub(crate) fn overrun(&self, error: FlowError) {
        let reason = error.to_string();
        self.shared.overrun.locked().get_or_insert(error);
        if let Some(peer) = &self.shared.peer {
            peer.connection
                .close(CLOSE_PROTOCOL_ERROR, reason.as_bytes());
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some(index) = self.index {
            self.shared.flows.locked().remove(&index);
        }
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        crate::heap::stream_closed();
    }
}

fn relay_read_size(open_relays: usize, budget: u32) -> usize {
    let share = relay_reads_budget(budget) as usize / open_relays.max(1);
    share.clamp(MIN_RELAY_CHUNK_BYTES, RELAY_CHUNK_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::flow::{MAX_STREAM_WINDOW, MIN_STREAM_WINDOW, TUNNEL_WINDOW_BUDGET};

    const KIB: u32 = 1024;

    #[test]
    fn windows_are_the_budget_shared_among_the_open_streams() {
        let streams = QuicStreams::new(1024 * KIB, None);
        let first = streams.open();
        let _second = streams.open();
        // Two streams share 1 MiB: the first bytes written out bring the peer's credit and what
        // waits up to 512 KiB (it still holds 54 of the 64 KiB it started with).
        first.on_data(10 * KIB as usize).unwrap();
        assert_eq!(
            first.on_consumed(10 * KIB as usize),
            Some(512 * KIB - 54 * KIB)
        );
        let more: Vec<_> = (0..14).map(|_| streams.open()).collect();
        assert_eq!(streams.get(), 16);
        // Sixteen share it: a new stream's window is 64 KiB, all of which it started with.
        let late = &more[0];
        late.on_data(64 * KIB as usize).unwrap();
        assert_eq!(late.on_consumed(64 * KIB as usize), Some(64 * KIB));
        drop(more);
        assert_eq!(streams.get(), 2);
    }

    #[test]
    fn data_past_the_credit_is_an_overrun() {
        let streams = QuicStreams::new(TUNNEL_WINDOW_BUDGET, None);
        let stream = streams.open();
        stream.on_data(MIN_STREAM_WINDOW as usize).unwrap();
        assert_eq!(
            stream.on_data(1),
            Err(FlowError::WindowExceeded {
                remaining: 0,
                len: 1
            })
        );
    }

    #[tokio::test]
    async fn a_grant_reaches_its_stream_by_index_and_ends_with_it() {
        let streams = QuicStreams::new(TUNNEL_WINDOW_BUDGET, None);
        let mut stream = streams.open();
        stream.attach(3);
        assert_eq!(stream.acquire_send(u32::MAX).await, INITIAL_STREAM_WINDOW);
        stream.settle(INITIAL_STREAM_WINDOW, INITIAL_STREAM_WINDOW);
        {
            let waiting = stream.acquire_send(u32::MAX);
            tokio::pin!(waiting);
            assert!(futures_poll_once(&mut waiting).is_none(), "no credit left");
            // Another stream's grant does not wake it; its own does.
            streams.grant(4, 100).unwrap();
            assert!(futures_poll_once(&mut waiting).is_none());
            streams.grant(3, 100).unwrap();
            assert_eq!(waiting.await, 100);
        }
        // Past the largest credit a sender may hold: the peer is broken.
        assert!(streams.grant(3, MAX_STREAM_WINDOW).is_err());
        drop(stream);
        // The stream is gone: a grant that crossed its end is dropped.
        assert_eq!(streams.grant(3, MAX_STREAM_WINDOW), Ok(()));
        assert_eq!(streams.get(), 0);
    }

    /// Polls `future` once; its output if it was ready.
    fn futures_poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(future).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn relays_reads_in_hand_stay_within_their_share_of_the_budget() {
        let budget = TUNNEL_WINDOW_BUDGET;
        let share = relay_reads_budget(budget) as usize;
        // A few relays read whole chunks.
        assert_eq!(relay_read_size(0, budget), RELAY_CHUNK_BYTES);
        assert_eq!(relay_read_size(1, budget), RELAY_CHUNK_BYTES);
        assert_eq!(
            relay_read_size(share / RELAY_CHUNK_BYTES, budget),
            RELAY_CHUNK_BYTES
        );
        // Many share the budget, down to the smallest read.
        for open in [1_000, 3_000, share / MIN_RELAY_CHUNK_BYTES] {
            let size = relay_read_size(open, budget);
            assert!((MIN_RELAY_CHUNK_BYTES..RELAY_CHUNK_BYTES).contains(&size));
            assert!(open * size <= share, "{open} relays reading {size}");
        }
        assert_eq!(relay_read_size(65_536, budget), MIN_RELAY_CHUNK_BYTES);
        // A smaller budget is shared the same way.
        assert_eq!(relay_read_size(100, 16 << 20), (2 << 20) / 100);
    }
}
