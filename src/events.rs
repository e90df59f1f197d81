//! What the runtimes report to their owner (the napi binding forwards it to JavaScript).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::lock::Locked;

/// Receives events from a hub or edge runtime. Called from runtime threads; must not block.
pub(crate) type EventSink<E> = Arc<dyn Fn(E) + Send + Sync>;

/// Which transport a tunnel runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum TransportKind {
    TcpTls,
    Quic,
}

impl TransportKind {
    /// The name JavaScript sees, also a metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransportKind::TcpTls => "tcpTls",
            TransportKind::Quic => "quic",
        }
    }
}

/// An enum of codes with their camelCase names: `ALL` lists every code, `as_str` names one, and
/// each serializes as its name.
macro_rules! codes {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            // Every list is checked against index.d.ts and the README by tests; some also label metrics.
            #[allow(dead_code)]
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

codes! {
    /// The `code` of a hub's `warning` event.
    pub enum HubWarning {
        /// Accepting an edge's TCP connection failed (the process is out of descriptors, ...).
        AcceptFailed = "acceptFailed",
        /// A login with an unknown edge id or a wrong secret.
        AuthFailed = "authFailed",
        /// An address past the login throttle: its connections are closed before TLS, or
        /// after it when they name an edge that has not logged in from there.
        AuthThrottled = "authThrottled",
        /// A login past `maxEdges`.
        EdgeLimit = "edgeLimit",
        /// An edge connection that did not reach a login: TLS, ALPN, the EDGE line, a timeout.
        HandshakeFailed = "handshakeFailed",
        /// The pending handshakes (in total, or of one source) are at their limit; the oldest
        /// was closed to make room.
        HandshakeLimit = "handshakeLimit",
        /// A session's task panicked; the session was closed.
        InternalError = "internalError",
        /// An edge opened a stream or UDP session to a port it is not assigned.
        PortNotAssigned = "portNotAssigned",
        /// An edge's connection past `maxStreamsPerEdge`.
        StreamLimit = "streamLimit",
        /// `targetHost:<port>` refused or did not answer.
        TargetUnreachable = "targetUnreachable",
        /// An edge's UDP session past `maxUdpSessionsPerEdge`.
        UdpSessionLimit = "udpSessionLimit",
    }

}

codes! {
    /// The `code` of an edge's `warning` event.
    pub enum EdgeWarning {
        /// Accepting a client's connection failed (the process is out of descriptors, ...).
        AcceptFailed = "acceptFailed",
        /// The hub refused the login (unknown edge id, wrong secret, edge limit).
        AuthRejected = "authRejected",
        /// A client or datagram was turned away by its port's rules (`clients`): denied, past
        /// a per-source limit, or silent past `firstByteTimeoutMs`.
        ClientRefused = "clientRefused",
        /// The hub could not be reached, or the tunnel could not be set up.
        ConnectFailed = "connectFailed",
        /// Neither `hubFingerprint` nor `caPem` is set: the hub's identity is not checked.
        HubNotVerified = "hubNotVerified",
        /// The tunnel's task panicked; the edge reconnects.
        InternalError = "internalError",
        /// A port the hub assigned could not be listened on.
        ListenFailed = "listenFailed",
        /// `quicWithFallback` fell back to TCP+TLS.
        QuicFallback = "quicFallback",
        /// No STUN server answered.
        StunFailed = "stunFailed",
        /// The UDP session table is full (the oldest unproven session makes room), or one
        /// source has its `maxUdpSessionsPerSource` on a port (its new sessions are dropped).
        UdpSessionLimit = "udpSessionLimit",
    }
}

codes! {
    /// Why an edge connection did not become a tunnel: the `reason` label of
    /// `remoteingress_hub_handshake_failures_total`.
    pub enum HandshakeFailureReason {
        /// TLS or QUIC, ALPN, the EDGE line, or a timeout.
        Tls = "tls",
        /// An unknown edge id or a wrong secret.
        Auth = "auth",
        /// Closed by the login throttle.
        Throttled = "throttled",
        /// Past `maxEdges`.
        Limit = "limit",
        /// Evicted from a full pending-handshake table.
        Evicted = "evicted",
    }
}

codes! {
    /// Why an attempt to reach the hub failed: the `reason` label of
    /// `remoteingress_edge_connect_failures_total`.
    pub enum ConnectFailureReason {
        /// The hub answered and refused the login.
        Rejected = "rejected",
        /// Unreachable, TLS or QUIC, or a timeout.
        Other = "other",
    }
}

/// Which warnings a flood could repeat thousands of times a second may go out now: at most
/// one per second of each code.
#[derive(Debug)]
pub(crate) struct WarningRateLimit<C> {
    /// The second (since the Unix epoch) each code was last let through.
    last_second: Mutex<HashMap<C, u64>>,
}

impl<C> Default for WarningRateLimit<C> {
    fn default() -> Self {
        Self {
            last_second: Mutex::new(HashMap::new()),
        }
    }
}

impl<C: Copy + Eq + std::hash::Hash> WarningRateLimit<C> {
    /// Whether a warning of `code` may go out at `now_millis`; if so, the next one of that
    /// code waits for the next second.
    pub(crate) fn allows(&self, code: C, now_millis: u64) -> bool {
        let second = now_millis / 1000;
        let last = self.last_second.locked().insert(code, second);
        last != Some(second)
    }
}

/// Milliseconds since the Unix epoch, as JavaScript's `Date.now()`.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted members of the string union `name` in index.d.ts.
    fn union_in_typings(name: &str) -> Vec<String> {
        let typings = include_str!("../index.d.ts");
        let start = typings
            .find(&format!("export type {name} ="))
            .unwrap_or_else(|| panic!("index.d.ts declares {name}"));
        let declaration = &typings[start..];
        let declaration = &declaration[..declaration.find("\n\n").unwrap_or(declaration.len())];
        declaration
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    fn names<C: Copy>(all: &[C], name: impl Fn(C) -> &'static str) -> Vec<String> {
        all.iter().map(|&code| name(code).to_owned()).collect()
    }

    #[test]
    fn the_typings_list_every_warning_code() {
        assert_eq!(
            union_in_typings("HubWarningCode"),
            names(HubWarning::ALL, HubWarning::as_str)
        );
        assert_eq!(
            union_in_typings("EdgeWarningCode"),
            names(EdgeWarning::ALL, EdgeWarning::as_str)
        );
    }

    #[test]
    fn the_readme_lists_every_warning_code() {
        let readme = include_str!("../README.md");
        let between = |from: &str, to: &str| {
            let start = readme.find(from).expect("the README lists the codes");
            let len = readme[start..].find(to).expect("the list ends");
            &readme[start..start + len]
        };
        let (hub, edge) = (
            between("Hub: `", "Edge: `"),
            between("Edge: `", "Codes a flood"),
        );
        for code in HubWarning::ALL {
            assert!(hub.contains(&format!("`{code}`")), "{code}");
        }
        for code in EdgeWarning::ALL {
            assert!(edge.contains(&format!("`{code}`")), "{code}");
        }
    }

    #[test]
    fn a_code_serializes_as_its_name() {
        for &code in HubWarning::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert_eq!(
            serde_json::to_value(EdgeWarning::QuicFallback).unwrap(),
            "quicFallback"
        );
    }

    #[test]
    fn one_warning_of_each_code_per_second() {
        let limit = WarningRateLimit::default();
        assert!(limit.allows("a", 5_000));
        assert!(!limit.allows("a", 5_999));
        assert!(limit.allows("b", 5_999), "codes are limited apart");
        assert!(limit.allows("a", 6_000));
    }
}
