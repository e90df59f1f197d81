//! UDP sessions on the hub. Each session gets its own socket towards `targetHost:<edge port>`,
//! so the target's replies map back to exactly one client; a task per session owns the socket,
//! adds the PROXY v2 header as configured, and ends the session when it has been idle.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::HubWarning;
use crate::lock::Locked;
use crate::protocol::proxy::{encode_v2, ProxyAddresses, ProxyTransport};
use crate::protocol::quic_messages::is_repeated_open;
use crate::transport::gso;
use crate::transport::recv_batch::ReceiveBatch;

use super::options::UdpProxyHeader;
use super::HubShared;
use crate::protocol::control::HubMessage;
use crate::tunnel::bandwidth::Pace;
use crate::tunnel::Carrier;

thread_local! {
    /// Where sessions read their target's replies: one batch per runtime thread, shared by all
    /// the sessions it runs (a read never waits while it holds the batch), so an idle session
    /// holds no receive buffer.
    static REPLY_BATCH: RefCell<ReceiveBatch> = RefCell::new(ReceiveBatch::default());
}

/// Receive buffer asked of the kernel for each session's socket, so a target that answers in
/// bursts (a download, a media stream) is not cut short while the session's task waits for a
/// turn. The default (about 200 KiB) holds some 90 datagrams.
const TARGET_RECV_BUFFER: usize = 1024 * 1024;

/// Datagrams waiting for one session's socket (while it is set up, or the target is slow).
const SESSION_QUEUE_DATAGRAMS: usize = 256;
/// A session keeps its send buffer after a busy turn only up to this size, so an idle
/// session holds no large buffer.
const KEPT_SEND_BUFFER_BYTES: usize = 4096;

struct Flow {
    datagrams: mpsc::Sender<Bytes>,
    /// The bandwidth limits what the client sends passes.
    inbound: Option<Pace>,
    cancel: CancellationToken,
    /// The PROXY header of an open that came as a QUIC datagram: a repeat of it is not data.
    open: Option<Bytes>,
}

/// The UDP sessions of one edge.
#[derive(Default)]
pub(super) struct UdpSessions {
    flows: Mutex<HashMap<u32, Flow>>,
    dropped: AtomicU64,
}

/// Why a UDP_OPEN was turned down.
pub(super) enum Refusal {
    SessionLimit,
}

impl UdpSessions {
    fn flows(&self) -> MutexGuard<'_, HashMap<u32, Flow>> {
        self.flows.locked()
    }

    pub(super) fn len(&self) -> usize {
        self.flows().len()
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(super) fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts session `id`, whose datagrams pass the bandwidth limits `(inbound, outbound)`;
    /// its socket is set up by its own task.
    pub(super) fn open(
        self: &Arc<Self>,
        hub: &Arc<HubShared>,
        carrier: &Carrier<HubMessage>,
        (id, addresses, (inbound, outbound)): (u32, ProxyAddresses, (Option<Pace>, Option<Pace>)),
        open: Option<Bytes>,
        cancel: CancellationToken,
    ) -> Result<(), Refusal> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE_DATAGRAMS);
        {
            let mut flows = self.flows();
            if flows.len() >= hub.options.limits.max_udp_sessions_per_edge {
                return Err(Refusal::SessionLimit);
            }
            flows.insert(
                id,
                Flow {
                    datagrams: tx,
                    inbound,
                    cancel: cancel.clone(),
                    open,
                },
            );
        }
        let run = FlowTask {
            hub: hub.clone(),
            sessions: self.clone(),
            carrier: carrier.clone(),
            id,
            addresses,
            outbound,
        };
        hub.tasks.spawn(run.run(rx, cancel));
        Ok(())
    }

    /// A datagram from the client; dropped (and counted) when the session's queue is full.
    pub(super) fn forward(&self, id: u32, datagram: Bytes) {
        // An unknown session ended while the datagram was in flight.
        if let Some(flow) = self.flows().get(&id) {
            self.queue(flow, datagram);
        }
    }

    /// A QUIC datagram for session `id`: data for a known session, except an exact repeat of
    /// the datagram that opened it. False when the session is unknown.
    pub(super) fn forward_datagram(&self, id: u32, rest: Bytes) -> bool {
        let flows = self.flows();
        let Some(flow) = flows.get(&id) else {
            return false;
        };
        if flow
            .open
            .as_ref()
            .is_some_and(|header| is_repeated_open(&rest, header))
        {
            return true;
        }
        self.queue(flow, rest);
        true
    }

    /// Queues a datagram for its session's task, or counts it as dropped when the queue is full
    /// or it is over the session's bandwidth.
    fn queue(&self, flow: &Flow, datagram: Bytes) {
        if let Some(pace) = &flow.inbound {
            if !pace.admit_datagram(datagram.len()) {
                return self.count_drop();
            }
        }
        if let Err(TrySendError::Full(_)) = flow.datagrams.try_send(datagram) {
            self.count_drop();
        }
    }

    /// The edge ended the session.
    pub(super) fn close(&self, id: u32) {
        if let Some(flow) = self.flows().remove(&id) {
            flow.cancel.cancel();
        }
    }
}

