//! Reads frames with large reads and decodes every complete frame each read holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::frame::{decode, Frame};

use super::TunnelError;

/// Room made in the read buffer before each read.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

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
            self.buf.reserve(READ_CHUNK_BYTES);
            let n = self.io.read_buf(&mut self.buf).await?;
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
