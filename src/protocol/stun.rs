//! STUN Binding messages (RFC 8489), sans-IO.
//!
//! [`binding_request`] encodes a request, [`parse_binding_response`] turns one datagram into
//! the mapped address (or says why it is not the answer), [`public_ip_from`] checks that the
//! address makes sense for the server that was asked, and [`send_offsets`] is the
//! retransmission schedule. stun-rs does the encoding and attribute decoding; this module owns
//! the checks around it. Nothing here panics on or trusts peer data. The client that sends and
//! receives is `edge::stun`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use stun_rs::attributes::stun::{ErrorCode, Fingerprint, MappedAddress, XorMappedAddress};
use stun_rs::attributes::StunAttribute;
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
    MESSAGE_HEADER_SIZE,
};
use thiserror::Error;

/// The port a STUN server listens on when a server entry names none (RFC 8489 §18.6).
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// The first retransmission timeout (RFC 8489 §6.2.1); it doubles after every request.
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Requests sent per server: at 0, 0.5, 1.5 and 3.5 s. The RFC's Rc is 7 (39.5 s in all),
/// far too long for a refresh that simply runs again at the next interval.
pub const MAX_TRANSMISSIONS: u32 = 4;
/// Longest host name accepted in a server entry (the DNS limit).
const MAX_HOST_LEN: usize = 253;
/// The magic cookie every RFC 5389/8489 message carries.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Type and length of a FINGERPRINT attribute header.
const FINGERPRINT_HEADER: [u8; 4] = [0x80, 0x28, 0x00, 0x04];
const FINGERPRINT_ATTRIBUTE_LEN: usize = 8;
const FINGERPRINT_TYPE: u16 = 0x8028;
const MAPPED_ADDRESS_TYPE: u16 = 0x0001;
const XOR_MAPPED_ADDRESS_TYPE: u16 = 0x0020;

/// The 96-bit transaction id of a request.
pub type TxId = [u8; 12];

/// Why a datagram is not the answer to our Binding request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StunError {
    #[error("{0} bytes is shorter than a STUN header")]
    Truncated(usize),
    #[error("not a STUN message (wrong leading bits or magic cookie)")]
    NotStun,
    #[error("the header announces {declared} bytes of attributes, the datagram carries {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("the transaction id is not the one of the request")]
    WrongTransaction,
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    #[error("method 0x{0:03x} is not Binding")]
    NotBinding(u16),
    #[error("a STUN {0}, not a response")]
    NotResponse(&'static str),
    #[error("error response {code} {reason:?}")]
    ErrorResponse { code: u16, reason: String },
    #[error("unknown comprehension-required attribute 0x{0:04x}")]
    UnknownRequiredAttribute(u16),
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
    #[error("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS")]
    NoMappedAddress,
    #[error("the mapped address {mapped} is of another family than the server {server}")]
    FamilyMismatch { mapped: IpAddr, server: SocketAddr },
    #[error("the mapped address {0} cannot be a public address")]
    Unusable(SocketAddr),
    #[error("sent from {0}, not by the server asked")]
    WrongSource(SocketAddr),
    #[error("cannot encode a Binding request: {0}")]
    Encode(String),
}

/// A fresh, cryptographically random transaction id.
pub fn new_transaction_id() -> TxId {
    *TransactionId::default().as_bytes()
}

/// A Binding request without attributes: 20 bytes.
pub fn binding_request(txid: &TxId) -> Result<Vec<u8>, StunError> {
    let message = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(*txid))
        .build();
    let mut buffer = [0u8; MESSAGE_HEADER_SIZE];
    let len = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buffer, &message)
        .map_err(|e| StunError::Encode(e.to_string()))?;
    Ok(buffer.get(..len).unwrap_or(&buffer).to_vec())
}

