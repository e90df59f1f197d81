//! The QUIC transport's async pieces, the same on both ends: the control stream's writer task
//! and reader, UDP datagrams (with a stream for those too large for a datagram), and the relay
//! between a TCP socket and the QUIC stream that carries it.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mux::flow::FlowError;
use crate::protocol::control::ControlMessage;
use crate::protocol::frame::ResetReason;
use crate::protocol::quic_messages::{
    decode_control, encode_control, encode_datagram, encode_open_datagram, split_datagram,
    MAX_UDP_PAYLOAD, SESSION_ID_LEN,
};
use crate::transport::quic_endpoint::MAX_OVERSIZED_DATAGRAM_STREAMS;

use super::bandwidth::{Pace, Pacing, RATE_RECHECK};
use super::quic_flow::{OpenStream, QuicPeer};
use super::receive_loop::MessageSource;
use super::retry::{SentBytes, Unacked, UnackedStream};
use super::stream::Resend;
use super::{try_read_chunk, TunnelError, Violation};

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

    /// The connection, and how its streams' relays grant the peer credit.
    pub(crate) fn peer(&self) -> QuicPeer {
        let control = self.control.clone();
        QuicPeer {
            connection: self.connection.clone(),
            grant: Box::new(move |stream, credit| control.send(M::window_update(stream, credit))),
        }
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

/// The reset reason a QUIC reset code carries; an unknown one is an abort.
pub(crate) fn reset_reason(code: VarInt) -> ResetReason {
    u8::try_from(code.into_inner())
        .ok()
        .and_then(ResetReason::from_byte)
        .unwrap_or(ResetReason::Aborted)
}

/// How one direction of a relay ended.
enum DirectionEnd {
    /// EOF passed on as a half-close.
    Finished,
    /// The connection is over: the peer reset it or a socket failed.
    Aborted(ResetReason),
    /// The tunnel went away.
    TunnelGone,
    /// The peer sent past its credit.
    Overrun(FlowError),
}

impl DirectionEnd {
    fn is_finished(&self) -> bool {
        matches!(self, DirectionEnd::Finished)
    }
}

/// What the relay counts of its local socket (for per-port metrics), how it paces it, and
/// what it already read from the stream to write to it first.
pub(crate) struct LocalSide<'a> {
    pub read: &'a AtomicU64,
    pub written: &'a AtomicU64,
    pub pacing: &'a Pacing,
    /// Each chunk in an allocation of its own length.
    pub early: Vec<Bytes>,
}

