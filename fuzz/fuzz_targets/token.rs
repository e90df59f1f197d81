//! Connection tokens (`protocol::token::decode_token`): pasted by users, so any string.
//!
//! The input is tried twice: as the token text itself, and base64url-encoded first so the
//! fuzzer reaches the JSON layer without having to learn base64.
//!
//! Invariants checked besides "never panics": a decoded token re-encodes to a token that
//! decodes to the same value (so it is never over the length limit), encoding is idempotent,
//! and the encoding uses the base64url alphabet without padding.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use remoteingress::fuzzing::token::{decode_token, encode_token};

fn check(text: &str) {
    let Ok(token) = decode_token(text) else {
        return;
    };
    assert!(token.hub_port != 0);
    assert!(!token.hub_host.is_empty());
    let encoded = encode_token(&token);
    let again = decode_token(&encoded).expect("a re-encoded token decodes");
    assert_eq!(again, token, "token round trip");
    assert_eq!(encode_token(&again), encoded, "encoding is not idempotent");
    assert!(!encoded.contains(['+', '/', '=']));
}

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
    check(&URL_SAFE_NO_PAD.encode(data));
});
