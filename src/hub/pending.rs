//! Connections between accept and a decided login, bounded per source and in total. A full
//! table evicts rather than refuses: the oldest connection that has not sent a byte yet, else
//! the oldest of all. Idle or stalled sockets therefore cannot keep a real edge out; an edge's
//! handshake, which starts with its first packet, is only evicted behind every idle one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::lock::Locked;
pub(super) use crate::source::source_key;
use crate::source::SourceCounts;

/// Why a pending connection was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EvictedFor {
    /// Its source had as many pending connections as it may.
    SourceFull,
    /// The table was full.
    TableFull,
}

/// One connection evicted to make room: its source, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Eviction {
    pub source: IpAddr,
    pub reason: EvictedFor,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    /// Whether the connection has sent anything (a TLS ClientHello, a QUIC Initial).
    started: bool,
    evict: CancellationToken,
}

/// The table itself, without locking or I/O. Ids grow with age, so the first entry of the map
/// is the oldest.
#[derive(Debug)]
struct Table {
    max_total: usize,
    max_per_source: usize,
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    per_source: SourceCounts,
}

impl Table {
    fn admit(&mut self, source: IpAddr, evict: CancellationToken) -> (u64, Option<Eviction>) {
        let source = source_key(source);
        let mut evicted = None;
        if self.per_source.get(source) >= self.max_per_source {
            evicted = self.evict_oldest(Some(source), EvictedFor::SourceFull);
        } else if self.entries.len() >= self.max_total {
            evicted = self.evict_oldest(None, EvictedFor::TableFull);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                source,
                started: false,
                evict,
            },
        );
        self.per_source.add(source);
        (id, evicted)
    }

    /// Evicts the oldest idle entry (of `source` when given), else the oldest one.
    fn evict_oldest(&mut self, source: Option<IpAddr>, reason: EvictedFor) -> Option<Eviction> {
        let candidates = || {
            self.entries
                .iter()
                .filter(|(_, e)| source.is_none_or(|s| e.source == s))
        };
        let id = candidates()
            .find(|(_, e)| !e.started)
            .or_else(|| candidates().next())
            .map(|(id, _)| *id)?;
        let entry = self.remove(id)?;
        entry.evict.cancel();
        Some(Eviction {
            source: entry.source,
            reason,
        })
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.per_source.remove(entry.source);
        Some(entry)
    }

    fn mark_started(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.started = true;
        }
    }
}

/// The hub's pending connections.
#[derive(Debug)]
pub(super) struct PendingHandshakes {
    table: Mutex<Table>,
}

impl PendingHandshakes {
    pub(super) fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table {
                max_total: max_total.max(1),
                max_per_source: max_per_source.max(1),
                next_id: 0,
                entries: BTreeMap::new(),
                per_source: SourceCounts::default(),
            }),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.locked()
    }

    /// Takes a slot for a new connection from `source`, evicting another when full.
    pub(super) fn admit(self: &Arc<Self>, source: IpAddr) -> (PendingSlot, Option<Eviction>) {
        let evicted = CancellationToken::new();
        let (id, eviction) = self.table().admit(source, evicted.clone());
        let slot = PendingSlot {
            id,
            evicted,
            pending: self.clone(),
        };
        (slot, eviction)
    }

    /// Connections pending now.
    pub(super) fn len(&self) -> usize {
        self.table().entries.len()
    }
}

/// A pending connection's place in the table, given back when dropped (the login decided).
#[derive(Debug)]
pub(super) struct PendingSlot {
    id: u64,
    evicted: CancellationToken,
    pending: Arc<PendingHandshakes>,
}

impl PendingSlot {
    /// The connection has sent its first bytes: it is evicted only after every idle one.
    pub(super) fn mark_started(&self) {
        self.pending.table().mark_started(self.id);
    }

    /// Completes when the connection has been evicted to make room for another.
    pub(super) async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.table().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_for_a_newcomer() {
        let pending = PendingHandshakes::new(3, 8);
        let (first, none) = pending.admit(v4(1));
        assert_eq!(none, None);
        let (second, _) = pending.admit(v4(2));
        let (third, _) = pending.admit(v4(3));
        // The oldest has started its handshake: the oldest idle one goes instead.
        first.mark_started();
        let (fourth, eviction) = pending.admit(v4(4));
        assert_eq!(
            eviction,
            Some(Eviction {
                source: v4(2),
                reason: EvictedFor::TableFull
            })
        );
        assert!(second.is_evicted());
        assert!(!first.is_evicted() && !third.is_evicted() && !fourth.is_evicted());
        assert_eq!(pending.len(), 3);
        // All started: then the oldest of all.
        third.mark_started();
        fourth.mark_started();
        let (_fifth, eviction) = pending.admit(v4(5));
        assert_eq!(eviction.unwrap().source, v4(1));
        assert!(first.is_evicted());
        // An evicted slot that is dropped later frees nothing twice.
        drop(first);
        drop(second);
        assert_eq!(pending.len(), 3);
        drop(third);
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn one_source_evicts_only_its_own_connections() {
        let pending = PendingHandshakes::new(100, 2);
        let (other, _) = pending.admit(v4(9));
        let (a1, _) = pending.admit(v4(1));
        let (a2, _) = pending.admit(v4(1));
        let (a3, eviction) = pending.admit(v4(1));
        assert_eq!(
            eviction,
            Some(Eviction {
                source: v4(1),
                reason: EvictedFor::SourceFull
            })
        );
        assert!(a1.is_evicted());
        assert!(!a2.is_evicted() && !a3.is_evicted() && !other.is_evicted());
        assert_eq!(pending.len(), 3);
        // A slot given back makes room without an eviction.
        drop(a2);
        let (_a4, eviction) = pending.admit(v4(1));
        assert_eq!(eviction, None);
    }

    #[test]
    fn a_flood_from_many_sources_never_grows_the_table_past_its_bound() {
        let pending = PendingHandshakes::new(512, 4);
        let mut slots = Vec::new();
        for i in 0..2_000u32 {
            let source = IpAddr::from([127, 1, (i / 250) as u8, (i % 250) as u8]);
            slots.push(pending.admit(source).0);
            assert!(pending.len() <= 512);
        }
        assert_eq!(pending.len(), 512);
        assert_eq!(slots.iter().filter(|s| !s.is_evicted()).count(), 512);
        // A newcomer that sends its first bytes survives 511 more idle newcomers.
        let edge = pending.admit(v4(200)).0;
        edge.mark_started();
        for i in 0..2_000u32 {
            let source = IpAddr::from([127, 2, (i / 250) as u8, (i % 250) as u8]);
            slots.push(pending.admit(source).0);
        }
        assert!(!edge.is_evicted());
    }
}
