//! TCP clients waiting for their first byte (`firstByteTimeoutMs`), over all ports: bounded
//! per source and in total. When the total is reached, the client that has waited longest is
//! reset for the newcomer: a real client sends within a round trip, so a flood of silent
//! connections crowds out only itself.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::lock::Locked;
use crate::source::SourceCounts;

/// Clients that may wait for their first byte at once, all ports together.
pub(super) const MAX_AWAITING_FIRST_BYTE: usize = 16_384;
/// Of those, from one source (IPv6: one /64).
pub(super) const MAX_AWAITING_FIRST_BYTE_PER_SOURCE: usize = 256;

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    /// Each waiting client's source and the token that resets it.
    by_id: HashMap<u64, (IpAddr, CancellationToken)>,
    /// Ids, oldest first; those that stopped waiting are skipped when met.
    order: VecDeque<u64>,
    per_source: SourceCounts,
}

impl Waiting {
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (source, evicted) = self.by_id.remove(&id)?;
        self.per_source.remove(source);
        Some(evicted)
    }
}

#[derive(Debug, Default)]
pub(super) struct FirstByteWaits {
    waiting: Mutex<Waiting>,
}

/// A client's place among those waiting; gives it back when dropped.
#[derive(Debug)]
pub(super) struct FirstByteWait {
    id: u64,
    waits: Arc<FirstByteWaits>,
    /// Cancelled when the client is reset to make room for a newer one.
    pub(super) evicted: CancellationToken,
}

impl Drop for FirstByteWait {
    fn drop(&mut self) {
        self.waits.waiting().remove(self.id);
    }
}

impl FirstByteWaits {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.locked()
    }

    /// A place for a client from `source`, or None when its source has all it may have. A
    /// full table makes room by evicting the client that has waited longest.
    pub(super) fn admit(self: &Arc<Self>, source: IpAddr) -> Option<FirstByteWait> {
        let mut waiting = self.waiting();
        if waiting.per_source.get(source) >= MAX_AWAITING_FIRST_BYTE_PER_SOURCE {
            return None;
        }
        while waiting.by_id.len() >= MAX_AWAITING_FIRST_BYTE {
            let Some(oldest) = waiting.order.pop_front() else {
                break;
            };
            if let Some(evicted) = waiting.remove(oldest) {
                evicted.cancel();
            }
        }
        let id = waiting.next_id;
        waiting.next_id += 1;
        let evicted = CancellationToken::new();
        waiting.by_id.insert(id, (source, evicted.clone()));
        waiting.per_source.add(source);
        waiting.order.push_back(id);
        if waiting.order.len() > 2 * MAX_AWAITING_FIRST_BYTE {
            let Waiting { by_id, order, .. } = &mut *waiting;
            order.retain(|id| by_id.contains_key(id));
        }
        Some(FirstByteWait {
            id,
            waits: self.clone(),
            evicted,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000 + i).to_be_bytes())
    }

    #[test]
    fn one_source_gets_its_share_and_no_more() {
        let waits = Arc::new(FirstByteWaits::default());
        let held: Vec<_> = (0..MAX_AWAITING_FIRST_BYTE_PER_SOURCE)
            .map(|_| waits.admit(ip(1)).unwrap())
            .collect();
        assert!(waits.admit(ip(1)).is_none());
        assert!(waits.admit(ip(2)).is_some());
        drop(held);
        assert_eq!(waits.len(), 0, "every place given back");
        assert!(waits.admit(ip(1)).is_some());
    }

    #[test]
    fn a_full_table_resets_the_longest_waiting_for_a_newcomer() {
        let waits = Arc::new(FirstByteWaits::default());
        let sources = MAX_AWAITING_FIRST_BYTE / MAX_AWAITING_FIRST_BYTE_PER_SOURCE;
        let mut held: Vec<_> = (0..sources as u32)
            .flat_map(|s| (0..MAX_AWAITING_FIRST_BYTE_PER_SOURCE).map(move |_| s))
            .map(|s| waits.admit(ip(s)).unwrap())
            .collect();
        assert_eq!(waits.len(), MAX_AWAITING_FIRST_BYTE);
        let newcomer = waits.admit(ip(1_000_000)).unwrap();
        assert!(held[0].evicted.is_cancelled(), "the oldest made room");
        assert!(!held[1].evicted.is_cancelled());
        assert!(!newcomer.evicted.is_cancelled());
        assert_eq!(waits.len(), MAX_AWAITING_FIRST_BYTE);
        // The evicted one's place is gone already; dropping it frees nothing more.
        held.remove(0);
        assert_eq!(waits.len(), MAX_AWAITING_FIRST_BYTE);
        drop(held);
        drop(newcomer);
        assert_eq!(waits.len(), 0);
        assert!(waits.waiting().per_source.get(ip(0)) == 0);
    }

    #[test]
    fn the_order_stays_bounded_as_clients_come_and_go() {
        let waits = Arc::new(FirstByteWaits::default());
        for i in 0..(5 * MAX_AWAITING_FIRST_BYTE as u32) {
            drop(waits.admit(ip(i % 1000)));
        }
        assert!(waits.waiting().order.len() <= 2 * MAX_AWAITING_FIRST_BYTE + 1);
    }
}
