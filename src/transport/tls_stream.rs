//! A tunnel's TLS 1.3 connection over TCP: rustls runs the handshake (its unbuffered API) and
//! keeps the key schedule; afterwards a [`TlsReader`] and a [`TlsWriter`] each own one half
//! of the socket and one direction's key (`records`). A shared TLS stream would put one lock
//! around both directions' crypto and syscalls and copy every record through rustls' queues.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{
    ClientConfig, CommonState, ConnectionTrafficSecrets, ServerConfig, SupportedCipherSuite,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::lock::Locked;

use super::records::{
    check_alert, open_record, parse_post_handshake, record_len, seal_record, seal_record_in_place,
    sealed_len, ContentType, PostHandshake, RecordError, RecordKey, CLOSE_NOTIFY,
    KEY_UPDATE_NOT_REQUESTED, MAX_RECORD_PLAINTEXT, RECORD_HEADER_LEN,
};

/// Room made in the receive buffer before each socket read.
const READ_BYTES: usize = 64 * 1024;

/// Records sealed under one key before the writer moves to the next: a margin below the
/// suite's confidentiality limit (2^24 records for AES-128-GCM, 2^23 for AES-256-GCM).
const REKEY_MARGIN_RECORDS: u64 = 1024;

/// Both halves of an established connection and what the handshake negotiated.
pub(crate) struct TlsConnection {
    pub reader: TlsReader,
    pub writer: TlsWriter,
    pub alpn: Option<Vec<u8>>,
}

/// Runs the client side of the handshake on `tcp`.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<TlsConnection> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    establish(conn, tcp).await
}

/// Runs the server side of the handshake on `tcp`.
pub(crate) async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsConnection> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    establish(conn, tcp).await
}

fn tls_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        tls_error(e)
    }
}

/// Derives a direction's next key when a KeyUpdate moves it on.
trait TrafficSecrets: Send {
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error>;
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error>;
}

impl<Data> TrafficSecrets for KernelConnection<Data>
where
    KernelConnection<Data>: Send,
{
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        self.update_tx_secret().map(|(_, secrets)| secrets)
    }
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        self.update_rx_secret().map(|(_, secrets)| secrets)
    }
}

/// The key schedule both halves share; the lock is taken only for a key update.
struct KeySchedule {
    secrets: Mutex<Box<dyn TrafficSecrets>>,
    /// The peer asked us to update our key; the writer does so before its next record.
    update_requested: AtomicBool,
}

impl KeySchedule {
    fn next(&self, tx: bool) -> io::Result<RecordKey> {
        let mut secrets = self.secrets.locked();
        let next = if tx {
            secrets.next_tx()
        } else {
            secrets.next_rx()
        };
        Ok(RecordKey::new(next.map_err(tls_error)?, 0)?)
    }
}

/// What the two kinds of unbuffered connection share for the handshake.
trait Handshake: Sized {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
    #[allow(clippy::type_complexity)]
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, Box<dyn TrafficSecrets>), rustls::Error>;
}

/// The two impls differ only in their types: rustls gives each side its own methods.
macro_rules! impl_handshake {
    ($connection:ty, $data:ty) => {
        impl Handshake for $connection {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &CommonState {
                self
            }
            fn into_kernel(
                self,
            ) -> Result<(rustls::ExtractedSecrets, Box<dyn TrafficSecrets>), rustls::Error> {
                let (secrets, kernel) = self.dangerous_into_kernel_connection()?;
                Ok((secrets, Box::new(kernel)))
            }
        }
    };
}

impl_handshake!(UnbufferedClientConnection, ClientConnectionData);
impl_handshake!(UnbufferedServerConnection, ServerConnectionData);

/// What the handshake loop does after rustls returned a state (and the borrow ended).
enum Step {
    Continue,
    Transmit,
    Read,
    Established,
    Closed,
    Failed(rustls::Error),
}

