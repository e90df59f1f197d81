//! PROXY protocol v1 (text) and v2 (binary) headers, as specified in
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! Used to hand the original client address to targets behind the hub.
//! Encoders always produce a single address family: when source and
//! destination differ, both are written as IPv6 with IPv4-mapped addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header the spec allows, including the CRLF; a receiver that
/// has seen this many bytes without a CRLF may (and we do) give up.
pub const PROXY_V1_MAX_LEN: usize = 107;
/// The 12 bytes every v2 header starts with.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Fixed part of a v2 header: signature, version/command, family/transport,
/// u16 BE length of the block that follows.
pub const PROXY_V2_HEADER_LEN: usize = 16;
/// Largest v2 address+TLV block accepted (peer-forceable): bounds what we
/// buffer before the header is complete; real headers are a few hundred bytes.
pub const PROXY_V2_MAX_BLOCK_LEN: usize = 2048;
/// v2 address block for AF_INET: two IPv4 addresses and two ports.
pub const PROXY_V2_IPV4_BLOCK_LEN: u16 = 12;
/// v2 address block for AF_INET6: two IPv6 addresses and two ports.
pub const PROXY_V2_IPV6_BLOCK_LEN: u16 = 36;
/// v2 address block for AF_UNIX: two 108-byte paths.
pub const PROXY_V2_UNIX_BLOCK_LEN: u16 = 216;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 2 in the high nibble, PROXY command in the low one.
const V2_VERSION_PROXY: u8 = 0x21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyAddresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyTransport {
    Stream,
    Datagram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    Addresses(ProxyAddresses),
    /// v1 `UNKNOWN`, or v2 `LOCAL` / `AF_UNSPEC` / `AF_UNIX`: the receiver
    /// should use the connection's real endpoints.
    Unknown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY protocol v1 header")]
    NotV1,
    #[error("PROXY v1 header has no CRLF within {PROXY_V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("not a PROXY protocol v2 header (bad signature)")]
    NotV2,
    #[error("unsupported PROXY v2 version {0}")]
    V2Version(u8),
    #[error("unsupported PROXY v2 command {0}")]
    V2Command(u8),
    #[error("unsupported PROXY v2 address family/transport byte 0x{0:02x}")]
    V2Family(u8),
    #[error(
        "PROXY v2 address block of {len} bytes is too short for family/transport 0x{family:02x}"
    )]
    V2ShortAddresses { family: u8, len: u16 },
    #[error("PROXY v2 header length {len} exceeds the {PROXY_V2_MAX_BLOCK_LEN}-byte limit")]
    V2TooLong { len: u16 },
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// `PROXY TCP4 src dst sport dport\r\n`. If the two addresses differ in
/// family, both are written as IPv6 (IPv4-mapped) with TCP6. IPv6 addresses
/// use Rust's compressed `Display` form; the longest line is 104 bytes.
pub fn encode_v1(addrs: &ProxyAddresses) -> Vec<u8> {
    let (src, dst) = (addrs.source, addrs.destination);
    let line = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port())
        }
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            to_v6(s),
            to_v6(d),
            src.port(),
            dst.port()
        ),
    };
    line.into_bytes()
}

/// Decimal 0..=65535 without sign or leading zeros (a lone "0" is fine).
fn parse_port(text: &str) -> Option<u16> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        // u16 parsing rejects anything above 65535.
        text.parse().ok()
    } else {
        None
    }
}

