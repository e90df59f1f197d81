//! Batched UDP receives (Linux `recvmmsg`): one syscall reads every datagram that is waiting,
//! up to [`BATCH_DATAGRAMS`]. An edge listener under a flood of small datagrams spent a third
//! of its time in `recvfrom`, one call per datagram.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams read in one call at most.
pub(crate) const BATCH_DATAGRAMS: usize = 16;

/// Room for the largest UDP payload, per datagram.
pub(crate) const SLOT_BYTES: usize = 65_535;

/// Buffers for one batch: a slot per datagram. The slots are never initialised by us, so a
/// page of them costs memory only once a datagram that long has been written into it.
pub(crate) struct ReceiveBatch {
    slots: Box<[MaybeUninit<u8>]>,
    /// Slot, length and sender of each datagram of the last batch.
    received: Vec<(usize, usize, SocketAddr)>,
}

impl Default for ReceiveBatch {
    fn default() -> Self {
        Self {
            slots: Box::new_uninit_slice(BATCH_DATAGRAMS * SLOT_BYTES),
            received: Vec::with_capacity(BATCH_DATAGRAMS),
        }
    }
}

impl ReceiveBatch {
    /// Waits until `socket` is readable, then reads what is waiting (at least one datagram).
    /// Errors are the socket's, as `recv_from` gives them.
    pub(crate) async fn receive(&mut self, socket: &UdpSocket) -> io::Result<()> {
        loop {
            socket.readable().await?;
            match self.try_receive(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Reads what is waiting now, without waiting: `WouldBlock` when the socket is empty.
    pub(crate) fn try_receive(&mut self, socket: &UdpSocket) -> io::Result<()> {
        // Cleared here, not in the read, since try_io skips the read when tokio already knows
        // the socket is empty.
        self.received.clear();
        socket.try_io(Interest::READABLE, || self.receive_now(socket))
    }

    /// The datagrams of the last batch, in the order they arrived, with their senders.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.received.iter().map(|&(slot, len, source)| {
            let slot = &self.slots[slot * SLOT_BYTES..slot * SLOT_BYTES + len];
            // SAFETY: the kernel wrote the first `len` bytes of this slot in the call that
            // recorded it, so they are initialised; `len` <= SLOT_BYTES, the slot's size.
            let bytes = unsafe { &*(slot as *const [MaybeUninit<u8>] as *const [u8]) };
            (bytes, source)
        })
    }

    #[cfg(target_os = "linux")]
    fn receive_now(&mut self, socket: &UdpSocket) -> io::Result<()> {
        use std::os::fd::AsRawFd;

        let base = self.slots.as_mut_ptr();
        let mut names: [socket2::SockAddrStorage; BATCH_DATAGRAMS] =
            std::array::from_fn(|_| socket2::SockAddrStorage::zeroed());
        // SAFETY (both arrays): plain C structs for which all-zero is a valid value.
        let mut iovecs: [libc::iovec; BATCH_DATAGRAMS] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH_DATAGRAMS] = unsafe { std::mem::zeroed() };
        for (i, ((header, iovec), name)) in headers
            .iter_mut()
            .zip(iovecs.iter_mut())
            .zip(names.iter_mut())
            .enumerate()
        {
            // SAFETY: slot i lies within `slots`, which holds BATCH_DATAGRAMS slots.
            iovec.iov_base = unsafe { base.add(i * SLOT_BYTES) }.cast();
            iovec.iov_len = SLOT_BYTES;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_namelen = name.size_of();
            header.msg_hdr.msg_name = (name as *mut socket2::SockAddrStorage).cast();
        }
        // SAFETY: every header points at a live iovec, slot and address buffer of the sizes
        // given, all of which outlive the call; the kernel writes only within them.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH_DATAGRAMS as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        for (slot, (header, name)) in headers.iter().zip(names).take(count as usize).enumerate() {
            // SAFETY: the kernel filled `name` with an address of `msg_namelen` bytes.
            let source = unsafe { socket2::SockAddr::new(name, header.msg_hdr.msg_namelen) };
            // A UDP socket's senders are IP addresses; anything else is not ours to answer.
            if let Some(source) = source.as_socket() {
                self.received.push((slot, header.msg_len as usize, source));
            }
        }
        Ok(())
    }

    /// Elsewhere one datagram per call.
    #[cfg(not(target_os = "linux"))]
    fn receive_now(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let mut slot = &mut self.slots[..SLOT_BYTES];
        let (len, source) = socket.try_recv_buf_from(&mut slot)?;
        self.received.push((0, len, source));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiting_datagrams_arrive_in_one_batch_with_their_senders_and_lengths() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sent: Vec<(Vec<u8>, SocketAddr)> = vec![
            (vec![1; 1200], first.local_addr().unwrap()),
            (Vec::new(), second.local_addr().unwrap()),
            (vec![3; SLOT_BYTES - 28], first.local_addr().unwrap()),
            (vec![4; 7], second.local_addr().unwrap()),
        ];
        for (payload, from) in &sent {
            let socket = if *from == first.local_addr().unwrap() {
                &first
            } else {
                &second
            };
            socket.send_to(payload, to).await.unwrap();
        }
        // Loopback delivers synchronously, so all four wait for the first receive.
        let mut batch = ReceiveBatch::default();
        tokio::time::timeout(Duration::from_secs(30), batch.receive(&receiver))
            .await
            .expect("datagrams within 5 s")
            .unwrap();
        let got: Vec<(Vec<u8>, SocketAddr)> = batch
            .datagrams()
            .map(|(bytes, from)| (bytes.to_vec(), from))
            .collect();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn more_than_a_batch_is_read_over_several_calls_in_order() {
        let (sender, receiver) = crate::transport::gso::tests::connected_pair().await;
        let total = BATCH_DATAGRAMS * 2 + 3;
        for i in 0..total {
            sender.send(&(i as u32).to_be_bytes()).await.unwrap();
        }
        let mut batch = ReceiveBatch::default();
        let mut seen = Vec::new();
        while seen.len() < total {
            tokio::time::timeout(Duration::from_secs(30), batch.receive(&receiver))
                .await
                .expect("datagrams within 5 s")
                .unwrap();
            let before = seen.len();
            seen.extend(
                batch
                    .datagrams()
                    .map(|(bytes, _)| u32::from_be_bytes(bytes.try_into().unwrap()) as usize),
            );
            assert!(seen.len() - before <= BATCH_DATAGRAMS);
        }
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
    }
}