/// Drives `conn` through the handshake on `tcp`, then hands each direction to its half.
async fn establish<C: Handshake>(mut conn: C, mut tcp: TcpStream) -> io::Result<TlsConnection> {
    let mut incoming = BytesMut::with_capacity(READ_BYTES);
    let mut outgoing = Vec::new();
    // Application data that arrived with the handshake's last flight (the edge's auth line
    // may share a read with its Finished).
    let mut early_plaintext = BytesMut::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming);
        let step = match state {
            Err(e) => Step::Failed(e),
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                match encode_into(&mut outgoing, |b| data.encode(b)) {
                    Ok(()) => Step::Continue,
                    Err(e) => Step::Failed(e),
                }
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done();
                Step::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut step = Step::Continue;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            early_plaintext.extend_from_slice(record.payload);
                        }
                        Err(e) => {
                            step = Step::Failed(e);
                            break;
                        }
                    }
                }
                step
            }
            Ok(ConnectionState::WriteTraffic(_)) => Step::Established,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::Closed,
            Ok(_) => Step::Failed(rustls::Error::General(
                "unexpected state during the TLS handshake".into(),
            )),
        };
        incoming.advance(discard);
        match step {
            Step::Continue => {}
            Step::Transmit => {
                tcp.write_all(&outgoing).await?;
                outgoing.clear();
            }
            Step::Read => read_more(&mut tcp, &mut incoming).await?,
            // A server may write before the client's Finished has arrived.
            Step::Established if conn.common().is_handshaking() => {
                read_more(&mut tcp, &mut incoming).await?
            }
            Step::Established => break,
            Step::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ))
            }
            Step::Failed(e) => {
                send_alert(&mut conn, &mut tcp, &mut incoming).await;
                return Err(tls_error(e));
            }
        }
    }
    let alpn = conn.common().alpn_protocol().map(<[u8]>::to_vec);
    let suite = conn.common().negotiated_cipher_suite();
    let (secrets, schedule) = conn.into_kernel().map_err(tls_error)?;
    let rekey_after = rekey_after(suite);
    let schedule = Arc::new(KeySchedule {
        secrets: Mutex::new(schedule),
        update_requested: AtomicBool::new(false),
    });
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let (read_half, write_half) = tcp.into_split();
    Ok(TlsConnection {
        reader: TlsReader {
            io: read_half,
            key: RecordKey::new(rx, rx_seq)?,
            schedule: schedule.clone(),
            incoming,
            early_plaintext,
            content: None,
            closed: false,
        },
        writer: TlsWriter {
            io: write_half,
            key: RecordKey::new(tx, tx_seq)?,
            schedule,
            rekey_after,
            outgoing: SealedRecords::default(),
            close_sent: false,
        },
        alpn,
    })
}

fn rekey_after(suite: Option<SupportedCipherSuite>) -> u64 {
    let limit = match suite {
        Some(SupportedCipherSuite::Tls13(suite)) => suite.common.confidentiality_limit,
        _ => 1 << 23,
    };
    limit.saturating_sub(REKEY_MARGIN_RECORDS)
}

/// Appends what `encode` writes to `outgoing`, growing it to the size rustls asks for.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 4096;
    loop {
        outgoing.resize(start + room, 0);
        match encode(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(need)) if need.required_size > room => {
                room = need.required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}

async fn read_more(tcp: &mut TcpStream, incoming: &mut BytesMut) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    incoming.reserve(READ_BYTES);
    if tcp.read_buf(incoming).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
        ));
    }
    Ok(())
}

/// Best effort: the alert rustls queued for a failed handshake tells the peer why.
async fn send_alert<C: Handshake>(conn: &mut C, tcp: &mut TcpStream, incoming: &mut [u8]) {
    let mut alert = Vec::new();
    // The buffer rustls last saw: it remembers how far into it it got, and indexes it again.
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process(incoming).state {
        let _ = encode_into(&mut alert, |b| data.encode(b));
    }
    if !alert.is_empty() {
        let _ = tcp.write_all(&alert).await;
    }
}

/// The receiving half: opens records where they were read and yields their content.
pub(crate) struct TlsReader {
    io: OwnedReadHalf,
    key: RecordKey,
    schedule: Arc<KeySchedule>,
    /// Bytes read from the socket; the record at the front may be opened already.
    incoming: BytesMut,
    early_plaintext: BytesMut,
    /// The opened record at the front of `incoming` whose content is not all read yet.
    content: Option<OpenedRecord>,
    /// close_notify arrived: the peer sends nothing more.
    closed: bool,
}

