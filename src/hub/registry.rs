//! The tunnels the hub serves now, by edge id. One id may hold several: an edge on several
//! hubs' addresses, or replicas of an edge on different hosts that share its id and secret.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::EdgeSession;

/// Tunnels one edge id may hold at once, by default.
pub(crate) const DEFAULT_MAX_TUNNELS_PER_EDGE: usize = 16;

/// The live tunnels, grouped by edge id, oldest first.
#[derive(Default)]
pub(super) struct TunnelRegistry {
    by_edge: HashMap<String, Vec<Arc<EdgeSession>>>,
}

impl TunnelRegistry {
    /// Edge ids with at least one tunnel.
    pub(super) fn edges(&self) -> usize {
        self.by_edge.len()
    }

    pub(super) fn has_edge(&self, edge_id: &str) -> bool {
        self.by_edge.contains_key(edge_id)
    }

    /// Every tunnel.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<EdgeSession>> {
        self.by_edge.values().flatten()
    }

    /// The tunnels of one edge id, oldest first.
    #[cfg(test)]
    pub(super) fn of(&self, edge_id: &str) -> &[Arc<EdgeSession>] {
        self.by_edge.get(edge_id).map_or(&[], Vec::as_slice)
    }

    /// Registers a tunnel. When its edge id holds `max` already, the oldest makes room and is
    /// returned, to be closed: a reconnecting edge is never refused for tunnels that may be dead.
    pub(super) fn add(
        &mut self,
        session: Arc<EdgeSession>,
        max: usize,
    ) -> Option<Arc<EdgeSession>> {
        let tunnels = self.by_edge.entry(session.edge_id.clone()).or_default();
        let displaced = (tunnels.len() >= max.max(1)).then(|| tunnels.remove(0));
        tunnels.push(session);
        displaced
    }

    /// Forgets a tunnel; false when it was not registered (displaced already).
    pub(super) fn remove(&mut self, session: &Arc<EdgeSession>) -> bool {
        let Some(tunnels) = self.by_edge.get_mut(&session.edge_id) else {
            return false;
        };
        let before = tunnels.len();
        tunnels.retain(|t| !Arc::ptr_eq(t, session));
        let removed = tunnels.len() < before;
        if tunnels.is_empty() {
            self.by_edge.remove(&session.edge_id);
        }
        removed
    }
}