struct FlowTask {
    hub: Arc<HubShared>,
    sessions: Arc<UdpSessions>,
    carrier: Carrier<HubMessage>,
    id: u32,
    addresses: ProxyAddresses,
    /// The bandwidth limits the target's replies pass.
    outbound: Option<Pace>,
}

impl FlowTask {
    async fn run(self, mut datagrams: mpsc::Receiver<Bytes>, cancel: CancellationToken) {
        let port = self.addresses.destination.port();
        let socket = match connect(&self.hub.options.target_host, port).await {
            Ok(socket) => socket,
            Err(e) => {
                self.hub.warn(
                    HubWarning::TargetUnreachable,
                    format!("UDP {}:{port}: {e}", self.hub.options.target_host),
                );
                self.end();
                return;
            }
        };
        let header = Bytes::from(encode_v2(ProxyTransport::Datagram, &self.addresses));
        let mut header_due = self.hub.options.udp_proxy_header != UdpProxyHeader::None;
        let every_datagram = self.hub.options.udp_proxy_header == UdpProxyHeader::EveryDatagram;
        let idle = self.hub.options.udp_idle_timeout;
        let mut expires = Instant::now() + idle;
        let mut run = SegmentRun::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(expires) => break,
                datagram = datagrams.recv() => {
                    let Some(first) = datagram else { return };
                    expires = Instant::now() + idle;
                    // What queued up behind it goes out in the same turn (bounded by the queue's
                    // size, so replies still get their turn), in runs of equal-size datagrams
                    // that leave in one segmented send each.
                    let mut next = Some(first);
                    let mut turn = 0;
                    while let Some(datagram) = next.take() {
                        run.clear();
                        let mut queued = Some(datagram);
                        while let Some(datagram) = queued.take() {
                            let header_now: &[u8] = if header_due { &header } else { &[] };
                            if !run.push(header_now, &datagram) {
                                next = Some(datagram);
                                break;
                            }
                            header_due = every_datagram;
                            turn += 1;
                            if turn < SESSION_QUEUE_DATAGRAMS {
                                queued = datagrams.try_recv().ok();
                            }
                        }
                        // Too large with the header, or an ICMP refusal from the target: the
                        // datagrams are lost, as UDP allows, and counted.
                        let lost = gso::send_segments(&socket, &run.bytes, run.segment).await;
                        for _ in 0..lost {
                            self.sessions.count_drop();
                        }
                    }
                    if run.bytes.capacity() > KEPT_SEND_BUFFER_BYTES {
                        run = SegmentRun::default();
                    }
                }
                ready = socket.readable() => {
                    if ready.is_err() {
                        break;
                    }
                    // An error is stale readiness (WouldBlock) or ECONNREFUSED from an earlier
                    // send's ICMP error: either way the session stays.
                    if self.forward_replies(&socket).is_ok() {
                        expires = Instant::now() + idle;
                    }
                }
            }
        }
        self.end();
    }

    /// Sends the target's waiting replies back through the tunnel, all read in one syscall,
    /// each copied out to its own size.
    fn forward_replies(&self, socket: &UdpSocket) -> std::io::Result<()> {
        REPLY_BATCH.with_borrow_mut(|batch| {
            batch.try_receive(socket)?;
            for (reply, _) in batch.datagrams() {
                if let Some(pace) = &self.outbound {
                    if !pace.admit_datagram(reply.len()) {
                        self.sessions.count_drop();
                        continue;
                    }
                }
                let reply = Bytes::copy_from_slice(reply);
                if !self.carrier.udp(self.id, reply) {
                    self.sessions.count_drop();
                }
            }
            Ok(())
        })
    }

    /// The hub ends the session (idle, or no target): forget it and tell the edge.
    fn end(&self) {
        self.sessions.flows().remove(&self.id);
        self.carrier.send(HubMessage::UdpClose { session: self.id });
    }
}