/// The mapped address in a Binding success response to the request with `expected`:
/// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS when a (pre-RFC 5389) server sends only that.
pub fn parse_binding_response(datagram: &[u8], expected: &TxId) -> Result<SocketAddr, StunError> {
    // The cheap checks first, on the raw header, before any attribute is decoded.
    let header = datagram
        .first_chunk::<MESSAGE_HEADER_SIZE>()
        .ok_or(StunError::Truncated(datagram.len()))?;
    if header[0] & 0xc0 != 0 || header[4..8] != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let actual = datagram.len() - MESSAGE_HEADER_SIZE;
    if declared != actual {
        return Err(StunError::LengthMismatch { declared, actual });
    }
    if declared % 4 != 0 {
        return Err(StunError::Malformed(format!(
            "length {declared} is not a multiple of 4"
        )));
    }
    if header[8..] != expected[..] {
        return Err(StunError::WrongTransaction);
    }

    check_attribute_layout(&datagram[MESSAGE_HEADER_SIZE..])?;
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    if message.method() != BINDING {
        return Err(StunError::NotBinding(message.method().as_u16()));
    }
    match message.class() {
        MessageClass::SuccessResponse => {}
        MessageClass::ErrorResponse => {
            let (code, reason) = match message.get::<ErrorCode>().map(StunAttribute::as_error_code)
            {
                Some(Ok(attribute)) => (
                    attribute.error_code().error_code(),
                    attribute.error_code().reason().to_string(),
                ),
                _ => (0, "without ERROR-CODE".to_string()),
            };
            return Err(StunError::ErrorResponse { code, reason });
        }
        MessageClass::Request => return Err(StunError::NotResponse("request")),
        MessageClass::Indication => return Err(StunError::NotResponse("indication")),
    }
    // RFC 8489 §6.3.3: a success response with an unknown comprehension-required attribute
    // is discarded.
    if let Some(unknown) = message.attributes().iter().find_map(|a| match a {
        StunAttribute::Unknown(u) if u.attribute_type().is_comprehension_required() => {
            Some(u.attribute_type().as_u16())
        }
        _ => None,
    }) {
        return Err(StunError::UnknownRequiredAttribute(unknown));
    }
    if let Some(fingerprint) = message.get::<Fingerprint>() {
        check_fingerprint(datagram, fingerprint)?;
    }

    if let Some(attribute) = message.get::<XorMappedAddress>() {
        let xor = attribute
            .as_xor_mapped_address()
            .map_err(|e| StunError::Malformed(e.to_string()))?;
        return Ok(*xor.socket_address());
    }
    if let Some(attribute) = message.get::<MappedAddress>() {
        let mapped = attribute
            .as_mapped_address()
            .map_err(|e| StunError::Malformed(e.to_string()))?;
        return Ok(*mapped.socket_address());
    }
    Err(StunError::NoMappedAddress)
}

/// What stun-rs leaves lax: an address attribute must be exactly as long as its family says
/// (else a longer one could swallow the attributes after it, FINGERPRINT included), and a
/// FINGERPRINT must be the last attribute.
fn check_attribute_layout(mut attributes: &[u8]) -> Result<(), StunError> {
    let malformed = |what: String| Err(StunError::Malformed(what));
    while !attributes.is_empty() {
        let Some((header, rest)) = attributes.split_first_chunk::<4>() else {
            return malformed("an attribute header is cut short".into());
        };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some(value) = rest.get(..len) else {
            return malformed(format!("attribute 0x{kind:04x} runs past the message"));
        };
        if kind == XOR_MAPPED_ADDRESS_TYPE || kind == MAPPED_ADDRESS_TYPE {
            let expected = match value.get(1) {
                Some(1) => 8,
                Some(2) => 20,
                _ => return malformed(format!("attribute 0x{kind:04x}: unknown address family")),
            };
            if len != expected {
                return malformed(format!(
                    "attribute 0x{kind:04x} is {len} bytes, its family needs {expected}"
                ));
            }
        }
        let padded = len.div_ceil(4) * 4;
        attributes = rest.get(padded..).unwrap_or_default();
        if kind == FINGERPRINT_TYPE && !attributes.is_empty() {
            return Err(StunError::BadFingerprint);
        }
    }
    Ok(())
}

