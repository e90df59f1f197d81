//! The async machinery both ends of a tunnel share: for TCP+TLS the writer task that owns the
//! socket's write half, the frame reader, the stream table and the per-connection pump; for
//! QUIC the control stream, datagrams and the relay (`quic_link`); and the receive loop of both.

pub(crate) mod bandwidth;
pub(crate) mod connection;
pub(crate) mod quic_flow;
pub(crate) mod quic_link;
pub(crate) mod reader;
pub(crate) mod receive_loop;
pub(crate) mod retry;
pub(crate) mod serve;
pub(crate) mod stream;
pub(crate) mod writer;

use std::io;

/// UDP sessions one tunnel may carry at once (both ends enforce it); past it, a flood of
/// spoofed sources is turned away instead of costing the hub a socket each.
pub(crate) const MAX_UDP_SESSIONS_PER_TUNNEL: usize =
    crate::protocol::handshake::DEFAULT_MAX_UDP_SESSIONS;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::TcpStream;

use crate::events::TransportKind;
use crate::mux::flow::FlowError;
use crate::protocol::control::{ControlMessage, Direction};
use crate::protocol::frame::{
    control_frame, Frame, FrameError, FrameType, StreamFrame, PING_NONCE_LEN,
};
use crate::protocol::handshake::{take_line_limited, HandshakeError};
use crate::protocol::quic_messages::QuicWireError;

/// Why a tunnel ended. The text is what `edgeDisconnected` / `tunnelDisconnected` report.
#[derive(Debug, Error)]
pub(crate) enum TunnelError {
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the tunnel")]
    PeerClosed,
    /// This end closed it: stopped, or the session was closed (its reason is reported instead).
    #[error("closed by this end")]
    ClosedHere,
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("peer closed the tunnel: {0}")]
    ClosedByPeer(String),
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Flow(#[from] FlowError),
    #[error("protocol error: {0}")]
    Violation(#[from] Violation),
    #[error("heartbeat timeout: nothing heard for {0} ms")]
    HeartbeatTimeout(u128),
}

impl TunnelError {
    /// Whether the peer broke the protocol (rather than going away).
    pub(crate) fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            TunnelError::Frame(_) | TunnelError::Flow(_) | TunnelError::Violation(_)
        )
    }
}

/// A peer broke the protocol in a way no single frame or message shows.
#[derive(Debug, Error)]
pub(crate) enum Violation {
    /// Streams and UDP sessions share one growing id counter.
    #[error("id {id} opened after {last}")]
    IdNotGrowing { id: u32, last: u32 },
    #[error("stream {0} opened twice")]
    StreamOpenedTwice(u32),
    #[error(
        "connection stream {stream} does not start with a PROXY v1 line with addresses: {reason}"
    )]
    BadConnectionStream { stream: u32, reason: String },
    #[error("the hub opened a connection stream")]
    StreamFromHub,
    #[error("control stream: {0}")]
    ControlMessage(#[from] QuicWireError),
    #[error("control stream: {0}")]
    ControlStreamRead(quinn::ReadError),
    #[error("control stream: {0}")]
    ControlStreamWrite(quinn::WriteError),
}

/// This end's sending half of a tunnel, on either transport: its tunnel-wide messages (`M`,
/// a [`HubMessage`](crate::protocol::control::HubMessage) or an
/// [`EdgeMessage`](crate::protocol::control::EdgeMessage)) and UDP payloads. Connection
/// streams travel as frames through the stream table, or as QUIC streams.
#[derive(Clone)]
pub(crate) enum Carrier<M> {
    Frames(writer::FrameSender),
    Quic(quic_link::QuicLink<M>),
}

impl<M: ControlMessage> Carrier<M> {
    pub(crate) fn transport(&self) -> TransportKind {
        match self {
            Carrier::Frames(_) => TransportKind::TcpTls,
            Carrier::Quic(_) => TransportKind::Quic,
        }
    }

