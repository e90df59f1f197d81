//! The edge's public-IP discovery: STUN Binding transactions over UDP, with the messages of
//! [`crate::protocol::stun`].
//!
//! [`query`] runs one transaction over a connected tokio `UdpSocket` (retransmits with a
//! doubling RTO, answers matched by transaction id and source address), and [`discover`] asks
//! a list of servers in order until one answers. Every datagram that is not exactly the answer
//! is ignored and remembered only to explain a failure.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::protocol::stun::{
    binding_request, new_transaction_id, parse_binding_response, public_ip_from, send_offsets,
    StunError, StunServer,
};

/// How long one server may take, name resolution included: the last request gets 2 s to be
/// answered. The edge option `stunTimeoutMs` overrides it (the schedule is cut short to fit).
pub(crate) const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_millis(5500);
/// Receive buffer. A Binding response is about 100 bytes; a larger datagram is cut here and
/// then fails the length check, so it is ignored like any other wrong answer.
const MAX_MESSAGE_BYTES: usize = 2048;
/// Addresses tried per server name (they share the server's timeout anyway).
const MAX_ADDRESSES_PER_SERVER: usize = 4;

/// A server's addresses, in resolver order.
async fn resolve(server: &StunServer) -> Result<Vec<SocketAddr>, QueryError> {
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, server.port)]);
    }
    // RFC 6761 §6.4: names under .invalid never resolve; do not ask the resolver.
    let name = server.host.trim_end_matches('.').to_ascii_lowercase();
    if name == "invalid" || name.ends_with(".invalid") {
        return Err(QueryError::NoSuchName);
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(QueryError::Resolve)?
        .take(64)
        .collect();
    if addresses.is_empty() {
        return Err(QueryError::NoSuchName);
    }
    Ok(addresses)
}

/// Why one server gave no usable answer.
#[derive(Debug, Error)]
pub(crate) enum QueryError {
    #[error("cannot resolve the name: {0}")]
    Resolve(std::io::Error),
    #[error("the name does not resolve")]
    NoSuchName,
    #[error("name resolution took longer than {}", secs(*.0))]
    ResolveTimeout(Duration),
    #[error("socket error: {0}")]
    Socket(std::io::Error),
    #[error("refused (nothing listens on that UDP port)")]
    Refused,
    #[error("the server answered with {0}")]
    Rejected(StunError),
    #[error("no answer to {sent} Binding request(s) within {}{}", secs(*.waited), ignored_note(.ignored))]
    NoAnswer {
        sent: u32,
        waited: Duration,
        /// The last datagram that came back but was not the answer, and why.
        ignored: Option<StunError>,
    },
    #[error("{0}")]
    Encode(StunError),
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ignored_note(ignored: &Option<StunError>) -> String {
    match ignored {
        Some(e) => format!(" (ignored a datagram: {e})"),
        None => String::new(),
    }
}

fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

/// One Binding transaction with `server`, ending by `deadline`. The socket is bound to the
/// unspecified address of the server's family and connected to the server, so the kernel
/// already drops datagrams from elsewhere and reports an ICMP port-unreachable as a refusal.
pub(crate) async fn query(server: SocketAddr, deadline: Instant) -> Result<IpAddr, QueryError> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    };
    let socket = UdpSocket::bind(local).await.map_err(QueryError::Socket)?;
    socket.connect(server).await.map_err(QueryError::Socket)?;
    let txid = new_transaction_id();
    let request = binding_request(&txid).map_err(QueryError::Encode)?;
    let start = Instant::now();
    let mut sends = send_offsets(deadline.saturating_duration_since(start))
        .into_iter()
        .map(|offset| start + offset)
        .peekable();
    let mut sent = 0u32;
    let mut ignored = None;
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    loop {
        let next_send = sends.peek().copied();
        let wake = next_send.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    let waited = deadline.saturating_duration_since(start);
                    return Err(QueryError::NoAnswer { sent, waited, ignored });
                }
                if next_send.is_some() {
                    sends.next();
                    match socket.send(&request).await {
                        Ok(_) => sent += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return Err(QueryError::Refused)
                        }
                        Err(e) => return Err(QueryError::Socket(e)),
                    }
                }
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    if !same_endpoint(from, server) {
                        ignored = Some(StunError::WrongSource(from));
                        continue;
                    }
                    let datagram = buf.get(..len).unwrap_or_default();
                    match parse_binding_response(datagram, &txid)
                        .and_then(|mapped| public_ip_from(mapped, server))
                    {
                        Ok(ip) => return Ok(ip),
                        // The server's final word for this transaction (RFC 8489 §6.3.4).
                        Err(e @ StunError::ErrorResponse { .. }) => {
                            return Err(QueryError::Rejected(e))
                        }
                        Err(e) => ignored = Some(e),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(QueryError::Refused)
                }
                Err(e) => return Err(QueryError::Socket(e)),
            },
        }
    }
}

/// Which address family to ask first when a server name has both: the one the edge's
/// listeners use, so the PROXY headers can carry the discovered address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreferFamily {
    V4,
    V6,
}

