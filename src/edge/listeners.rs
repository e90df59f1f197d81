//! The edge's listeners, one per assigned TCP and UDP port. They outlive a tunnel reconnect;
//! while no tunnel is up, accepted connections wait for one (`parking`) and datagrams are
//! dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EdgeWarning;
use crate::protocol::proxy::ProxyAddresses;
use crate::tunnel::retry::{ClientConnection, MAX_RECARRIES};

use super::parking::{reset, WaitEnd};
use super::{EdgeShared, ResetBeforeTunnel};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

pub(super) struct ListenerSet {
    bind: IpAddr,
    tcp: BTreeMap<u16, CancellationToken>,
    udp: BTreeMap<u16, CancellationToken>,
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

    /// Listens on exactly these ports: new ones start, dropped ones stop at once (connections
    /// already accepted on them carry on). A port that cannot be bound is a warning.
    pub(super) fn apply(&mut self, edge: &Arc<EdgeShared>, tcp_ports: &[u16], udp_ports: &[u16]) {
        let bind_address = self.bind;
        reconcile(
            &mut self.tcp,
            tcp_ports,
            |port| {
                let address = SocketAddr::new(bind_address, port);
                let listener = bind(address).map_err(|e| (address, e))?;
                let cancel = edge.cancel.child_token();
                edge.tasks
                    .spawn(accept_loop(edge.clone(), listener, cancel.clone()));
                Ok(cancel)
            },
            edge,
            "TCP",
        );
        reconcile(
            &mut self.udp,
            udp_ports,
            |port| {
                let address = SocketAddr::new(bind_address, port);
                let socket = super::udp::bind(address).map_err(|e| (address, e))?;
                let cancel = edge.cancel.child_token();
                edge.tasks.spawn(super::udp::listen(
                    edge.clone(),
                    Arc::new(socket),
                    port,
                    cancel.clone(),
                ));
                Ok(cancel)
            },
            edge,
            "UDP",
        );
    }

    pub(super) fn close_all(&mut self) {
        for cancel in self.tcp.values().chain(self.udp.values()) {
            cancel.cancel();
        }
        self.tcp.clear();
        self.udp.clear();
    }
}

/// Stops listeners on ports no longer wanted and starts the missing ones.
fn reconcile(
    active: &mut BTreeMap<u16, CancellationToken>,
    wanted: &[u16],
    mut start: impl FnMut(u16) -> Result<CancellationToken, (SocketAddr, std::io::Error)>,
    edge: &EdgeShared,
    protocol: &str,
) {
    active.retain(|port, cancel| {
        let keep = wanted.contains(port);
        if !keep {
            cancel.cancel();
        }
        keep
    });
    for &port in wanted {
        if active.contains_key(&port) {
            continue;
        }
        match start(port) {
            Ok(cancel) => {
                active.insert(port, cancel);
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

async fn accept_loop(edge: Arc<EdgeShared>, listener: TcpListener, cancel: CancellationToken) {
    // A listener on one address gives every client that address: no getsockname per client
    // (one syscall of the dozen a short connection costs the edge). On a wildcard address
    // each client's own says which local address it reached.
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => carry(&edge, ClientConnection::new(client), peer, bound),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    edge.warn(EdgeWarning::AcceptFailed, format!("accepting a client failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
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
