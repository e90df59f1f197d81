//! What the runtimes report to their owner (the napi binding forwards it to JavaScript).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// Which warnings a flood could repeat thousands of times a second may go out now: at most
/// one per second of each code.
#[derive(Debug, Default)]
pub struct WarningRateLimit {
    /// The second (since the Unix epoch) each code was last let through.
    last_second: Mutex<HashMap<&'static str, u64>>,
}

impl WarningRateLimit {
    /// Whether a warning of `code` may go out at `now_millis`; if so, the next one of that
    /// code waits for the next second.
    pub fn allows(&self, code: &'static str, now_millis: u64) -> bool {
        let second = now_millis / 1000;
        let last = self
            .last_second
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(code, second);
        last != Some(second)
    }
}

/// Milliseconds since the Unix epoch, as JavaScript's `Date.now()`.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_of_each_code_per_second() {
        let limit = WarningRateLimit::default();
        assert!(limit.allows("a", 5_000));
        assert!(!limit.allows("a", 5_999));
        assert!(limit.allows("b", 5_999), "codes are limited apart");
        assert!(limit.allows("a", 6_000));
    }
}