/// Datagrams of one size laid end to end, to leave in one segmented send.
#[derive(Debug, Default)]
struct SegmentRun {
    bytes: Vec<u8>,
    /// The size of each datagram in the run.
    segment: usize,
    count: usize,
}

impl SegmentRun {
    /// Appends a datagram (`header`, then `payload`) if it can share the run: the same size as
    /// the others, within what one segmented send may carry. The first always fits.
    fn push(&mut self, header: &[u8], payload: &[u8]) -> bool {
        let len = header.len() + payload.len();
        if self.count > 0 {
            let fits = len == self.segment
                && len <= gso::MAX_SEGMENT_BYTES
                && self.count < gso::MAX_SEGMENTS
                && gso::available();
            if !fits {
                return false;
            }
        }
        self.bytes.extend_from_slice(header);
        self.bytes.extend_from_slice(payload);
        self.segment = len;
        self.count += 1;
        true
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.segment = 0;
        self.count = 0;
    }
}

/// A socket of the target's family, connected so only the target's replies arrive.
async fn connect(host: &str, port: u16) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = crate::transport::bind_udp(local, TARGET_RECV_BUFFER)?;
    socket.connect(target).await?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_takes_equal_sizes_up_to_the_limits_of_one_send() {
        let mut run = SegmentRun::default();
        assert!(run.push(b"HDR", &[1; 997]));
        assert!(run.push(b"", &[2; 1000]), "same size without the header");
        assert!(!run.push(b"", &[3; 999]), "another size starts a new run");
        assert_eq!((run.count, run.segment, run.bytes.len()), (2, 1000, 2000));
        assert_eq!(&run.bytes[..4], b"HDR\x01");

        run.clear();
        for _ in 0..gso::MAX_SEGMENTS {
            assert!(run.push(b"", &[0; 100]));
        }
        assert!(!run.push(b"", &[0; 100]), "at most MAX_SEGMENTS");

        // Too large to segment: each goes alone, and the kernel may fragment it.
        run.clear();
        let large = vec![0; gso::MAX_SEGMENT_BYTES + 1];
        assert!(run.push(b"", &large));
        assert!(!run.push(b"", &large));
    }

    #[tokio::test]
    async fn a_session_socket_is_connected_to_the_target_with_room_for_a_burst_of_replies() {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        let socket = connect("127.0.0.1", port).await.unwrap();
        assert_eq!(socket.peer_addr().unwrap(), target.local_addr().unwrap());
        // Linux doubles what it is asked for, up to twice net.core.rmem_max.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map(|max| max.trim().parse().unwrap())
            .unwrap_or(TARGET_RECV_BUFFER);
        let kernel = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        assert_eq!(kernel, 2 * TARGET_RECV_BUFFER.min(rmem_max));

        // A burst larger than one batch comes back whole and in order over several reads.
        let burst = 3 * crate::transport::recv_batch::BATCH_DATAGRAMS;
        let client = socket.local_addr().unwrap();
        for i in 0..burst {
            target
                .send_to(&(i as u32).to_be_bytes(), client)
                .await
                .unwrap();
        }
        let mut batch = ReceiveBatch::default();
        let mut seen = Vec::new();
        while seen.len() < burst {
            tokio::time::timeout(std::time::Duration::from_secs(30), socket.readable())
                .await
                .expect("replies within 5 s")
                .unwrap();
            if batch.try_receive(&socket).is_ok() {
                seen.extend(batch.datagrams().map(|(reply, from)| {
                    assert_eq!(from, target.local_addr().unwrap());
                    u32::from_be_bytes(reply.try_into().unwrap()) as usize
                }));
            }
        }
        assert_eq!(seen, (0..burst).collect::<Vec<_>>());
    }
}
