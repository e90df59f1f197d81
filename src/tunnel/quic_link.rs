//! The QUIC transport's async pieces, the same on both ends: the control stream's writer task
//! and reader, UDP datagrams (with a stream for those too large for a datagram), and the relay
//! between a TCP socket and the QUIC stream that carries it.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{
    Connection, ConnectionError, ReadError, RecvStream, SendDatagramError, SendStream, VarInt,
    WriteError,
};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::control::ControlMessage;
use crate::protocol::frame::ResetReason;
use crate::protocol::quic_messages::{
    decode_control, encode_control, encode_datagram, encode_open_datagram, split_datagram,
    MAX_UDP_PAYLOAD, SESSION_ID_LEN,
};
use crate::transport::quic_endpoint::{relay_reads_budget, MAX_OVERSIZED_DATAGRAM_STREAMS};

use super::receive_loop::MessageSource;
use super::retry::{SentBytes, Unacked, UnackedStream};
use super::stream::Resend;
use super::{try_read_chunk, TunnelError, Violation};

/// The most a relay reads from its socket or its QUIC stream at once.
const RELAY_CHUNK_BYTES: usize = 64 * 1024;
/// The least, however many relays share the budget for reads in hand.
const MIN_RELAY_CHUNK_BYTES: usize = 4 * 1024;
/// Bytes the control writer gathers into one write.
const CONTROL_BATCH_BYTES: usize = 64 * 1024;
/// Room made in the control reader's buffer before each read.
const CONTROL_READ_BYTES: usize = 4 * 1024;
/// quinn fills each packet from the streams of the highest priority first (connection streams
/// have the default, 0), so heartbeats, CONFIG and UDP opens go before data, as control
/// frames do in the TCP+TLS writer.
const CONTROL_STREAM_PRIORITY: i32 = 1;

/// A `ConnectionError` as the reason a tunnel ended; the peer's close reason is kept.
pub(crate) fn connection_ended(error: ConnectionError) -> TunnelError {
    match error {
        ConnectionError::ApplicationClosed(close) if !close.reason.is_empty() => {
            TunnelError::ClosedByPeer(String::from_utf8_lossy(&close.reason).into_owned())
        }
        ConnectionError::ApplicationClosed(_) => TunnelError::PeerClosed,
        ConnectionError::LocallyClosed => TunnelError::ClosedHere,
        ConnectionError::TimedOut => TunnelError::Io(io::ErrorKind::TimedOut.into()),
        other => TunnelError::Io(io::Error::other(other)),
    }
}

/// Cloneable handle for queueing this end's control messages on a tunnel's control stream.
#[derive(Clone, Debug)]
pub(crate) struct ControlSender<M>(UnboundedSender<M>);

impl<M: ControlMessage> ControlSender<M> {
    /// Queues a message; false when the tunnel is gone.
    pub(crate) fn send(&self, message: M) -> bool {
        self.0.send(message).is_ok()
    }
}

/// A control sender and the queue its writer task drains.
pub(crate) fn control_channel<M: ControlMessage>() -> (ControlSender<M>, UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ControlSender(tx), rx)
}

/// The control stream's writer task: sends queued messages, several per write when they pile
/// up, until the tunnel is cancelled or the stream fails.
pub(crate) async fn run_control_writer<M: ControlMessage>(
    mut stream: SendStream,
    mut queue: UnboundedReceiver<M>,
    cancel: CancellationToken,
) -> Result<(), TunnelError> {
    // Fails only for a stream that is already closed, which the first write reports.
    let _ = stream.set_priority(CONTROL_STREAM_PRIORITY);
    let mut batch = BytesMut::new();
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            message = queue.recv() => message,
        };
        let Some(message) = message else {
            return Ok(());
        };
        encode_control(&message, &mut batch);
        while batch.len() < CONTROL_BATCH_BYTES {
            match queue.try_recv() {
                Ok(message) => encode_control(&message, &mut batch),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            written = stream.write_chunk(batch.split().freeze()) => written,
        };
        written.map_err(write_ended)?;
    }
}

