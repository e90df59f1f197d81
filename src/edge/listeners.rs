//! The edge's listeners, one per assigned TCP and UDP port. They outlive a tunnel reconnect;
//! while no tunnel is up, accepted connections wait for one (`parking`) and datagrams are
//! dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::events::EdgeWarning;
use crate::protocol::handshake::EdgeConfig;
use crate::protocol::proxy::ProxyAddresses;
use crate::tunnel::retry::{ClientConnection, MAX_RECARRIES};

use super::gate::{ClientRefusal, PortGate, PortRules};
use super::parking::{reset, WaitEnd};
use super::{EdgeShared, Protocol, ResetBeforeTunnel};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// A port being listened on: its task's cancel and its client rules.
struct Listener {
    cancel: CancellationToken,
    gate: Arc<PortGate>,
}

pub(super) struct ListenerSet {
    bind: IpAddr,
    tcp: BTreeMap<u16, Listener>,
    udp: BTreeMap<u16, Listener>,
}

impl ListenerSet {
    pub(super) fn new(bind: IpAddr) -> Self {
        Self {
            bind,
            tcp: BTreeMap::new(),
            udp: BTreeMap::new(),
        }
    }

    /// TCP ports that are listening now.
    pub(super) fn tcp_ports(&self) -> Vec<u16> {
        self.tcp.keys().copied().collect()
    }

    /// UDP ports that are listening now.
    pub(super) fn udp_ports(&self) -> Vec<u16> {
        self.udp.keys().copied().collect()
    }

    /// Listens on exactly the ports of `config`, with its client rules: new ports start,
    /// dropped ones stop at once (connections already accepted on them carry on), and ports
    /// kept take the new rules for their next clients. A port that cannot be bound is a
    /// warning.
    pub(super) fn apply(&mut self, edge: &Arc<EdgeShared>, config: &EdgeConfig) {
        let bind_address = self.bind;
        let rules = |port: u16| {
            let policy = match config.port_clients.get(&port) {
                Some(own) => config.clients.for_port(own),
                None => config.clients.clone(),
            };
            PortRules::new(&policy, config.max_udp_sessions)
        };
        reconcile(
            &mut self.tcp,
            &config.listen_ports,
            rules,
            |port, gate| {
                let address = SocketAddr::new(bind_address, port);
                let listener = bind(address).map_err(|e| (address, e))?;
                let cancel = edge.cancel.child_token();
                edge.tasks
                    .spawn(accept_loop(edge.clone(), listener, gate, cancel.clone()));
                Ok(cancel)
            },
            edge,
            "TCP",
        );
        reconcile(
            &mut self.udp,
            &config.listen_ports_udp,
            rules,
            |port, gate| {
                let address = SocketAddr::new(bind_address, port);
                let socket = super::udp::bind(address).map_err(|e| (address, e))?;
                let cancel = edge.cancel.child_token();
                edge.tasks.spawn(super::udp::listen(
                    edge.clone(),
                    Arc::new(socket),
                    port,
                    gate,
                    cancel.clone(),
                ));
                Ok(cancel)
            },
            edge,
            "UDP",
        );
    }

    pub(super) fn close_all(&mut self) {
        for listener in self.tcp.values().chain(self.udp.values()) {
            listener.cancel.cancel();
        }
        self.tcp.clear();
        self.udp.clear();
    }
}

