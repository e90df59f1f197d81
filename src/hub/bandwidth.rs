//! The bandwidth limits of the allowed edges that have any, by edge id: the rate limits their
//! streams and UDP sessions draw on, shared by all of an edge's tunnels to this hub and kept
//! across its reconnects. `updateAllowedEdges` changes a rate in place, so streams already
//! running follow it; a limit set where there was none applies to streams opened after it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::tunnel::bandwidth::{Pace, Pacing, RateLimit};

use super::options::{AllowedEdge, BandwidthRates, DirectionRates};

/// One limit's state for `getStatus()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LimitStatus {
    pub bytes_per_second: u64,
    /// How long the limit has held chunks back, in all (ms).
    pub delayed_ms: u64,
    /// Datagrams it dropped.
    pub dropped_datagrams: u64,
}

/// An edge's or a port's limits, by direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DirectionStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<LimitStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<LimitStatus>,
}

/// `bandwidth` in an edge's `getStatus()` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BandwidthStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<LimitStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<LimitStatus>,
    pub ports: Vec<DirectionStatus>,
}

/// The limits of one edge or port.
#[derive(Debug, Default, Clone)]
pub(crate) struct DirectionLimits {
    /// What clients send towards the targets.
    pub inbound: Option<Arc<RateLimit>>,
    /// What comes back to them.
    pub outbound: Option<Arc<RateLimit>>,
}

impl DirectionLimits {
    /// These limits at `rates`: rates changed in place (a lifted one stays, without a rate,
    /// so the streams that hold it stop waiting and get it back if it returns), limits created
    /// as needed.
    fn update(&mut self, rates: DirectionRates) {
        for (limit, rate) in [
            (&mut self.inbound, rates.inbound),
            (&mut self.outbound, rates.outbound),
        ] {
            match (limit.as_ref(), rate) {
                (Some(existing), rate) => existing.set_rate(rate),
                (None, Some(rate)) => *limit = Some(RateLimit::new(rate)),
                (None, None) => {}
            }
        }
    }

    /// Whether any limit has a rate.
    fn is_limited(&self) -> bool {
        [&self.inbound, &self.outbound]
            .into_iter()
            .flatten()
            .any(|limit| limit.bytes_per_second().is_some())
    }

    fn status(&self, port: Option<u16>) -> DirectionStatus {
        let of = |limit: &Option<Arc<RateLimit>>| {
            let limit = limit.as_ref()?;
            Some(LimitStatus {
                bytes_per_second: limit.bytes_per_second()?,
                delayed_ms: u64::try_from(limit.delayed().as_millis()).unwrap_or(u64::MAX),
                dropped_datagrams: limit.dropped_datagrams(),
            })
        };
        DirectionStatus {
            port,
            inbound: of(&self.inbound),
            outbound: of(&self.outbound),
        }
    }
}

#[derive(Debug, Default)]
struct EdgeLimits {
    edge: DirectionLimits,
    ports: BTreeMap<u16, DirectionLimits>,
}

impl EdgeLimits {
    fn update(&mut self, rates: &BandwidthRates) {
        self.edge.update(rates.edge);
        for (port, limits) in &mut self.ports {
            limits.update(rates.ports.get(port).copied().unwrap_or_default());
        }
        for (&port, &port_rates) in &rates.ports {
            self.ports.entry(port).or_default().update(port_rates);
        }
    }

    /// The limits a stream or session on `port` passes, per direction: the edge's, then the
    /// port's.
    fn on_port(&self, port: u16) -> (Option<Pace>, Option<Pace>) {
        let port_limits = self.ports.get(&port);
        let pace = |edge: &Option<Arc<RateLimit>>, port: Option<&Option<Arc<RateLimit>>>| {
            Pace::new(edge.iter().chain(port.into_iter().flatten()).cloned())
        };
        (
            pace(&self.edge.inbound, port_limits.map(|p| &p.inbound)),
            pace(&self.edge.outbound, port_limits.map(|p| &p.outbound)),
        )
    }
}

/// Every limited edge's limits.
#[derive(Debug, Default)]
pub(super) struct BandwidthLimits {
    edges: HashMap<String, EdgeLimits>,
}

impl BandwidthLimits {
    /// Follows a new list of allowed edges: an edge removed is forgotten (its tunnels end), an
    /// edge whose limits were lifted keeps them without a rate.
    pub(super) fn apply(&mut self, edges: &[AllowedEdge]) {
        self.edges.retain(|id, _| edges.iter().any(|e| &e.id == id));
        for edge in edges {
            match self.edges.get_mut(&edge.id) {
                Some(limits) => limits.update(&edge.bandwidth),
                None if !edge.bandwidth.is_unlimited() => {
                    let mut limits = EdgeLimits::default();
                    limits.update(&edge.bandwidth);
                    self.edges.insert(edge.id.clone(), limits);
                }
                None => {}
            }
        }
    }