/// An application-data record opened in place: where its unread content is, and how far to
/// advance past it once that is read.
struct OpenedRecord {
    unread: std::ops::Range<usize>,
    len: usize,
}

impl TlsReader {
    pub(crate) fn tcp(&self) -> &TcpStream {
        self.io.as_ref()
    }

    /// Opens the complete record at the front of `incoming` (`len` bytes).
    fn open_front(&mut self, len: usize) -> io::Result<()> {
        let (content_type, range) = open_record(&mut self.key, &mut self.incoming[..len])?;
        match content_type {
            ContentType::ApplicationData if !range.is_empty() => {
                self.content = Some(OpenedRecord { unread: range, len });
                return Ok(());
            }
            ContentType::ApplicationData => {}
            ContentType::Alert => {
                check_alert(&self.incoming[range])?;
                self.closed = true;
            }
            ContentType::Handshake => {
                for message in parse_post_handshake(&self.incoming[range])? {
                    if let PostHandshake::KeyUpdate { requested } = message {
                        self.key = self.schedule.next(false)?;
                        if requested {
                            self.schedule
                                .update_requested
                                .store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
        self.incoming.advance(len);
        Ok(())
    }
}

impl AsyncRead for TlsReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early_plaintext.is_empty() {
            let n = this.early_plaintext.len().min(buf.remaining());
            buf.put_slice(&this.early_plaintext[..n]);
            this.early_plaintext.advance(n);
            return Poll::Ready(Ok(()));
        }
        let mut filled = false;
        while buf.remaining() > 0 {
            if let Some(opened) = &mut this.content {
                let unread = &mut opened.unread;
                let n = unread.len().min(buf.remaining());
                buf.put_slice(&this.incoming[unread.start..unread.start + n]);
                unread.start += n;
                filled = true;
                if unread.start == unread.end {
                    let len = opened.len;
                    this.content = None;
                    this.incoming.advance(len);
                }
                continue;
            }
            if this.closed {
                break;
            }
            if let Some(len) = record_len(&this.incoming)? {
                if this.incoming.len() >= len {
                    this.open_front(len)?;
                    continue;
                }
            }
            if filled {
                break;
            }
            this.incoming.reserve(READ_BYTES);
            if ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.incoming
            ))? == 0
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The sending half: seals what it is given into records and writes them in one go.
pub(crate) struct TlsWriter {
    io: OwnedWriteHalf,
    key: RecordKey,
    schedule: Arc<KeySchedule>,
    /// Records sealed under one key before it is updated.
    rekey_after: u64,
    outgoing: SealedRecords,
    close_sent: bool,
}

/// Sealed records not yet taken by the socket, `buf[sent..filled]`. The buffer keeps the
/// length it grew to (zeroed once, when it grew), so records are encrypted straight into it
/// from the writer's slices, with no copy or zeroing first.
#[derive(Default)]
struct SealedRecords {
    buf: Vec<u8>,
    filled: usize,
    sent: usize,
}

/// A buffer that grew past this (a burst of large frames) is dropped once it is drained.
const KEPT_OUTGOING_BYTES: usize = 4 * 64 * 1024;

impl SealedRecords {
    /// Room for `len` more bytes after what is filled.
    fn room(&mut self, len: usize) -> &mut [u8] {
        let end = self.filled + len;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.filled]
    }

    fn is_empty(&self) -> bool {
        self.sent == self.filled
    }

    fn consume(&mut self, len: usize) {
        self.sent += len;
        if self.is_empty() {
            (self.sent, self.filled) = (0, 0);
            if self.buf.len() > KEPT_OUTGOING_BYTES {
                self.buf = Vec::new();
            }
        }
    }

    /// Seals `content` (at most a record's worth) as the next record.
    fn seal(
        &mut self,
        key: &mut RecordKey,
        content_type: ContentType,
        content: &[u8],
    ) -> io::Result<()> {
        let out = self.room(sealed_len(content.len()));
        self.filled += seal_record(key, content_type, content, out)?;
        Ok(())
    }

    /// Seals the next record from `parts`, whose lengths add up to at most a record's worth.
    fn seal_gathered(&mut self, key: &mut RecordKey, parts: &[&[u8]]) -> io::Result<()> {
        let content_len: usize = parts.iter().map(|part| part.len()).sum();
        let out = self.room(sealed_len(content_len));
        let mut at = RECORD_HEADER_LEN;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.filled += seal_record_in_place(key, ContentType::ApplicationData, content_len, out)?;
        Ok(())
    }
}

/// Most slices one record's content is gathered from before it is sealed; past this the
/// record is cut short (the writer's batches have a few dozen slices at most).
const MAX_GATHERED_PARTS: usize = 16;

impl TlsWriter {
    /// Seals `bufs`, in order, into as few records as they fill. A record whose content lies
    /// in one slice is encrypted from it directly; one that spans slices (frame headers and
    /// the payloads between them) is gathered first.
    fn seal(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        let mut parts: [&[u8]; MAX_GATHERED_PARTS] = [&[]; MAX_GATHERED_PARTS];
        let mut gathered = 0;
        let mut gathered_len = 0;
        for buf in bufs {
            let mut rest: &[u8] = buf;
            total += rest.len();
            while !rest.is_empty() {
                let take = rest.len().min(MAX_RECORD_PLAINTEXT - gathered_len);
                let (part, after) = rest.split_at(take);
                rest = after;
                parts[gathered] = part;
                gathered += 1;
                gathered_len += take;
                if gathered_len == MAX_RECORD_PLAINTEXT || gathered == MAX_GATHERED_PARTS {
                    self.seal_parts(&parts[..gathered])?;
                    (gathered, gathered_len) = (0, 0);
                }
            }
        }
        if gathered > 0 {
            self.seal_parts(&parts[..gathered])?;
        }
        Ok(total)
    }

    fn seal_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        self.update_key_if_due()?;
        match parts {
            [content] => self
                .outgoing
                .seal(&mut self.key, ContentType::ApplicationData, content),
            _ => self.outgoing.seal_gathered(&mut self.key, parts),
        }
    }

    /// Moves to the next key near the confidentiality limit, or when the peer asked: a
    /// KeyUpdate under the old key, everything after it under the new one.
    fn update_key_if_due(&mut self) -> io::Result<()> {
        let requested = self.schedule.update_requested.load(Ordering::Acquire)
            && self.schedule.update_requested.swap(false, Ordering::AcqRel);
        if self.key.seq() < self.rekey_after && !requested {
            return Ok(());
        }
        self.outgoing.seal(
            &mut self.key,
            ContentType::Handshake,
            &KEY_UPDATE_NOT_REQUESTED,
        )?;
        self.key = self.schedule.next(true)?;
        Ok(())
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.unsent()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsWriter {
    /// Takes all of `buf` once earlier records are out; they reach the socket on flush.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Poll::Ready(this.seal(&[io::IoSlice::new(buf)]))
    }

    /// Takes all of `bufs` once earlier records are out, packed into full records.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Poll::Ready(this.seal(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends close_notify, then the TCP FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            this.outgoing
                .seal(&mut this.key, ContentType::Alert, &CLOSE_NOTIFY)?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::{server_name, HubIdentity, HubTrust, ALPN};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(30);

    fn payload(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(7) >> 3) as u8)
            .collect()
    }

    /// A fresh hub identity's TLS config and a loopback listener for it.
    async fn hub_listener() -> (Arc<ServerConfig>, TcpListener, std::net::SocketAddr) {
        let identity = HubIdentity::generate().unwrap();
        let config = identity.server_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (config, listener, address)
    }

    /// Accepts one connection with our server half, updating its key every `rekey_after`
    /// records, and echoes what it reads until close_notify; returns the bytes echoed.
    async fn echo_until_close_notify(
        config: Arc<ServerConfig>,
        listener: TcpListener,
        rekey_after: u64,
    ) -> usize {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = accept(config, tcp).await.unwrap();
        assert_eq!(tls.alpn.as_deref(), Some(ALPN));
        tls.writer.rekey_after = rekey_after;
        let mut buf = vec![0; 70_000];
        let mut echoed = 0;
        loop {
            let n = tls.reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break; // close_notify
            }
            // Two slices, so records are packed across a slice boundary.
            let (front, back) = buf[..n].split_at(n / 2);
            let slices = [io::IoSlice::new(front), io::IoSlice::new(back)];
            assert_eq!(tls.writer.write_vectored(&slices).await.unwrap(), n);
            tls.writer.flush().await.unwrap();
            echoed += n;
        }
        // Far more records went out: only key updates keep the sequence this low.
        assert!(tls.writer.key.seq() <= rekey_after);
        tls.writer.shutdown().await.unwrap();
        echoed
    }

