//! Connections accepted while no tunnel is up wait here, up to `connectWaitMs`, for one to come
//! up, and are then carried as if just accepted: a hub restart costs clients a delay, not an
//! error. Anyone can open them, so they are bounded in total and per source; past a bound, or
//! when the wait runs out, a client is reset as before.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::lock::Locked;
use crate::source::SourceCounts;

/// Connections waiting for a tunnel at once, all sources together: each is a socket and a
/// small task, and a client during an outage needs no more.
pub(crate) const MAX_PARKED: usize = 1024;
/// Of those, from one source address (IPv6: one /64), so one source cannot take them all.
pub(crate) const MAX_PARKED_PER_SOURCE: usize = 64;

/// The connections waiting now, counted by source.
#[derive(Debug, Default)]
struct Parked {
    total: usize,
    by_source: SourceCounts,
}

/// Where accepted connections wait for a tunnel.
#[derive(Debug)]
pub(super) struct ParkingLot {
    parked: Mutex<Parked>,
    /// True while a tunnel is up; waiting connections watch it.
    tunnel_up: watch::Sender<bool>,
}

/// A waiting connection's place; given back when dropped.
pub(super) struct ParkingPlace {
    lot: Arc<ParkingLot>,
    source: IpAddr,
}

impl Drop for ParkingPlace {
    fn drop(&mut self) {
        let mut parked = self.lot.parked.locked();
        parked.total -= 1;
        parked.by_source.remove(self.source);
    }
}

/// How a parked connection's wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WaitEnd {
    TunnelUp,
    /// `connectWaitMs` passed without a tunnel.
    TimedOut,
}

impl Default for ParkingLot {
    fn default() -> Self {
        Self {
            parked: Mutex::default(),
            tunnel_up: watch::Sender::new(false),
        }
    }
}

impl ParkingLot {
    /// A place for a connection from `source`, unless the lot or the source's share is full.
    pub(super) fn admit(self: &Arc<Self>, source: IpAddr) -> Option<ParkingPlace> {
        let mut parked = self.parked.locked();
        if parked.total >= MAX_PARKED || parked.by_source.get(source) >= MAX_PARKED_PER_SOURCE {
            return None;
        }
        parked.total += 1;
        parked.by_source.add(source);
        Some(ParkingPlace {
            lot: self.clone(),
            source,
        })
    }

    /// Connections waiting now.
    pub(super) fn len(&self) -> usize {
        self.parked.locked().total
    }

    /// Whether a tunnel is up: waiting connections go on when it turns true.
    pub(super) fn set_tunnel_up(&self, up: bool) {
        self.tunnel_up.send_replace(up);
    }

    /// Waits up to `limit` for a tunnel.
    pub(super) async fn wait(&self, limit: Duration) -> WaitEnd {
        let mut up = self.tunnel_up.subscribe();
        let came_up = tokio::time::timeout(limit, up.wait_for(|up| *up))
            .await
            .is_ok_and(|changed| changed.is_ok());
        // The sender lives as long as the lot: only the timeout ends the wait otherwise.
        if came_up {
            WaitEnd::TunnelUp
        } else {
            WaitEnd::TimedOut
        }
    }
}

/// Resets a client: an abort, so it does not mistake a refusal for an empty answer.
pub(super) fn reset(client: &TcpStream) {
    let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_source_and_in_total_and_given_back() {
        let lot = Arc::new(ParkingLot::default());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held: Vec<ParkingPlace> = (0..MAX_PARKED_PER_SOURCE)
            .map(|_| lot.admit(one).unwrap())
            .collect();
        assert!(lot.admit(one).is_none(), "the source's share is full");
        // IPv6 sources share the bound per /64.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 0..MAX_PARKED_PER_SOURCE as u16 {
            held.push(lot.admit(v6(i)).unwrap());
        }
        assert!(lot.admit(v6(999)).is_none());
        let mut n = 0u32;
        while held.len() < MAX_PARKED {
            n += 1;
            held.push(lot.admit(IpAddr::from(n.to_be_bytes())).unwrap());
        }
        assert!(
            lot.admit("198.51.100.1".parse().unwrap()).is_none(),
            "the lot is full"
        );
        assert_eq!(lot.len(), MAX_PARKED);
        held.truncate(MAX_PARKED_PER_SOURCE - 1);
        assert_eq!(lot.len(), MAX_PARKED_PER_SOURCE - 1);
        assert!(lot.admit(one).is_some(), "a place given back is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_a_tunnel_comes_up_or_the_limit_passes() {
        let lot = Arc::new(ParkingLot::default());
        assert_eq!(lot.wait(Duration::from_secs(10)).await, WaitEnd::TimedOut);
        let waiting = {
            let lot = lot.clone();
            tokio::spawn(async move { lot.wait(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        lot.set_tunnel_up(true);
        assert_eq!(waiting.await.unwrap(), WaitEnd::TunnelUp);
        // Up already: no wait at all.
        assert_eq!(lot.wait(Duration::ZERO).await, WaitEnd::TunnelUp);
    }
}
