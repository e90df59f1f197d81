//! Reads frames off the tunnel, each payload in an allocation of its own size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::frame::{decode_header, Frame, FrameHeader, FRAME_HEADER_LEN};

use super::TunnelError;

/// The most read at once while no frame is under way: headers and small frames. A longer
/// payload is read straight into its own allocation, so what a stream queues holds no more
/// memory than its window counts; payloads sliced out of shared read buffers kept them alive
/// (docs/PERFORMANCE.md, "Clients that never read").
pub(crate) const READ_AHEAD_BYTES: usize = 4 * 1024;

/// A frame whose payload did not fit in what was read ahead.
struct PartialFrame {
    header: FrameHeader,
    /// Exactly `header.payload_len` of capacity.
    payload: BytesMut,
}

pub(crate) struct FrameReader<R> {
    io: R,
    /// Bytes read ahead of the next frame. Payloads are copied out, never sliced, so it stays
    /// this reader's alone and its room is reused.
    ahead: BytesMut,
    partial: Option<PartialFrame>,
    bytes_in: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `leftover` is whatever arrived after the handshake line in the same read.
    pub(crate) fn new(io: R, leftover: BytesMut, bytes_in: Arc<AtomicU64>) -> Self {
        Self {
            io,
            ahead: leftover,
            partial: None,
            bytes_in,
        }
    }

    /// What the frames are read from.
    pub(crate) fn io(&self) -> &R {
        &self.io
    }

    /// The next frame, or `PeerClosed` at a clean end of stream between frames. Cancel-safe:
    /// what was read stays in the reader.
    pub(crate) async fn next(&mut self) -> Result<Frame, TunnelError> {
        loop {
            if let Some(partial) = &mut self.partial {
                let missing = partial.header.payload_len - partial.payload.len();
                if missing == 0 {
                    let whole = frame(
                        partial.header,
                        std::mem::take(&mut partial.payload).freeze(),
                    );
                    self.partial = None;
                    return Ok(whole);
                }
                let mut rest = (&mut self.io).take(missing as u64);
                let n = rest.read_buf(&mut partial.payload).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if let Some(header) = decode_header(&self.ahead)? {
                self.ahead.advance(FRAME_HEADER_LEN);
                let here = self.ahead.len().min(header.payload_len);
                if here == header.payload_len {
                    let payload = Bytes::copy_from_slice(&self.ahead[..here]);
                    self.ahead.advance(here);
                    return Ok(frame(header, payload));
                }
                let mut payload = BytesMut::with_capacity(header.payload_len);
                payload.extend_from_slice(&self.ahead[..here]);
                self.ahead.clear();
                self.partial = Some(PartialFrame { header, payload });
                continue;
            }
            self.ahead.reserve(READ_AHEAD_BYTES);
            let mut more = (&mut self.io).take(READ_AHEAD_BYTES as u64);
            let n = more.read_buf(&mut self.ahead).await?;
            if n == 0 {
                return Err(if self.ahead.is_empty() {
                    TunnelError::PeerClosed
                } else {
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
                });
            }
            self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn frame(header: FrameHeader, payload: Bytes) -> Frame {
    Frame {
        stream_id: header.stream_id,
        frame_type: header.frame_type,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode, FrameType, MAX_DATA_PAYLOAD};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn frames_of(lens: &[usize]) -> (Vec<Frame>, BytesMut) {
        let frames: Vec<Frame> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let payload: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
                Frame::new(i as u32 + 1, FrameType::Data, Bytes::from(payload))
            })
            .collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode(frame, &mut wire);
        }
        (frames, wire)
    }

    /// A payload that owns exactly its bytes: no allocation shared with other frames, no room
    /// beyond its length.
    fn assert_owns_exactly_its_bytes(payload: Bytes) {
        let len = payload.len();
        if len == 0 {
            return;
        }
        let owned = payload
            .try_into_mut()
            .expect("a payload shares its allocation with nothing");
        assert_eq!(owned.capacity(), len);
    }

    #[tokio::test]
    async fn frames_cut_at_any_read_boundary_arrive_whole_in_order_and_in_their_own_allocations() {
        let lens = [
            MAX_DATA_PAYLOAD,
            10,
            0,
            MAX_DATA_PAYLOAD,
            3_000,
            4_087,
            4_088,
            5,
        ];
        let (frames, wire) = frames_of(&lens);
        for cut in [1, 7, 9, 1000, 4_096, 65_545, 70_000] {
            let (mut tx, rx) = tokio::io::duplex(cut);
            let fed = wire.clone();
            let feeder = tokio::spawn(async move {
                for chunk in fed.chunks(cut) {
                    tx.write_all(chunk).await.unwrap();
                }
            });
            let bytes_in = Arc::new(AtomicU64::new(0));
            let mut reader = FrameReader::new(rx, BytesMut::new(), bytes_in.clone());
            for expected in &frames {
                let frame = reader.next().await.unwrap();
                assert_eq!(
                    (frame.stream_id, &frame.payload),
                    (expected.stream_id, &expected.payload),
                    "cut {cut}"
                );
                assert_owns_exactly_its_bytes(frame.payload);
            }
            feeder.await.unwrap();
            assert!(matches!(reader.next().await, Err(TunnelError::PeerClosed)));
            assert_eq!(bytes_in.load(Ordering::Relaxed), wire.len() as u64);
        }
    }

    #[tokio::test]
    async fn frames_left_over_from_the_handshake_read_come_first() {
        let (frames, wire) = frames_of(&[100, MAX_DATA_PAYLOAD, 7]);
        // The leftover ends inside the second frame's payload; the rest comes from the socket.
        let split = FRAME_HEADER_LEN + 100 + FRAME_HEADER_LEN + 1_000;
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        tx.write_all(&wire[split..]).await.unwrap();
        drop(tx);
        let mut reader = FrameReader::new(rx, BytesMut::from(&wire[..split]), Arc::default());
        for expected in &frames {
            assert_eq!(&reader.next().await.unwrap(), expected);
        }
        assert!(matches!(reader.next().await, Err(TunnelError::PeerClosed)));
    }

    #[tokio::test]
    async fn a_read_dropped_midway_loses_nothing() {
        let (frames, wire) = frames_of(&[MAX_DATA_PAYLOAD, 20]);
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(rx, BytesMut::new(), Arc::default());
        // Part of the header, then part of the payload: each wait is dropped, as the receive
        // loop drops it when another branch is ready.
        for end in [5, 30_000] {
            let start = if end == 5 { 0 } else { 5 };
            tx.write_all(&wire[start..end]).await.unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(20), reader.next()).await;
            assert!(waited.is_err(), "no frame is complete yet");
        }
        tx.write_all(&wire[30_000..]).await.unwrap();
        drop(tx);
        for expected in &frames {
            assert_eq!(&reader.next().await.unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_is_an_error_not_a_clean_close() {
        let (_, wire) = frames_of(&[1_000]);
        for end in [4, FRAME_HEADER_LEN + 10] {
            let (mut tx, rx) = tokio::io::duplex(1 << 20);
            tx.write_all(&wire[..end]).await.unwrap();
            drop(tx);
            let mut reader = FrameReader::new(rx, BytesMut::new(), Arc::default());
            assert!(
                matches!(reader.next().await, Err(TunnelError::Io(_))),
                "cut at {end}"
            );
        }
    }
}