    /// Our server half against rustls' own client: bytes both ways, a KeyUpdate the client
    /// starts (which asks for ours), KeyUpdates our writer makes every 4 records, and
    /// close_notify each way.
    #[tokio::test]
    async fn our_records_interoperate_with_a_rustls_client_across_key_updates() {
        let (config, listener, address) = hub_listener().await;
        let server = tokio::spawn(echo_until_close_notify(config, listener, 4));

        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(HubTrust::AnyKey.client_config().unwrap());
        let mut client = connector
            .connect(server_name("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            client
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let sent = payload(300_000);
        let (first, second) = sent.split_at(100_000);
        let mut back = vec![0; sent.len()];
        tokio::time::timeout(LIMIT, async {
            client.write_all(first).await.unwrap();
            client.read_exact(&mut back[..first.len()]).await.unwrap();
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(second).await.unwrap();
            client.read_exact(&mut back[first.len()..]).await.unwrap();
            client.shutdown().await.unwrap();
            let mut after_close = Vec::new();
            client.read_to_end(&mut after_close).await.unwrap();
            assert!(after_close.is_empty());
        })
        .await
        .expect("echo within the limit");
        assert_eq!(back, sent);
        assert_eq!(server.await.unwrap(), sent.len());
    }

    /// Our client half against our server half, each updating its key every 3 records: the
    /// bytes of both directions cross many KeyUpdates each way and arrive whole, and
    /// close_notify still ends each direction cleanly.
    #[tokio::test]
    async fn our_halves_read_each_others_key_updates_in_both_directions() {
        let (config, listener, address) = hub_listener().await;
        let server = tokio::spawn(echo_until_close_notify(config, listener, 3));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let tls = connect(
            HubTrust::AnyKey.client_config().unwrap(),
            server_name("localhost").unwrap(),
            tcp,
        );
        let TlsConnection {
            mut reader,
            mut writer,
            ..
        } = tokio::time::timeout(LIMIT, tls).await.unwrap().unwrap();
        writer.rekey_after = 3;
        let sent = payload(400_000);
        let sending = async {
            for chunk in sent.chunks(7_000) {
                writer.write_all(chunk).await.unwrap();
                writer.flush().await.unwrap();
            }
            assert!(writer.key.seq() <= 3, "the client's writer updated its key");
            writer.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let receiving = reader.read_to_end(&mut back);
        tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving).1.unwrap() })
            .await
            .expect("echo within the limit");
        assert_eq!(back, sent);
        assert_eq!(server.await.unwrap(), sent.len());
    }

