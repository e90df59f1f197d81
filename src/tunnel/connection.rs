//! A tunnel's connection streams, the same to hub and edge code on both transports: frames
//! through the stream table over TCP+TLS, or a QUIC stream each.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mux::flow::FlowError;
use crate::protocol::control::{ControlMessage, EdgeMessage};
use crate::protocol::dialect::Dialect;
use crate::protocol::frame::{Frame, FrameType};
use crate::protocol::proxy::{encode_v1, ProxyAddresses};

use quinn::{ReadError, RecvStream, SendStream};
use tokio::io::AsyncWriteExt;

use crate::protocol::frame::ResetReason;

use super::bandwidth::Pacing;
use super::quic_flow::{OpenStream, QuicStreams};
use super::quic_link::{relay, reset_reason, reset_stream, LocalSide};
use super::retry::{ClientConnection, UnackedStream, UnackedStreams};
use super::stream::{
    pump, reset_frame, Resend, SocketBytes, StreamPort, StreamTable, EDGE_SIDE, HUB_SIDE,
};
use super::writer::FrameSender;
use super::{Carrier, OnDrop};

/// The connection streams one tunnel carries now, whichever the transport.
pub(crate) struct ConnectionStreams {
    /// Streams over TCP+TLS.
    table: Arc<StreamTable>,
    /// Streams over QUIC.
    quic: QuicStreams,
    /// Streams the hub has not acknowledged yet (edge).
    unacked: Arc<UnackedStreams>,
    /// The edge's next stream id in the low 32 bits (ids never repeat within a tunnel), and
    /// [`IDS_CLOSED`] once the tunnel takes no more (GOAWAY).
    next_id: AtomicU64,
}

/// Set in `next_id` once no more ids are handed out (above any id, and above the count past
/// the last one).
const IDS_CLOSED: u64 = 1 << 40;

