//! The async machinery both ends of a TCP+TLS tunnel share: the writer task that owns the
//! socket's write half, the frame reader and loop, the stream table and the per-connection
//! pump.

pub mod frame_loop;
pub mod reader;
pub mod stream;
pub mod writer;

use std::io;

/// UDP sessions one tunnel may carry at once (both ends enforce it); past it, a flood of
/// spoofed sources is turned away instead of costing the hub a socket each.
pub const MAX_UDP_SESSIONS_PER_TUNNEL: usize = 4096;

use thiserror::Error;

use crate::mux::flow::FlowError;
use crate::protocol::frame::{FrameError, FrameType};

/// Why a tunnel ended. The text is what `edgeDisconnected` / `tunnelDisconnected` report.
#[derive(Debug, Error)]
pub enum TunnelError {
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the tunnel")]
    PeerClosed,
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error: {0}")]
    Flow(#[from] FlowError),
    #[error("protocol error: unexpected {0:?} frame")]
    UnexpectedFrame(FrameType),
    #[error("protocol error: {0}")]
    Violation(String),
    #[error("heartbeat timeout: nothing heard for {0} ms")]
    HeartbeatTimeout(u128),
}
