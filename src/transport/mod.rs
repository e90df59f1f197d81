//! The tunnel's transport for both ends: TLS configuration (the hub's identity, the edge's
//! trust in it, the ALPN both check) and the TCP socket options.

pub mod quic;
pub mod tls;

use tokio::net::TcpStream;

/// Unsent bytes the kernel may hold for a tunnel socket. Without a bound it queues megabytes,
/// and a small request's frames wait behind all of them, out of reach of the writer's tiers;
/// with it, data waits in the writer, where control frames and small streams go first.
pub const TUNNEL_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Socket options for the TCP connection a tunnel runs over, on both ends.
pub fn tune_tunnel_socket(tcp: &TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    socket2::SockRef::from(tcp).set_tcp_notsent_lowat(TUNNEL_NOTSENT_LOWAT)
}
