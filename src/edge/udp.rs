//! UDP on the edge: a session per client address and port, opened with a PROXY v2 header,
//! replies sent back from the listening socket, idle sessions swept away.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::EdgeWarning;
use crate::lock::Locked;
use crate::protocol::control::{EdgeMessage, UdpOpen};
use crate::protocol::proxy::ProxyAddresses;
use crate::transport::recv_batch::ReceiveBatch;

use crate::source::SourceCounts;

use super::gate::{ClientRefusal, PortGate, SourceLease, UDP_SESSIONS_PER_SOURCE_DIVISOR};
use super::{EdgeShared, Protocol, TunnelLink};

/// Receive buffer asked of the kernel for each UDP listener, so bursts are not lost before
/// the edge reads them (the kernel caps it at net.core.rmem_max).
const LISTENER_RECV_BUFFER: usize = 4 * 1024 * 1024;

struct Session {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    port: u16,
    last_active: Instant,
    /// The client has sent a second datagram, which a source forged for one datagram never
    /// does: the session moved from probation to the protected part of the table. (An
    /// answer from the target proves nothing: targets answer forged queries too.)
    protected: bool,
    /// Protected only: active (a datagram either way) since the eviction hand last passed.
    active_since_passed: bool,
    /// Its place among its source's sessions on the port.
    _lease: SourceLease,
}

/// The UDP sessions of one tunnel; they end with it, since the hub's sockets end too.
pub(super) struct UdpSessions {
    table: Mutex<SessionTable>,
    /// Set while the session limit is being hit, so the warning is given once per episode.
    limit_warned: AtomicBool,
}

/// What a new client's session found when it asked for room.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Free,
    /// This session was ended to make room; the hub is told.
    Evicted(u32),
    /// The client's address holds its share of the table, over all ports.
    SourceFull,
}

/// The part of a full table kept for sessions on probation: while they hold more, the oldest
/// of them makes room for a new one; otherwise a protected session does.
const PROBATION_SHARE_DIVISOR: usize = 4;

/// The sessions, without locking or I/O. A new session starts on probation; when its client
/// sends again it is protected (the 2Q scheme of caches). A full table ends the oldest session
/// on probation while they hold more than a quarter of it, else a protected session that has
/// been silent since the clock hand last passed it (second chance). So a flood of single
/// datagrams from forged addresses churns through probation: a new client keeps its place
/// while a quarter of the table's worth of newer sessions arrive (long enough for its answer),
/// and a client in a conversation is not touched by the flood at all.
struct SessionTable {
    max_sessions: usize,
    by_id: HashMap<u32, Session>,
    by_client: HashMap<(u16, SocketAddr), u32>,
    /// Sessions per source (IPv6: per /64) over all ports: the table's own bound, whatever
    /// each port's `maxUdpSessionsPerSource`.
    per_source: SourceCounts,
    /// Sessions on probation, oldest first; ids that have since ended or been protected are
    /// skipped when met.
    probation: VecDeque<u32>,
    on_probation: usize,
    /// Protected sessions, the clock hand at the front; ids that have ended are skipped.
    protected: VecDeque<u32>,
}

impl SessionTable {
    fn new(max_sessions: usize) -> Self {
        Self {
            max_sessions: max_sessions.max(1),
            by_id: HashMap::new(),
            by_client: HashMap::new(),
            per_source: SourceCounts::default(),
            probation: VecDeque::new(),
            on_probation: 0,
            protected: VecDeque::new(),
        }
    }

    /// The session of a known client, marked active; its client's second datagram protects it.
    fn touch(&mut self, port: u16, client: SocketAddr, now: Instant) -> Option<u32> {
        let id = *self.by_client.get(&(port, client))?;
        let session = self.by_id.get_mut(&id)?;
        session.last_active = now;
        session.active_since_passed = true;
        if !session.protected {
            session.protected = true;
            self.on_probation -= 1;
            self.protected.push_back(id);
            compact(&mut self.protected, self.max_sessions, |id| {
                self.by_id.contains_key(id)
            });
        }
        Some(id)
    }