fn write_ended(error: WriteError) -> TunnelError {
    match error {
        WriteError::ConnectionLost(e) => connection_ended(e),
        other => Violation::ControlStreamWrite(other).into(),
    }
}

fn read_ended(error: ReadError) -> TunnelError {
    match error {
        ReadError::ConnectionLost(e) => connection_ended(e),
        other => Violation::ControlStreamRead(other).into(),
    }
}

/// Decodes the peer's control messages (`M`) from the control stream, after the handshake lines.
pub(crate) struct ControlReader<M> {
    stream: RecvStream,
    buf: BytesMut,
    received: std::marker::PhantomData<fn() -> M>,
}

impl<M: ControlMessage> ControlReader<M> {
    /// `leftover` is whatever arrived after the handshake line in the same read.
    pub(crate) fn new(stream: RecvStream, leftover: BytesMut) -> Self {
        Self {
            stream,
            buf: leftover,
            received: std::marker::PhantomData,
        }
    }

    async fn next_message(&mut self) -> Result<M, TunnelError> {
        loop {
            if let Some(message) = decode_control(&mut self.buf).map_err(Violation::from)? {
                return Ok(message);
            }
            match self.stream.read_chunk(CONTROL_READ_BYTES, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(TunnelError::PeerClosed),
                Err(e) => return Err(read_ended(e)),
            }
        }
    }
}

impl<M: ControlMessage> MessageSource for ControlReader<M> {
    type Message = M;
    fn next(&mut self) -> impl Future<Output = Result<M, TunnelError>> + Send {
        self.next_message()
    }
}

/// The pieces of an established QUIC tunnel that both ends send through. Tunnel bytes are
/// the connection's own UDP counts ([`QuicLink::bytes`]).
#[derive(Clone)]
pub(crate) struct QuicLink<M> {
    pub connection: Connection,
    control: ControlSender<M>,
    /// Oversized datagrams in flight, each on its own stream.
    oversized: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl<M: ControlMessage> QuicLink<M> {
    pub(crate) fn new(
        connection: Connection,
        control: ControlSender<M>,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            connection,
            control,
            oversized: Arc::new(Semaphore::new(MAX_OVERSIZED_DATAGRAM_STREAMS as usize)),
            tasks,
        }
    }

    /// Queues a control message. A UDP open also goes as a datagram, which is quick; the
    /// control stream is what makes it reliable.
    pub(crate) fn send_control(&self, message: M) -> bool {
        if let Some(open) = message.udp_open() {
            let _ = self
                .connection
                .send_datagram(encode_open_datagram(open.session, &open.header));
        }
        self.control.send(message)
    }

    /// UDP bytes received and sent by the connection so far, QUIC overhead included.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        let stats = self.connection.stats();
        (stats.udp_rx.bytes, stats.udp_tx.bytes)
    }

    /// Sends one UDP payload of `session`: as a datagram when it fits, else on a stream of its
    /// own. False when it was dropped (the tunnel is gone, or too many large ones in flight).
    pub(crate) fn send_udp(&self, session: u32, payload: &[u8]) -> bool {
        let datagram = encode_datagram(session, payload);
        // quinn's `send_datagram` makes room in a full queue by dropping the oldest datagram,
        // unseen; the waiting variant refuses instead, so the caller counts the new one. Polled
        // once it never waits, and it looks at the connection once rather than twice (space,
        // then send) under a lock the connection's driver holds while it encrypts.
        let send = pin!(self.connection.send_datagram_wait(datagram.clone()));
        match send.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => true,
            // quinn checks the size against the path's current limit itself (it changes with
            // MTU discovery), which saves asking first on every datagram.
            Poll::Ready(Err(
                SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer,
            )) => self.send_oversized(datagram),
            Poll::Ready(Err(_)) => false,
            // The send queue is full.
            Poll::Pending => false,
        }
    }

    fn send_oversized(&self, datagram: Bytes) -> bool {
        let Ok(permit) = self.oversized.clone().try_acquire_owned() else {
            return false;
        };
        let connection = self.connection.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            if let Ok(mut stream) = connection.open_uni().await {
                if stream.write_chunk(datagram).await.is_ok() {
                    let _ = stream.finish();
                    // Wait for delivery, so the permit bounds the streams really in flight.
                    let _ = stream.stopped().await;
                }
            }
        });
        true
    }
}