    /// Whether the tunnel is gone: its writer or its QUIC connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Carrier::Frames(frames) => frames.is_closed(),
            Carrier::Quic(quic) => quic.connection.close_reason().is_some(),
        }
    }

    /// Queues a tunnel-wide message; false when the tunnel is gone.
    pub(crate) fn send(&self, message: M) -> bool {
        match self {
            Carrier::Frames(frames) => frames.control(control_frame(&message)),
            Carrier::Quic(quic) => quic.send_control(message),
        }
    }

    /// A heartbeat; the nonce is the time, which makes the echo a round-trip measurement.
    pub(crate) fn ping(&self) -> bool {
        let nonce: [u8; PING_NONCE_LEN] = crate::events::unix_millis().to_be_bytes();
        self.send(M::ping(Bytes::copy_from_slice(&nonce)))
    }

    /// One UDP payload of `session`. False when it was dropped (congestion, or the tunnel is
    /// gone).
    pub(crate) fn udp(&self, session: u32, payload: Bytes) -> bool {
        match self {
            Carrier::Frames(frames) => {
                frames.datagram(Frame::new(session, udp_data::<M>(), payload))
            }
            Carrier::Quic(quic) => quic.send_udp(session, &payload),
        }
    }

    /// As [`Carrier::udp`], from a borrowed payload: copied once, into whichever framing the
    /// transport needs.
    pub(crate) fn udp_from_slice(&self, session: u32, payload: &[u8]) -> bool {
        match self {
            Carrier::Frames(frames) => frames.datagram(Frame::new(
                session,
                udp_data::<M>(),
                Bytes::copy_from_slice(payload),
            )),
            Carrier::Quic(quic) => quic.send_udp(session, payload),
        }
    }

    /// Tunnel bytes received and sent, where the transport counts them itself (QUIC counts
    /// its UDP packets); `None` when the frame reader and writer count them.
    pub(crate) fn counted_bytes(&self) -> Option<(u64, u64)> {
        match self {
            Carrier::Frames(_) => None,
            Carrier::Quic(quic) => Some(quic.bytes()),
        }
    }
}

/// A stream frame from the peer (TCP+TLS), handed to its stream.
pub(crate) fn deliver(
    streams: &stream::StreamTable,
    frame: StreamFrame,
) -> Result<(), TunnelError> {
    match frame {
        StreamFrame::Data { stream, payload } => streams.deliver_data(stream, payload)?,
        StreamFrame::Close { stream, close } => streams.deliver_close(stream, close),
        StreamFrame::WindowUpdate { stream, credit } => streams.grant(stream, credit)?,
    }
    Ok(())
}

/// The frame type of a UDP payload sent by the end whose messages are `M`.
fn udp_data<M: ControlMessage>() -> FrameType {
    match M::DIRECTION {
        Direction::EdgeToHub => FrameType::UdpData,
        Direction::HubToEdge => FrameType::UdpDataBack,
    }
}

/// Why a handshake line could not be read.
#[derive(Debug, Error)]
pub(crate) enum LineError {
    #[error("{0}")]
    Line(#[from] HandshakeError),
    #[error("closed before the handshake finished")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads one handshake line of at most `max_len` bytes, on either transport (the TLS stream,
/// or the QUIC control stream); what arrived after it stays in `buf`.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Bytes, LineError> {
    loop {
        if let Some(line) = take_line_limited(buf, max_len)? {
            return Ok(line);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(LineError::Closed);
        }
    }
}

/// Waits until `take` takes some send credit (nonzero) and returns it; `arrived` is notified
/// when the peer grants more. The wait is armed before each look, so a grant in between is not
/// missed.
pub(crate) async fn take_credit(
    arrived: &tokio::sync::Notify,
    mut take: impl FnMut() -> u32,
) -> u32 {
    loop {
        let notified = arrived.notified();
        let taken = take();
        if taken > 0 {
            return taken;
        }
        notified.await;
    }
}

/// Reads below this are copied into an allocation of their own size; longer ones give back
/// the unused end of their buffer (a shrink in place). Either way a chunk waiting in a queue
/// holds no more memory than its length, which is what the windows count.
const COPY_READS_BELOW_BYTES: usize = 8 * 1024;

/// One non-blocking read of up to `max` bytes from a local socket: empty at EOF, `WouldBlock`
/// when the readiness was spurious. The buffer lives only for this attempt, so a connection
/// waiting for data holds none; tokio reports a freshly accepted socket readable once before
/// any data has arrived, and a buffer kept across that wait cost every idle client 64 KiB.
///
/// A read that returns less than `max` has emptied the socket's receive queue, so it also
/// clears tokio's read readiness, as tokio's own `poll_read` does: the next wait is for new
/// data, not for a read that would only say `WouldBlock`. That read was one of every two
/// reads in a keep-alive exchange. Readiness cleared this way survives data that arrived in
/// between (tokio compares its event tick), and EOF is never cleared.
pub(crate) fn try_read_chunk(socket: &TcpStream, max: usize) -> io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(max);
    let outcome = socket.try_io(Interest::READABLE, || {
        let n = socket2::SockRef::from(socket).recv(&mut buf.spare_capacity_mut()[..max])?;
        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(n) };
        if n > 0 && n < max {
            // Emptied: reported as WouldBlock to tokio alone, which clears the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match outcome {
        Ok(_) => {}
        // The WouldBlock that cleared the readiness after a short read: the data stands.
        Err(_) if !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(if buf.len() < COPY_READS_BELOW_BYTES {
        Bytes::copy_from_slice(&buf)
    } else {
        buf.shrink_to_fit();
        Bytes::from(buf)
    })
}

/// Runs `work` as a task of `tasks` until it finishes or `cancel` fires.
pub(crate) fn spawn_until(
    tasks: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let cancel = cancel.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = work => {}
        }
    })
}

