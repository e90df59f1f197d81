//! One writer task per tunnel: it alone owns the write half, drains the control queue before
//! the data queue and coalesces frames into large writes (each small TLS write is its own
//! record and syscall, which costs several times the throughput).

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::mux::tiers::TierScheduler;
use crate::protocol::frame::{encode_header, Frame, FrameType, FRAME_HEADER_LEN};
use crate::scheduler_turn::runnable_tasks_first;

use super::TunnelError;

/// Bytes gathered before one write to the TLS stream.
pub(crate) const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A batch smaller than this waits one turn before it is written, so the frames of tasks that
/// are already runnable (other connections whose reads became ready at the same time) share
/// its TLS record and syscall. Every write also wakes the peer's process, which on loopback
/// costs more than the write; this about halves the writes per tunneled request
/// (docs/PERFORMANCE.md, "Writer: one turn before a small write"). Larger batches are bulk
/// transfers, which need no help.
const SHARE_A_TURN_BELOW_BYTES: usize = 16 * 1024;

/// UDP payload bytes that may wait in a tunnel's queue. Datagrams have no flow control; past
/// this the tunnel is congested and new datagrams are dropped (and counted), as a router would.
pub(crate) const MAX_QUEUED_DATAGRAM_BYTES: usize = 4 * 1024 * 1024;

/// Cloneable handle for queueing frames on a tunnel.
///
/// Three tiers: control frames (PING, PONG, WINDOW_UPDATE, OPEN, resets, CONFIG) first, then
/// normal data and UDP, then sustained (elephant) streams, which still get a guaranteed rate
/// (the order is `TierScheduler`'s). Within a tier, streams take turns; a stream's DATA and
/// its half-close share its queue, so the close can never overtake the data.
/// Neither queue needs a bound of its own: stream data is bounded by the stream windows,
/// datagrams by `MAX_QUEUED_DATAGRAM_BYTES`, control by the protocol (one OPEN per accept,
/// credit returned in quarter windows).
#[derive(Clone, Debug)]
pub(crate) struct FrameSender {
    control: UnboundedSender<Frame>,
    data: UnboundedSender<Frame>,
    queued_datagram_bytes: Arc<AtomicUsize>,
}

impl FrameSender {
    /// Whether the writer has ended: nothing queued from now on is sent.
    pub(crate) fn is_closed(&self) -> bool {
        self.control.is_closed()
    }

    /// Queues a control frame; false when the tunnel is gone.
    pub(crate) fn control(&self, frame: Frame) -> bool {
        self.control.send(frame).is_ok()
    }

    /// Queues a data-tier frame; false when the tunnel is gone.
    pub(crate) fn data(&self, frame: Frame) -> bool {
        self.data.send(frame).is_ok()
    }

