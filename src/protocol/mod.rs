//! The tunnel's wire protocol, kept pure and sans-IO: every function here
//! works on byte buffers and values only, so it can be tested exhaustively
//! without sockets and reused unchanged by the TCP/TLS and QUIC transports.
//!
//! Peer-controlled input is never trusted: malformed, trailing or oversize
//! bytes produce an error value, never a panic, and every limit a peer could
//! push against is a named `pub const`.

#![forbid(unsafe_code)]

pub mod client_policy;
pub mod control;
pub mod dialect;
pub mod frame;
pub mod handshake;
pub mod proxy;
pub mod quic_messages;
pub mod stun;
pub mod token;

#[cfg(test)]
mod roundtrip_tests;
