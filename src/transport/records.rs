//! TLS 1.3 records once the handshake is done (RFC 8446 section 5.2), sans-IO: rustls runs the
//! handshake and keeps the key schedule, this seals and opens the records. Each direction has
//! its own key, so a tunnel's reader and writer work in parallel with no lock between them,
//! and a record is decrypted where it was read, with no copy through a plaintext queue.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;
use thiserror::Error;

/// The most content one record carries (2^14): the limit every TLS peer enforces.
pub const MAX_RECORD_PLAINTEXT: usize = 1 << 14;

/// `opaque_type`, `legacy_record_version`, `length`.
pub const RECORD_HEADER_LEN: usize = 5;

/// Every AEAD suite of TLS 1.3 has a 16-byte tag.
const TAG_LEN: usize = 16;

/// A record's bytes beyond its content: header, inner content type, tag.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 1 + TAG_LEN;

/// The longest encrypted record a peer may send (2^14 + 256, padding included).
const MAX_CIPHERTEXT_LEN: usize = MAX_RECORD_PLAINTEXT + 256;

/// Every protected record goes out as application data; the real type is inside.
const OPAQUE_TYPE: u8 = 23;
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

/// Inner content types (RFC 8446 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const HANDSHAKE_HEADER_LEN: usize = 4;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_LEVEL_WARNING: u8 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("TLS record of type {0} after the handshake")]
    UnexpectedRecordType(u8),
    #[error("TLS record of {0} bytes is shorter than a tag or longer than the limit")]
    BadLength(usize),
    #[error("TLS record content of {0} bytes exceeds the limit")]
    Oversized(usize),
    #[error("TLS record failed to decrypt")]
    Decrypt,
    #[error("TLS record failed to encrypt")]
    Encrypt,
    #[error("TLS record with no content type")]
    NoContentType,
    #[error("TLS inner content type {0} after the handshake")]
    UnexpectedContentType(u8),
    #[error("peer sent TLS alert {0}")]
    Alert(u8),
    #[error("malformed TLS handshake message after the handshake")]
    BadHandshakeMessage,
    #[error("TLS handshake message type {0} after the handshake")]
    UnexpectedHandshakeMessage(u8),
    #[error("TLS key of unexpected length")]
    BadKey,
    #[error("TLS sequence numbers exhausted")]
    SequenceExhausted,
    #[error("no room for the TLS record")]
    NoRoom,
}

/// One direction's traffic key and the sequence number of its next record.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    /// The key rustls derived (or updated) for one direction, starting at record `seq`.
    pub fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Result<Self, RecordError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aws_lc_rs::aead::AES_128_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aws_lc_rs::aead::AES_256_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aws_lc_rs::aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::BadKey),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::BadKey)?;
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce: the IV XOR the sequence number, which then moves on. A sequence
    /// number is never used twice with one key.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *byte ^= seq;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}

fn header(ciphertext_len: usize) -> [u8; RECORD_HEADER_LEN] {
    // Callers keep records within MAX_CIPHERTEXT_LEN, far below u16::MAX.
    let [hi, lo] = (ciphertext_len as u16).to_be_bytes();
    [OPAQUE_TYPE, LEGACY_VERSION[0], LEGACY_VERSION[1], hi, lo]
}

/// The length of the record that carries `content_len` bytes of content.
pub const fn sealed_len(content_len: usize) -> usize {
    content_len + RECORD_OVERHEAD
}

/// Seals `content` as one protected record of type `content_type` into the front of `out`,
/// encrypting it on the way (no copy of the plaintext first), and returns the record's length.
/// `content` is at most [`MAX_RECORD_PLAINTEXT`] bytes, `out` at least [`sealed_len`] of it.
pub fn seal_record(
    key: &mut RecordKey,
    content_type: ContentType,
    content: &[u8],
    out: &mut [u8],
) -> Result<usize, RecordError> {
    let (header, nonce, body) = start_record(key, content.len(), out)?;
    let (ciphertext, type_and_tag) = body.split_at_mut(content.len());
    key.key
        .seal_out_of_place_scatter(
            nonce,
            Aad::from(header),
            content,
            ciphertext,
            &[content_type as u8],
            type_and_tag,
        )
        .map_err(|_| RecordError::Encrypt)?;
    Ok(sealed_len(content.len()))
}

