//! UDP on the edge: a session per client address and port, opened with a PROXY v2 header,
//! replies sent back from the listening socket, idle sessions swept away.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::FrameType;
use crate::protocol::proxy::{encode_v2, ProxyAddresses, ProxyTransport};
use crate::transport::recv_batch::ReceiveBatch;
use crate::tunnel::MAX_UDP_SESSIONS_PER_TUNNEL;

use super::{EdgeShared, TunnelLink};

/// Receive buffer asked of the kernel for each UDP listener, so bursts are not lost before
/// the edge reads them (the kernel caps it at net.core.rmem_max).
const LISTENER_RECV_BUFFER: usize = 4 * 1024 * 1024;

struct Session {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    port: u16,
    last_active: Instant,
}

/// The UDP sessions of one tunnel; they end with it, since the hub's sockets end too.
#[derive(Default)]
pub(super) struct UdpSessions {
    table: Mutex<SessionTable>,
    /// Set while the session limit is being hit, so the warning is given once per episode.
    limit_warned: AtomicBool,
}

#[derive(Default)]
struct SessionTable {
    by_id: HashMap<u32, Session>,
    by_client: HashMap<(u16, SocketAddr), u32>,
}

impl SessionTable {
    fn remove(&mut self, id: u32) -> Option<Session> {
        let session = self.by_id.remove(&id)?;
        self.by_client.remove(&(session.port, session.client));
        Some(session)
    }
}

impl UdpSessions {
    fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.table().by_id.len()
    }

    /// The hub ended the session.
    pub fn close(&self, id: u32) {
        self.table().remove(id);
    }

    /// A reply from the target: back to the client from the socket it wrote to.
    pub fn reply(&self, edge: &EdgeShared, id: u32, datagram: &[u8]) {
        let mut table = self.table();
        let Some(session) = table.by_id.get_mut(&id) else {
            return; // in flight when the session ended
        };
        session.last_active = Instant::now();
        if session
            .socket
            .try_send_to(datagram, session.client)
            .is_err()
        {
            edge.count_udp_drop();
        }
    }
}

/// Receives datagrams on one port until cancelled, as many per syscall as are waiting.
pub(super) async fn listen(
    edge: Arc<EdgeShared>,
    socket: Arc<UdpSocket>,
    port: u16,
    cancel: CancellationToken,
) {
    let mut batch = ReceiveBatch::default();
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            received = batch.receive(&socket) => received,
        };
        match received {
            Ok(()) => {
                for (datagram, client) in batch.datagrams() {
                    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
                    carry(&edge, &socket, port, client, datagram);
                }
            }
            // Errors queued by ICMP for earlier replies; the socket itself is fine.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// Sends one client datagram through the tunnel, opening a session for a new client.
fn carry(
    edge: &Arc<EdgeShared>,
    socket: &Arc<UdpSocket>,
    port: u16,
    client: SocketAddr,
    datagram: &[u8],
) {
    let Some(link) = edge.current_link() else {
        edge.count_udp_drop();
        return;
    };
    let id = {
        let mut table = link.udp.table();
        match table.by_client.get(&(port, client)).copied() {
            Some(id) => {
                if let Some(session) = table.by_id.get_mut(&id) {
                    session.last_active = Instant::now();
                }
                id
            }
            None => {
                if table.by_id.len() >= MAX_UDP_SESSIONS_PER_TUNNEL {
                    drop(table);
                    if !link.udp.limit_warned.swap(true, Ordering::Relaxed) {
                        edge.warn(
                            "udpSessionLimit",
                            format!("{MAX_UDP_SESSIONS_PER_TUNNEL} UDP sessions are open; datagrams from new clients are dropped"),
                        );
                    }
                    edge.count_udp_drop();
                    return;
                }
                link.udp.limit_warned.store(false, Ordering::Relaxed);
                let id = link.next_stream_id.fetch_add(1, Ordering::Relaxed);
                let addresses = ProxyAddresses {
                    source: client,
                    destination: SocketAddr::new(destination_ip(edge, socket, client), port),
                };
                let header = Bytes::from(encode_v2(ProxyTransport::Datagram, &addresses));
                if !link.carrier.udp_open(id, header) {
                    drop(table);
                    edge.count_udp_drop(); // the tunnel is going away under us
                    return;
                }
                *edge.totals().udp_sessions_by_port.entry(port).or_default() += 1;
                table.by_client.insert((port, client), id);
                table.by_id.insert(
                    id,
                    Session {
                        socket: socket.clone(),
                        client,
                        port,
                        last_active: Instant::now(),
                    },
                );
                id
            }
        }
    };
    if !link
        .carrier
        .udp_from_slice(id, FrameType::UdpData, datagram)
    {
        edge.count_udp_drop();
    }
}

/// The address the client sent to, as far as the edge knows it: the public IP when STUN found
/// one of the client's family, else the listener's own address (a wildcard listener cannot
/// tell which local address a datagram arrived on without IP_PKTINFO, so it reports the
/// unspecified address).
fn destination_ip(edge: &EdgeShared, socket: &UdpSocket, client: SocketAddr) -> IpAddr {
    let local = match socket.local_addr() {
        Ok(local) if !local.ip().is_unspecified() => local.ip().to_canonical(),
        _ if client.is_ipv4() => IpAddr::from([0, 0, 0, 0]),
        _ => IpAddr::from([0u16; 8]),
    };
    edge.destination_ip(local)
}

/// Ends sessions idle for `idle` (no datagram either way), telling the hub, until the tunnel
/// ends.
pub(super) async fn sweep_idle(link: Arc<TunnelLink>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = link.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let expired: Vec<u32> = {
            let mut table = link.udp.table();
            let now = Instant::now();
            let ids: Vec<u32> = table
                .by_id
                .iter()
                .filter(|(_, s)| now.duration_since(s.last_active) >= idle)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                table.remove(*id);
            }
            ids
        };
        for id in expired {
            link.carrier.udp_close(id);
        }
    }
}

/// Binds a UDP listener with a large receive buffer.
pub(super) fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    crate::transport::bind_udp(address, LISTENER_RECV_BUFFER)
}
