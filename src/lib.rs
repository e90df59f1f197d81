//! remoteingress: an ingress tunnel. An edge on a public host dials out to a hub in a private
//! network over one TLS connection or QUIC; the hub assigns the edge its ports, and every connection
//! the edge accepts is carried to the hub and handed to `targetHost:<same port>` behind a
//! PROXY protocol header that keeps the real client address.
//!
//! # Layout
//! - [`protocol`]: the wire formats, pure and without I/O (frames, handshake, PROXY v1/v2,
//!   connection tokens, QUIC control messages and datagrams, STUN Binding messages).
//! - [`mux`]: pure multiplexing state (flow-control windows, round robin, sustained flows).
//! - [`transport`]: rustls configs, the hub's identity and how an edge trusts it, the TLS
//!   records a tunnel seals and opens after the handshake, QUIC endpoints.
//! - [`tunnel`]: the async pieces both ends share (writer task, frame reader, stream pump;
//!   QUIC control stream, datagrams and relay).
//! - [`scheduler_turn`]: giving tokio's scheduler a turn, so runnable tasks' work shares one write.
//! - [`hub`], [`edge`]: the two runtimes.
//! - [`config`], [`events`], [`metrics`]: reading JavaScript options, reporting events and
//!   Prometheus metrics.
//! - [`binding`]: the napi classes, the only code that knows about JavaScript.

pub mod config;
pub mod edge;
pub mod events;
pub mod heap;
pub mod hub;
pub mod lock;
pub mod metrics;
pub mod mux;
pub mod protocol;
pub mod scheduler_turn;
pub mod source;
pub mod transport;
pub mod tunnel;

pub mod binding;
