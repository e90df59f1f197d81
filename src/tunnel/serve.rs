//! Serving a logged-in tunnel, the same code for both ends and both transports: the writer
//! task, the reader with its heartbeat, and (over QUIC) the datagram, oversized-datagram and
//! connection-stream tasks. What arrives goes to the end's [`TunnelEnd`] handler.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lock::Locked;
use crate::protocol::control::{ControlMessage, EdgeMessage, HubMessage};
use crate::protocol::dialect::Dialect;
use crate::protocol::frame::{EdgeFrame, Frame, FrameError, HubFrame, ResetReason, StreamFrame};
use crate::protocol::proxy::{parse_v1, ProxyAddresses, ProxyHeader, PROXY_V1_MAX_LEN};
use crate::transport::quic_endpoint::{
    close_and_send, grant_tunnel_limits, CLOSE_PROTOCOL_ERROR, CLOSE_SESSION_ENDED,
};
use crate::transport::tls_stream::{TlsConnection, TlsReader};

use super::connection::{
    ConnectionStreams, FramesStream, IncomingStream, QuicAdmittedStream, QuicConnectionStream,
};
use super::quic_link::{
    control_channel, receive_datagrams, receive_oversized, reset_stream, run_control_writer,
    ControlReader, QuicLink,
};
use super::reader::FrameReader;
use super::receive_loop::{run_tunnel_loop, Heartbeat, MessageSource};
use super::stream::{reset_frame, SocketBytes, StreamTable, HUB_SIDE};
use super::writer::{frame_channel, run_writer, FrameQueues, FrameSender};
use super::{deliver, spawn_until, Carrier, TunnelError, Violation};

/// A tunnel whose login is done, before it is served.
pub(crate) enum LoggedIn {
    Tls {
        connection: Box<TlsConnection>,
        /// What arrived after the login line.
        leftover: BytesMut,
        /// The peer's, by its ALPN.
        dialect: Dialect,
    },
    Quic {
        connection: Connection,
        /// The control stream.
        send: SendStream,
        recv: RecvStream,
        leftover: BytesMut,
        /// The edge's own endpoint, which owns its socket; kept until the tunnel ends.
        endpoint: Option<quinn::Endpoint>,
    },
}

/// How long a refused peer gets to receive its answer before the connection closes.
const REFUSAL_DELIVERY: Duration = Duration::from_secs(1);

/// A logged-in tunnel with the queue its writer task will drain, of the same transport.
pub(crate) enum ReadyTunnel<M> {
    Tls {
        connection: Box<TlsConnection>,
        leftover: BytesMut,
        frames: FrameSender,
        queues: Box<FrameQueues>,
    },
    Quic {
        connection: Connection,
        send: SendStream,
        recv: RecvStream,
        leftover: BytesMut,
        endpoint: Option<quinn::Endpoint>,
        queue: UnboundedReceiver<M>,
    },
}

impl LoggedIn {
    pub(crate) fn tls(connection: TlsConnection, leftover: BytesMut, dialect: Dialect) -> Self {
        // Best effort: without a round-trip estimate the kernel's autotuning stays.
        let _ = crate::transport::bound_receive_buffer(connection.reader.tcp());
        LoggedIn::Tls {
            connection: Box::new(connection),
            leftover,
            dialect,
        }
    }

    /// The kernel's round-trip estimate for a TCP+TLS tunnel (None over QUIC, or unknown).
    pub(crate) fn round_trip(&self) -> Option<Duration> {
        match self {
            LoggedIn::Tls { connection, .. } => {
                crate::transport::smoothed_rtt(connection.reader.tcp())
                    .ok()
                    .filter(|rtt| *rtt != Duration::MAX)
            }
            LoggedIn::Quic { .. } => None,
        }
    }