/// Moves bytes between a local TCP socket and the QUIC stream that carries it, both ways at
/// once, until both directions have finished, each within the credit the receiving end grants
/// (`quic_flow`). A half-close passes through as a half-close; a reset or failure on either
/// side resets the other side (the TCP socket with an RST). `resend` (edge) goes first; when
/// the tunnel ends before the hub acknowledged the stream, the socket comes back untouched
/// with what it sent.
pub(crate) async fn relay(
    socket: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    stream: &OpenStream,
    local: LocalSide<'_>,
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
                (local.read, local.pacing.read()),
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
                (local.written, local.pacing.written()),
                (local.early, &abort),
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
        (_, DirectionEnd::Overrun(error)) => {
            stream.overrun(error);
            ResetReason::Aborted
        }
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
    (read, pace): (&AtomicU64, Option<&Pace>),
    abort: &CancellationToken,
    resend: Option<Box<SentBytes>>,
    unacked: Option<&UnackedStream>,
) -> DirectionEnd {
    let aborted = DirectionEnd::Aborted(ResetReason::Aborted);
    // The peer's STOP_SENDING must end this direction wherever it waits. A write blocked by
    // flow control never reports it (quinn-proto checks the connection's limits before the
    // stream's state), nor does a wait for credit.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    if let Some(resend) = resend {
        // Boxed: its state would make every relay's task larger.
        let first = Box::pin(write_first(send, stream, *resend, unacked));
        let end = tokio::select! {
            _ = abort.cancelled() => Some(DirectionEnd::Aborted(ResetReason::Aborted)),
            stop = &mut stopped => Some(stopped_end(stop)),
            end = first => end,
        };
        if let Some(end) = end {
            return end;
        }
    }
    loop {
        // Reads only with credit in hand, so the peer's relay never holds more than it granted.
        // The read size fits a u32 (at most RELAY_CHUNK_BYTES).
        let credit = tokio::select! {
            _ = abort.cancelled() => return aborted,
            stop = &mut stopped => return stopped_end(stop),
            credit = stream.acquire_send(stream.read_size() as u32) => credit,
        };
        let chunk = loop {
            tokio::select! {
                _ = abort.cancelled() => return aborted,
                stop = &mut stopped => return stopped_end(stop),
                ready = socket.readable() => if ready.is_err() { return aborted },
            }
            match try_read_chunk(socket, credit as usize) {
                Ok(chunk) => break chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return aborted,
            }
        };
        // At most `credit`, a u32.
        stream.settle(credit, chunk.len() as u32);
        if chunk.is_empty() {
            return finish(send, unacked);
        }
        read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if let Some(unacked) = unacked {
            unacked.record(&chunk);
        }
        if let Some(pace) = pace {
            tokio::select! {
                _ = abort.cancelled() => return aborted,
                stop = &mut stopped => return stopped_end(stop),
                _ = pace.take(chunk.len()) => {}
            }
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

/// Writes what the client sent on an earlier tunnel, within credit; `Some` when this direction
/// has ended (it included the client's FIN, or the write failed).
async fn write_first(
    send: &mut SendStream,
    stream: &OpenStream,
    resend: SentBytes,
    unacked: Option<&UnackedStream>,
) -> Option<DirectionEnd> {
    let (chunks, fin) = resend.into_parts();
    for mut chunk in chunks {
        while !chunk.is_empty() {
            // A chunk is at most RESEND_LIMIT_BYTES, which fits a u32.
            let credit = stream.acquire_send(chunk.len() as u32).await;
            stream.settle(credit, credit);
            let part = chunk.split_to(credit as usize);
            if let Some(unacked) = unacked {
                unacked.record(&part);
            }
            if let Some(end) = write_failed(send.write_chunk(part).await) {
                return Some(end);
            }
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

/// QUIC stream to local socket. The stream is read as soon as data arrives, whether or not
/// the socket takes it, so quinn's connection window never fills with one stream's unread
/// bytes; what waits for the socket is bounded by the credit this end granted.
async fn stream_to_socket(
    recv: &mut RecvStream,
    socket: &TcpStream,
    stream: &OpenStream,
    (written, pace): (&AtomicU64, Option<&Pace>),
    (early, abort): (Vec<Bytes>, &CancellationToken),
    unacked: Option<&UnackedStream>,
) -> DirectionEnd {
    let aborted = DirectionEnd::Aborted(ResetReason::Aborted);
    let mut waiting: VecDeque<Bytes> = early.into();
    let mut finished = false;
    // Paced: what arrived is booked at once (the stream is still read as data arrives) and
    // written once its turn has come.
    let mut rate_changes = pace.map_or(0, Pace::rate_changes);
    let mut held_until: Option<Instant> = pace
        .filter(|_| !waiting.is_empty())
        .map(|pace| Instant::now() + pace.book(waiting.iter().map(Bytes::len).sum()));
    loop {
        if let (Some(pace), Some(_)) = (pace, held_until) {
            // A new rate: what waits books its turn again.
            if pace.rate_changes() != rate_changes {
                rate_changes = pace.rate_changes();
                let held: usize = waiting.iter().map(Bytes::len).sum();
                held_until = Some(Instant::now() + pace.book(held));
            }
        }
        if held_until.is_some_and(|until| until <= Instant::now()) {
            held_until = None;
        }
        if finished && waiting.is_empty() {
            return match SockRef::from(socket).shutdown(std::net::Shutdown::Write) {
                Ok(()) => DirectionEnd::Finished,
                Err(_) => aborted,
            };
        }
        tokio::select! {
            _ = abort.cancelled() => return aborted,
            chunk = recv.read_chunk(stream.read_size(), true), if !finished => {
                if let Err(ReadError::ConnectionLost(_)) = chunk {
                    return DirectionEnd::TunnelGone;
                }
                // Anything else comes from the hub, which therefore has the stream.
                if let Some(unacked) = unacked {
                    unacked.answered();
                }
                match chunk {
                    Ok(Some(chunk)) => {
                        if let Err(error) = stream.on_data(chunk.bytes.len()) {
                            return DirectionEnd::Overrun(error);
                        }
                        if let Some(pace) = pace {
                            if held_until.is_none() {
                                rate_changes = pace.rate_changes();
                            }
                            let wait = pace.book(chunk.bytes.len());
                            if !wait.is_zero() {
                                let until = Instant::now() + wait;
                                held_until = Some(held_until.map_or(until, |held| held.max(until)));
                            }
                        }
                        if held_until.is_some() {
                            waiting.push_back(Bytes::copy_from_slice(&chunk.bytes));
                            continue;
                        }
                        let arrived = Some(chunk.bytes);
                        if let Err(end) = write_or_keep(socket, &mut waiting, arrived, stream, written) {
                            return end;
                        }
                        continue;
                    }
                    Ok(None) => finished = true,
                    Err(ReadError::Reset(code)) => return DirectionEnd::Aborted(reset_reason(code)),
                    Err(_) => return aborted,
                }
            }
            ready = socket.writable(), if !waiting.is_empty() && held_until.is_none() => {
                if ready.is_err() {
                    return aborted;
                }
            }
            _ = sleep_until_held(held_until) => continue,
        }
        if held_until.is_none() {
            if let Err(end) = write_or_keep(socket, &mut waiting, None, stream, written) {
                return end;
            }
        }
    }
}

/// Completes at `until`, or after [`RATE_RECHECK`] to look for a new rate; never without one.
async fn sleep_until_held(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until.min(Instant::now() + RATE_RECHECK)).await,
        None => std::future::pending().await,
    }
}

/// Writes what the socket takes now from `waiting`, then `arrived`, and grants the credit
/// that frees. What of `arrived` is left waiting is copied into an allocation of its own
/// length: quinn's chunks are slices of whole receive batches, and a few bytes kept of each
/// would keep every batch alive.
fn write_or_keep(
    socket: &TcpStream,
    waiting: &mut VecDeque<Bytes>,
    arrived: Option<Bytes>,
    stream: &OpenStream,
    written: &AtomicU64,
) -> Result<(), DirectionEnd> {
    let keep_arrived = arrived.is_some();
    waiting.extend(arrived);
    let mut total = 0;
    let outcome = loop {
        let Some(front) = waiting.front_mut() else {
            break Ok(());
        };
        match socket.try_write(front) {
            Ok(n) if n == front.len() => {
                total += n;
                waiting.pop_front();
            }
            Ok(n) => {
                total += n;
                let _ = front.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(_) => break Err(DirectionEnd::Aborted(ResetReason::Aborted)),
        }
    };
    // The last is what is left of `arrived`, if anything is.
    if let (true, Some(last)) = (keep_arrived, waiting.back_mut()) {
        *last = Bytes::copy_from_slice(last);
    }
    if total > 0 {
        written.fetch_add(total as u64, Ordering::Relaxed);
        stream.on_consumed(total);
    }
    outcome
}