    /// The share of the table one source may hold over all ports.
    fn max_per_source(&self) -> usize {
        (self.max_sessions / UDP_SESSIONS_PER_SOURCE_DIVISOR).max(1)
    }

    /// Makes room for a new session from `client`.
    fn make_room(&mut self, client: SocketAddr) -> Room {
        if self.per_source.get(client.ip()) >= self.max_per_source() {
            return Room::SourceFull;
        }
        if self.by_id.len() < self.max_sessions {
            return Room::Free;
        }
        let victim = if self.on_probation > self.max_sessions / PROBATION_SHARE_DIVISOR
            || self.on_probation == self.by_id.len()
        {
            self.oldest_on_probation()
        } else {
            self.silent_protected()
        };
        match victim.and_then(|id| self.remove(id).map(|_| id)) {
            Some(id) => Room::Evicted(id),
            None => Room::Free, // unreachable with a full table: every session is queued
        }
    }

    fn oldest_on_probation(&mut self) -> Option<u32> {
        while let Some(id) = self.probation.pop_front() {
            if self.by_id.get(&id).is_some_and(|s| !s.protected) {
                return Some(id);
            }
        }
        None
    }

    /// Ends within two rounds of the hand: the first clears every mark it passes.
    fn silent_protected(&mut self) -> Option<u32> {
        while let Some(id) = self.protected.pop_front() {
            let Some(session) = self.by_id.get_mut(&id) else {
                continue; // ended since
            };
            if session.active_since_passed {
                session.active_since_passed = false;
                self.protected.push_back(id);
                continue;
            }
            return Some(id);
        }
        None
    }

    fn insert(&mut self, id: u32, session: Session) {
        self.per_source.add(session.client.ip());
        self.by_client.insert((session.port, session.client), id);
        self.by_id.insert(id, session);
        self.probation.push_back(id);
        self.on_probation += 1;
        compact(&mut self.probation, self.max_sessions, |id| {
            self.by_id.get(id).is_some_and(|s| !s.protected)
        });
    }

    fn remove(&mut self, id: u32) -> Option<Session> {
        let session = self.by_id.remove(&id)?;
        if !session.protected {
            self.on_probation -= 1;
        }
        self.by_client.remove(&(session.port, session.client));
        self.per_source.remove(session.client.ip());
        Some(session)
    }
}

/// Drops the ids that no longer belong to `queue` once it holds twice the table, so a queue
/// stays bounded by the table however many sessions come and go.
fn compact(queue: &mut VecDeque<u32>, max_sessions: usize, belongs: impl Fn(&u32) -> bool) {
    if queue.len() > 2 * max_sessions {
        queue.retain(belongs);
    }
}

impl UdpSessions {
    /// Sessions for a tunnel whose hub allows `max_sessions` at once.
    pub(super) fn new(max_sessions: usize) -> Self {
        Self {
            table: Mutex::new(SessionTable::new(max_sessions)),
            limit_warned: AtomicBool::new(false),
        }
    }

    fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.table.locked()
    }

    pub(super) fn len(&self) -> usize {
        self.table().by_id.len()
    }

    /// The hub changed its limit (a CONFIG). Sessions beyond a lowered limit stay until they
    /// end; new ones then take their places.
    pub(super) fn set_limit(&self, max_sessions: usize) {
        self.table().max_sessions = max_sessions.max(1);
    }

    /// The hub ended the session.
    pub(super) fn close(&self, id: u32) {
        self.table().remove(id);
    }

    /// A reply from the target: back to the client from the socket it wrote to.
    pub(super) fn reply(&self, edge: &EdgeShared, id: u32, datagram: &[u8]) {
        let mut table = self.table();
        let Some(session) = table.by_id.get_mut(&id) else {
            return; // in flight when the session ended
        };
        session.last_active = Instant::now();
        session.active_since_passed = true;
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
    gate: Arc<PortGate>,
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
                    carry(&edge, (&socket, port, &gate), client, datagram);
                }
            }
            // Errors queued by ICMP for earlier replies; the socket itself is fine.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// The tunnel that carries `client`'s session on `port`, with the session (marked active), or