/// FINGERPRINT must be the last attribute, and its CRC covers everything before it (with the
/// header's length counting the FINGERPRINT itself, as the datagram already does).
fn check_fingerprint(datagram: &[u8], attribute: &StunAttribute) -> Result<(), StunError> {
    let fingerprint = attribute
        .as_fingerprint()
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    let start = datagram
        .len()
        .checked_sub(FINGERPRINT_ATTRIBUTE_LEN)
        .filter(|start| *start >= MESSAGE_HEADER_SIZE)
        .ok_or(StunError::BadFingerprint)?;
    let covered = datagram.get(..start).ok_or(StunError::BadFingerprint)?;
    let last_header = datagram.get(start..start + 4);
    if last_header != Some(&FINGERPRINT_HEADER[..]) || !fingerprint.validate(covered) {
        return Err(StunError::BadFingerprint);
    }
    Ok(())
}

/// The public IP in a mapped address, if it makes sense as the source the server saw: same
/// family as the server (it answers over the family it was asked over), a real port, and not
/// an unspecified, multicast or broadcast address.
pub fn public_ip_from(mapped: SocketAddr, server: SocketAddr) -> Result<IpAddr, StunError> {
    let ip = mapped.ip().to_canonical();
    if ip.is_ipv4() != server.ip().to_canonical().is_ipv4() {
        return Err(StunError::FamilyMismatch {
            mapped: mapped.ip(),
            server,
        });
    }
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if mapped.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(StunError::Unusable(mapped));
    }
    Ok(ip)
}

/// When each request of a transaction goes out, relative to its start: 0, then after
/// [`INITIAL_RTO`], doubling, at most [`MAX_TRANSMISSIONS`] of them and all before `timeout`.
pub fn send_offsets(timeout: Duration) -> Vec<Duration> {
    let mut offsets = Vec::new();
    let (mut at, mut rto) = (Duration::ZERO, INITIAL_RTO);
    for _ in 0..MAX_TRANSMISSIONS {
        if at >= timeout {
            break;
        }
        offsets.push(at);
        at += rto;
        rto *= 2;
    }
    offsets
}

/// A `stunServers` entry: `host:port`, `host` (port 3478), `[v6]:port`, `[v6]` or a bare IPv6
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    pub host: String,
    pub port: u16,
}

impl StunServer {
    pub fn parse(text: &str) -> Result<Self, BadStunServer> {
        let bad = |reason: &'static str| {
            Err(BadStunServer {
                entry: text.to_string(),
                reason,
            })
        };
        if let Ok(v6) = text.parse::<Ipv6Addr>() {
            return Ok(Self::new(v6.to_string(), DEFAULT_STUN_PORT));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return bad("missing ']' after the IPv6 address");
            };
            if inside.parse::<Ipv6Addr>().is_err() {
                return bad("not an IPv6 address between [ and ]");
            }
            match after {
                "" => (inside, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (inside, Some(port)),
                    None => return bad("expected ':port' after ']'"),
                },
            }
        } else {
            match text.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return bad("write an IPv6 address with a port as [address]:port")
                }
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return bad("the host must be 1 to 253 characters");
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return bad("the host may hold only letters, digits, '-', '.' and '_'");
        }
        let port = match port {
            None => DEFAULT_STUN_PORT,
            Some(digits) => match digits.parse::<u16>() {
                Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return bad("the port must be from 1 to 65535"),
            },
        };
        Ok(Self::new(host.to_string(), port))
    }

    fn new(host: String, port: u16) -> Self {
        Self { host, port }
    }
}

impl fmt::Display for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A `stunServers` entry that cannot name a server, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{entry:?}: {reason}")]
pub struct BadStunServer {
    pub entry: String,
    pub reason: &'static str,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::str::FromStr;