    /// The protocol the peer speaks: over QUIC always ours.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            LoggedIn::Tls { dialect, .. } => *dialect,
            LoggedIn::Quic { .. } => Dialect::RemoteIngress1,
        }
    }

    /// The sending half every task of this end uses (`M` is what this end sends), and the
    /// tunnel with the queue its writer will drain.
    pub(crate) fn ready<M: ControlMessage>(
        self,
        tasks: &TaskTracker,
    ) -> (Carrier<M>, ReadyTunnel<M>) {
        match self {
            LoggedIn::Tls {
                connection,
                leftover,
                dialect: _,
            } => {
                let (frames, queues) = frame_channel();
                let ready = ReadyTunnel::Tls {
                    connection,
                    leftover,
                    frames: frames.clone(),
                    queues: Box::new(queues),
                };
                (Carrier::Frames(frames), ready)
            }
            LoggedIn::Quic {
                connection,
                send,
                recv,
                leftover,
                endpoint,
            } => {
                let (control, queue) = control_channel();
                let link = QuicLink::new(connection.clone(), control, tasks.clone());
                let ready = ReadyTunnel::Quic {
                    connection,
                    send,
                    recv,
                    leftover,
                    endpoint,
                    queue,
                };
                (Carrier::Quic(link), ready)
            }
        }
    }
}

impl<M: ControlMessage> ReadyTunnel<M> {
    /// Where the login answer is written, before the writer task takes over.
    pub(crate) fn login_writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            ReadyTunnel::Tls { connection, .. } => &mut connection.writer,
            ReadyTunnel::Quic { send, .. } => send,
        }
    }

    /// Ends a connection whose login was refused, once the answer has been sent (bounded in
    /// time: the peer may not be reading).
    pub(crate) async fn close_refused(self) {
        match self {
            ReadyTunnel::Tls { mut connection, .. } => {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(REFUSAL_DELIVERY, connection.writer.shutdown()).await;
            }
            ReadyTunnel::Quic {
                connection,
                mut send,
                ..
            } => {
                let _ = send.finish();
                // Delivered before the close, as the edge reads the refusal before the close.
                let _ = tokio::time::timeout(REFUSAL_DELIVERY, send.stopped()).await;
                connection.close(CLOSE_SESSION_ENDED, b"unauthorized");
            }
        }
    }

    /// Lets the edge open as many streams, and send as much, as the hub's limits allow (QUIC;
    /// over TCP+TLS the stream table and windows enforce them).
    pub(crate) fn grant_edge_limits(&self, max_streams: u32, tunnel_buffer_bytes: u32) {
        if let ReadyTunnel::Quic { connection, .. } = self {
            grant_tunnel_limits(connection, max_streams, tunnel_buffer_bytes);
        }
    }
}

/// What one end does with what its peer sends; the tunnel calls it from its tasks.
pub(crate) trait TunnelEnd: Send + Sync + Sized + 'static {
    /// What this end sends.
    type Sends: ControlMessage;
    /// The frames the peer sends, decoded for their direction.
    type PeerFrame: PeerFrame;

    fn carrier(&self) -> &Carrier<Self::Sends>;
    fn streams(&self) -> &ConnectionStreams;

    fn on_control(
        self: &Arc<Self>,
        message: <Self::PeerFrame as PeerFrame>::Message,
    ) -> Result<(), TunnelError>;

    /// A UDP payload for `session`.
    fn on_udp(self: &Arc<Self>, session: u32, payload: Bytes);

    /// A QUIC datagram: a UDP payload, unless the end also reads opens from datagrams.
    fn on_datagram(self: &Arc<Self>, session: u32, rest: Bytes) {
        self.on_udp(session, rest);
    }

    /// A connection stream the peer opened.
    fn on_stream(self: &Arc<Self>, stream: NewStream) -> Result<(), TunnelError>;
}

/// A frame as it reaches the handler.
pub(crate) enum Routed<M> {
    Open {
        stream: u32,
        addresses: ProxyAddresses,
    },
    Stream(StreamFrame),
    Udp {
        session: u32,
        payload: Bytes,
    },
    Control(M),
}

/// The frames one end receives: decoded for their direction, then routed.
pub(crate) trait PeerFrame: Sized {
    type Message: ControlMessage;
    fn decode(frame: Frame) -> Result<Self, FrameError>;
    fn route(self) -> Routed<Self::Message>;
}

