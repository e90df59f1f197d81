//! The receive side of a tunnel, the same on both ends: dispatch every frame, watch for
//! silence, optionally ping, and stop when the writer fails or the tunnel is cancelled.

use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::unix_millis;
use crate::protocol::frame::Frame;

use super::reader::FrameReader;
use super::writer::FrameSender;
use super::TunnelError;

/// When to check that the peer is alive, and whether this end sends the pings.
pub struct Heartbeat<'a> {
    /// How often silence is checked (and a ping sent, if this end pings).
    pub interval: Duration,
    /// Silence this long ends the tunnel; any frame counts as a sign of life.
    pub timeout: Duration,
    pub ping_through: Option<&'a FrameSender>,
}

/// Runs until the tunnel ends and returns why. `dispatch` handles each frame; an error from it
/// is a protocol error that ends the tunnel.
pub async fn run_frame_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    writer: JoinHandle<Result<(), TunnelError>>,
    cancel: &CancellationToken,
    heartbeat: Heartbeat<'_>,
    mut dispatch: impl FnMut(Frame) -> Result<(), TunnelError>,
) -> TunnelError {
    let mut tick =
        tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
    let mut last_heard = Instant::now();
    tokio::pin!(writer);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return TunnelError::PeerClosed,
            written = &mut writer => {
                return match written {
                    Ok(Err(e)) => e,
                    _ => TunnelError::PeerClosed,
                };
            }
            _ = tick.tick() => {
                let silent = last_heard.elapsed();
                if silent >= heartbeat.timeout {
                    return TunnelError::HeartbeatTimeout(silent.as_millis());
                }
                if let Some(frames) = heartbeat.ping_through {
                    frames.control(Frame::ping(unix_millis().to_be_bytes()));
                }
            }
            frame = reader.next() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => return e,
                };
                last_heard = Instant::now();
                if let Err(e) = dispatch(frame) {
                    return e;
                }
            }
        }
    }
}
