//! The tunnel's transport for both ends: TLS configuration (the hub's identity, the edge's
//! trust in it, the ALPN both check), the TLS connection and its records after the handshake,
//! the TCP socket options, segmented UDP sends and batched UDP receives.

pub(crate) mod gso;
pub(crate) mod quic_congestion;
pub(crate) mod quic_endpoint;
pub(crate) mod quic_runtime;
pub mod records;
pub(crate) mod recv_batch;
pub(crate) mod tls;
pub(crate) mod tls_stream;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};

/// Unsent bytes the kernel may hold for a tunnel socket. Without a bound it queues megabytes,
/// and a small request's frames wait behind all of them, out of reach of the writer's tiers;
/// with it, data waits in the writer, where control frames and small streams go first.
pub(crate) const TUNNEL_NOTSENT_LOWAT: u32 = 32 * 1024;

/// The fastest path a tunnel's receive buffer is sized for, in bytes per second (10 Gbit/s).
/// A buffer larger than this rate times the round trip cannot carry more, only queue.
pub(crate) const RECEIVE_BUFFER_SIZED_FOR: f64 = 10e9 / 8.0;

/// The smallest receive buffer asked for. The kernel doubles what it is asked (half is
/// bookkeeping), so about this much payload can wait unread.
pub(crate) const MIN_TUNNEL_RECEIVE_BUFFER: usize = 128 * 1024;

/// Round trips long enough that [`RECEIVE_BUFFER_SIZED_FOR`] would ask for more than this
/// keep the kernel's autotuning, whose usual ceiling (net.ipv4.tcp_rmem) is 6 MiB.
pub(crate) const MAX_TUNNEL_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// A non-blocking UDP socket bound to `address` that asks the kernel for `recv_buffer` bytes
/// of receive buffer: best effort, since the kernel caps it at net.core.rmem_max, which costs
/// only burst tolerance.
pub(crate) fn bind_udp(address: SocketAddr, recv_buffer: usize) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        None,
    )?;
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// Socket options for the TCP connection a tunnel runs over, on both ends, set as soon as it
/// is connected.
pub(crate) fn tune_tunnel_socket(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    socket2::SockRef::from(tcp).set_tcp_notsent_lowat(TUNNEL_NOTSENT_LOWAT)
}

/// Bounds the receive buffer of an established tunnel socket to what the path can use, once
/// the kernel has measured its round trip (after the TLS handshake). On a short path
/// (loopback, a LAN) Linux otherwise grows it to megabytes while a bulk transfer runs, and
/// every other connection's bytes wait behind those megabytes, where no tier can reach them.
/// Returns the size asked for, or None when the path is long and autotuning stays.
pub(crate) fn bound_receive_buffer(tcp: &TcpStream) -> io::Result<Option<usize>> {
    set_receive_buffer_for(tcp, smoothed_rtt(tcp)?)
}

/// Sets the receive buffer [`receive_buffer_for`] gives `rtt`; None leaves autotuning alone.
fn set_receive_buffer_for(tcp: &TcpStream, rtt: Duration) -> io::Result<Option<usize>> {
    let size = receive_buffer_for(rtt);
    if let Some(size) = size {
        socket2::SockRef::from(tcp).set_recv_buffer_size(size)?;
    }
    Ok(size)
}

/// The receive buffer for a path with round trip `rtt`, or None to leave autotuning alone.
pub(crate) fn receive_buffer_for(rtt: Duration) -> Option<usize> {
    short_path_bound(rtt, MIN_TUNNEL_RECEIVE_BUFFER as u64).map(|bytes| bytes as usize)
}

/// What [`RECEIVE_BUFFER_SIZED_FOR`] fills in `rtt`, but at least `floor`; None from
/// [`MAX_TUNNEL_RECEIVE_BUFFER`] on, where the path is long enough to keep its own tuning. The
/// rule for both transports' bounds on short paths: a TCP tunnel's receive buffer, a QUIC
/// tunnel's congestion window (`quic_congestion`).
pub(crate) fn short_path_bound(rtt: Duration, floor: u64) -> Option<u64> {
    // Float to integer casts saturate, so a huge round trip cannot wrap.
    let filled_in_one_round_trip = (rtt.as_secs_f64() * RECEIVE_BUFFER_SIZED_FOR) as u64;
    (filled_in_one_round_trip < MAX_TUNNEL_RECEIVE_BUFFER as u64)
        .then(|| filled_in_one_round_trip.max(floor))
}