    /// How a stream of `edge_id` on `port` is paced at the hub, whose local socket is the
    /// target: it reads what goes out to the client and writes what came in from it.
    pub(super) fn stream_pacing(&self, edge_id: &str, port: u16) -> Pacing {
        let Some(limits) = self.edges.get(edge_id) else {
            return Pacing::default();
        };
        let (inbound, outbound) = limits.on_port(port);
        Pacing::new(outbound, inbound)
    }

    /// The limits a UDP session of `edge_id` on `port` passes: (inbound, outbound).
    pub(super) fn session_paces(&self, edge_id: &str, port: u16) -> (Option<Pace>, Option<Pace>) {
        self.edges
            .get(edge_id)
            .map_or((None, None), |limits| limits.on_port(port))
    }

    /// Every limited edge's status, by edge id.
    pub(super) fn statuses(&self) -> BTreeMap<&str, BandwidthStatus> {
        self.edges
            .keys()
            .filter_map(|id| Some((id.as_str(), self.status(id)?)))
            .collect()
    }

    pub(super) fn status(&self, edge_id: &str) -> Option<BandwidthStatus> {
        let limits = self.edges.get(edge_id)?;
        if !limits.edge.is_limited() && !limits.ports.values().any(DirectionLimits::is_limited) {
            return None;
        }
        let DirectionStatus {
            inbound, outbound, ..
        } = limits.edge.status(None);
        Some(BandwidthStatus {
            inbound,
            outbound,
            ports: limits
                .ports
                .iter()
                .filter(|(_, limits)| limits.is_limited())
                .map(|(&port, limits)| limits.status(Some(port)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::EdgeConfig;

    fn edge(id: &str, edge: DirectionRates, ports: &[(u16, DirectionRates)]) -> AllowedEdge {
        AllowedEdge {
            id: id.into(),
            secret: "s".into(),
            config: EdgeConfig::default(),
            bandwidth: BandwidthRates {
                edge,
                ports: ports.iter().copied().collect(),
            },
        }
    }

    const fn rates(inbound: Option<u64>, outbound: Option<u64>) -> DirectionRates {
        DirectionRates { inbound, outbound }
    }

    #[test]
    fn a_stream_passes_its_edges_limit_and_its_ports() {
        let mut limits = BandwidthLimits::default();
        limits.apply(&[
            edge(
                "a",
                rates(Some(10_000), None),
                &[(443, rates(Some(5_000), Some(7_000)))],
            ),
            edge("free", DirectionRates::default(), &[]),
        ]);
        let on_443 = limits.stream_pacing("a", 443);
        assert_eq!(
            on_443.written().unwrap().limits_len(),
            2,
            "inbound: edge and port"
        );
        assert_eq!(
            on_443.read().unwrap().limits_len(),
            1,
            "outbound: the port's only"
        );
        let on_80 = limits.stream_pacing("a", 80);
        assert_eq!(on_80.written().unwrap().limits_len(), 1);
        assert!(on_80.read().is_none());
        let free = limits.stream_pacing("free", 443);
        assert!(free.read().is_none() && free.written().is_none());
        assert!(limits.status("free").is_none());
        let status = limits.status("a").unwrap();
        assert_eq!(status.inbound.unwrap().bytes_per_second, 10_000);
        assert!(status.outbound.is_none());
        assert_eq!(status.ports[0].port, Some(443));
        assert_eq!(
            status.ports[0].outbound.as_ref().unwrap().bytes_per_second,
            7_000
        );
    }

    #[test]
    fn new_rates_reach_the_limits_running_streams_hold() {
        let mut limits = BandwidthLimits::default();
        limits.apply(&[edge("a", rates(Some(10_000), None), &[])]);
        let held = limits.edges["a"].edge.inbound.clone().unwrap();
        let current = |limits: &BandwidthLimits| limits.edges["a"].edge.inbound.clone().unwrap();
        limits.apply(&[edge("a", rates(Some(20_000), Some(1_000)), &[])]);
        assert_eq!(
            held.bytes_per_second(),
            Some(20_000),
            "the same limit, a new rate"
        );
        assert!(Arc::ptr_eq(&held, &current(&limits)));
        // Lifted: the streams holding it wait no more, and it no longer shows.
        limits.apply(&[edge("a", DirectionRates::default(), &[])]);
        assert_eq!(held.bytes_per_second(), None);
        assert!(limits.status("a").is_none());
        // Set again: the same limit, so old and new streams share it.
        limits.apply(&[edge("a", rates(Some(5_000), None), &[])]);
        assert_eq!(held.bytes_per_second(), Some(5_000));
        assert!(Arc::ptr_eq(&held, &current(&limits)));
        limits.apply(&[]);
        assert!(limits.edges.is_empty(), "a removed edge is forgotten");
    }
}