/// Receives UDP payloads sent as datagrams until the connection ends, handing each to
/// `deliver(session, rest)` (the rest may be an open: the caller decides).
pub(crate) async fn receive_datagrams(connection: Connection, mut deliver: impl FnMut(u32, Bytes)) {
    while let Ok(datagram) = connection.read_datagram().await {
        // Shorter than a session id: nothing to deliver it to.
        if let Ok((session, rest)) = split_datagram(datagram) {
            deliver(session, rest);
        }
        // quinn hands over a whole burst without this task ever yielding, so the sessions'
        // tasks did not run until it was read and their queues overflowed; now they take
        // turns with it.
        tokio::task::consume_budget().await;
    }
}

/// Receives UDP payloads too large for a datagram, one per unidirectional stream, until the
/// connection ends.
pub(crate) async fn receive_oversized(
    connection: Connection,
    tasks: TaskTracker,
    deliver: impl Fn(u32, Bytes) + Clone + Send + 'static,
) {
    while let Ok(mut stream) = connection.accept_uni().await {
        let deliver = deliver.clone();
        tasks.spawn(async move {
            // Longer than any datagram: not ours to deliver.
            let Ok(content) = stream.read_to_end(SESSION_ID_LEN + MAX_UDP_PAYLOAD).await else {
                return;
            };
            if let Ok((session, payload)) = split_datagram(Bytes::from(content)) {
                deliver(session, payload);
            }
        });
    }
}

/// Resets both directions of a QUIC connection stream with `reason`.
pub(crate) fn reset_stream(send: &mut SendStream, recv: &mut RecvStream, reason: ResetReason) {
    let _ = send.reset(reset_code(reason));
    let _ = recv.stop(reset_code(reason));
}

/// The QUIC stream reset code for a reason, and back.
pub(crate) fn reset_code(reason: ResetReason) -> VarInt {
    VarInt::from_u32(u32::from(reason as u8))
}

fn reason_of(code: VarInt) -> ResetReason {
    u8::try_from(code.into_inner())
        .ok()
        .and_then(ResetReason::from_byte)
        .unwrap_or(ResetReason::Aborted)
}

/// Counts a tunnel's open relays; each relay holds one `OpenStream` while it runs.
#[derive(Debug)]
pub(crate) struct StreamCount {
    open: Arc<AtomicUsize>,
    /// The tunnel's buffer budget, of which the relays share [`relay_reads_budget`].
    budget: u32,
}

pub(crate) struct OpenStream {
    open: Arc<AtomicUsize>,
    budget: u32,
}

impl StreamCount {
    pub(crate) fn with_budget(budget: u32) -> Self {
        Self {
            open: Arc::default(),
            budget,
        }
    }

    pub(crate) fn open(&self) -> OpenStream {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenStream {
            open: self.open.clone(),
            budget: self.budget,
        }
    }

    pub(crate) fn get(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl OpenStream {
    /// The most this relay reads at once: the open relays' share of the budget for reads in
    /// hand, within [`MIN_RELAY_CHUNK_BYTES`, `RELAY_CHUNK_BYTES`].
    pub(crate) fn read_size(&self) -> usize {
        relay_read_size(self.open.load(Ordering::Relaxed), self.budget)
    }
}

fn relay_read_size(open_relays: usize, budget: u32) -> usize {
    let share = relay_reads_budget(budget) as usize / open_relays.max(1);
    share.clamp(MIN_RELAY_CHUNK_BYTES, RELAY_CHUNK_BYTES)
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        crate::heap::stream_closed();
    }
}

/// How one direction of a relay ended.
enum DirectionEnd {
    /// EOF passed on as a half-close.
    Finished,
    /// The connection is over: the peer reset it or a socket failed.
    Aborted(ResetReason),
    /// The tunnel went away.
    TunnelGone,
}

impl DirectionEnd {
    fn is_finished(&self) -> bool {
        matches!(self, DirectionEnd::Finished)
    }
}

/// Bytes read from and written to the local socket, for per-port metrics.
pub(crate) struct RelayCounters<'a> {
    pub read: &'a AtomicU64,
    pub written: &'a AtomicU64,
}