impl PeerFrame for EdgeFrame {
    type Message = EdgeMessage;

    fn decode(frame: Frame) -> Result<Self, FrameError> {
        EdgeFrame::decode(frame)
    }

    fn route(self) -> Routed<EdgeMessage> {
        match self {
            EdgeFrame::Open { stream, addresses } => Routed::Open { stream, addresses },
            EdgeFrame::Stream(frame) => Routed::Stream(frame),
            EdgeFrame::UdpData { session, payload } => Routed::Udp { session, payload },
            EdgeFrame::Control(message) => Routed::Control(message),
        }
    }
}

impl PeerFrame for HubFrame {
    type Message = HubMessage;

    fn decode(frame: Frame) -> Result<Self, FrameError> {
        HubFrame::decode(frame)
    }

    fn route(self) -> Routed<HubMessage> {
        match self {
            HubFrame::Stream(frame) => Routed::Stream(frame),
            HubFrame::UdpData { session, payload } => Routed::Udp { session, payload },
            HubFrame::Control(message) => Routed::Control(message),
        }
    }
}

/// A connection stream the peer opened, before this end admits or refuses it.
pub(crate) struct NewStream {
    pub id: u32,
    pub addresses: ProxyAddresses,
    pending: PendingStream,
}

enum PendingStream {
    Frames {
        frames: FrameSender,
        table: Arc<StreamTable>,
    },
    Quic(QuicConnectionStream),
}

impl NewStream {
    /// The id when it comes from the counter UDP sessions share (TCP+TLS), which must grow;
    /// a QUIC stream's id is QUIC's own.
    pub(crate) fn shared_counter_id(&self) -> Option<u32> {
        matches!(self.pending, PendingStream::Frames { .. }).then_some(self.id)
    }

    /// Whether the tunnel carries `max` streams already. Over QUIC the stream limit granted
    /// to the peer holds further streams back, so they never get this far.
    pub(crate) fn over_limit(&self, max: usize) -> bool {
        match &self.pending {
            PendingStream::Frames { table, .. } => table.len() >= max,
            PendingStream::Quic(_) => false,
        }
    }

    /// Admits the stream; `bytes` counts what its target reads and is written.
    pub(crate) fn admit(self, bytes: Arc<SocketBytes>) -> Result<IncomingStream, TunnelError> {
        Ok(match self.pending {
            PendingStream::Frames { frames, table } => {
                let Some(port) = table.open(self.id, bytes) else {
                    return Err(Violation::StreamOpenedTwice(self.id).into());
                };
                IncomingStream::Frames(FramesStream {
                    id: self.id,
                    port,
                    frames,
                    table,
                })
            }
            PendingStream::Quic(stream) => {
                IncomingStream::Quic(QuicAdmittedStream { stream, bytes })
            }
        })
    }

    /// Resets the stream with `reason`.
    pub(crate) fn refuse(self, reason: ResetReason) {
        match self.pending {
            PendingStream::Frames { frames, table } => {
                frames.control(reset_frame(self.id, HUB_SIDE, reason, table.dialect()));
            }
            PendingStream::Quic(stream) => stream.reset(reason),
        }
    }
}

/// How a tunnel is served.
pub(crate) struct ServeOptions<'a> {
    pub tasks: &'a TaskTracker,
    /// Ends the tunnel; its tasks stop with it.
    pub cancel: &'a CancellationToken,
    /// Silence is checked this often; the end that pings pings this often.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub pings: bool,
    /// A QUIC connection stream must announce its client within this.
    pub announce_timeout: Duration,
    /// Tunnel bytes read and written (TCP+TLS; QUIC counts its own).
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: Arc<AtomicU64>,
    /// The close code a QUIC tunnel ends with, unless the peer broke the protocol.
    pub quic_close_code: quinn::VarInt,
}