impl ConnectionStreams {
    /// `budget` is the tunnel's buffer budget per direction, which the streams share;
    /// `dialect` is the peer's; `carrier` the tunnel's transport.
    pub(crate) fn new<M: ControlMessage>(
        budget: u32,
        dialect: Dialect,
        carrier: &Carrier<M>,
    ) -> Self {
        let quic_peer = match carrier {
            Carrier::Frames(_) => None,
            Carrier::Quic(link) => Some(link.peer()),
        };
        Self {
            table: Arc::new(StreamTable::new(budget, dialect)),
            quic: QuicStreams::new(budget, quic_peer),
            unacked: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Streams open now.
    pub(crate) fn len(&self) -> usize {
        self.table.len() + self.quic.get()
    }

    /// The stream table frames are delivered to (TCP+TLS).
    pub(crate) fn table(&self) -> &Arc<StreamTable> {
        &self.table
    }

    /// The QUIC relays: how many, and each one's credit.
    pub(crate) fn quic(&self) -> &QuicStreams {
        &self.quic
    }

    /// Carries a client's connection to the hub on a stream of its own (edge): an OPEN frame
    /// and a pump, or a QUIC stream announced by its PROXY line and a relay, what it sent on an
    /// earlier tunnel first. The id of a UDP session comes from the same counter (`next_id`).
    /// Hands the client back when no stream could be opened (the tunnel is going away), and to
    /// `unacked` when the tunnel ends before the hub acknowledged the stream.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn carry_client(
        &self,
        carrier: &Carrier<EdgeMessage>,
        tasks: &TaskTracker,
        client: ClientConnection,
        addresses: ProxyAddresses,
        bytes: Arc<SocketBytes>,
        cancel: CancellationToken,
        unacked: impl FnOnce(ClientConnection) + Send + 'static,
    ) -> Result<(), ClientConnection> {
        match carrier {
            Carrier::Frames(frames) => {
                let Some(id) = self.next_id() else {
                    return Err(client);
                };
                let Some(port) = self.table.open(id, bytes) else {
                    return Err(client);
                };
                let tracked = self
                    .table
                    .dialect()
                    .acknowledges_opens()
                    .then(|| UnackedStream::track(&self.unacked, id));
                let open = Frame::new(id, FrameType::Open, Bytes::from(encode_v1(&addresses)));
                if !frames.control(open) {
                    self.table.remove(id);
                    return Err(client);
                }
                let (frames, table) = (frames.clone(), self.table.clone());
                tasks.spawn(async move {
                    let ClientConnection {
                        socket,
                        resend,
                        carries,
                        lease,
                    } = client;
                    let resend = Resend {
                        sent: resend,
                        unacked: tracked,
                    };
                    let end = pump(socket, id, EDGE_SIDE, port, frames, cancel, resend).await;
                    table.remove(id);
                    if let Err(lost) = end {
                        unacked(lost.into_client(carries, lease));
                    }
                });
            }
            Carrier::Quic(quic) => {
                // QUIC numbers its own streams; the id only says the tunnel still takes them.
                if self.next_id().is_none() {
                    return Err(client);
                }
                let connection = quic.connection.clone();
                let mut open = self.quic.open();
                let unacked_streams = self.unacked.clone();
                tasks.spawn(async move {
                    let ClientConnection {
                        socket,
                        resend,
                        carries,
                        lease,
                    } = client;
                    // A stream of its own, announced by its first bytes: the PROXY line. The
                    // hub acknowledges it by its index, like an id over TCP+TLS.
                    let stream = async {
                        let (mut send, recv) = connection.open_bi().await.ok()?;
                        let index = u32::try_from(send.id().index()).unwrap_or(u32::MAX);
                        open.attach(index);
                        let tracked = UnackedStream::track(&unacked_streams, index);
                        send.write_all(&encode_v1(&addresses)).await.ok()?;
                        Some((send, recv, tracked))
                    };
                    let stream = tokio::select! {
                        _ = cancel.cancelled() => None,
                        stream = stream => stream,
                    };
                    let Some((send, recv, tracked)) = stream else {
                        // The tunnel ended before the stream was announced: the hub has none
                        // of it.
                        return unacked(ClientConnection::after_lost_tunnel(
                            socket, resend, carries, lease,
                        ));
                    };
                    let local = LocalSide {
                        read: &bytes.read,
                        written: &bytes.written,
                        pacing: &Pacing::default(),
                        early: Vec::new(),
                    };
                    let resend = Resend {
                        sent: resend,
                        unacked: Some(tracked),
                    };
                    let end = relay(socket, send, recv, &open, local, &cancel, resend).await;
                    if let Some(lost) = end {
                        unacked(lost.into_client(carries, lease));
                    }
                });
            }
        }
        Ok(())
    }

    /// The hub acknowledged the edge's stream `id` (over QUIC, the stream's index).
    pub(crate) fn acknowledged(&self, id: u32) {
        self.unacked.acknowledged(id);
    }

    /// The id for a new stream or UDP session opened by the edge; None once closed.
    pub(crate) fn next_id(&self) -> Option<u32> {
        self.next_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                // Past u32::MAX ids would repeat: the tunnel takes no more.
                (next & IDS_CLOSED == 0 && next <= u64::from(u32::MAX)).then_some(next + 1)
            })
            .ok()
            .map(|id| id as u32)
    }

    /// Hands out no more ids, atomically with `next_id`; returns the last one handed out (0
    /// for none).
    pub(crate) fn close_ids(&self) -> u32 {
        let next = self.next_id.fetch_or(IDS_CLOSED, Ordering::AcqRel) & !IDS_CLOSED;
        next.saturating_sub(1).min(u64::from(u32::MAX)) as u32
    }
}

/// A connection stream the edge opened and the hub admitted, waiting for its target.
pub(crate) enum IncomingStream {
    Frames(FramesStream),
    Quic(QuicAdmittedStream),
}

/// What carries an admitted stream once its target is known: connecting it and the carrying
/// itself. `run` is generic, so each transport's task is a future of its own size.
pub(crate) trait StreamJob: Send + 'static {
    fn run<S: CarriedStream>(self, stream: S) -> impl Future<Output = ()> + Send;
}