/// Moves bytes between a local TCP socket and the QUIC stream that carries it, both ways at
/// once, until both directions have finished. A half-close passes through as a half-close; a
/// reset or failure on either side resets the other side (the TCP socket with an RST).
/// `resend` (edge) goes first; when the tunnel ends before the hub acknowledged the stream,
/// the socket comes back untouched with what it sent.
pub(crate) async fn relay(
    socket: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    stream: &OpenStream,
    counters: RelayCounters<'_>,
    cancel: &CancellationToken,
    resend: Resend,
) -> Option<Unacked> {
    let Resend { sent, unacked } = resend;
    let unacked = unacked.as_ref();
    let abort = cancel.child_token();
    let (up, down) = tokio::join!(
        async {
            let end = socket_to_stream(
                &socket,
                &mut send,
                stream,
                counters.read,
                &abort,
                sent,
                unacked,
            )
            .await;
            if !end.is_finished() {
                abort.cancel();
            }
            end
        },
        async {
            let end = stream_to_socket(
                &mut recv,
                &socket,
                stream,
                counters.written,
                &abort,
                unacked,
            )
            .await;
            if !end.is_finished() {
                abort.cancel();
            }
            end
        }
    );
    let tunnel_gone = matches!(up, DirectionEnd::TunnelGone)
        || matches!(down, DirectionEnd::TunnelGone)
        || cancel.is_cancelled();
    let reason = match (up, down) {
        (DirectionEnd::Finished, DirectionEnd::Finished) => return None,
        _ if tunnel_gone => {
            if let Some(sent) = unacked.and_then(UnackedStream::take) {
                return Some(Unacked { socket, sent });
            }
            ResetReason::Aborted
        }
        (DirectionEnd::Aborted(reason), _) | (_, DirectionEnd::Aborted(reason)) => reason,
        _ => ResetReason::Aborted,
    };
    let code = reset_code(reason);
    let _ = send.reset(code);
    let _ = recv.stop(code);
    // An abort, so the local peer does not mistake it for a complete answer.
    let _ = SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    None
}

async fn socket_to_stream(
    socket: &TcpStream,
    send: &mut SendStream,
    stream: &OpenStream,
    read: &AtomicU64,
    abort: &CancellationToken,
    resend: Option<Box<SentBytes>>,
    unacked: Option<&UnackedStream>,
) -> DirectionEnd {
    let aborted = DirectionEnd::Aborted(ResetReason::Aborted);
    if let Some(resend) = resend {
        // Boxed: its state would make every relay's task larger.
        if let Some(end) = Box::pin(write_first(send, *resend, abort, unacked)).await {
            return end;
        }
    }
    // The peer's STOP_SENDING must end this direction wherever it waits. A write blocked by
    // flow control never reports it (quinn-proto checks the connection's limits before the
    // stream's state), and while stopped streams keep their unsent data, the send window
    // stays full: with a thousand non-reading clients, dozens of streams never ended.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = abort.cancelled() => return aborted,
            stop = &mut stopped => return stopped_end(stop),
            ready = socket.readable() => if ready.is_err() { return aborted },
        }
        let chunk = match try_read_chunk(socket, stream.read_size()) {
            Ok(chunk) if chunk.is_empty() => return finish(send, unacked),
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return aborted,
        };
        read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if let Some(unacked) = unacked {
            unacked.record(&chunk);
        }
        let written = tokio::select! {
            _ = abort.cancelled() => return aborted,
            stop = &mut stopped => return stopped_end(stop),
            written = send.write_chunk(chunk) => written,
        };
        if let Some(end) = write_failed(written) {
            return end;
        }
    }
}