    /// A vectored write fills each record to the limit across slice boundaries (an empty
    /// slice included), and the peer reads the slices' bytes back in order.
    #[tokio::test]
    async fn vectored_writes_are_packed_into_full_records() {
        let (config, listener, address) = hub_listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(config, tcp).await.unwrap()
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let trust = HubTrust::AnyKey.client_config().unwrap();
        let mut client = tokio::time::timeout(
            LIMIT,
            connect(trust, server_name("localhost").unwrap(), tcp),
        )
        .await
        .unwrap()
        .unwrap();
        let mut server = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();

        let sent = payload(4 * MAX_RECORD_PLAINTEXT + 1_000);
        // The third record lies inside the fourth slice (sealed from it directly); the others
        // span slices (gathered first).
        let cuts = [0, 3, 20_003, 20_003, 52_000, sent.len()];
        let slices: Vec<io::IoSlice<'_>> = cuts
            .windows(2)
            .map(|cut| io::IoSlice::new(&sent[cut[0]..cut[1]]))
            .collect();
        let taken = std::future::poll_fn(|cx| {
            Pin::new(&mut client.writer).poll_write_vectored(cx, &slices)
        })
        .await
        .unwrap();
        assert_eq!(taken, sent.len());
        // Sealed, not written yet: four full records and one with the rest.
        let mut record_lens = Vec::new();
        let mut sealed = client.writer.outgoing.unsent();
        while let Some(len) = record_len(sealed).unwrap() {
            record_lens.push(len);
            sealed = &sealed[len..];
        }
        let full = sealed_len(MAX_RECORD_PLAINTEXT);
        assert_eq!(record_lens, [full, full, full, full, sealed_len(1_000)]);

        client.writer.flush().await.unwrap();
        let mut received = vec![0; sent.len()];
        tokio::time::timeout(LIMIT, server.reader.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, sent);
    }

