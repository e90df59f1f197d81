//! Reads frames with large reads and decodes every complete frame each read holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::frame::{decode, Frame, FRAME_HEADER_LEN, MAX_DATA_PAYLOAD};

use super::TunnelError;

/// Room made in the read buffer before a read that starts a frame: a whole DATA frame.
pub const READ_CHUNK_BYTES: usize = FRAME_HEADER_LEN + MAX_DATA_PAYLOAD;

/// Bytes still missing from the frame at the front of `buf`, once its header is there.
fn rest_of_front_frame(buf: &[u8]) -> Option<usize> {
    let header = buf.first_chunk::<FRAME_HEADER_LEN>()?;
    let payload_len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    // `decode` has refused lengths above MAX_FRAME_PAYLOAD, so this fits.
    (FRAME_HEADER_LEN + payload_len as usize).checked_sub(buf.len())
}

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    bytes_in: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `leftover` is whatever arrived after the handshake line in the same read.
    pub fn new(io: R, leftover: BytesMut, bytes_in: Arc<AtomicU64>) -> Self {
        Self {
            io,
            buf: leftover,
            bytes_in,
        }
    }

    /// The next frame, or `PeerClosed` at a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Frame, TunnelError> {
        loop {
            if let Some(frame) = decode(&mut self.buf)? {
                return Ok(frame);
            }
            // A frame whose header is here is read only up to its end: once it is split off,
            // the buffer is empty, and the next reserve does not copy a partial frame out of
            // the allocation the earlier frames' payloads still share.
            let n = match rest_of_front_frame(&self.buf) {
                Some(rest) => {
                    self.buf.reserve(rest);
                    let mut frame_rest = (&mut self.io).take(rest as u64);
                    frame_rest.read_buf(&mut self.buf).await?
                }
                None => {
                    self.buf.reserve(READ_CHUNK_BYTES);
                    self.io.read_buf(&mut self.buf).await?
                }
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    TunnelError::PeerClosed
                } else {
                    TunnelError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
            self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode, FrameType};
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_cut_at_any_read_boundary_arrive_whole_and_in_order() {
        let frames: Vec<Frame> = [MAX_DATA_PAYLOAD, 10, 0, MAX_DATA_PAYLOAD, 3_000]
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
        for cut in [1, 7, 9, 1000, 65_545, 70_000] {
            let (mut tx, rx) = tokio::io::duplex(cut);
            let wire = wire.clone();
            let feeder = tokio::spawn(async move {
                for chunk in wire.chunks(cut) {
                    tx.write_all(chunk).await.unwrap();
                }
            });
            let mut reader = FrameReader::new(rx, BytesMut::new(), Arc::default());
            for expected in &frames {
                let frame = reader.next().await.unwrap();
                assert_eq!(
                    (frame.stream_id, &frame.payload),
                    (expected.stream_id, &expected.payload),
                    "cut {cut}"
                );
            }
            feeder.await.unwrap();
            assert!(matches!(reader.next().await, Err(TunnelError::PeerClosed)));
        }
    }
}
