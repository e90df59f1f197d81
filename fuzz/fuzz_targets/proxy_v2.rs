//! PROXY protocol v2 headers (`protocol::proxy::parse_v2`), as a proxy in front of the edge
//! sends them (and as they travel inside QUIC opens).
//!
//! Invariants checked besides "never panics":
//! - a header consumes 16 + its declared length, never more than the input;
//! - every prefix of the input either asks for more bytes or gives the same answer as the
//!   whole input;
//! - parsed addresses re-encode to a header that parses back to the same value, and a header
//!   in the encoder's own form (PROXY command, INET/INET6, stream/datagram, no TLVs) is
//!   byte-identical to its re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::proxy::{
    encode_v2, parse_v2, ProxyHeader, ProxyTransport, PROXY_V2_HEADER_LEN, PROXY_V2_IPV4_BLOCK_LEN,
    PROXY_V2_IPV6_BLOCK_LEN, PROXY_V2_MAX_BLOCK_LEN,
};

fuzz_target!(|data: &[u8]| {
    let whole = parse_v2(data);
    match &whole {
        Ok(Some((header, transport, consumed))) => {
            let consumed = *consumed;
            assert!(consumed <= data.len());
            assert!(consumed >= PROXY_V2_HEADER_LEN);
            let declared = usize::from(u16::from_be_bytes([data[14], data[15]]));
            assert_eq!(consumed, PROXY_V2_HEADER_LEN + declared);
            assert!(declared <= PROXY_V2_MAX_BLOCK_LEN);
            if let ProxyHeader::Addresses(addrs) = header {
                // An unspecified transport still carries addresses: re-encode those as stream.
                let as_transport = transport.unwrap_or(ProxyTransport::Stream);
                let encoded = encode_v2(as_transport, addrs);
                assert_eq!(
                    parse_v2(&encoded),
                    Ok(Some((*header, Some(as_transport), encoded.len()))),
                    "re-encoded header does not parse back"
                );
                let exact_block = match data[13] >> 4 {
                    1 => PROXY_V2_IPV4_BLOCK_LEN,
                    _ => PROXY_V2_IPV6_BLOCK_LEN,
                };
                if data[12] == 0x21 && transport.is_some() && declared == usize::from(exact_block) {
                    assert_eq!(
                        encoded,
                        data[..consumed],
                        "canonical header re-encodes differently"
                    );
                }
            }
        }
        Ok(None) => {}
        Err(_) => {}
    }
    let limit = data
        .len()
        .min(PROXY_V2_HEADER_LEN + PROXY_V2_MAX_BLOCK_LEN + 1);
    for cut in 0..limit {
        let partial = parse_v2(&data[..cut]);
        assert!(
            partial == Ok(None) || partial == whole,
            "prefix of {cut} bytes: {partial:?}, whole input: {whole:?}"
        );
    }
});
