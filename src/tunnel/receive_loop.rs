//! The receive side of a tunnel, the same on both ends and both transports: dispatch every
//! message (a frame, or a QUIC control message), watch for silence, optionally ping, and stop
//! when the writer fails or the tunnel is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::Frame;

use super::reader::FrameReader;
use super::TunnelError;

/// Where a tunnel's incoming messages come from. `next` must be cancel-safe: the loop drops
/// it whenever another branch is ready.
pub(crate) trait MessageSource {
    type Message;
    fn next(&mut self) -> impl Future<Output = Result<Self::Message, TunnelError>> + Send;
}

impl<R: AsyncRead + Unpin + Send> MessageSource for FrameReader<R> {
    type Message = Frame;
    fn next(&mut self) -> impl Future<Output = Result<Frame, TunnelError>> + Send {
        FrameReader::next(self)
    }
}

/// When to check that the peer is alive, and whether this end sends the pings.
pub(crate) struct Heartbeat<'a> {
    /// How often silence is checked (and a ping sent, if this end pings).
    pub interval: Duration,
    /// Silence this long ends the tunnel; any message counts as a sign of life.
    pub timeout: Duration,
    /// Sends a ping, if this end pings.
    pub ping: Option<&'a (dyn Fn() + Sync)>,
}

/// Runs until the tunnel ends and returns why. `dispatch` handles each message; an error from it
/// is a protocol error that ends the tunnel.
pub(crate) async fn run_tunnel_loop<S: MessageSource>(
    mut source: S,
    writer: JoinHandle<Result<(), TunnelError>>,
    cancel: &CancellationToken,
    heartbeat: Heartbeat<'_>,
    mut dispatch: impl FnMut(S::Message) -> Result<(), TunnelError>,
) -> TunnelError {
    let mut tick =
        tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
    let mut last_heard = Instant::now();
    tokio::pin!(writer);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return TunnelError::ClosedHere,
            written = &mut writer => {
                return match written {
                    Ok(Err(e)) => e,
                    // The writer stops cleanly only when the tunnel is cancelled here.
                    Ok(Ok(())) => TunnelError::ClosedHere,
                    Err(_) => TunnelError::Internal("the tunnel's writer task failed"),
                };
            }
            _ = tick.tick() => {
                let silent = last_heard.elapsed();
                if silent >= heartbeat.timeout {
                    return TunnelError::HeartbeatTimeout(silent.as_millis());
                }
                if let Some(ping) = heartbeat.ping {
                    ping();
                }
            }
            message = source.next() => {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => return e,
                };
                last_heard = Instant::now();
                if let Err(e) = dispatch(message) {
                    return e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never sends anything.
    struct Silent;

    impl MessageSource for Silent {
        type Message = ();
        fn next(&mut self) -> impl Future<Output = Result<(), TunnelError>> + Send {
            std::future::pending()
        }
    }

    fn heartbeat() -> Heartbeat<'static> {
        Heartbeat {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            ping: None,
        }
    }

    async fn ended_by(
        writer: JoinHandle<Result<(), TunnelError>>,
        cancel: &CancellationToken,
    ) -> TunnelError {
        run_tunnel_loop(Silent, writer, cancel, heartbeat(), |()| Ok(())).await
    }

    #[tokio::test]
    async fn a_tunnel_closed_here_is_not_reported_as_closed_by_the_peer() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let writer = tokio::spawn(std::future::pending());
        assert!(matches!(
            ended_by(writer, &cancel).await,
            TunnelError::ClosedHere
        ));

        // The writer stops cleanly only when told to.
        let writer = tokio::spawn(async { Ok(()) });
        assert!(matches!(
            ended_by(writer, &CancellationToken::new()).await,
            TunnelError::ClosedHere
        ));
    }

    #[tokio::test]
    async fn a_failed_writer_ends_the_tunnel_with_its_error() {
        let writer = tokio::spawn(async { Err(TunnelError::PeerClosed) });
        assert!(matches!(
            ended_by(writer, &CancellationToken::new()).await,
            TunnelError::PeerClosed
        ));
        let writer = tokio::spawn(async { panic!("injected") });
        assert!(matches!(
            ended_by(writer, &CancellationToken::new()).await,
            TunnelError::Internal(_)
        ));
    }
}
