//! TLS configuration for both ends: the hub's identity, the edge's trust in it, and the ALPN
//! both check.

pub mod tls;
