//! What the edge keeps of a connection until the hub acknowledges its stream (OPEN_ACK). If the
//! tunnel ends before that, no target has seen the connection, so the edge carries it on another
//! tunnel, those bytes first: a hub killed under load costs only the connections it had taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::edge::gate::SourceLease;
use crate::lock::Locked;

/// The most a client may have sent on an unacknowledged stream and still be carried again:
/// the credit every stream starts with over TCP+TLS (the hub grants more only once it has the
/// stream). Past it the bytes are let go and the stream is lost with its tunnel.
pub(crate) const RESEND_LIMIT_BYTES: usize = 64 * 1024;

/// How often one connection is carried again before it is reset: tunnels that die one after
/// the other under it are a failure to report, not to hide.
pub(crate) const MAX_RECARRIES: u8 = 3;

/// What a client sent on a stream the hub has not acknowledged.
#[derive(Debug, Default)]
pub(crate) struct SentBytes {
    chunks: Vec<Bytes>,
    len: usize,
    /// The client half-closed after them.
    fin: bool,
}

impl SentBytes {
    /// Adds `chunk`; false, keeping nothing more, once it would pass [`RESEND_LIMIT_BYTES`].
    fn push(&mut self, chunk: &Bytes) -> bool {
        if self.len + chunk.len() > RESEND_LIMIT_BYTES {
            return false;
        }
        self.len += chunk.len();
        self.chunks.push(chunk.clone());
        true
    }

    /// The bytes, in the order they were sent, and whether a FIN followed.
    pub(crate) fn into_parts(self) -> (Vec<Bytes>, bool) {
        (self.chunks, self.fin)
    }
}

/// A client connection on its way to a tunnel, with what it sent on an earlier tunnel that
/// ended before the hub acknowledged it (none for a new one).
#[derive(Debug)]
pub(crate) struct ClientConnection {
    pub socket: TcpStream,
    /// Boxed: only a connection carried again has any.
    pub resend: Option<Box<SentBytes>>,
    /// Tunnels it was carried on before.
    pub carries: u8,
    /// Its place among its source's connections on the port, held until it ends.
    pub lease: Option<SourceLease>,
}

impl ClientConnection {
    pub(crate) fn new(socket: TcpStream, lease: Option<SourceLease>) -> Self {
        Self {
            socket,
            resend: None,
            carries: 0,
            lease,
        }
    }

    /// The connection to carry again after its tunnel (which had `carries` before it) ended
    /// before the hub acknowledged it; `resend` is what it sent there.
    pub(crate) fn after_lost_tunnel(
        socket: TcpStream,
        resend: Option<Box<SentBytes>>,
        carries: u8,
        lease: Option<SourceLease>,
    ) -> Self {
        Self {
            socket,
            resend,
            carries: carries.saturating_add(1),
            lease,
        }
    }
}

/// A connection whose tunnel ended before the hub acknowledged its stream: the socket,
/// untouched, and what it sent.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub socket: TcpStream,
    pub sent: Box<SentBytes>,
}

impl Unacked {
    /// The connection to carry again, which has now lost `carries` + 1 tunnels.
    pub(crate) fn into_client(self, carries: u8, lease: Option<SourceLease>) -> ClientConnection {
        ClientConnection::after_lost_tunnel(self.socket, Some(self.sent), carries, lease)
    }
}

/// One tunnel's connection streams the hub has not acknowledged yet, by id (over QUIC, the
/// QUIC stream's index).
#[derive(Debug, Default)]
pub(crate) struct UnackedStreams {
    streams: Mutex<HashMap<u32, SentBytes>>,
}

impl UnackedStreams {
    /// The hub acknowledged stream `id` (OPEN_ACK): it is the hub's to answer now.
    pub(crate) fn acknowledged(&self, id: u32) {
        self.streams.locked().remove(&id);
    }

    /// Streams not acknowledged yet.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.streams.locked().len()
    }
}

/// A stream's entry in its tunnel's [`UnackedStreams`], dropped with it.
#[derive(Debug)]
pub(crate) struct UnackedStream {
    streams: Arc<UnackedStreams>,
    id: u32,
    /// False once the entry is gone (acknowledged, answered or past the limit): no more locking.
    tracked: AtomicBool,
}

impl UnackedStream {
    pub(crate) fn track(streams: &Arc<UnackedStreams>, id: u32) -> Self {
        streams.streams.locked().insert(id, SentBytes::default());
        Self {
            streams: streams.clone(),
            id,
            tracked: AtomicBool::new(true),
        }
    }

    /// Keeps `chunk`, which the client sent on the stream.
    pub(crate) fn record(&self, chunk: &Bytes) {
        self.update(|sent| sent.push(chunk));
    }

    /// The client half-closed.
    pub(crate) fn record_fin(&self) {
        self.update(|sent| {
            sent.fin = true;
            true
        });
    }

    /// The hub answered on the stream (data, a close or credit): it has it.
    pub(crate) fn answered(&self) {
        if self.tracked.swap(false, Ordering::Relaxed) {
            self.streams.acknowledged(self.id);
        }
    }

    /// What the client sent, unless the hub acknowledged the stream or it sent too much. For
    /// when the tunnel has ended.
    pub(crate) fn take(&self) -> Option<Box<SentBytes>> {
        if !self.tracked.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.streams.streams.locked().remove(&self.id).map(Box::new)
    }

    /// Applies `change` to the entry while there is one; a false answer removes it.
    fn update(&self, change: impl FnOnce(&mut SentBytes) -> bool) {
        if !self.tracked.load(Ordering::Relaxed) {
            return;
        }
        let mut streams = self.streams.streams.locked();
        let keep = streams.get_mut(&self.id).is_some_and(change);
        if !keep {
            streams.remove(&self.id);
            self.tracked.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for UnackedStream {
    fn drop(&mut self) {
        self.answered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_sent_is_kept_until_the_hub_acknowledges_the_stream() {
        let streams = Arc::new(UnackedStreams::default());
        let first = UnackedStream::track(&streams, 1);
        let second = UnackedStream::track(&streams, 2);
        first.record(&Bytes::from_static(b"GET / "));
        first.record(&Bytes::from_static(b"HTTP/1.1\r\n\r\n"));
        first.record_fin();
        second.record(&Bytes::from_static(b"x"));
        streams.acknowledged(2);
        assert_eq!(streams.len(), 1);

        let sent = first.take().expect("never acknowledged");
        assert_eq!(sent.len, 18);
        let (chunks, fin) = sent.into_parts();
        assert_eq!(chunks.concat(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(fin);
        assert!(first.take().is_none(), "taken once");
        assert!(second.take().is_none(), "acknowledged");
        assert_eq!(streams.len(), 0);
    }

    #[test]
    fn a_stream_past_the_limit_or_answered_or_dropped_keeps_nothing() {
        let streams = Arc::new(UnackedStreams::default());
        let big = UnackedStream::track(&streams, 1);
        big.record(&Bytes::from(vec![0; RESEND_LIMIT_BYTES]));
        big.record(&Bytes::from_static(b"!"));
        assert!(big.take().is_none(), "one byte past the limit");

        let answered = UnackedStream::track(&streams, 2);
        answered.record(&Bytes::from_static(b"GET"));
        answered.answered();
        answered.record(&Bytes::from_static(b"more"));
        assert!(answered.take().is_none());

        drop(UnackedStream::track(&streams, 3));
        assert_eq!(streams.len(), 0, "no entry outlives its stream");
    }
}