/// Seals the `content_len` bytes of content already placed after the header's room at the
/// front of `out` (content gathered from several buffers), in place; returns the length.
pub fn seal_record_in_place(
    key: &mut RecordKey,
    content_type: ContentType,
    content_len: usize,
    out: &mut [u8],
) -> Result<usize, RecordError> {
    let (header, nonce, body) = start_record(key, content_len, out)?;
    let (inner, tag_out) = body.split_at_mut(content_len + 1);
    inner[content_len] = content_type as u8;
    let tag = key
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(header), inner)
        .map_err(|_| RecordError::Encrypt)?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(sealed_len(content_len))
}

/// Writes the header of a record of `content_len` at `out`'s front and takes the record's
/// nonce; returns the header (the record's AAD), the nonce and the body (content, type, tag).
/// Nothing is written and no sequence number is used when the record cannot be sealed there.
fn start_record<'o>(
    key: &mut RecordKey,
    content_len: usize,
    out: &'o mut [u8],
) -> Result<([u8; RECORD_HEADER_LEN], Nonce, &'o mut [u8]), RecordError> {
    if content_len > MAX_RECORD_PLAINTEXT {
        return Err(RecordError::Oversized(content_len));
    }
    let record = out
        .get_mut(..sealed_len(content_len))
        .ok_or(RecordError::NoRoom)?;
    let (header_out, body) = record.split_at_mut(RECORD_HEADER_LEN);
    let nonce = key.next_nonce()?;
    let header = header(content_len + 1 + TAG_LEN);
    header_out.copy_from_slice(&header);
    Ok((header, nonce, body))
}

/// The content of a KeyUpdate handshake message that does not ask the peer to update too.
pub const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];

/// The content of a close_notify alert.
pub const CLOSE_NOTIFY: [u8; 2] = [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];

/// The length of the record at the front of `buf` once its header is there, checked against
/// the limit.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = buf.first_chunk::<RECORD_HEADER_LEN>() else {
        return Ok(None);
    };
    if header[0] != OPAQUE_TYPE {
        return Err(RecordError::UnexpectedRecordType(header[0]));
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !(1 + TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&len) {
        return Err(RecordError::BadLength(len));
    }
    Ok(Some(RECORD_HEADER_LEN + len))
}

/// Decrypts the complete record `record` (header included) in place and returns its inner
/// content type and the range of its content within `record`.
pub fn open_record(
    key: &mut RecordKey,
    record: &mut [u8],
) -> Result<(ContentType, std::ops::Range<usize>), RecordError> {
    let (header, body) = record
        .split_first_chunk_mut::<RECORD_HEADER_LEN>()
        .ok_or(RecordError::Decrypt)?;
    let nonce = key.next_nonce()?;
    let inner = key
        .key
        .open_in_place(nonce, Aad::from(*header), body)
        .map_err(|_| RecordError::Decrypt)?;
    // The content type is the last non-zero byte; zeros after it are padding.
    let type_at = inner
        .iter()
        .rposition(|&byte| byte != 0)
        .ok_or(RecordError::NoContentType)?;
    let content_type = match inner[type_at] {
        21 => ContentType::Alert,
        22 => ContentType::Handshake,
        23 => ContentType::ApplicationData,
        other => return Err(RecordError::UnexpectedContentType(other)),
    };
    if type_at > MAX_RECORD_PLAINTEXT {
        return Err(RecordError::Oversized(type_at));
    }
    Ok((content_type, RECORD_HEADER_LEN..RECORD_HEADER_LEN + type_at))
}

/// What a post-handshake handshake record asks of the receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum PostHandshake {
    /// Nothing: session tickets are not used.
    Ignore,
    /// The peer's next records use its next key; `requested` asks us to update ours.
    KeyUpdate { requested: bool },
}

