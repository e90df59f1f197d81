//! Client addresses as limits count them.

use std::net::IpAddr;

use crate::counts::Counts;
use crate::protocol::client_policy::{mask, DEFAULT_IPV6_PREFIX_LENGTH};

/// The address a source is counted under: IPv4 as it is (IPv4-mapped IPv6 too), IPv6 by its
/// /64, since one host can use every address of its prefix.
pub(crate) fn source_key(address: IpAddr) -> IpAddr {
    source_key_by(address, DEFAULT_IPV6_PREFIX_LENGTH)
}

/// [`source_key`] with IPv6 grouped by `ipv6_prefix` instead.
pub(crate) fn source_key_by(address: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match address.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => mask(v6, ipv6_prefix),
    }
}

/// How many entries of a table each source holds, by [`source_key`].
#[derive(Debug, Default)]
pub(crate) struct SourceCounts(Counts<IpAddr>);

impl SourceCounts {
    pub(crate) fn get(&self, source: IpAddr) -> usize {
        self.0.get(&source_key(source))
    }

    pub(crate) fn add(&mut self, source: IpAddr) {
        self.0.add(source_key(source));
    }

    /// Forgets a source whose count falls to zero, so the map holds only present sources.
    pub(crate) fn remove(&mut self, source: IpAddr) {
        self.0.remove(&source_key(source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_grouped_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        assert_eq!(source_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), IpAddr::from([192, 0, 2, 7]));
        assert_eq!(
            source_key(IpAddr::from([127, 0, 0, 9])),
            IpAddr::from([127, 0, 0, 9])
        );
    }

    #[test]
    fn counts_are_kept_per_source_key_and_forgotten_at_zero() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut counts = SourceCounts::default();
        counts.add(ip("2001:db8::1"));
        counts.add(ip("2001:db8::2"));
        assert_eq!(counts.get(ip("2001:db8::ffff")), 2);
        counts.remove(ip("2001:db8::1"));
        counts.remove(ip("2001:db8::2"));
        assert_eq!(counts.0.keys(), 0);
        counts.remove(ip("2001:db8::1"));
        assert_eq!(counts.get(ip("2001:db8::1")), 0);
    }
}