/// Parses `src dst sport dport` (the rest of a TCP4/TCP6 line).
fn parse_v1_addresses<'a, A>(
    mut fields: impl Iterator<Item = &'a str>,
    ip: fn(A) -> IpAddr,
) -> Result<ProxyAddresses, ProxyError>
where
    A: std::str::FromStr,
{
    let mut next = || {
        fields.next().ok_or(ProxyError::V1Malformed(
            "expected source, destination, source port, destination port",
        ))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if next().is_ok() {
        return Err(ProxyError::V1Malformed("too many fields"));
    }
    let addr = |text: &str| {
        text.parse::<A>().map(ip).map_err(|_| {
            ProxyError::V1Malformed("address is not valid for the protocol (TCP4 or TCP6)")
        })
    };
    let port = |text: &str| parse_port(text).ok_or(ProxyError::V1Malformed("invalid port"));
    Ok(ProxyAddresses {
        source: SocketAddr::new(addr(src)?, port(sport)?),
        destination: SocketAddr::new(addr(dst)?, port(dport)?),
    })
}

/// Parses a v1 header at the start of `buf`.
///
/// `Ok(None)` = incomplete (no CRLF yet and fewer than 107 bytes);
/// `Ok(Some((header, consumed)))` otherwise. Input that cannot become a v1
/// header (e.g. `GET /`) is rejected as soon as its first bytes disagree.
/// Strict: single spaces, TCP4 needs IPv4 addresses and TCP6 IPv6, ports are
/// decimal without leading zeros; anything after `PROXY UNKNOWN` is ignored,
/// as the spec requires.
pub fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf.get(..seen) != V1_PREFIX.get(..seen) {
        return Err(ProxyError::NotV1);
    }
    let window = &buf[..buf.len().min(PROXY_V1_MAX_LEN)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= PROXY_V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let line = window[..newline]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::V1Malformed("line does not end with CRLF"))?;
    let text = std::str::from_utf8(line)
        .ok()
        .filter(|t| t.is_ascii() && !t.contains('\r'))
        .ok_or(ProxyError::V1Malformed("unexpected non-ASCII or CR byte"))?;

    let mut fields = text.split(' ').skip(1); // "PROXY", checked above
    let header = match fields.next() {
        Some("UNKNOWN") => ProxyHeader::Unknown,
        Some("TCP4") => ProxyHeader::Addresses(parse_v1_addresses(fields, IpAddr::V4)?),
        Some("TCP6") => ProxyHeader::Addresses(parse_v1_addresses(fields, IpAddr::V6)?),
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol must be TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Some((header, newline + 1)))
}