/// Reads the handshake messages of one record. A message split across records is refused:
/// the only ones expected here (KeyUpdate, NewSessionTicket) are far smaller than a record.
pub fn parse_post_handshake(mut content: &[u8]) -> Result<Vec<PostHandshake>, RecordError> {
    let mut messages = Vec::new();
    while !content.is_empty() {
        let (head, rest) = content
            .split_first_chunk::<HANDSHAKE_HEADER_LEN>()
            .ok_or(RecordError::BadHandshakeMessage)?;
        let len = usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
        if rest.len() < len {
            return Err(RecordError::BadHandshakeMessage);
        }
        let (body, rest) = rest.split_at(len);
        messages.push(match (head[0], body) {
            (HANDSHAKE_NEW_SESSION_TICKET, _) => PostHandshake::Ignore,
            (HANDSHAKE_KEY_UPDATE, [0]) => PostHandshake::KeyUpdate { requested: false },
            (HANDSHAKE_KEY_UPDATE, [1]) => PostHandshake::KeyUpdate { requested: true },
            (HANDSHAKE_KEY_UPDATE, _) => return Err(RecordError::BadHandshakeMessage),
            (other, _) => return Err(RecordError::UnexpectedHandshakeMessage(other)),
        });
        content = rest;
    }
    Ok(messages)
}