/// The kernel's smoothed round-trip estimate for a connected TCP socket (TCP_INFO).
#[cfg(target_os = "linux")]
pub(crate) fn smoothed_rtt(tcp: &TcpStream) -> io::Result<Duration> {
    use std::os::fd::AsRawFd;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is a live TCP socket owned by `tcp`; getsockopt writes at most `len`
    // bytes into `info`, which is that large and zeroed, so every field is initialised.
    let info = unsafe {
        if libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        info.assume_init()
    };
    Ok(Duration::from_micros(info.tcpi_rtt.into()))
}

/// Elsewhere there is no estimate to size by; autotuning stays.
#[cfg(not(target_os = "linux"))]
pub(crate) fn smoothed_rtt(_: &TcpStream) -> io::Result<Duration> {
    Ok(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn receive_buffers_follow_the_round_trip_between_the_floor_and_autotuning() {
        let ms = Duration::from_millis;
        assert_eq!(
            receive_buffer_for(Duration::from_micros(30)),
            Some(MIN_TUNNEL_RECEIVE_BUFFER)
        );
        let near = |size: Option<usize>, expected: usize| size.unwrap().abs_diff(expected) <= 1;
        assert!(near(receive_buffer_for(ms(1)), 1_250_000));
        assert!(near(receive_buffer_for(ms(3)), 3_750_000));
        assert_eq!(receive_buffer_for(ms(4)), None);
        assert_eq!(receive_buffer_for(ms(80)), None);
        assert_eq!(receive_buffer_for(Duration::MAX), None);
    }

    /// What the kernel grants for a receive buffer asked of `size`: capped at rmem_max, doubled.
    fn granted(size: usize) -> usize {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        2 * size.min(rmem_max)
    }

    async fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The rule is fed round trips, so the test does not depend on how fast this machine is.
    #[tokio::test]
    async fn a_tunnel_socket_gets_the_receive_buffer_of_its_round_trip() {
        let (client, _server) = loopback_pair().await;
        let autotuned = socket2::SockRef::from(&client).recv_buffer_size().unwrap();
        let ms = Duration::from_millis;
        assert_eq!(set_receive_buffer_for(&client, ms(80)).unwrap(), None);
        assert_eq!(
            socket2::SockRef::from(&client).recv_buffer_size().unwrap(),
            autotuned,
            "a long path keeps the kernel's buffer"
        );
        for (rtt, asked) in [
            (Duration::from_micros(30), MIN_TUNNEL_RECEIVE_BUFFER),
            (ms(1), 1_250_000),
        ] {
            assert_eq!(set_receive_buffer_for(&client, rtt).unwrap(), Some(asked));
            let kernel = socket2::SockRef::from(&client).recv_buffer_size().unwrap();
            assert_eq!(kernel, granted(asked), "after a round trip of {rtt:?}");
        }
    }

    /// The kernel's own measurement reaches the rule: whatever round trip this machine gives
    /// loopback under its load, the buffer set is the one the rule gives for a measured value.
    #[tokio::test]
    async fn a_tunnel_socket_is_bounded_by_the_round_trip_the_kernel_measured() {
        let (mut client, mut server) = loopback_pair().await;
        // A round trip of data, as a handshake gives the kernel before the bound is set.
        client.write_all(b"ping").await.unwrap();
        server.read_exact(&mut [0; 4]).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut [0; 4]).await.unwrap();
        for socket in [&client, &server] {
            let rtt = smoothed_rtt(socket).unwrap();
            assert!(rtt > Duration::ZERO, "no round trip measured");
            let before = socket2::SockRef::from(socket).recv_buffer_size().unwrap();
            let kernel = |socket| socket2::SockRef::from(socket).recv_buffer_size().unwrap();
            match bound_receive_buffer(socket).unwrap() {
                Some(asked) => {
                    assert!(asked >= MIN_TUNNEL_RECEIVE_BUFFER, "{asked}");
                    assert_eq!(kernel(socket), granted(asked));
                }
                None => assert_eq!(kernel(socket), before),
            }
        }
    }
}