    /// Queues a UDP_DATA / UDP_DATA_BACK frame in the data tier unless the datagram budget is
    /// spent; false means the datagram was dropped.
    pub(crate) fn datagram(&self, frame: Frame) -> bool {
        let len = frame.payload.len();
        let reserved = self
            .queued_datagram_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let total = queued.checked_add(len)?;
                (total <= MAX_QUEUED_DATAGRAM_BYTES).then_some(total)
            })
            .is_ok();
        if !reserved {
            return false;
        }
        if self.data.send(frame).is_err() {
            self.queued_datagram_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

pub(crate) struct FrameQueues {
    control: UnboundedReceiver<Frame>,
    data: UnboundedReceiver<Frame>,
    /// Frames taken off the channels, until it is their turn.
    tiers: TierScheduler,
    queued_datagram_bytes: Arc<AtomicUsize>,
}

pub(crate) fn frame_channel() -> (FrameSender, FrameQueues) {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let queued_datagram_bytes = Arc::new(AtomicUsize::new(0));
    (
        FrameSender {
            control: control_tx,
            data: data_tx,
            queued_datagram_bytes: queued_datagram_bytes.clone(),
        },
        FrameQueues {
            control: control_rx,
            data: data_rx,
            tiers: TierScheduler::new(Instant::now()),
            queued_datagram_bytes,
        },
    )
}

impl FrameQueues {
    /// Next frame without waiting, in the tiers' order.
    fn try_next(&mut self) -> Option<Frame> {
        // One control frame per call, as before the tiers: each call writes one, so the
        // control tier holds a frame or two, not a burst.
        if let Ok(frame) = self.control.try_recv() {
            self.tiers.push_control(frame);
        }
        let now = Instant::now();
        while let Ok(frame) = self.data.try_recv() {
            self.tiers.push_data(frame, now);
        }
        self.tiers.pop(now)
    }

    /// Waits for the next frame; None once every sender is gone and nothing is left.
    pub(super) async fn next(&mut self) -> Option<Frame> {
        if let Some(frame) = self.try_next() {
            return Some(frame);
        }
        // Nothing is queued anywhere: wait, then let the tiers decide.
        tokio::select! {
            biased;
            Some(frame) = self.control.recv() => {
                self.tiers.push_control(frame);
                self.try_next()
            }
            Some(frame) = self.data.recv() => {
                self.tiers.push_data(frame, Instant::now());
                self.try_next()
            }
            else => None,
        }
    }
}

/// Writes queued frames until cancelled, every sender is dropped, or the socket fails.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
    mut io: W,
    mut queues: FrameQueues,
    cancel: CancellationToken,
    bytes_out: Arc<AtomicU64>,
) -> Result<(), TunnelError> {
    let mut batch = Batch::default();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            frame = queues.next() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        queues.append(&mut batch, first);
        queues.fill(&mut batch);
        if batch.len() < SHARE_A_TURN_BELOW_BYTES {
            runnable_tasks_first().await;
            queues.fill(&mut batch);
        }
        bytes_out.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => break,
            written = write_batch(&mut io, &batch) => written?,
        }
        if batch.len() >= SHARE_A_TURN_BELOW_BYTES {
            // A bulk transfer keeps the queues full and the socket writable, so without this
            // the writer holds its runtime thread for up to a whole coop budget of writes
            // (128 x 64 KiB), and the reader and small streams on that thread wait for all
            // of them. Yielding lets the I/O driver run too, which is what wakes them
            // (docs/PERFORMANCE.md, "Writer: yield after a large write").
            tokio::task::yield_now().await;
        }
        batch.clear();
    }
    // Best effort: tell the peer we are done (TLS close_notify), without waiting on a dead peer.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), io.shutdown()).await;
    Ok(())
}

/// Frames gathered for one write. Headers and small payloads are copied into `inline`;
/// larger payloads are only referenced, and the TLS writer encrypts them straight into its
/// records instead of from a copy in the batch, which saves CPU in bulk (docs/PERFORMANCE.md,
/// "Writer: large payloads by reference").
#[derive(Default)]
struct Batch {
    inline: BytesMut,
    /// Referenced payloads, each after the first `.0` bytes of `inline`.
    referenced: Vec<(usize, Bytes)>,
    len: usize,
}

/// Payloads shorter than this are copied into the batch: a slice of its own costs more than
/// the copy, and this bounds a batch to a few dozen slices.
const REFERENCE_PAYLOADS_FROM_BYTES: usize = 4 * 1024;

