//! STUN Binding responses (`stun::parse_binding_response`): any datagram that arrives on the
//! edge's STUN socket, from the server or spoofed.
//!
//! The expected transaction id is taken from the datagram itself, so the fuzzer gets past the
//! transaction check into the attribute decoding; a second call with another id must fail.
//!
//! Invariants checked besides "never panics": an accepted response has a well-formed header
//! (length matches, multiple of 4, magic cookie, success class, Binding method); a request
//! built by `binding_request` is never taken for a response; `public_ip_from` accepts only
//! what makes sense for the server's family.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::stun::{
    binding_request, parse_binding_response, public_ip_from, StunError, TxId,
};

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

fuzz_target!(|data: &[u8]| {
    let mut txid: TxId = [0; 12];
    if let Some(id) = data.get(8..20) {
        txid.copy_from_slice(id);
    }
    let result = parse_binding_response(data, &txid);
    if let Ok(mapped) = result {
        assert!(data.len() >= 20);
        assert_eq!((data.len() - 20) % 4, 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([data[2], data[3]])),
            data.len() - 20
        );
        assert_eq!(data[4..8], MAGIC_COOKIE);
        // Binding success response: method 0x001, class bits 0b10.
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), 0x0101);
        let mut other = txid;
        other[0] ^= 1;
        assert_eq!(
            parse_binding_response(data, &other),
            Err(StunError::WrongTransaction)
        );
        for server in ["192.0.2.1:3478", "[2001:db8::1]:3478"] {
            let server: SocketAddr = server.parse().unwrap();
            if let Ok(ip) = public_ip_from(mapped, server) {
                assert_eq!(ip.is_ipv4(), server.is_ipv4());
                assert!(!ip.is_unspecified() && !ip.is_multicast());
                assert_ne!(mapped.port(), 0);
            }
        }
    }
    let request = binding_request(&txid).expect("a Binding request encodes");
    assert_eq!(
        parse_binding_response(&request, &txid),
        Err(StunError::NotResponse("request"))
    );
});