/// Asks one `stunServers` entry, within `timeout` in all.
pub(crate) async fn ask(
    server: &StunServer,
    prefer: PreferFamily,
    timeout: Duration,
) -> Result<IpAddr, QueryError> {
    let deadline = Instant::now() + timeout;
    let mut addresses = tokio::time::timeout_at(deadline, resolve(server))
        .await
        .map_err(|_| QueryError::ResolveTimeout(timeout))??;
    // Stable: resolver order within each family.
    addresses.sort_by_key(|a| a.is_ipv6() != (prefer == PreferFamily::V6));
    let mut last = QueryError::NoSuchName;
    for address in addresses.into_iter().take(MAX_ADDRESSES_PER_SERVER) {
        match query(address, deadline).await {
            Ok(ip) => return Ok(ip),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last)
}

/// Every server failed; each failure in order.
#[derive(Debug, Error)]
pub(crate) struct DiscoveryError {
    pub failures: Vec<(StunServer, QueryError)>,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no STUN server told this edge its public IP")?;
        for (i, (server, error)) in self.failures.iter().enumerate() {
            write!(f, "{} {server}: {error}", if i == 0 { ":" } else { ";" })?;
        }
        write!(f, "; trying again at the next interval")
    }
}

/// The public IP, from the first of `servers` (in order) that answers.
pub(crate) async fn discover(
    servers: &[StunServer],
    prefer: PreferFamily,
    timeout_per_server: Duration,
) -> Result<IpAddr, DiscoveryError> {
    let mut failures = Vec::new();
    for server in servers {
        match ask(server, prefer, timeout_per_server).await {
            Ok(ip) => return Ok(ip),
            Err(e) => failures.push((server.clone(), e)),
        }
    }
    Err(DiscoveryError { failures })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::stun::tests::{mapped, raw_message, response, xor_mapped};
    use crate::protocol::stun::{TxId, INITIAL_RTO};
    use stun_rs::MessageClass;

    async fn fake_server() -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        (socket, address)
    }

    fn txid_of(request: &[u8]) -> TxId {
        request[8..20].try_into().unwrap()
    }

    #[tokio::test]
    async fn a_lost_request_is_sent_again_and_the_answer_taken() {
        let (server, address) = fake_server().await;
        let answering = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // Drop the first request; answer the second with junk first, then properly.
            let (_, _) = server.recv_from(&mut buf).await.unwrap();
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(len, 20);
            let txid = txid_of(&buf);
            server.send_to(b"junk", from).await.unwrap();
            let mut wrong = txid;
            wrong[0] ^= 0xff;
            let stale = response(
                MessageClass::SuccessResponse,
                &wrong,
                vec![xor_mapped("198.51.100.1:1")],
            );
            server.send_to(&stale, from).await.unwrap();
            let good = response(
                MessageClass::SuccessResponse,
                &txid,
                vec![xor_mapped("203.0.113.7:4000")],
            );
            server.send_to(&good, from).await.unwrap();
        });
        let started = Instant::now();
        let ip = query(address, Instant::now() + DEFAULT_SERVER_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(ip, IpAddr::from([203, 0, 113, 7]));
        assert!(started.elapsed() >= INITIAL_RTO);
        answering.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_from_another_port_is_ignored() {
        let (server, address) = fake_server().await;
        let (impostor, _) = fake_server().await;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (_, from) = server.recv_from(&mut buf).await.unwrap();
            let good = response(
                MessageClass::SuccessResponse,
                &txid_of(&buf),
                vec![xor_mapped("203.0.113.7:4000")],
            );
            impostor.send_to(&good, from).await.unwrap();
            // Keep the server socket open (no ICMP refusal) until the query gives up.
            let _ = server.recv_from(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let outcome = query(address, Instant::now() + Duration::from_millis(300)).await;
        assert!(
            matches!(outcome, Err(QueryError::NoAnswer { sent: 1, .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_error_response_ends_the_transaction() {
        let (server, address) = fake_server().await;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (_, from) = server.recv_from(&mut buf).await.unwrap();
            let error = raw_message(
                0x0111,
                &txid_of(&buf),
                &[
                    0x00, 0x09, 0x00, 0x08, 0x00, 0x00, 0x05, 0x00, b'N', b'o', b'p', b'e',
                ],
            );
            server.send_to(&error, from).await.unwrap();
        });
        let outcome = query(address, Instant::now() + DEFAULT_SERVER_TIMEOUT).await;
        assert!(
            matches!(
                outcome,
                Err(QueryError::Rejected(StunError::ErrorResponse {
                    code: 500,
                    ..
                }))
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn servers_are_tried_in_order_and_failures_explained() {
        // Nothing listens on a port just released: ICMP port unreachable, so it fails at once.
        let closed = {
            let (socket, address) = fake_server().await;
            drop(socket);
            address
        };
        let (server, address) = fake_server().await;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (_, from) = server.recv_from(&mut buf).await.unwrap();
            let good = response(
                MessageClass::SuccessResponse,
                &txid_of(&buf),
                vec![mapped("127.0.0.1:999")],
            );
            server.send_to(&good, from).await.unwrap();
        });
        let servers: Vec<StunServer> = [
            "stun.invalid:3478".to_string(),
            closed.to_string(),
            address.to_string(),
        ]
        .iter()
        .map(|entry| StunServer::parse(entry).unwrap())
        .collect();
        let ip = discover(&servers, PreferFamily::V4, DEFAULT_SERVER_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));

        let failed = discover(&servers[..2], PreferFamily::V4, Duration::from_millis(300))
            .await
            .unwrap_err();
        let message = failed.to_string();
        assert!(message.starts_with("no STUN server told this edge its public IP: stun.invalid:3478: the name does not resolve; 127.0.0.1:"), "{message}");
        assert!(message.contains("refused"), "{message}");
        assert!(matches!(failed.failures[1].1, QueryError::Refused));
    }
}