/// An admitted stream of one transport.
pub(crate) trait CarriedStream: Send + 'static {
    /// Moves bytes between `target` and the stream, at the pace of `pacing`, until both
    /// directions are done, either side resets, or `cancel` fires.
    fn carry(
        self,
        target: TcpStream,
        pacing: Pacing,
        cancel: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;
    /// Resets the stream with `reason`.
    fn refuse(self, reason: ResetReason);
    /// Waits for `connect` while the stream keeps taking what the peer sends, within its
    /// credit (over TCP+TLS the frame reader fills the stream's inbox meanwhile), so streams
    /// whose target is slow to answer hold nothing of a window the tunnel's streams share.
    fn while_connecting<T: Send>(
        &mut self,
        connect: impl Future<Output = T> + Send,
    ) -> impl Future<Output = T> + Send;
}

impl IncomingStream {
    /// Runs `job` for this stream as a task of `tasks`.
    pub(crate) fn spawn(self, tasks: &TaskTracker, job: impl StreamJob) {
        match self {
            IncomingStream::Frames(stream) => tasks.spawn(job.run(stream)),
            IncomingStream::Quic(stream) => tasks.spawn(job.run(stream)),
        };
    }
}

/// Over TCP+TLS: its end of the stream table, which it leaves when it ends.
pub(crate) struct FramesStream {
    pub(crate) id: u32,
    pub(crate) port: StreamPort,
    pub(crate) frames: FrameSender,
    pub(crate) table: Arc<StreamTable>,
}

impl CarriedStream for FramesStream {
    async fn carry(self, target: TcpStream, pacing: Pacing, cancel: &CancellationToken) {
        let FramesStream {
            id,
            mut port,
            frames,
            table,
        } = self;
        port.pacing = pacing;
        // Also on a panic.
        let _left = OnDrop::new(|| table.remove(id));
        // The hub's side keeps nothing to send again: it never gets Err.
        let _ = pump(
            target,
            id,
            HUB_SIDE,
            port,
            frames,
            cancel.child_token(),
            Resend::default(),
        )
        .await;
    }

    async fn while_connecting<T: Send>(&mut self, connect: impl Future<Output = T> + Send) -> T {
        connect.await
    }

    fn refuse(self, reason: ResetReason) {
        self.table.remove(self.id);
        let reset = reset_frame(self.id, HUB_SIDE, reason, self.table.dialect());
        self.frames.control(reset);
    }
}

/// Over QUIC: the stream, and what its target reads and is written.
pub(crate) struct QuicAdmittedStream {
    pub(crate) stream: QuicConnectionStream,
    pub(crate) bytes: Arc<SocketBytes>,
}

impl CarriedStream for QuicAdmittedStream {
    /// Writes what arrived before the relay ran to `target` first.
    async fn carry(self, mut target: TcpStream, pacing: Pacing, cancel: &CancellationToken) {
        let QuicAdmittedStream { stream, bytes } = self;
        let QuicConnectionStream {
            mut send,
            mut recv,
            open,
            early,
        } = stream;
        // A paced stream's early bytes wait in the relay, which goes on reading the stream
        // meanwhile (unread, they would hold quinn's connection window).
        let (unpaced, paced) = match pacing.written() {
            Some(_) => (Vec::new(), early.data),
            None => (early.data, Vec::new()),
        };
        let mut written = 0;
        for chunk in &unpaced {
            if target.write_all(chunk).await.is_err() {
                reset_stream(&mut send, &mut recv, ResetReason::Unreachable);
                return;
            }
            written += chunk.len();
        }
        bytes.written.fetch_add(written as u64, Ordering::Relaxed);
        open.on_consumed(written);
        if let Some(reason) = early.aborted {
            reset_stream(&mut send, &mut recv, reason);
            // An abort, so the target does not take it for a complete request.
            let _ = socket2::SockRef::from(&target).set_linger(Some(std::time::Duration::ZERO));
            return;
        }
        let local = LocalSide {
            read: &bytes.read,
            written: &bytes.written,
            pacing: &pacing,
            early: paced,
        };
        relay(target, send, recv, &open, local, cancel, Resend::default()).await;
    }