/// Stops listeners on ports no longer wanted, gives the others their new rules, and starts
/// the missing ones.
fn reconcile(
    active: &mut BTreeMap<u16, Listener>,
    wanted: &[u16],
    rules: impl Fn(u16) -> PortRules,
    mut start: impl FnMut(u16, Arc<PortGate>) -> Result<CancellationToken, (SocketAddr, std::io::Error)>,
    edge: &EdgeShared,
    protocol: &str,
) {
    active.retain(|port, listener| {
        let keep = wanted.contains(port);
        if keep {
            listener.gate.set_rules(rules(*port));
        } else {
            listener.cancel.cancel();
        }
        keep
    });
    for &port in wanted {
        if active.contains_key(&port) {
            continue;
        }
        let gate = PortGate::new(rules(port));
        match start(port, gate.clone()) {
            Ok(cancel) => {
                active.insert(port, Listener { cancel, gate });
            }
            Err((address, e)) => edge.warn(
                EdgeWarning::ListenFailed,
                format!("cannot listen on {protocol} {address}: {e}; the other ports keep working"),
            ),
        }
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // A port removed and re-added must not be blocked by connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    edge: Arc<EdgeShared>,
    listener: TcpListener,
    gate: Arc<PortGate>,
    cancel: CancellationToken,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    // A listener on one address gives every client that address: no getsockname per client
    // (one syscall of the dozen a short connection costs the edge). On a wildcard address
    // each client's own says which local address it reached.
    let bound = Some(local).filter(|a| !a.ip().is_unspecified());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => admit(&edge, &gate, (client, peer), (local.port(), bound)),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    edge.warn(EdgeWarning::AcceptFailed, format!("accepting a client failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// A new client on `port`: turned away at once (reset) when the port's rules say so, else
/// carried, after its first byte when the port waits for one.
fn admit(
    edge: &Arc<EdgeShared>,
    gate: &Arc<PortGate>,
    (socket, peer): (TcpStream, SocketAddr),
    (port, bound): (u16, Option<SocketAddr>),
) {
    let source = peer.ip().to_canonical();
    let lease = match gate.admit_connection(source, Instant::now()) {
        Ok(lease) => lease,
        Err(refusal) => {
            reset(&socket);
            return edge.refuse_client(refusal, Protocol::Tcp, port, source);
        }
    };
    let client = ClientConnection::new(socket, Some(lease));
    let Some(timeout) = gate.rules().first_byte_timeout else {
        return carry(edge, client, peer, bound);
    };
    let Some(wait) = edge.first_byte_waits.admit(source) else {
        reset(&client.socket);
        return edge.refuse_client(
            ClientRefusal::FirstByteWaitFull,
            Protocol::Tcp,
            port,
            source,
        );
    };
    let edge = edge.clone();
    edge.tasks.clone().spawn(async move {
        let mut probe = [0u8; 1];
        let first_byte = tokio::select! {
            _ = edge.cancel.cancelled() => None,
            _ = wait.evicted.cancelled() => Some(Err(ClientRefusal::FirstByteWaitFull)),
            peeked = tokio::time::timeout(timeout, client.socket.peek(&mut probe)) => {
                Some(peeked.map_err(|_| ClientRefusal::FirstByteTimeout))
            }
        };
        drop(wait);
        match first_byte {
            Some(Ok(Ok(n))) if n > 0 => carry(&edge, client, peer, bound),
            Some(Err(refusal)) => {
                reset(&client.socket);
                edge.refuse_client(refusal, Protocol::Tcp, port, source);
            }
            // Closed without a byte, failed, or the edge is stopping: nothing to carry.
            _ => {}
        }
    });
}

/// Opens a stream for a client. Without a tunnel the client waits for one (up to
/// `connectWaitMs`, while the parking lot has room), else it is reset. `bound` is the
/// listener's address when it is not a wildcard.
fn carry(
    edge: &Arc<EdgeShared>,
    client: ClientConnection,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
) {
    // A client that is gone already needs no stream and no wait.
    let Some(local) = bound.or_else(|| client.socket.local_addr().ok()) else {
        return;
    };
    let Err(client) = open_stream(edge, client, peer, local) else {
        return;
    };
    let wait = edge.options.connect_wait;
    let place = (!wait.is_zero())
        .then(|| edge.parking.admit(peer.ip()))
        .flatten();
    let Some(place) = place else {
        edge.count_reset(ResetBeforeTunnel::NoWait);
        return reset(&client.socket);
    };
    let edge = edge.clone();
    edge.tasks.clone().spawn(async move {
        // Held until the wait ends, whichever way.
        let _place = place;
        let deadline = tokio::time::Instant::now() + wait;
        let mut client = client;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let waited = tokio::select! {
                _ = edge.cancel.cancelled() => WaitEnd::TimedOut,
                waited = edge.parking.wait(left) => waited,
            };
            if waited == WaitEnd::TimedOut {
                break;
            }
            // The tunnel may have gone again before this client's turn: then wait on.
            match open_stream(&edge, client, peer, local) {
                Ok(()) => return,
                Err(handed_back) => client = handed_back,
            }
        }
        edge.count_reset(ResetBeforeTunnel::WaitTimedOut);
        reset(&client.socket);
    });
}

/// Opens a stream for the client, which reached `local`, and starts carrying it; hands the
/// client back when no stream could be opened (no tunnel up, or the tunnel going away).
fn open_stream(
    edge: &Arc<EdgeShared>,
    client: ClientConnection,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(), ClientConnection> {
    let Some(link) = edge.pick_link() else {
        return Err(client);
    };
    let first_carry = client.carries == 0;
    if first_carry {
        let _ = client.socket.set_nodelay(true);
    }
    let addresses = ProxyAddresses {
        source: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        destination: SocketAddr::new(edge.destination_ip(local.ip()), local.port()),
    };
    let port_bytes = edge
        .totals()
        .bytes_by_port
        .entry(local.port())
        .or_default()
        .clone();
    let cancel = link.cancel.child_token();
    let unacked = {
        let edge = edge.clone();
        move |client| carry_again(&edge, client)
    };
    link.streams.carry_client(
        &link.carrier,
        &edge.tasks,
        client,
        addresses,
        port_bytes,
        cancel,
        unacked,
    )?;
    if first_carry {
        *edge
            .totals()
            .streams_by_port
            .entry(local.port())
            .or_default() += 1;
    }
    Ok(())
}

/// A client whose tunnel ended before the hub acknowledged its stream: no target saw it, so
/// it goes to another tunnel (or waits for one) with what it sent, unless the edge is
/// stopping or it has lost tunnels too often.
fn carry_again(edge: &Arc<EdgeShared>, client: ClientConnection) {
    // A client that has gone meanwhile is simply dropped.
    let Ok(peer) = client.socket.peer_addr() else {
        return;
    };
    if edge.cancel.is_cancelled() || client.carries > MAX_RECARRIES {
        return reset(&client.socket);
    }
    edge.connections_carried_again
        .fetch_add(1, Ordering::Relaxed);
    carry(edge, client, peer, None);
}