/// Serves a tunnel until it ends and returns why. Over QUIC the connection is closed with
/// `close_reason(&ended)`, sent before this returns.
pub(crate) async fn serve<E: TunnelEnd>(
    end: &Arc<E>,
    tunnel: ReadyTunnel<E::Sends>,
    options: ServeOptions<'_>,
    close_reason: impl FnOnce(&TunnelError) -> String,
) -> TunnelError {
    let ping = || {
        end.carrier().ping();
    };
    let heartbeat = Heartbeat {
        interval: options.heartbeat_interval,
        timeout: options.heartbeat_timeout,
        ping: options.pings.then_some(&ping as &(dyn Fn() + Sync)),
    };
    // A task that finds the peer broke the protocol ends the tunnel with it.
    let failure = Arc::new(Failure::new(options.cancel));
    let cancel = &failure.cancel;
    let ended = match tunnel {
        ReadyTunnel::Tls {
            connection,
            leftover,
            frames,
            queues,
        } => {
            let TlsConnection { reader, writer, .. } = *connection;
            let writer = options.tasks.spawn(run_writer(
                writer,
                *queues,
                cancel.clone(),
                options.bytes_out.clone(),
            ));
            let reader = TlsFrames {
                reader: FrameReader::new(reader, leftover, options.bytes_in.clone()),
                table: end.streams().table().clone(),
                sample_at: Instant::now(),
            };
            run_tunnel_loop(reader, writer, cancel, heartbeat, |frame| {
                on_frame(end, &frames, frame)
            })
            .await
        }
        ReadyTunnel::Quic {
            connection,
            send,
            recv,
            leftover,
            endpoint: _endpoint,
            queue,
        } => {
            spawn_quic_receivers(end, &connection, &options, &failure);
            let writer = options
                .tasks
                .spawn(run_control_writer(send, queue, cancel.clone()));
            let reader = ControlReader::new(recv, leftover);
            let ended = run_tunnel_loop(reader, writer, cancel, heartbeat, |message| {
                end.on_control(message)
            })
            .await;
            let overrun = || end.streams().quic().take_overrun().map(TunnelError::from);
            let ended = failure.take().or_else(overrun).unwrap_or(ended);
            let code = if ended.is_protocol_error() {
                CLOSE_PROTOCOL_ERROR
            } else {
                options.quic_close_code
            };
            close_and_send(&connection, code, close_reason(&ended).as_bytes()).await;
            return ended;
        }
    };
    failure.take().unwrap_or(ended)
}

/// How often a TCP+TLS tunnel passes the kernel's round-trip estimate to its streams.
const ROUND_TRIP_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// The frames of a TCP+TLS tunnel. While they arrive, the kernel's round-trip estimate for
/// the socket is passed to the stream table, whose receive windows grow with it.
struct TlsFrames {
    reader: FrameReader<TlsReader>,
    table: Arc<StreamTable>,
    sample_at: Instant,
}

impl MessageSource for TlsFrames {
    type Message = Frame;
    fn next(&mut self) -> impl Future<Output = Result<Frame, TunnelError>> + Send {
        let now = Instant::now();
        if now >= self.sample_at {
            self.sample_at = now + ROUND_TRIP_SAMPLE_INTERVAL;
            // Best effort: without an estimate windows keep their share of the budget.
            if let Ok(rtt) = crate::transport::smoothed_rtt(self.reader.io().tcp()) {
                self.table.round_trip().set(rtt);
            }
        }
        self.reader.next()
    }
}

fn on_frame<E: TunnelEnd>(
    end: &Arc<E>,
    frames: &FrameSender,
    frame: Frame,
) -> Result<(), TunnelError> {
    match E::PeerFrame::decode(frame)?.route() {
        Routed::Open { stream, addresses } => end.on_stream(NewStream {
            id: stream,
            addresses,
            pending: PendingStream::Frames {
                frames: frames.clone(),
                table: end.streams().table().clone(),
            },
        })?,
        Routed::Stream(frame) => deliver(end.streams().table(), frame)?,
        Routed::Udp { session, payload } => end.on_udp(session, payload),
        Routed::Control(message) => end.on_control(message)?,
    }
    Ok(())
}

/// The first error a task other than the reader found; it ends the tunnel.
struct Failure {
    cancel: CancellationToken,
    error: Mutex<Option<TunnelError>>,
}