/// else the tunnel a new session goes to. A session stays on the tunnel it was opened on.
fn session_link(
    edge: &EdgeShared,
    port: u16,
    client: SocketAddr,
) -> Option<(Arc<TunnelLink>, Option<u32>)> {
    let now = Instant::now();
    let links = edge.links();
    for link in links.iter() {
        if let Some(id) = link.udp.table().touch(port, client, now) {
            return Some((link.clone(), Some(id)));
        }
    }
    drop(links);
    Some((edge.pick_link()?, None))
}

/// Sends one client datagram that reached `port` through the tunnel, opening a session for a
/// new client the port's rules admit.
fn carry(
    edge: &Arc<EdgeShared>,
    (socket, port, gate): (&Arc<UdpSocket>, u16, &Arc<PortGate>),
    client: SocketAddr,
    datagram: &[u8],
) {
    if !gate.admits(client.ip()) {
        edge.count_udp_drop();
        return edge.refuse_client(ClientRefusal::Denied, Protocol::Udp, port, client.ip());
    }
    let Some((link, known)) = session_link(edge, port, client) else {
        edge.count_udp_drop();
        return;
    };
    let id = match known {
        Some(id) => id,
        None => {
            let lease = match gate.admit_udp_session(client.ip()) {
                Ok(lease) => lease,
                Err(refusal) => {
                    edge.count_udp_drop();
                    return edge.refuse_client(refusal, Protocol::Udp, port, client.ip());
                }
            };
            let mut table = link.udp.table();
            match table.make_room(client) {
                Room::Free => link.udp.limit_warned.store(false, Ordering::Relaxed),
                Room::Evicted(victim) => {
                    link.carrier.send(EdgeMessage::UdpClose { session: victim });
                    edge.count_udp_eviction();
                    if !link.udp.limit_warned.swap(true, Ordering::Relaxed) {
                        edge.warn(
                                EdgeWarning::UdpSessionLimit,
                                format!("{} UDP sessions are open; new clients take the places of the oldest unproven ones", table.max_sessions),
                            );
                    }
                }
                Room::SourceFull => {
                    drop(table);
                    edge.count_udp_drop();
                    let refusal = ClientRefusal::UdpSessionLimit;
                    return edge.refuse_client(refusal, Protocol::Udp, port, client.ip());
                }
            }
            let Some(id) = link.streams.next_id() else {
                drop(table);
                edge.count_udp_drop(); // the tunnel is draining under us
                return;
            };
            let addresses = ProxyAddresses {
                source: client,
                destination: SocketAddr::new(destination_ip(edge, socket, client), port),
            };
            let open = UdpOpen::new(id, addresses);
            if !link.carrier.send(EdgeMessage::UdpOpen(open)) {
                drop(table);
                edge.count_udp_drop(); // the tunnel is going away under us
                return;
            }
            *edge.totals().udp_sessions_by_port.entry(port).or_default() += 1;
            table.insert(
                id,
                Session {
                    socket: socket.clone(),
                    client,
                    port,
                    last_active: Instant::now(),
                    protected: false,
                    active_since_passed: false,
                    _lease: lease,
                },
            );
            id
        }
    };
    if !link.carrier.udp_from_slice(id, datagram) {
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
            link.carrier.send(EdgeMessage::UdpClose { session: id });
        }
    }
}