/// Writes what the client sent on an earlier tunnel; `Some` when this direction has ended
/// (it included the client's FIN, or the write failed).
async fn write_first(
    send: &mut SendStream,
    resend: SentBytes,
    abort: &CancellationToken,
    unacked: Option<&UnackedStream>,
) -> Option<DirectionEnd> {
    let (chunks, fin) = resend.into_parts();
    for chunk in chunks {
        if let Some(unacked) = unacked {
            unacked.record(&chunk);
        }
        let written = tokio::select! {
            _ = abort.cancelled() => return Some(DirectionEnd::Aborted(ResetReason::Aborted)),
            written = send.write_chunk(chunk) => written,
        };
        if let Some(end) = write_failed(written) {
            return Some(end);
        }
    }
    fin.then(|| finish(send, unacked))
}

/// How a failed write ends the direction; None if it did not fail.
fn write_failed(written: Result<(), WriteError>) -> Option<DirectionEnd> {
    match written {
        Ok(()) => None,
        Err(WriteError::ConnectionLost(_)) => Some(DirectionEnd::TunnelGone),
        Err(_) => Some(DirectionEnd::Aborted(ResetReason::Aborted)),
    }
}

/// How the peer's STOP_SENDING (or the connection's end) ends the direction.
fn stopped_end(stop: Result<Option<VarInt>, quinn::StoppedError>) -> DirectionEnd {
    match stop {
        Err(quinn::StoppedError::ConnectionLost(_)) => DirectionEnd::TunnelGone,
        _ => DirectionEnd::Aborted(ResetReason::Aborted),
    }
}

/// Passes the local client's FIN on.
fn finish(send: &mut SendStream, unacked: Option<&UnackedStream>) -> DirectionEnd {
    if let Some(unacked) = unacked {
        unacked.record_fin();
    }
    match send.finish() {
        Ok(()) => DirectionEnd::Finished,
        Err(_) => DirectionEnd::Aborted(ResetReason::Aborted),
    }
}

async fn stream_to_socket(
    recv: &mut RecvStream,
    socket: &TcpStream,
    stream: &OpenStream,
    written: &AtomicU64,
    abort: &CancellationToken,
    unacked: Option<&UnackedStream>,
) -> DirectionEnd {
    let aborted = DirectionEnd::Aborted(ResetReason::Aborted);
    loop {
        let chunk = tokio::select! {
            _ = abort.cancelled() => return aborted,
            chunk = recv.read_chunk(stream.read_size(), true) => chunk,
        };
        if let Err(ReadError::ConnectionLost(_)) = chunk {
            return DirectionEnd::TunnelGone;
        }
        // Anything else comes from the hub, which therefore has the stream.
        if let Some(unacked) = unacked {
            unacked.answered();
        }
        let mut bytes = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                return match SockRef::from(socket).shutdown(std::net::Shutdown::Write) {
                    Ok(()) => DirectionEnd::Finished,
                    Err(_) => aborted,
                };
            }
            Err(ReadError::Reset(code)) => return DirectionEnd::Aborted(reason_of(code)),
            Err(_) => return aborted,
        };
        while !bytes.is_empty() {
            tokio::select! {
                _ = abort.cancelled() => return aborted,
                ready = socket.writable() => if ready.is_err() { return aborted },
            }
            match socket.try_write(&bytes) {
                Ok(n) => {
                    written.fetch_add(n as u64, Ordering::Relaxed);
                    let _ = bytes.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return aborted,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::flow::TUNNEL_WINDOW_BUDGET;
    use crate::transport::quic_endpoint::quic_window;

    #[test]
    fn relays_reads_in_hand_stay_within_their_share_of_the_budget() {
        let budget = TUNNEL_WINDOW_BUDGET;
        let share = relay_reads_budget(budget) as usize;
        // Windows and reads (in hand, and kept whole by quinn) add up to the budget.
        assert_eq!(quic_window(budget) as usize + 2 * share, budget as usize);
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