impl Failure {
    fn new(parent: &CancellationToken) -> Self {
        Self {
            cancel: parent.child_token(),
            error: Mutex::new(None),
        }
    }

    fn fail(&self, error: TunnelError) {
        self.error.locked().get_or_insert(error);
        self.cancel.cancel();
    }

    fn take(&self) -> Option<TunnelError> {
        self.error.locked().take()
    }
}

fn spawn_quic_receivers<E: TunnelEnd>(
    end: &Arc<E>,
    connection: &Connection,
    options: &ServeOptions<'_>,
    failure: &Arc<Failure>,
) {
    let (tasks, cancel) = (options.tasks, &failure.cancel);
    let datagrams = end.clone();
    spawn_until(
        tasks,
        cancel,
        receive_datagrams(connection.clone(), move |session, rest| {
            datagrams.on_datagram(session, rest)
        }),
    );
    let oversized = end.clone();
    spawn_until(
        tasks,
        cancel,
        receive_oversized(
            connection.clone(),
            tasks.clone(),
            move |session, payload| oversized.on_udp(session, payload),
        ),
    );
    let (streams, connection, failure) = (end.clone(), connection.clone(), failure.clone());
    let (stream_tasks, announce_timeout) = (tasks.clone(), options.announce_timeout);
    spawn_until(tasks, cancel, async move {
        while let Ok((send, recv)) = connection.accept_bi().await {
            let (end, failure) = (streams.clone(), failure.clone());
            stream_tasks.spawn(async move {
                let announced = announced_stream(&end, send, recv, announce_timeout).await;
                if let Err(e) = announced.and_then(|stream| match stream {
                    Some(stream) => end.on_stream(stream),
                    None => Ok(()),
                }) {
                    failure.fail(e);
                }
            });
        }
    });
}

/// Reads a QUIC connection stream's announcement, its PROXY line. `Ok(None)` when the stream
/// was reset (and is reset back) or the tunnel ended first.
async fn announced_stream<E: TunnelEnd>(
    end: &Arc<E>,
    mut send: SendStream,
    mut recv: RecvStream,
    announce_timeout: Duration,
) -> Result<Option<NewStream>, TunnelError> {
    // Stream 0 is the control stream, so connection streams count from 1 as over TLS.
    let id = u32::try_from(send.id().index()).unwrap_or(u32::MAX);
    let mut open = end.streams().quic().open();
    open.attach(id);
    let line = tokio::time::timeout(announce_timeout, read_proxy_line(&mut recv)).await;
    match line {
        Ok(Ok((addresses, leftover))) => Ok(Some(NewStream {
            id,
            addresses,
            pending: PendingStream::Quic(QuicConnectionStream::announced(
                send, recv, open, leftover,
            )?),
        })),
        Ok(Err(LineFailure::Bad(reason))) => {
            Err(Violation::BadConnectionStream { stream: id, reason }.into())
        }
        Ok(Err(LineFailure::Gone)) | Err(_) => {
            reset_stream(&mut send, &mut recv, ResetReason::Aborted);
            Ok(None)
        }
    }
}

/// Why a connection stream's PROXY line could not be read.
enum LineFailure {
    /// Not a PROXY v1 line with addresses: a protocol error.
    Bad(String),
    /// The stream was reset or the tunnel ended first.
    Gone,
}

async fn read_proxy_line(recv: &mut RecvStream) -> Result<(ProxyAddresses, Bytes), LineFailure> {
    let mut buf = BytesMut::new();
    loop {
        match parse_v1(&buf) {
            Ok(Some((ProxyHeader::Addresses(addresses), used))) => {
                return Ok((addresses, buf.split_off(used).freeze()));
            }
            Ok(Some(_)) => return Err(LineFailure::Bad("PROXY UNKNOWN".into())),
            Ok(None) => {}
            Err(e) => return Err(LineFailure::Bad(e.to_string())),
        }
        // At most one line's worth: what follows it is the relay's.
        match recv
            .read_chunk(PROXY_V1_MAX_LEN - buf.len().min(PROXY_V1_MAX_LEN - 1), true)
            .await
        {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return Err(LineFailure::Gone),
        }
    }
}