/// Binds a UDP listener with a large receive buffer.
pub(super) fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    crate::transport::bind_udp(address, LISTENER_RECV_BUFFER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::gate::PortRules;
    use crate::protocol::client_policy::ClientPolicy;

    fn client(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    fn forged(i: u32) -> SocketAddr {
        SocketAddr::from(([127, 9, (i / 250) as u8, (i % 250) as u8], 1))
    }

    /// Opens a session as `carry` does, after `make_room` said so.
    fn open(table: &mut SessionTable, socket: &Arc<UdpSocket>, id: u32, from: SocketAddr) -> Room {
        // A port without limits of its own: the table's own rules are under test.
        let gate = PortGate::new(PortRules::new(&ClientPolicy::default(), 1 << 20));
        let room = table.make_room(from);
        if room == Room::SourceFull {
            return room;
        }
        table.insert(
            id,
            Session {
                socket: socket.clone(),
                client: from,
                port: 53,
                last_active: Instant::now(),
                protected: false,
                active_since_passed: false,
                _lease: gate.admit_udp_session(from.ip()).unwrap(),
            },
        );
        room
    }

    async fn socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    #[tokio::test]
    async fn a_flood_churns_through_probation_and_never_reaches_a_conversation() {
        let socket = socket().await;
        let now = Instant::now();
        let mut table = SessionTable::new(8);
        // A client in a conversation: its second datagram protects it.
        open(&mut table, &socket, 1, client(1, 1000));
        assert_eq!(table.touch(53, client(1, 1000), now), Some(1));
        for i in 0..7 {
            assert_eq!(open(&mut table, &socket, 100 + i, forged(i)), Room::Free);
        }
        // Ten times the table of single datagrams: each ends the oldest on probation.
        for i in 7..80 {
            let room = open(&mut table, &socket, 100 + i, forged(i));
            assert_eq!(room, Room::Evicted(100 + i - 7));
        }
        assert!(table.by_id.contains_key(&1));
        assert_eq!(table.by_id.len(), 8);
    }

    #[tokio::test]
    async fn a_new_client_keeps_its_place_while_a_quarter_of_the_table_arrives_after_it() {
        let socket = socket().await;
        let now = Instant::now();
        let size = 64u32;
        let mut table = SessionTable::new(size as usize);
        // A flood whose sources send again and again got itself protected everywhere.
        for i in 0..size {
            open(&mut table, &socket, i, forged(i));
            table.touch(53, forged(i), now);
        }
        let newcomer = 1_000_000;
        assert!(matches!(
            open(&mut table, &socket, newcomer, client(1, 5353)),
            Room::Evicted(_)
        ));
        for i in size..size + size / 4 {
            open(&mut table, &socket, i, forged(i));
            assert!(table.by_id.contains_key(&newcomer), "ended after {i}");
        }
    }

    #[tokio::test]
    async fn with_few_on_probation_the_protected_session_silent_longest_makes_room() {
        let socket = socket().await;
        let now = Instant::now();
        let mut table = SessionTable::new(4);
        for id in 1..=4u8 {
            open(&mut table, &socket, id.into(), client(id, 1000));
            table.touch(53, client(id, 1000), now);
        }
        // All protected and all active: the hand passes each once, then ends the first.
        assert_eq!(
            open(&mut table, &socket, 5, client(5, 1000)),
            Room::Evicted(1)
        );
        // Session 3 talked since the hand passed it; 2 did not.
        table.touch(53, client(3, 1000), now);
        assert_eq!(
            open(&mut table, &socket, 6, client(6, 1000)),
            Room::Evicted(2)
        );
    }

    #[tokio::test]
    async fn one_source_cannot_hold_more_than_its_share_over_all_ports() {
        let socket = socket().await;
        let mut table = SessionTable::new(400);
        for port in 0..100 {
            assert_eq!(
                open(&mut table, &socket, port.into(), client(9, port)),
                Room::Free
            );
        }
        let more = client(9, 60_000);
        assert_eq!(open(&mut table, &socket, 99_999, more), Room::SourceFull);
        assert_eq!(
            open(&mut table, &socket, 99_999, client(8, 60_000)),
            Room::Free
        );
        // A session that ends gives its source the place back.
        table.remove(0);
        assert_eq!(open(&mut table, &socket, 100_000, more), Room::Free);
    }

    #[tokio::test]
    async fn the_queues_stay_bounded_by_the_table() {
        let socket = socket().await;
        let now = Instant::now();
        let mut table = SessionTable::new(4);
        for id in 0..1_000u32 {
            let from = client((id % 200) as u8 + 1, (id / 200) as u16 + 1);
            open(&mut table, &socket, id, from);
            if id % 2 == 0 {
                table.touch(53, from, now);
            }
            if id % 3 == 0 {
                table.remove(id);
            }
            assert!(table.probation.len() <= 2 * 4 + 1);
            assert!(table.protected.len() <= 2 * 4 + 1);
            assert_eq!(
                table.on_probation,
                table.by_id.values().filter(|s| !s.protected).count()
            );
        }
    }
}