    /// RFC 5769 §2.2 / §2.3 transaction id.
    const RFC_TXID: TxId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.2: IPv4 response, 192.0.2.1:32853, with SOFTWARE, MESSAGE-INTEGRITY and
    /// FINGERPRINT.
    const RFC_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: IPv6 response, [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    const RFC_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    const TXID: TxId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    pub(crate) fn addr(text: &str) -> SocketAddr {
        SocketAddr::from_str(text).unwrap()
    }

    /// A response built with stun-rs.
    pub(crate) fn response(
        class: MessageClass,
        txid: &TxId,
        attributes: Vec<StunAttribute>,
    ) -> Vec<u8> {
        let mut builder =
            StunMessageBuilder::new(BINDING, class).with_transaction_id(TransactionId::from(*txid));
        for attribute in attributes {
            builder = builder.with_attribute(attribute);
        }
        let mut buffer = [0u8; 512];
        let len = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buffer, &builder.build())
            .unwrap();
        buffer[..len].to_vec()
    }

    pub(crate) fn xor_mapped(text: &str) -> StunAttribute {
        XorMappedAddress::from(addr(text)).into()
    }

    pub(crate) fn mapped(text: &str) -> StunAttribute {
        MappedAddress::from(addr(text)).into()
    }

    /// Header + attributes, written by hand.
    pub(crate) fn raw_message(message_type: u16, txid: &TxId, attributes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&message_type.to_be_bytes());
        out.extend_from_slice(&u16::try_from(attributes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE);
        out.extend_from_slice(txid);
        out.extend_from_slice(attributes);
        out
    }

    #[test]
    fn binding_request_is_the_twenty_byte_header() {
        let request = binding_request(&TXID).unwrap();
        assert_eq!(
            request,
            [
                0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                12
            ]
        );
        assert_ne!(new_transaction_id(), new_transaction_id());
    }

    #[test]
    fn rfc5769_responses_give_their_mapped_addresses() {
        assert_eq!(
            parse_binding_response(&RFC_IPV4_RESPONSE, &RFC_TXID),
            Ok(addr("192.0.2.1:32853"))
        );
        assert_eq!(
            parse_binding_response(&RFC_IPV6_RESPONSE, &RFC_TXID),
            Ok(addr("[2001:db8:1234:5678:11:2233:4455:6677]:32853"))
        );
    }