impl Batch {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, frame: Frame) {
        // Payloads are at most MAX_FRAME_PAYLOAD, so the length always fits in a u32.
        let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
        encode_header(frame.stream_id, frame.frame_type, len, &mut self.inline);
        self.len += FRAME_HEADER_LEN + frame.payload.len();
        if frame.payload.len() < REFERENCE_PAYLOADS_FROM_BYTES {
            self.inline.extend_from_slice(&frame.payload);
        } else {
            self.referenced.push((self.inline.len(), frame.payload));
        }
    }

    /// The batch's bytes in order, as slices for one vectored write.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.referenced.len() + 1);
        let mut inline_from = 0;
        for (inline_to, payload) in &self.referenced {
            slices.push(IoSlice::new(&self.inline[inline_from..*inline_to]));
            slices.push(IoSlice::new(payload));
            inline_from = *inline_to;
        }
        slices.push(IoSlice::new(&self.inline[inline_from..]));
        slices.retain(|slice| !slice.is_empty());
        slices
    }

    fn clear(&mut self) {
        self.inline.clear();
        self.referenced.clear();
        self.len = 0;
        if self.inline.capacity() > 4 * WRITE_BATCH_BYTES {
            // One burst of small frames must not pin a large buffer for the tunnel's lifetime.
            self.inline = BytesMut::new();
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(io: &mut W, batch: &Batch) -> std::io::Result<()> {
    let mut slices = batch.slices();
    let mut unwritten = &mut slices[..];
    while !unwritten.is_empty() {
        let written = io.write_vectored(unwritten).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut unwritten, written);
    }
    io.flush().await
}

impl FrameQueues {
    /// Appends queued frames until the batch is full or nothing is waiting.
    fn fill(&mut self, batch: &mut Batch) {
        while batch.len() < WRITE_BATCH_BYTES {
            match self.try_next() {
                Some(frame) => self.append(batch, frame),
                None => break,
            }
        }
    }

    /// Adds a frame to the batch; a datagram leaving the queue frees its budget.
    fn append(&self, batch: &mut Batch, frame: Frame) {
        if matches!(
            frame.frame_type,
            FrameType::UdpData | FrameType::UdpDataBack
        ) {
            self.queued_datagram_bytes
                .fetch_sub(frame.payload.len(), Ordering::AcqRel);
        }
        batch.push(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn datagram(len: usize) -> Frame {
        Frame::new(1, FrameType::UdpData, Bytes::from(vec![0u8; len]))
    }

    #[test]
    fn datagrams_past_the_budget_are_refused_until_the_writer_drains() {
        let (sender, queues) = frame_channel();
        let chunk = MAX_QUEUED_DATAGRAM_BYTES / 4;
        for _ in 0..4 {
            assert!(sender.datagram(datagram(chunk)));
        }
        assert!(!sender.datagram(datagram(1)));
        // Stream data is not limited by the datagram budget.
        assert!(sender.data(Frame::new(2, FrameType::Data, Bytes::from_static(b"x"))));
        let mut queues = queues;
        let mut batch = Batch::default();
        let frame = queues.try_next().unwrap();
        queues.append(&mut batch, frame);
        assert!(sender.datagram(datagram(chunk)));
        assert!(!sender.datagram(datagram(1)));
    }

    #[test]
    fn data_is_served_in_turns_behind_control() {
        let (sender, mut queues) = frame_channel();
        let data = |id: u32, byte: u8| Frame::new(id, FrameType::Data, Bytes::from(vec![byte]));
        for byte in 0..3 {
            sender.data(data(1, byte));
        }
        sender.data(data(2, 9));
        sender.control(Frame::ping([0; 8]));
        let order: Vec<(u32, FrameType)> = std::iter::from_fn(|| queues.try_next())
            .map(|f| (f.stream_id, f.frame_type))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, FrameType::Ping),
                (1, FrameType::Data),
                (2, FrameType::Data),
                (1, FrameType::Data),
                (1, FrameType::Data)
            ]
        );
    }

    /// Records each write the writer makes and signals it.
    #[derive(Clone, Default)]
    struct RecordedWrites {
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        written: Arc<tokio::sync::Notify>,
    }

    impl AsyncWrite for RecordedWrites {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.to_vec());
            self.written.notify_one();
            std::task::Poll::Ready(Ok(buf.len()))
        }

        /// All slices as one write, as the TLS writer takes them.
        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let write: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            let len = write.len();
            self.writes.lock().unwrap().push(write);
            self.written.notify_one();
            std::task::Poll::Ready(Ok(len))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// One worker thread, so tokio's LIFO slot runs a woken writer right after the task that
    /// woke it, ahead of tasks that were runnable before: the case the shared turn is for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_of_tasks_runnable_together_share_one_write() {
        use std::time::Duration;
        let (sender, queues) = frame_channel();
        let recorder = RecordedWrites::default();
        let cancel = CancellationToken::new();
        let writer = tokio::spawn(run_writer(
            recorder.clone(),
            queues,
            cancel.clone(),
            Arc::default(),
        ));
        let data = |id: u32| Frame::new(id, FrameType::Data, Bytes::from(vec![id as u8; 100]));
        let next_write = || {
            let written = recorder.written.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(30), written.notified())
                    .await
                    .expect("no write within 30 s")
            }
        };
        // A first frame, written alone: afterwards the writer waits for the next.
        sender.data(data(1));
        next_write().await;

        // Task `second` becomes runnable, then `first` queues a frame and wakes the writer.
        let go = Arc::new(tokio::sync::Notify::new());
        let second = tokio::spawn({
            let (go, sender) = (go.clone(), sender.clone());
            async move {
                go.notified().await;
                sender.data(data(3));
            }
        });
        let first = tokio::spawn({
            let sender = sender.clone();
            async move {
                go.notify_one();
                sender.data(data(2));
            }
        });
        next_write().await;
        first.await.unwrap();
        second.await.unwrap();

        let writes = recorder.writes.lock().unwrap().clone();
        let mut expected = BytesMut::new();
        for id in [2, 3] {
            crate::protocol::frame::encode(&data(id), &mut expected);
        }
        assert_eq!(writes.len(), 2, "frames 2 and 3 went out in one write");
        assert_eq!(writes[1], expected.to_vec());
        cancel.cancel();
        writer.await.unwrap().unwrap();
    }

    /// On one thread, a task woken while the writer works through a bulk backlog runs
    /// after the writer's first large batch, not after all of them.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bulk_backlog_lets_other_tasks_run_between_batches() {
        use std::time::Duration;
        let (sender, queues) = frame_channel();
        let recorder = RecordedWrites::default();
        let cancel = CancellationToken::new();
        let chunk = Bytes::from(vec![7u8; crate::protocol::frame::MAX_DATA_PAYLOAD]);
        for _ in 0..10 {
            sender.data(Frame::new(1, FrameType::Data, chunk.clone()));
        }
        let writer = tokio::spawn(run_writer(
            recorder.clone(),
            queues,
            cancel.clone(),
            Arc::default(),
        ));
        let writes = recorder.writes.clone();
        // Spawned after the writer, so it runs once the writer first gives the thread up.
        let writes_seen = tokio::spawn(async move { writes.lock().unwrap().len() })
            .await
            .unwrap();
        assert_eq!(writes_seen, 1, "the writer yields after each large batch");
        let finished = async {
            while recorder.writes.lock().unwrap().len() < 10 {
                recorder.written.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), finished)
            .await
            .expect("all ten batches written");
        cancel.cancel();
        writer.await.unwrap().unwrap();
    }

    /// A batch's slices carry exactly the frames' encodings in order; payloads from 4 KiB on
    /// are the frames' own bytes (not copied), smaller ones are copied next to the headers.
    #[test]
    fn a_batch_is_the_frames_encoded_in_order_with_large_payloads_referenced() {
        let sizes = [
            0,
            10,
            REFERENCE_PAYLOADS_FROM_BYTES - 1,
            REFERENCE_PAYLOADS_FROM_BYTES,
            3,
        ];
        let frames: Vec<Frame> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| Frame::new(i as u32, FrameType::Data, Bytes::from(vec![i as u8; len])))
            .collect();
        let mut batch = Batch::default();
        let mut expected = BytesMut::new();
        for frame in &frames {
            crate::protocol::frame::encode(frame, &mut expected);
            batch.push(frame.clone());
        }
        assert_eq!(batch.len(), expected.len());
        let slices = batch.slices();
        let written: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(written, expected.to_vec());
        // Headers and small payloads before the large one, the large one, the rest.
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[1].as_ptr(), frames[3].payload.as_ptr());
    }

    #[tokio::test]
    async fn a_batch_written_in_pieces_arrives_whole() {
        let mut batch = Batch::default();
        let mut expected = BytesMut::new();
        for (i, len) in [5_000, 1, 9_000, 0].into_iter().enumerate() {
            let frame = Frame::new(1, FrameType::Data, Bytes::from(vec![i as u8 + 1; len]));
            crate::protocol::frame::encode(&frame, &mut expected);
            batch.push(frame);
        }
        // A pipe that holds 7 bytes takes each write a few bytes at a time, as a congested
        // socket might.
        let (mut pipe, mut far_end) = tokio::io::duplex(7);
        let received = tokio::spawn(async move {
            let mut received = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far_end, &mut received)
                .await
                .unwrap();
            received
        });
        write_batch(&mut pipe, &batch).await.unwrap();
        drop(pipe);
        assert_eq!(received.await.unwrap(), expected.to_vec());
    }

    #[test]
    fn zero_length_datagrams_are_carried() {
        let (sender, mut queues) = frame_channel();
        assert!(sender.datagram(datagram(0)));
        let frame = queues.try_next().unwrap();
        assert!(frame.payload.is_empty());
    }
}