    fn refuse(self, reason: ResetReason) {
        self.stream.reset(reason);
    }

    async fn while_connecting<T: Send>(&mut self, connect: impl Future<Output = T> + Send) -> T {
        let stream = &mut self.stream;
        tokio::pin!(connect);
        loop {
            tokio::select! {
                connected = &mut connect => return connected,
                chunk = stream.recv.read_chunk(EARLY_READ_BYTES, true), if stream.early.reading => {
                    stream.take_early(chunk);
                }
            }
        }
    }
}

/// The most a stream waiting for its target reads at once (its credit is 64 KiB until then).
const EARLY_READ_BYTES: usize = 16 * 1024;

/// What a connection stream received before its relay ran.
struct EarlyData {
    /// Each chunk in an allocation of its own length.
    data: Vec<Bytes>,
    /// Still reading: no FIN, reset or overrun yet.
    reading: bool,
    /// The peer reset the stream, or sent past its credit: it ends with this reason.
    aborted: Option<ResetReason>,
}

/// A QUIC connection stream whose PROXY line has been read.
pub(crate) struct QuicConnectionStream {
    pub send: SendStream,
    pub recv: RecvStream,
    /// Its place among the tunnel's open relays, and its credit.
    pub open: OpenStream,
    early: EarlyData,
}

impl QuicConnectionStream {
    /// The stream, with `leftover`, what arrived after its PROXY line.
    pub(crate) fn announced(
        send: SendStream,
        recv: RecvStream,
        open: OpenStream,
        leftover: Bytes,
    ) -> Result<Self, FlowError> {
        open.on_data(leftover.len())?;
        Ok(Self {
            send,
            recv,
            open,
            early: EarlyData {
                data: vec![leftover],
                reading: true,
                aborted: None,
            },
        })
    }

    /// Keeps a read made before the relay runs.
    fn take_early(&mut self, chunk: Result<Option<quinn::Chunk>, ReadError>) {
        let early = &mut self.early;
        match chunk {
            Ok(Some(chunk)) => match self.open.on_data(chunk.bytes.len()) {
                // A copy: quinn's chunk is a slice of a whole receive batch.
                Ok(()) => early.data.push(Bytes::copy_from_slice(&chunk.bytes)),
                Err(overrun) => {
                    self.open.overrun(overrun);
                    early.aborted = Some(ResetReason::Aborted);
                    early.reading = false;
                }
            },
            // The relay reads the FIN again; a lost connection it meets too.
            Ok(None) | Err(ReadError::ConnectionLost(_)) => early.reading = false,
            // A reset is reported once: after it quinn reads as a FIN.
            Err(ReadError::Reset(code)) => {
                early.aborted = Some(reset_reason(code));
                early.reading = false;
            }
            Err(_) => {
                early.aborted = Some(ResetReason::Aborted);
                early.reading = false;
            }
        }
    }

    /// Resets both directions with `reason`.
    pub(crate) fn reset(mut self, reason: ResetReason) {
        reset_stream(&mut self.send, &mut self.recv, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_id_is_handed_out_once_closed_and_the_last_one_is_known() {
        let (frames, _queues) = super::super::writer::frame_channel();
        let carrier = Carrier::<EdgeMessage>::Frames(frames);
        let streams = ConnectionStreams::new(1 << 20, Dialect::RemoteIngress1, &carrier);
        assert_eq!(streams.next_id(), Some(1));
        assert_eq!(streams.next_id(), Some(2));
        assert_eq!(streams.close_ids(), 2);
        assert_eq!(streams.next_id(), None);
        assert_eq!(streams.close_ids(), 2, "closing again changes nothing");
        let unused = ConnectionStreams::new(1 << 20, Dialect::RemoteIngress1, &carrier);
        assert_eq!(unused.close_ids(), 0);
        assert_eq!(unused.next_id(), None);
    }
}