    #[test]
    fn responses_built_with_stun_rs_round_trip() {
        for text in ["203.0.113.7:40000", "[2001:db8::7]:1"] {
            let wire = response(MessageClass::SuccessResponse, &TXID, vec![xor_mapped(text)]);
            assert_eq!(parse_binding_response(&wire, &TXID), Ok(addr(text)));
        }
        // Byte-exact: XOR-MAPPED-ADDRESS 203.0.113.7:40000 = port ^ 0x2112, address ^ cookie.
        let wire = response(
            MessageClass::SuccessResponse,
            &TXID,
            vec![xor_mapped("203.0.113.7:40000")],
        );
        let expected = raw_message(
            0x0101,
            &TXID,
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xbd, 0x52, 0xea, 0x12, 0xd5, 0x45,
            ],
        );
        assert_eq!(wire, expected);
        // Both: XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS.
        let both = response(
            MessageClass::SuccessResponse,
            &TXID,
            vec![mapped("198.51.100.1:1"), xor_mapped("203.0.113.7:40000")],
        );
        assert_eq!(
            parse_binding_response(&both, &TXID),
            Ok(addr("203.0.113.7:40000"))
        );
    }

    #[test]
    fn mapped_address_is_the_fallback() {
        // MAPPED-ADDRESS 192.0.2.1:4660, not XORed, as RFC 3489 servers send it.
        let wire = raw_message(
            0x0101,
            &TXID,
            &[
                0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x12, 0x34, 0xc0, 0x00, 0x02, 0x01,
            ],
        );
        assert_eq!(
            parse_binding_response(&wire, &TXID),
            Ok(addr("192.0.2.1:4660"))
        );
        let built = response(
            MessageClass::SuccessResponse,
            &TXID,
            vec![mapped("[2001:db8::1]:3478")],
        );
        assert_eq!(
            parse_binding_response(&built, &TXID),
            Ok(addr("[2001:db8::1]:3478"))
        );
    }

    #[test]
    fn wrong_transaction_id_is_not_the_answer() {
        let mut other = TXID;
        other[11] ^= 1;
        let wire = response(
            MessageClass::SuccessResponse,
            &other,
            vec![xor_mapped("203.0.113.7:1")],
        );
        assert_eq!(
            parse_binding_response(&wire, &TXID),
            Err(StunError::WrongTransaction)
        );
        assert_eq!(
            parse_binding_response(&RFC_IPV4_RESPONSE, &TXID),
            Err(StunError::WrongTransaction)
        );
    }

    #[test]
    fn truncated_and_padded_datagrams_are_rejected() {
        for len in 0..MESSAGE_HEADER_SIZE {
            assert_eq!(
                parse_binding_response(&RFC_IPV4_RESPONSE[..len], &RFC_TXID),
                Err(StunError::Truncated(len))
            );
        }
        for len in MESSAGE_HEADER_SIZE..RFC_IPV4_RESPONSE.len() {
            assert_eq!(
                parse_binding_response(&RFC_IPV4_RESPONSE[..len], &RFC_TXID),
                Err(StunError::LengthMismatch {
                    declared: 60,
                    actual: len - MESSAGE_HEADER_SIZE
                })
            );
        }
        let mut longer = RFC_IPV4_RESPONSE.to_vec();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            parse_binding_response(&longer, &RFC_TXID),
            Err(StunError::LengthMismatch {
                declared: 60,
                actual: 64
            })
        ));
        // An attribute running past the end of the message.
        let cut = raw_message(
            0x0101,
            &TXID,
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xbd, 0x52],
        );
        assert!(matches!(
            parse_binding_response(&cut, &TXID),
            Err(StunError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            parse_binding_response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &TXID),
            Err(StunError::NotStun)
        );
        // RFC 3489 message: no magic cookie.
        let mut classic = raw_message(0x0101, &TXID, &[]);
        classic[4..8].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_binding_response(&classic, &TXID),
            Err(StunError::NotStun)
        );
        // Leading bits set (a ChannelData message, say).
        let mut channel = raw_message(0x0101, &TXID, &[]);
        channel[0] = 0x40;
        assert_eq!(
            parse_binding_response(&channel, &TXID),
            Err(StunError::NotStun)
        );
        // Odd attribute length in the header.
        let mut odd = raw_message(0x0101, &TXID, &[0, 0, 0, 0, 0, 0]);
        odd[3] = 6;
        assert!(matches!(
            parse_binding_response(&odd, &TXID),
            Err(StunError::Malformed(_))
        ));
        // Pseudo-random datagrams, some with a valid header in front: never a panic, never Ok.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let len = usize::try_from(next() % 120).unwrap();
            let mut body: Vec<u8> = (0..len).map(|_| next().to_be_bytes()[0]).collect();
            if round % 2 == 0 {
                body.truncate(body.len() / 4 * 4);
                // May even decode; it must not panic.
                let _ = parse_binding_response(&raw_message(0x0101, &TXID, &body), &TXID);
            } else {
                assert!(parse_binding_response(&body, &TXID).is_err());
            }
        }
    }

    #[test]
    fn every_single_byte_change_to_a_fingerprinted_response_is_rejected() {
        // FINGERPRINT covers everything before it; a changed byte there is caught. Changing
        // the FINGERPRINT's own type turns it into an unknown optional attribute, leaving an
        // intact, unfingerprinted message: the only kind of change that may still pass.
        let fingerprint_at = RFC_IPV4_RESPONSE.len() - FINGERPRINT_ATTRIBUTE_LEN;
        for at in 0..RFC_IPV4_RESPONSE.len() {
            for flip in 1..=255u8 {
                let mut wire = RFC_IPV4_RESPONSE;
                wire[at] ^= flip;
                match parse_binding_response(&wire, &RFC_TXID) {
                    Err(_) => {}
                    Ok(found) => assert!(
                        at >= fingerprint_at && found == addr("192.0.2.1:32853"),
                        "byte {at} ^ {flip:#04x} accepted: {found}"
                    ),
                }
            }
        }
        let mut bad_crc = RFC_IPV6_RESPONSE;
        bad_crc[91] ^= 0xff;
        assert_eq!(
            parse_binding_response(&bad_crc, &RFC_TXID),
            Err(StunError::BadFingerprint)
        );
    }

    #[test]
    fn only_a_binding_success_response_answers() {
        let request = raw_message(0x0001, &TXID, &[]);
        assert_eq!(
            parse_binding_response(&request, &TXID),
            Err(StunError::NotResponse("request"))
        );
        let indication = raw_message(0x0011, &TXID, &[]);
        assert_eq!(
            parse_binding_response(&indication, &TXID),
            Err(StunError::NotResponse("indication"))
        );
        // Allocate success (TURN), with an address in it.
        let allocate = raw_message(
            0x0103,
            &TXID,
            &[
                0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x12, 0x34, 0xc0, 0x00, 0x02, 0x01,
            ],
        );
        assert_eq!(
            parse_binding_response(&allocate, &TXID),
            Err(StunError::NotBinding(0x003))
        );
        // Binding error response: ERROR-CODE 400 "Bad".
        let error = raw_message(
            0x0111,
            &TXID,
            &[
                0x00, 0x09, 0x00, 0x07, 0x00, 0x00, 0x04, 0x00, b'B', b'a', b'd', 0x00,
            ],
        );
        assert_eq!(
            parse_binding_response(&error, &TXID),
            Err(StunError::ErrorResponse {
                code: 400,
                reason: "Bad".into()
            })
        );
        // A success response without any address.
        let empty = raw_message(0x0101, &TXID, &[]);
        assert_eq!(
            parse_binding_response(&empty, &TXID),
            Err(StunError::NoMappedAddress)
        );
    }

    #[test]
    fn unknown_attributes_required_ones_reject_optional_ones_pass() {
        let xor = [
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xbd, 0x52, 0xea, 0x12, 0xd5, 0x45,
        ];
        let mut required = vec![0x7f, 0xff, 0x00, 0x04, 1, 2, 3, 4];
        required.extend_from_slice(&xor);
        assert_eq!(
            parse_binding_response(&raw_message(0x0101, &TXID, &required), &TXID),
            Err(StunError::UnknownRequiredAttribute(0x7fff))
        );
        let mut optional = vec![0x80, 0x2b, 0x00, 0x04, 1, 2, 3, 4];
        optional.extend_from_slice(&xor);
        assert_eq!(
            parse_binding_response(&raw_message(0x0101, &TXID, &optional), &TXID),
            Ok(addr("203.0.113.7:40000"))
        );
    }

    #[test]
    fn address_lengths_and_fingerprint_position_are_strict() {
        // XOR-MAPPED-ADDRESS (IPv4) claiming 12 bytes: it would swallow what follows.
        let long = raw_message(
            0x0101,
            &TXID,
            &[
                0x00, 0x20, 0x00, 0x0c, 0x00, 0x01, 0xbd, 0x52, 0xea, 0x12, 0xd5, 0x45, 0, 0, 0, 0,
            ],
        );
        assert!(matches!(
            parse_binding_response(&long, &TXID),
            Err(StunError::Malformed(m)) if m.contains("needs 8")
        ));
        // RFC 5769's IPv4 response with the XOR-MAPPED-ADDRESS stretched over MESSAGE-INTEGRITY
        // and FINGERPRINT.
        let mut swallowing = RFC_IPV4_RESPONSE;
        swallowing[39] = 0x28;
        assert!(matches!(
            parse_binding_response(&swallowing, &RFC_TXID),
            Err(StunError::Malformed(_))
        ));
        // FINGERPRINT followed by another attribute.
        let mut moved = RFC_IPV4_RESPONSE.to_vec();
        moved.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        moved[3] += 4;
        assert_eq!(
            parse_binding_response(&moved, &RFC_TXID),
            Err(StunError::BadFingerprint)
        );
    }

    #[test]
    fn nonsense_address_families_are_rejected() {
        // Family 3 in XOR-MAPPED-ADDRESS.
        let family3 = raw_message(
            0x0101,
            &TXID,
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x03, 0xbd, 0x52, 0xea, 0x12, 0xd5, 0x45,
            ],
        );
        assert!(matches!(
            parse_binding_response(&family3, &TXID),
            Err(StunError::Malformed(_))
        ));
        // IPv6 family with only four address bytes.
        let short6 = raw_message(
            0x0101,
            &TXID,
            &[
                0x00, 0x20, 0x00, 0x08, 0x00, 0x02, 0xbd, 0x52, 0xea, 0x12, 0xd5, 0x45,
            ],
        );
        assert!(matches!(
            parse_binding_response(&short6, &TXID),
            Err(StunError::Malformed(_))
        ));
        let v4_server = addr("198.51.100.9:3478");
        let v6_server = addr("[2001:db8::9]:3478");
        assert_eq!(
            public_ip_from(addr("203.0.113.7:40000"), v4_server),
            Ok("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            public_ip_from(addr("[2001:db8::7]:40000"), v6_server),
            Ok("2001:db8::7".parse().unwrap())
        );
        assert!(matches!(
            public_ip_from(addr("[2001:db8::7]:40000"), v4_server),
            Err(StunError::FamilyMismatch { .. })
        ));
        assert!(matches!(
            public_ip_from(addr("203.0.113.7:40000"), v6_server),
            Err(StunError::FamilyMismatch { .. })
        ));
        // An IPv4-mapped IPv6 answer over IPv6 is an IPv4 address: wrong family too.
        assert!(matches!(
            public_ip_from(addr("[::ffff:203.0.113.7]:1"), v6_server),
            Err(StunError::FamilyMismatch { .. })
        ));
        for nonsense in [
            "0.0.0.0:1",
            "255.255.255.255:1",
            "224.0.0.1:1",
            "203.0.113.7:0",
        ] {
            assert!(
                matches!(
                    public_ip_from(addr(nonsense), v4_server),
                    Err(StunError::Unusable(_))
                ),
                "{nonsense}"
            );
        }
        for nonsense in ["[::]:1", "[ff02::1]:1"] {
            assert!(matches!(
                public_ip_from(addr(nonsense), v6_server),
                Err(StunError::Unusable(_))
            ));
        }
        assert_eq!(
            public_ip_from(addr("127.0.0.1:5"), addr("127.0.0.1:3478")),
            Ok(IpAddr::from([127, 0, 0, 1]))
        );
    }

    #[test]
    fn retransmits_follow_a_doubling_rto_within_the_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(send_offsets(ms(5500)), [ms(0), ms(500), ms(1500), ms(3500)]);
        assert_eq!(send_offsets(ms(1000)), [ms(0), ms(500)]);
        assert_eq!(send_offsets(ms(300)), [ms(0)]);
        assert!(send_offsets(Duration::ZERO).is_empty());
        assert_eq!(send_offsets(Duration::from_secs(3600)).len(), 4);
    }

    #[test]
    fn server_entries_parse() {
        let ok = |text: &str, host: &str, port: u16| {
            assert_eq!(
                StunServer::parse(text),
                Ok(StunServer::new(host.into(), port)),
                "{text}"
            );
        };
        ok("stun.cloudflare.com:3478", "stun.cloudflare.com", 3478);
        ok("stun.example.net", "stun.example.net", 3478);
        ok("127.0.0.1:19302", "127.0.0.1", 19302);
        ok("[::1]:5000", "::1", 5000);
        ok("[2001:db8::1]", "2001:db8::1", 3478);
        ok("2001:db8::1", "2001:db8::1", 3478);
        for bad in [
            "",
            ":3478",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "host:12:13",
            "[::1",
            "[::1]x",
            "[nothost]:1",
            "a host:1",
            "host/path:1",
        ] {
            assert!(StunServer::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            StunServer::parse("[::1]:5000").unwrap().to_string(),
            "[::1]:5000"
        );
    }
}