/// An alert record: close_notify ends the stream cleanly, anything else is an error.
pub fn check_alert(content: &[u8]) -> Result<(), RecordError> {
    match content {
        [_, ALERT_CLOSE_NOTIFY] => Ok(()),
        [_, description] => Err(RecordError::Alert(*description)),
        _ => Err(RecordError::Alert(u8::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const IV: [u8; NONCE_LEN] = [0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    fn key_at(seq: u64) -> RecordKey {
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: KEY.into(),
            iv: rustls::crypto::cipher::Iv::copy(&IV),
        };
        RecordKey::new(secrets, seq).unwrap()
    }

    /// Appends a sealed record to `out`.
    fn seal_onto(
        key: &mut RecordKey,
        content_type: ContentType,
        content: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.resize(start + sealed_len(content.len()), 0);
        let len = seal_record(key, content_type, content, &mut out[start..]).unwrap();
        assert_eq!(len, sealed_len(content.len()));
    }

    #[test]
    fn a_record_is_the_header_then_content_type_and_tag_sealed_under_iv_xor_seq() {
        let mut out = Vec::new();
        seal_onto(
            &mut key_at(7),
            ContentType::ApplicationData,
            b"hello",
            &mut out,
        );
        // 5 + 1 + 16 bytes of ciphertext after the header.
        assert_eq!(&out[..5], &[0x17, 0x03, 0x03, 0x00, 0x16]);
        assert_eq!(out.len(), 5 + 22);

        // The same record by hand: nonce = IV with the sequence number XORed into its end.
        let mut nonce = IV;
        nonce[11] ^= 7;
        let key = LessSafeKey::new(UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap());
        let mut expected = b"hello\x17".to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from([0x17, 0x03, 0x03, 0x00, 0x16]),
            &mut expected,
        )
        .unwrap();
        assert_eq!(&out[5..], &expected[..]);

        // Sealed in place from content already in the buffer: the same bytes.
        let mut in_place = vec![0; 5 + 22];
        in_place[5..10].copy_from_slice(b"hello");
        let len = seal_record_in_place(
            &mut key_at(7),
            ContentType::ApplicationData,
            5,
            &mut in_place,
        )
        .unwrap();
        assert_eq!(len, 5 + 22);
        assert_eq!(in_place, out);
    }

    #[test]
    fn a_record_needs_room_and_at_most_the_limit_of_content() {
        let mut short = vec![0; 5 + 21];
        let mut key = key_at(0);
        assert_eq!(
            seal_record(&mut key, ContentType::ApplicationData, b"hello", &mut short),
            Err(RecordError::NoRoom)
        );
        assert_eq!(key.seq(), 0, "a refused record uses no sequence number");
        assert_eq!(short, vec![0; 5 + 21], "and writes nothing");
        let big = vec![0; MAX_RECORD_PLAINTEXT + 1];
        let mut out = vec![0; sealed_len(big.len())];
        assert_eq!(
            seal_record(&mut key_at(0), ContentType::ApplicationData, &big, &mut out),
            Err(RecordError::Oversized(MAX_RECORD_PLAINTEXT + 1))
        );
    }

    #[test]
    fn records_open_in_order_with_their_type_and_content() {
        let (mut sealer, mut opener) = (key_at(0), key_at(0));
        let mut out = Vec::new();
        let big = vec![0x5au8; MAX_RECORD_PLAINTEXT + 10];
        for chunk in big.chunks(MAX_RECORD_PLAINTEXT) {
            seal_onto(&mut sealer, ContentType::ApplicationData, chunk, &mut out);
        }
        seal_onto(&mut sealer, ContentType::Alert, &CLOSE_NOTIFY, &mut out);
        assert_eq!(sealer.seq(), 3);

        let mut contents = Vec::new();
        let mut rest = &mut out[..];
        while let Some(len) = record_len(rest).unwrap() {
            let (record, tail) = rest.split_at_mut(len);
            let (content_type, range) = open_record(&mut opener, record).unwrap();
            contents.push((content_type, record[range].to_vec()));
            rest = tail;
        }
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[0].1.len(), MAX_RECORD_PLAINTEXT);
        assert_eq!(contents[1].1, vec![0x5a; 10]);
        assert_eq!(contents[2], (ContentType::Alert, CLOSE_NOTIFY.to_vec()));
        assert_eq!(check_alert(&contents[2].1), Ok(()));
    }

    #[test]
    fn a_changed_byte_a_replayed_record_or_the_wrong_key_fails_to_open() {
        let mut out = Vec::new();
        seal_onto(
            &mut key_at(3),
            ContentType::ApplicationData,
            b"data",
            &mut out,
        );
        let mut flipped = out.to_vec();
        flipped[9] ^= 1;
        assert_eq!(
            open_record(&mut key_at(3), &mut flipped),
            Err(RecordError::Decrypt)
        );
        // Another sequence number is another nonce: a replayed or reordered record fails.
        assert_eq!(
            open_record(&mut key_at(4), &mut out.to_vec()),
            Err(RecordError::Decrypt)
        );
        let mut header = out.to_vec();
        header[4] ^= 1; // the header is authenticated too
        assert_eq!(
            open_record(&mut key_at(3), &mut header),
            Err(RecordError::Decrypt)
        );
        assert!(open_record(&mut key_at(3), &mut out.to_vec()).is_ok());
    }

    #[test]
    fn padding_after_the_content_type_is_stripped() {
        let key = LessSafeKey::new(UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap());
        let mut inner = b"padded\x17\0\0\0\0".to_vec();
        let header = [0x17, 0x03, 0x03, 0x00, (inner.len() + TAG_LEN) as u8];
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(IV),
            Aad::from(header),
            &mut inner,
        )
        .unwrap();
        let mut record = [&header[..], &inner].concat();
        let (content_type, range) = open_record(&mut key_at(0), &mut record).unwrap();
        assert_eq!(content_type, ContentType::ApplicationData);
        assert_eq!(&record[range], b"padded");
    }

    #[test]
    fn record_headers_are_checked_before_the_body_arrives() {
        assert_eq!(record_len(&[0x17, 3, 3]), Ok(None));
        assert_eq!(record_len(&[0x17, 3, 3, 0x00, 0x20]), Ok(Some(5 + 32)));
        assert_eq!(
            record_len(&[0x17, 3, 3, 0x41, 0x01]),
            Err(RecordError::BadLength(0x4101))
        );
        assert_eq!(
            record_len(&[0x16, 3, 3, 0, 40]),
            Err(RecordError::UnexpectedRecordType(0x16))
        );
        assert_eq!(
            record_len(&[0x17, 3, 3, 0, 16]),
            Err(RecordError::BadLength(16))
        );
    }

    #[test]
    fn post_handshake_messages_key_updates_tickets_and_the_rest() {
        assert_eq!(
            parse_post_handshake(&KEY_UPDATE_NOT_REQUESTED),
            Ok(vec![PostHandshake::KeyUpdate { requested: false }])
        );
        let ticket = [4, 0, 0, 3, 9, 9, 9];
        let both = [&ticket[..], &[24, 0, 0, 1, 1]].concat();
        assert_eq!(
            parse_post_handshake(&both),
            Ok(vec![
                PostHandshake::Ignore,
                PostHandshake::KeyUpdate { requested: true }
            ])
        );
        assert_eq!(
            parse_post_handshake(&[24, 0, 0, 1, 2]),
            Err(RecordError::BadHandshakeMessage)
        );
        assert_eq!(
            parse_post_handshake(&[4, 0, 0, 9, 1]),
            Err(RecordError::BadHandshakeMessage)
        );
        assert_eq!(
            parse_post_handshake(&[1, 0, 0, 0]),
            Err(RecordError::UnexpectedHandshakeMessage(1))
        );
        assert_eq!(check_alert(&[2, 40]), Err(RecordError::Alert(40)));
    }
}
