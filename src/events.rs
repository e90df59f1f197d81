//! What the runtimes report to their owner (the napi binding forwards it to JavaScript).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Receives events from a hub or edge runtime. Called from runtime threads; must not block.
pub type EventSink<E> = Arc<dyn Fn(E) + Send + Sync>;

/// Which transport a tunnel runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TransportKind {
    TcpTls,
    Quic,
}

/// Milliseconds since the Unix epoch, as JavaScript's `Date.now()`.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