/// v2 binary header: signature, 0x21 (v2 PROXY), family/transport byte,
/// u16 BE length, then src addr, dst addr, src port, dst port. Mixed
/// families are written as IPv6 with IPv4-mapped addresses.
pub fn encode_v2(transport: ProxyTransport, addrs: &ProxyAddresses) -> Vec<u8> {
    let transport_bits = match transport {
        ProxyTransport::Stream => 0x01,
        ProxyTransport::Datagram => 0x02,
    };
    let (src, dst) = (addrs.source, addrs.destination);
    let mut out = Vec::with_capacity(PROXY_V2_HEADER_LEN + usize::from(PROXY_V2_IPV6_BLOCK_LEN));
    out.extend_from_slice(&PROXY_V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x10 | transport_bits);
            out.extend_from_slice(&PROXY_V2_IPV4_BLOCK_LEN.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x20 | transport_bits);
            out.extend_from_slice(&PROXY_V2_IPV6_BLOCK_LEN.to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// Takes N bytes off the front of `input` (None if too short: never panics).
fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

fn parse_v2_ip_block<const N: usize>(
    mut block: &[u8],
    ip: fn([u8; N]) -> IpAddr,
) -> Option<ProxyAddresses> {
    let src = ip(take::<N>(&mut block)?);
    let dst = ip(take::<N>(&mut block)?);
    let sport = u16::from_be_bytes(take::<2>(&mut block)?);
    let dport = u16::from_be_bytes(take::<2>(&mut block)?);
    Some(ProxyAddresses {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

/// Parses a v2 header at the start of `buf`.
///
/// `Ok(None)` = incomplete. Returns the header, the transport (`None` for
/// LOCAL or an unspecified transport) and the bytes consumed (16 + length;
/// TLVs after the addresses are skipped). Errors are reported as soon as the
/// bytes that prove them have arrived.
pub fn parse_v2(
    buf: &[u8],
) -> Result<Option<(ProxyHeader, Option<ProxyTransport>, usize)>, ProxyError> {
    let seen = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf.get(..seen) != PROXY_V2_SIGNATURE.get(..seen) {
        return Err(ProxyError::NotV2);
    }
    let Some(fixed) = buf.first_chunk::<PROXY_V2_HEADER_LEN>() else {
        return Ok(None);
    };
    let [.., version_command, family, len_hi, len_lo] = *fixed;
    let len = u16::from_be_bytes([len_hi, len_lo]);

    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    let local = match version_command & 0x0F {
        0x0 => true,
        0x1 => false,
        command => return Err(ProxyError::V2Command(command)),
    };
    let block_len = usize::from(len);
    if block_len > PROXY_V2_MAX_BLOCK_LEN {
        return Err(ProxyError::V2TooLong { len });
    }
    // Cannot overflow: block_len <= PROXY_V2_MAX_BLOCK_LEN.
    let total = PROXY_V2_HEADER_LEN + block_len;

    // LOCAL (health checks from the proxy itself): the spec says to ignore
    // the family and address block entirely.
    if local {
        return Ok((buf.len() >= total).then_some((ProxyHeader::Unknown, None, total)));
    }

    let transport = match family & 0x0F {
        0x0 => None,
        0x1 => Some(ProxyTransport::Stream),
        0x2 => Some(ProxyTransport::Datagram),
        _ => return Err(ProxyError::V2Family(family)),
    };
    let needed = match family >> 4 {
        0x0 => 0,
        0x1 => PROXY_V2_IPV4_BLOCK_LEN,
        0x2 => PROXY_V2_IPV6_BLOCK_LEN,
        0x3 => PROXY_V2_UNIX_BLOCK_LEN,
        _ => return Err(ProxyError::V2Family(family)),
    };
    let short = ProxyError::V2ShortAddresses { family, len };
    if len < needed {
        return Err(short);
    }
    let Some(block) = buf.get(PROXY_V2_HEADER_LEN..total) else {
        return Ok(None);
    };
    let header = match family >> 4 {
        0x1 => ProxyHeader::Addresses(
            parse_v2_ip_block::<4>(block, |b| IpAddr::V4(Ipv4Addr::from(b))).ok_or(short)?,
        ),
        0x2 => ProxyHeader::Addresses(
            parse_v2_ip_block::<16>(block, |b| IpAddr::V6(Ipv6Addr::from(b))).ok_or(short)?,
        ),
        // AF_UNSPEC, or AF_UNIX paths that an IP tunnel cannot use.
        _ => ProxyHeader::Unknown,
    };
    Ok(Some((header, transport, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn addrs(src: &str, dst: &str) -> ProxyAddresses {
        ProxyAddresses {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    /// What the wire carries: both IPv4, or both IPv6 (mapped if mixed).
    fn on_wire(a: &ProxyAddresses) -> ProxyAddresses {
        match (a.source, a.destination) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => *a,
            (s, d) => ProxyAddresses {
                source: SocketAddr::new(IpAddr::V6(to_v6(s.ip())), s.port()),
                destination: SocketAddr::new(IpAddr::V6(to_v6(d.ip())), d.port()),
            },
        }
    }

    fn samples() -> Vec<ProxyAddresses> {
        vec![
            addrs("192.0.2.1:56324", "198.51.100.2:443"),
            addrs("0.0.0.0:0", "255.255.255.255:65535"),
            addrs("[::1]:5000", "[::1]:443"),
            addrs("[2001:db8::1]:443", "[fe80::abcd:1]:8080"),
            addrs(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
            addrs("192.0.2.1:1", "[::1]:2"),
            addrs("[2001:db8::2]:3", "10.0.0.1:4"),
            addrs("[::ffff:192.0.2.1]:5", "[::ffff:198.51.100.2]:6"),
        ]
    }

    // ---- v1 ----

    #[test]
    fn v1_exact_strings() {
        let cases = [
            (
                addrs("192.0.2.1:56324", "198.51.100.2:443"),
                "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            ),
            (
                addrs("[::1]:5000", "[::1]:443"),
                "PROXY TCP6 ::1 ::1 5000 443\r\n",
            ),
            (
                addrs("[2001:db8:0:0:0:0:0:1]:0", "[fe80::1]:65535"),
                "PROXY TCP6 2001:db8::1 fe80::1 0 65535\r\n",
            ),
            (
                addrs("192.0.2.1:1", "[::1]:2"),
                "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
            ),
            (
                addrs("[2001:db8::2]:3", "10.0.0.1:4"),
                "PROXY TCP6 2001:db8::2 ::ffff:10.0.0.1 3 4\r\n",
            ),
        ];
        for (a, line) in cases {
            assert_eq!(String::from_utf8(encode_v1(&a)).unwrap(), line);
        }
    }

    #[test]
    fn v1_longest_line_fits() {
        let longest = encode_v1(&addrs(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ));
        assert_eq!(longest.len(), 104);
        assert!(longest.len() <= PROXY_V1_MAX_LEN);
        let longest_v4 = encode_v1(&addrs("255.255.255.255:65535", "255.255.255.255:65535"));
        assert_eq!(longest_v4.len(), 56);
        // Mapped addresses for mixed families are shorter than a full IPv6.
        let mixed = encode_v1(&addrs(
            "255.255.255.255:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ));
        assert!(mixed.len() <= PROXY_V1_MAX_LEN);

        // The spec's own worst case: UNKNOWN padded to exactly 107 bytes.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(PROXY_V1_MAX_LEN - 2, b'x');
        max.extend_from_slice(b"\r\n");
        assert_eq!(max.len(), PROXY_V1_MAX_LEN);
        assert_eq!(parse_v1(&max), Ok(Some((ProxyHeader::Unknown, 107))));
    }

    #[test]
    fn v1_round_trip_with_trailing_data() {
        for a in samples() {
            let mut wire = encode_v1(&a);
            let len = wire.len();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(
                parse_v1(&wire),
                Ok(Some((ProxyHeader::Addresses(on_wire(&a)), len))),
                "{a:?}"
            );
        }
    }

    #[test]
    fn v1_partial_input_is_none() {
        let wire = encode_v1(&addrs("[2001:db8::1]:443", "[fe80::abcd:1]:8080"));
        for cut in 0..wire.len() {
            assert_eq!(parse_v1(&wire[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(parse_v1(b"PROX"), Ok(None));
        assert_eq!(parse_v1(&[b'P'; 1]), Ok(None));
    }

    #[test]
    fn v1_unknown() {
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN\r\nrest"),
            Ok(Some((ProxyHeader::Unknown, 15)))
        );
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ::1 ::1 1 2\r\n"),
            Ok(Some((ProxyHeader::Unknown, 27)))
        );
    }

    #[test]
    fn v1_parse_errors() {
        let malformed = [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 00\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 \r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 9\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY \r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 80 443\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 4\xc3\xa93\r\n",
        ];
        for line in malformed {
            match parse_v1(line) {
                Err(ProxyError::V1Malformed(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
        // Ports 0 and 65535 are fine.
        assert!(parse_v1(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n")
            .unwrap()
            .is_some());

        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(PROXY_V1_MAX_LEN - 1, b'x');
        assert_eq!(parse_v1(&long), Ok(None));
        long.push(b'x');
        assert_eq!(parse_v1(&long), Err(ProxyError::V1TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_v1(&long), Err(ProxyError::V1TooLong));
        // CR as the 107th byte, LF as the 108th: one byte too long.
        let mut over = b"PROXY UNKNOWN ".to_vec();
        over.resize(PROXY_V1_MAX_LEN - 1, b'x');
        over.extend_from_slice(b"\r\n");
        assert_eq!(parse_v1(&over), Err(ProxyError::V1TooLong));

        // Garbage is rejected from its first bytes, without waiting for a CRLF.
        for garbage in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PROXZ",
            b"proxy ",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse_v1(garbage), Err(ProxyError::NotV1));
        }
        assert_eq!(parse_v1(&PROXY_V2_SIGNATURE), Err(ProxyError::NotV1));
    }

    #[test]
    fn v1_cross_check_with_ppp() {
        for a in samples() {
            let wire = encode_v1(&a);
            let text = std::str::from_utf8(&wire).unwrap();
            let parsed = ppp::v1::Header::try_from(text).unwrap();
            assert_eq!(parsed.header, text);
            let w = on_wire(&a);
            let expected = match (w.source, w.destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    ppp::v1::Addresses::new_tcp6(*s.ip(), *d.ip(), s.port(), d.port())
                }
                _ => unreachable!(),
            };
            assert_eq!(parsed.addresses, expected, "{text}");

            // And the other way: ppp's rendering parses to the same addresses.
            let theirs = expected.to_string();
            assert_eq!(
                parse_v1(theirs.as_bytes()),
                Ok(Some((ProxyHeader::Addresses(w), theirs.len())))
            );
        }
        let unknown = ppp::v1::Addresses::Unknown.to_string();
        assert_eq!(
            parse_v1(unknown.as_bytes()),
            Ok(Some((ProxyHeader::Unknown, unknown.len())))
        );
    }

    // ---- v2 ----

    #[test]
    fn v2_field_note_vector() {
        let wire = encode_v2(
            ProxyTransport::Datagram,
            &addrs("192.0.2.1:56324", "198.51.100.2:443"),
        );
        assert_eq!(
            wire,
            hex("0d0a0d0a000d0a515549540a 21 12 000c c0000201 c6336402 dc04 01bb")
        );
        assert_eq!(wire.len(), 28);
    }

    #[test]
    fn v2_exact_vectors() {
        let sig = "0d0a0d0a000d0a515549540a";
        let cases = [
            (
                ProxyTransport::Stream,
                addrs("127.0.0.1:1234", "127.0.0.2:80"),
                format!("{sig} 21 11 000c 7f000001 7f000002 04d2 0050"),
            ),
            (
                ProxyTransport::Stream,
                addrs("[2001:db8::1]:443", "[::1]:8080"),
                format!(
                    "{sig} 21 21 0024 20010db8000000000000000000000001 \
                     00000000000000000000000000000001 01bb 1f90"
                ),
            ),
            (
                ProxyTransport::Datagram,
                addrs("[2001:db8::1]:443", "[::1]:8080"),
                format!(
                    "{sig} 21 22 0024 20010db8000000000000000000000001 \
                     00000000000000000000000000000001 01bb 1f90"
                ),
            ),
            (
                ProxyTransport::Stream,
                addrs("192.0.2.1:1", "[::1]:2"),
                format!(
                    "{sig} 21 21 0024 00000000000000000000ffffc0000201 \
                     00000000000000000000000000000001 0001 0002"
                ),
            ),
            (
                ProxyTransport::Datagram,
                addrs("[::1]:65535", "10.0.0.1:0"),
                format!(
                    "{sig} 21 22 0024 00000000000000000000000000000001 \
                     00000000000000000000ffff0a000001 ffff 0000"
                ),
            ),
        ];
        for (transport, a, expected) in cases {
            let wire = encode_v2(transport, &a);
            assert_eq!(wire, hex(&expected), "{a:?}");
            assert_eq!(
                parse_v2(&wire),
                Ok(Some((
                    ProxyHeader::Addresses(on_wire(&a)),
                    Some(transport),
                    wire.len()
                )))
            );
        }
    }

    #[test]
    fn v2_round_trip_partial_and_trailing() {
        for a in samples() {
            for transport in [ProxyTransport::Stream, ProxyTransport::Datagram] {
                let wire = encode_v2(transport, &a);
                for cut in 0..wire.len() {
                    assert_eq!(parse_v2(&wire[..cut]), Ok(None), "cut {cut}");
                }
                let mut more = wire.clone();
                more.extend_from_slice(b"payload");
                assert_eq!(
                    parse_v2(&more),
                    Ok(Some((
                        ProxyHeader::Addresses(on_wire(&a)),
                        Some(transport),
                        wire.len()
                    )))
                );
            }
        }
    }

    fn v2_raw(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = PROXY_V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v2_local_unspec_unix_and_tlvs() {
        // LOCAL ignores family and addresses, but still consumes the block.
        let local = v2_raw(0x20, 0x00, &[]);
        assert_eq!(parse_v2(&local), Ok(Some((ProxyHeader::Unknown, None, 16))));
        let local = v2_raw(0x20, 0x11, &[1, 2, 3]);
        assert_eq!(parse_v2(&local), Ok(Some((ProxyHeader::Unknown, None, 19))));
        assert_eq!(parse_v2(&local[..18]), Ok(None));
        // PROXY with AF_UNSPEC.
        let unspec = v2_raw(0x21, 0x00, &[]);
        assert_eq!(
            parse_v2(&unspec),
            Ok(Some((ProxyHeader::Unknown, None, 16)))
        );
        // AF_UNIX stream.
        let unix = v2_raw(0x21, 0x31, &[0u8; 216]);
        assert_eq!(
            parse_v2(&unix),
            Ok(Some((
                ProxyHeader::Unknown,
                Some(ProxyTransport::Stream),
                232
            )))
        );
        // AF_INET with unspecified transport and a TLV after the addresses.
        let mut block = hex("c0000201 c6336402 dc04 01bb");
        block.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // NOOP TLV
        let wire = v2_raw(0x21, 0x10, &block);
        assert_eq!(
            parse_v2(&wire),
            Ok(Some((
                ProxyHeader::Addresses(addrs("192.0.2.1:56324", "198.51.100.2:443")),
                None,
                16 + 18
            )))
        );
    }

    #[test]
    fn v2_parse_errors() {
        let ipv4_block = [0u8; 12];
        assert_eq!(parse_v2(b"PROXY TCP4"), Err(ProxyError::NotV2));
        assert_eq!(parse_v2(b"\r\n\r\n\0\r\nQUIZ"), Err(ProxyError::NotV2));
        assert_eq!(parse_v2(b"\r\n\r\x0a\x01"), Err(ProxyError::NotV2));
        assert_eq!(parse_v2(&[0x0D, 0x0A, 0x0D]), Ok(None));
        assert_eq!(parse_v2(&[]), Ok(None));
        assert_eq!(
            parse_v2(&v2_raw(0x11, 0x11, &ipv4_block)),
            Err(ProxyError::V2Version(1))
        );
        assert_eq!(
            parse_v2(&v2_raw(0x31, 0x11, &ipv4_block)),
            Err(ProxyError::V2Version(3))
        );
        assert_eq!(
            parse_v2(&v2_raw(0x22, 0x11, &ipv4_block)),
            Err(ProxyError::V2Command(2))
        );
        assert_eq!(
            parse_v2(&v2_raw(0x2F, 0x11, &ipv4_block)),
            Err(ProxyError::V2Command(15))
        );
        for family in [0x13u8, 0x41, 0xF1, 0x1F] {
            assert_eq!(
                parse_v2(&v2_raw(0x21, family, &ipv4_block)),
                Err(ProxyError::V2Family(family))
            );
        }
        assert_eq!(
            parse_v2(&v2_raw(0x21, 0x11, &[0u8; 11])),
            Err(ProxyError::V2ShortAddresses {
                family: 0x11,
                len: 11
            })
        );
        assert_eq!(
            parse_v2(&v2_raw(0x21, 0x22, &[0u8; 12])),
            Err(ProxyError::V2ShortAddresses {
                family: 0x22,
                len: 12
            })
        );
        assert_eq!(
            parse_v2(&v2_raw(0x21, 0x31, &[0u8; 215])),
            Err(ProxyError::V2ShortAddresses {
                family: 0x31,
                len: 215
            })
        );
        // Errors come from the fixed header alone, before the block arrives.
        let short_header = &v2_raw(0x21, 0x21, &[0u8; 35])[..16];
        assert_eq!(
            parse_v2(short_header),
            Err(ProxyError::V2ShortAddresses {
                family: 0x21,
                len: 35
            })
        );
        // Length limit: exactly the maximum is fine, one more is not.
        let max = v2_raw(0x21, 0x11, &[0u8; PROXY_V2_MAX_BLOCK_LEN]);
        assert_eq!(parse_v2(&max[..16]), Ok(None));
        assert!(matches!(parse_v2(&max), Ok(Some((_, _, 2064)))));
        let over = v2_raw(0x21, 0x11, &[0u8; PROXY_V2_MAX_BLOCK_LEN + 1]);
        assert_eq!(
            parse_v2(&over[..16]),
            Err(ProxyError::V2TooLong { len: 2049 })
        );
        let mut huge = PROXY_V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x20, 0x00, 0xff, 0xff]);
        assert_eq!(
            parse_v2(&huge),
            Err(ProxyError::V2TooLong { len: u16::MAX })
        );
    }

    #[test]
    fn v2_cross_check_with_ppp() {
        for a in samples() {
            for (transport, protocol) in [
                (ProxyTransport::Stream, ppp::v2::Protocol::Stream),
                (ProxyTransport::Datagram, ppp::v2::Protocol::Datagram),
            ] {
                let wire = encode_v2(transport, &a);
                let parsed = ppp::v2::Header::try_from(wire.as_slice()).unwrap();
                assert_eq!(parsed.command, ppp::v2::Command::Proxy);
                assert_eq!(parsed.protocol, protocol);
                assert_eq!(parsed.len(), wire.len());
                assert!(parsed.tlvs().next().is_none());
                let w = on_wire(&a);
                let expected = ppp::v2::Addresses::from((w.source, w.destination));
                assert!(!matches!(expected, ppp::v2::Addresses::Unspecified));
                assert_eq!(parsed.addresses, expected, "{a:?}");

                // ppp-built headers, with TLVs, parse to the same addresses.
                let theirs = ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    protocol,
                    (w.source, w.destination),
                )
                .write_tlv(ppp::v2::Type::NoOp, b"padding")
                .unwrap()
                .write_tlv(ppp::v2::Type::Authority, b"example.com")
                .unwrap()
                .build()
                .unwrap();
                let mut with_payload = theirs.clone();
                with_payload.extend_from_slice(b"data");
                assert_eq!(
                    parse_v2(&with_payload),
                    Ok(Some((
                        ProxyHeader::Addresses(w),
                        Some(transport),
                        theirs.len()
                    )))
                );
                for cut in 0..theirs.len() {
                    assert_eq!(parse_v2(&theirs[..cut]), Ok(None));
                }
            }
        }
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse_v2(&local),
            Ok(Some((ProxyHeader::Unknown, None, local.len())))
        );
    }
}