/// Runs a closure when dropped, also while a panic unwinds: cleanup that must happen however
/// a task ends.
pub(crate) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(crate) fn new(cleanup: F) -> Self {
        Self(Some(cleanup))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(cleanup) = self.0.take() {
            cleanup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::Write;
    use std::time::Duration;

    async fn accepted_pair() -> (TcpStream, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, client)
    }

    /// Whether `readable()` completes on its first poll: no waiting, so no timing involved.
    fn readable_now(socket: &TcpStream) -> bool {
        let readable = std::pin::pin!(socket.readable());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        readable.poll(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_until_more_data_or_eof_arrives() {
        let (accepted, mut client) = accepted_pair().await;
        let wait = Duration::from_secs(30);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Data that arrives later than the readiness it raised is read all the same.
        let mut received = Vec::new();
        while received.len() < 18 {
            tokio::time::timeout(wait, accepted.readable())
                .await
                .unwrap()
                .unwrap();
            match try_read_chunk(&accepted, 64 * 1024) {
                Ok(chunk) => received.extend_from_slice(&chunk),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(received, b"GET / HTTP/1.1\r\n\r\n");
        // The queue is empty and tokio knows it: no read that could only say WouldBlock.
        assert!(!readable_now(&accepted));

        client.write_all(b"more").unwrap();
        tokio::time::timeout(wait, accepted.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&try_read_chunk(&accepted, 64 * 1024).unwrap()[..], b"more");

        // Data and EOF behind it: the short read clears readiness, but not the EOF.
        client.write_all(b"last").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut tail = Vec::new();
        loop {
            tokio::time::timeout(wait, accepted.readable())
                .await
                .unwrap()
                .unwrap();
            match try_read_chunk(&accepted, 64 * 1024) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => tail.extend_from_slice(&chunk),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(tail, b"last");
    }

    #[tokio::test]
    async fn try_read_chunk_sees_spurious_readiness_then_data_then_eof() {
        let (accepted, mut client) = accepted_pair().await;
        // The readiness tokio reports before any byte arrived: nothing to read, no error.
        tokio::time::timeout(Duration::from_secs(30), accepted.readable())
            .await
            .unwrap()
            .unwrap();
        let spurious = try_read_chunk(&accepted, 64 * 1024).unwrap_err();
        assert_eq!(spurious.kind(), io::ErrorKind::WouldBlock);

        let payload: Vec<u8> = (0..30_000u32).map(|i| i as u8).collect();
        client.write_all(&payload).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        // Small reads (copied), full ones and partly filled ones (shrunk) all come back exact,
        // capped at `max`, each in an allocation of its own length.
        let mut received = Vec::new();
        for max in [7_000, 12_000, 64 * 1024].into_iter().cycle() {
            accepted.readable().await.unwrap();
            match try_read_chunk(&accepted, max) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    assert!(chunk.len() <= max);
                    received.extend_from_slice(&chunk);
                    let len = chunk.len();
                    let owned = chunk.try_into_mut().expect("a chunk is its own allocation");
                    assert_eq!(owned.capacity(), len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
        assert_eq!(received, payload);
    }
}
