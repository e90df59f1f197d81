//! remoteingress: an ingress tunnel. An edge on a public host dials out to a hub in a private
//! network over one TLS connection or QUIC; the hub assigns the edge its ports, and every connection
//! the edge accepts is carried to the hub and handed to `targetHost:<same port>` behind a
//! PROXY protocol header that keeps the real client address.
//!
//! # Layout
//! - `protocol`: the wire formats, pure and without I/O (frames, handshake, PROXY v1/v2,
//!   connection tokens, QUIC control messages and datagrams, STUN Binding messages).
//! - `mux`: pure multiplexing state (flow-control windows, stream lifecycles, the writer's
//!   tier order).
//! - `transport`: rustls configs, the hub's identity and how an edge trusts it, the TLS
//!   records a tunnel seals and opens after the handshake, QUIC endpoints.
//! - `tunnel`: one tunnel for both ends and both transports (serving a logged-in tunnel;
//!   writer task, frame reader, stream pump; QUIC control stream, datagrams and relay).
//! - `scheduler_turn`: giving tokio's scheduler a turn, so runnable tasks' work shares one write.
//! - `hub`, `edge`: the two runtimes.
//! - `config`, `events`, `metrics`: reading JavaScript options, reporting events and
//!   Prometheus metrics.
//! - [`binding`]: the napi classes, the only code that knows about JavaScript, and with the
//!   `fuzzing` module (under `--cfg fuzzing`) the crate's only public surface.

mod config;
mod counts;
mod edge;
mod events;
mod heap;
mod hub;
mod lock;
mod metrics;
mod mux;
mod protocol;
mod scheduler_turn;
mod source;
mod transport;
mod tunnel;

pub mod binding;

/// The wire formats the fuzz targets (`fuzz/`) drive directly; the crate's only other surface
/// is the napi classes in [`binding`].
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::protocol::{control, frame, handshake, proxy, quic_messages, stun, token};
    pub use crate::transport::records;
}