    /// Our client half against rustls' own server, which sends session tickets after the
    /// handshake (ignored) and then ends without close_notify (an error, not a clean end).
    #[tokio::test]
    async fn our_client_half_reads_a_rustls_server_that_sends_tickets() {
        let identity = HubIdentity::generate().unwrap();
        let mut config = (*identity.server_config().unwrap()).clone();
        config.send_tls13_tickets = 2;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sent = payload(50_000);
        let server = tokio::spawn({
            let sent = sent.clone();
            async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut line = [0u8; 6];
                tls.read_exact(&mut line).await.unwrap();
                assert_eq!(&line, b"hello\n");
                tls.write_all(&sent).await.unwrap();
                tls.flush().await.unwrap();
                // Dropped without close_notify.
            }
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut tls = tokio::time::timeout(
            LIMIT,
            connect(
                HubTrust::AnyKey.client_config().unwrap(),
                server_name("localhost").unwrap(),
                tcp,
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(tls.alpn.as_deref(), Some(ALPN));
        tls.writer.write_all(b"hello\n").await.unwrap();
        tls.writer.flush().await.unwrap();
        let mut received = vec![0; sent.len()];
        tokio::time::timeout(LIMIT, tls.reader.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, sent);
        server.await.unwrap();
        let end = tokio::time::timeout(LIMIT, tls.reader.read(&mut [0u8; 16]))
            .await
            .unwrap();
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// What a server answers `sent` with, and how its handshake ends.
    async fn refused_handshake(sent: &'static [u8]) -> (io::Result<TlsConnection>, Vec<u8>) {
        let identity = HubIdentity::generate().unwrap();
        let config = identity.server_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
            tcp.write_all(sent).await.unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let refused = tokio::time::timeout(LIMIT, accept(config, tcp))
            .await
            .unwrap();
        (refused, client.await.unwrap())
    }

    #[tokio::test]
    async fn a_handshake_with_a_non_tls_peer_fails_with_an_error() {
        let (refused, answer) = refused_handshake(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(refused.err().unwrap().kind(), io::ErrorKind::InvalidData);
        // rustls' alert went out before the close: a 7-byte plaintext alert record.
        assert_eq!(&answer[..3], &[0x15, 0x03, 0x03]);
    }

    /// A handshake record whose 5-byte body is not a handshake message, with more bytes
    /// behind it: rustls had processed part of the buffer when it failed, and asking it for
    /// an alert with an empty buffer made it index past that buffer (a panic per connection,
    /// from anyone who can reach the tunnel port).
    #[tokio::test]
    async fn a_malformed_handshake_record_fails_with_an_error_not_a_panic() {
        let (refused, answer) =
            refused_handshake(b"\x16\x03\x01\x00\x05hello, not really TLS\r\n\r\n").await;
        assert_eq!(refused.err().unwrap().kind(), io::ErrorKind::InvalidData);
        // rustls has no alert to give for this one: the connection is closed.
        assert!(answer.is_empty(), "{answer:?}");
    }

    #[test]
    fn keys_are_updated_a_margin_below_the_suites_limit() {
        let suites = crate::transport::tls::provider().cipher_suites.clone();
        for suite in suites {
            let limit = match suite {
                SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
                _ => continue,
            };
            assert_eq!(
                rekey_after(Some(suite)),
                limit.saturating_sub(REKEY_MARGIN_RECORDS)
            );
            assert!(rekey_after(Some(suite)) < limit);
        }
    }
}
