//! One writer task per tunnel: it alone owns the write half, drains the control queue before
//! the data queue and coalesces frames into large writes (each small TLS write is its own
//! record and syscall, which costs several times the throughput).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::{encode_header, Frame, FRAME_HEADER_LEN};

use super::TunnelError;

/// Bytes gathered before one write to the TLS stream.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Cloneable handle for queueing frames on a tunnel.
///
/// Control frames (PING, PONG, WINDOW_UPDATE, OPEN, resets, CONFIG) overtake data. A stream's
/// DATA and its half-close share the data queue so the close can never overtake the data.
/// Neither queue needs a bound of its own: data is bounded by the stream windows, control by
/// the protocol (one OPEN per accept, credit returned in quarter windows).
#[derive(Clone, Debug)]
pub struct FrameSender {
    control: UnboundedSender<Frame>,
    data: UnboundedSender<Frame>,
}

impl FrameSender {
    /// Queues a control frame; false when the tunnel is gone.
    pub fn control(&self, frame: Frame) -> bool {
        self.control.send(frame).is_ok()
    }

    /// Queues a data-tier frame; false when the tunnel is gone.
    pub fn data(&self, frame: Frame) -> bool {
        self.data.send(frame).is_ok()
    }
}

pub struct FrameQueues {
    control: UnboundedReceiver<Frame>,
    data: UnboundedReceiver<Frame>,
}

pub fn frame_channel() -> (FrameSender, FrameQueues) {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    (
        FrameSender {
            control: control_tx,
            data: data_tx,
        },
        FrameQueues {
            control: control_rx,
            data: data_rx,
        },
    )
}

impl FrameQueues {
    /// Next frame without waiting, control first.
    fn try_next(&mut self) -> Option<Frame> {
        match self.control.try_recv() {
            Ok(frame) => Some(frame),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => self.data.try_recv().ok(),
        }
    }

    /// Waits for the next frame, control first; None once every sender is gone.
    async fn next(&mut self) -> Option<Frame> {
        tokio::select! {
            biased;
            Some(frame) = self.control.recv() => Some(frame),
            Some(frame) = self.data.recv() => Some(frame),
            else => None,
        }
    }
}

/// Writes queued frames until cancelled, every sender is dropped, or the socket fails.
pub async fn run_writer<W: AsyncWrite + Unpin>(
    mut io: W,
    mut queues: FrameQueues,
    cancel: CancellationToken,
    bytes_out: Arc<AtomicU64>,
) -> Result<(), TunnelError> {
    let mut batch = BytesMut::with_capacity(WRITE_BATCH_BYTES + FRAME_HEADER_LEN);
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            frame = queues.next() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        append(&mut batch, &first);
        while batch.len() < WRITE_BATCH_BYTES {
            match queues.try_next() {
                Some(frame) => append(&mut batch, &frame),
                None => break,
            }
        }
        bytes_out.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => break,
            written = write_batch(&mut io, &batch) => written?,
        }
        batch.clear();
        if batch.capacity() > 4 * WRITE_BATCH_BYTES {
            // One huge burst must not pin a large buffer for the tunnel's lifetime.
            batch = BytesMut::with_capacity(WRITE_BATCH_BYTES + FRAME_HEADER_LEN);
        }
    }
    // Best effort: tell the peer we are done (TLS close_notify), without waiting on a dead peer.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), io.shutdown()).await;
    Ok(())
}

async fn write_batch<W: AsyncWrite + Unpin>(io: &mut W, batch: &[u8]) -> std::io::Result<()> {
    io.write_all(batch).await?;
    io.flush().await
}

fn append(batch: &mut BytesMut, frame: &Frame) {
    // Payloads are at most MAX_FRAME_PAYLOAD, so the length always fits in a u32.
    let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
    encode_header(frame.stream_id, frame.frame_type, len, batch);
    batch.extend_from_slice(&frame.payload);
}
