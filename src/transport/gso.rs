//! UDP generic segmentation offload (Linux `UDP_SEGMENT`): several datagrams of one size leave
//! in a single `sendmsg`, and the kernel cuts them apart. A busy UDP session on the hub then
//! costs one syscall per run of datagrams instead of one per datagram.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// `UDP_SEGMENT` from linux/udp.h; the libc crate defines it only for some targets.
#[cfg(target_os = "linux")]
const UDP_SEGMENT: libc::c_int = 103;

/// Segments in one send. Kernels before 5.14 accept at most 64.
pub(crate) const MAX_SEGMENTS: usize = 32;

/// Segments must fit the path's MTU unfragmented, or the kernel refuses the send; larger
/// datagrams go one by one, where the kernel may fragment them. 1,472 bytes fill a 1,500-byte
/// IPv4 MTU.
pub(crate) const MAX_SEGMENT_BYTES: usize = 1_472;

// One send must stay within an IP packet's 64 KiB.
const _: () = assert!(MAX_SEGMENTS * MAX_SEGMENT_BYTES <= 65_000);

/// Set once the kernel or a device refused segmentation: from then on every datagram is sent
/// on its own.
static UNSUPPORTED: AtomicBool = AtomicBool::new(cfg!(not(target_os = "linux")));

/// Whether segmented sends may be tried.
pub(crate) fn available() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// Sends `contents`, datagrams of `segment` bytes each (the last may be shorter), on a
/// connected socket. Where the kernel refuses segmentation, the datagrams are sent one by
/// one. Returns how many datagrams were lost to send errors (a target's ICMP refusal, say).
pub(crate) async fn send_segments(socket: &UdpSocket, contents: &[u8], segment: usize) -> usize {
    if contents.len() <= segment {
        // One datagram, perhaps empty.
        return usize::from(socket.send(contents).await.is_err());
    }
    let segment = segment.max(1);
    let count = contents.len().div_ceil(segment);
    if available() {
        match send_once(socket, contents, segment).await {
            Ok(()) => return 0,
            // EIO: a device without checksum offload; ENOPROTOOPT: a kernel without UDP GSO.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOPROTOOPT)) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            // EINVAL: segments over the path MTU, which only unsegmented sends may fragment.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(_) => return count,
        }
    }
    let mut lost = 0;
    for datagram in contents.chunks(segment) {
        if socket.send(datagram).await.is_err() {
            lost += 1;
        }
    }
    lost
}

async fn send_once(socket: &UdpSocket, contents: &[u8], segment: usize) -> io::Result<()> {
    let segment = u16::try_from(segment).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        socket.writable().await?;
        match socket.try_io(Interest::WRITABLE, || {
            sendmsg_segmented(socket, contents, segment)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

#[cfg(target_os = "linux")]
fn sendmsg_segmented(socket: &UdpSocket, contents: &[u8], segment: u16) -> io::Result<()> {
    /// Room for one control message holding a u16, aligned as `cmsghdr` requires.
    #[repr(C)]
    struct Control {
        _align: [libc::cmsghdr; 0],
        bytes: [u8; 32],
    }
    let mut control = Control {
        _align: [],
        bytes: [0; 32],
    };
    let mut iov = libc::iovec {
        iov_base: contents.as_ptr().cast_mut().cast(),
        iov_len: contents.len(),
    };
    // SAFETY: msghdr is plain data, valid zeroed; every pointer set below outlives the call.
    // The control buffer is aligned for cmsghdr and larger than CMSG_SPACE(2) (24 bytes on
    // 64-bit Linux), so CMSG_FIRSTHDR is non-null and its data fits.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sendmsg_segmented(_: &UdpSocket, _: &[u8], _: u16) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A sender connected to a receiver, both on loopback.
    pub(crate) async fn connected_pair() -> (UdpSocket, UdpSocket) {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sender
            .connect(receiver.local_addr().unwrap())
            .await
            .unwrap();
        (sender, receiver)
    }

    async fn receive(receiver: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut datagrams = Vec::new();
        let mut buf = vec![0u8; 65_536];
        for _ in 0..count {
            let len = tokio::time::timeout(Duration::from_secs(30), receiver.recv(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .unwrap();
            datagrams.push(buf[..len].to_vec());
        }
        datagrams
    }

    #[tokio::test]
    async fn one_send_arrives_as_separate_datagrams_with_a_short_last_one() {
        let (sender, receiver) = connected_pair().await;
        let mut contents = Vec::new();
        for i in 0..5u8 {
            contents.extend_from_slice(&[i; 1200]);
        }
        contents.extend_from_slice(&[9; 100]);
        assert_eq!(send_segments(&sender, &contents, 1200).await, 0);
        let datagrams = receive(&receiver, 6).await;
        for (i, datagram) in datagrams[..5].iter().enumerate() {
            assert_eq!(datagram, &vec![i as u8; 1200]);
        }
        assert_eq!(datagrams[5], vec![9; 100]);
        assert!(available(), "loopback takes segmented sends");
    }

    #[tokio::test]
    async fn an_empty_datagram_is_sent_too() {
        let (sender, receiver) = connected_pair().await;
        assert_eq!(send_segments(&sender, &[], 0).await, 0);
        assert_eq!(receive(&receiver, 1).await, vec![Vec::<u8>::new()]);
    }
}
