//! The client rules of one listening port: allow and deny lists, and what each source may
//! hold and open there. They are checked when a client connects or a datagram arrives, before
//! any stream or session exists, so a refused client costs the hub nothing. The rules come
//! from the hub (`clients` in its config) and change live; what a source holds is counted by
//! leases, given back when the connection or session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::counts::Counts;
use crate::lock::{Locked, ReadWriteLocked};
use crate::protocol::client_policy::{
    CidrList, ClientPolicy, DEFAULT_IPV6_PREFIX_LENGTH, DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
};

/// The share of the edge's UDP session limit one source may hold on a port by default
/// (1,024 of the default 4,096): generous for a carrier-grade NAT, yet one source cannot
/// fill the table.
pub(super) const UDP_SESSIONS_PER_SOURCE_DIVISOR: usize = 4;
/// Sources whose connection rate a port tracks at once; past it, sources whose bucket is full
/// again (as good as new) are forgotten, and all of them when that frees less than a quarter,
/// so rotating sources can neither grow it nor make each new source pay for a scan.
pub(super) const MAX_RATE_TRACKED_SOURCES: usize = 16_384;

/// Why a client was turned away before any stream or session was opened for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ClientRefusal {
    /// Its address is on the deny list, or not on the allow list.
    Denied,
    /// Its source holds `maxConnectionsPerSource` connections on the port.
    ConnectionLimit,
    /// Its source opened connections faster than `connectionRatePerSource` allows.
    RateLimit,
    /// It sent nothing within `firstByteTimeoutMs`.
    FirstByteTimeout,
    /// Its source had [`super::first_byte::MAX_AWAITING_FIRST_BYTE_PER_SOURCE`] clients waiting
    /// for their first byte, or it waited longest when the edge had
    /// [`super::first_byte::MAX_AWAITING_FIRST_BYTE`].
    FirstByteWaitFull,
    /// Its source holds `maxUdpSessionsPerSource` sessions on the port.
    UdpSessionLimit,
}

impl ClientRefusal {
    /// What happened, for a warning.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ClientRefusal::Denied => "denied by the port's allow or deny list",
            ClientRefusal::ConnectionLimit => {
                "its source holds maxConnectionsPerSource connections"
            }
            ClientRefusal::RateLimit => {
                "its source opens connections faster than connectionRatePerSource"
            }
            ClientRefusal::FirstByteTimeout => "it sent nothing within firstByteTimeoutMs",
            ClientRefusal::FirstByteWaitFull => {
                "too many clients wait for their first byte (from its source, or in all)"
            }
            ClientRefusal::UdpSessionLimit => {
                "its source holds maxUdpSessionsPerSource sessions; the datagram was dropped"
            }
        }
    }

    /// The name the metrics use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClientRefusal::Denied => "denied",
            ClientRefusal::ConnectionLimit => "connectionLimit",
            ClientRefusal::RateLimit => "rateLimit",
            ClientRefusal::FirstByteTimeout => "firstByteTimeout",
            ClientRefusal::FirstByteWaitFull => "firstByteWaitFull",
            ClientRefusal::UdpSessionLimit => "udpSessionLimit",
        }
    }
}

/// One port's rules with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PortRules {
    allow: Option<CidrList>,
    deny: CidrList,
    max_connections_per_source: u32,
    /// New connections per second per source, and how many at once; None: no limit.
    connection_rate: Option<(f64, f64)>,
    max_udp_sessions_per_source: u32,
    /// None: streams open at once.
    pub(super) first_byte_timeout: Option<Duration>,
    ipv6_prefix_length: u8,
}

impl PortRules {
    /// `policy` (the edge's rules over the port's), defaults for what it leaves out; the UDP
    /// default is a share of `max_udp_sessions`, the edge's session limit.
    pub(super) fn new(policy: &ClientPolicy, max_udp_sessions: usize) -> Self {
        let udp_default = (max_udp_sessions / UDP_SESSIONS_PER_SOURCE_DIVISOR).max(1);
        Self {
            allow: policy.allow.clone(),
            deny: policy.deny.clone().unwrap_or_default(),
            max_connections_per_source: policy
                .max_connections_per_source
                .map_or(DEFAULT_MAX_CONNECTIONS_PER_SOURCE, |n| n.0),
            connection_rate: policy.connection_rate_per_source.map(|rate| {
                let burst = policy.connection_burst_per_source.unwrap_or(rate);
                (f64::from(rate.0), f64::from(burst.0))
            }),
            max_udp_sessions_per_source: policy
                .max_udp_sessions_per_source
                .map_or(u32::try_from(udp_default).unwrap_or(u32::MAX), |n| n.0),
            first_byte_timeout: policy
                .first_byte_timeout_ms
                .map(|ms| Duration::from_millis(u64::from(ms.0)))
                .filter(|t| !t.is_zero()),
            ipv6_prefix_length: policy
                .ipv6_prefix_length
                .map_or(DEFAULT_IPV6_PREFIX_LENGTH, |n| n.0),
        }
    }

    /// Whether the lists let `address` (canonical) in.
    fn admits(&self, address: IpAddr) -> bool {
        !self.deny.contains(address)
            && self
                .allow
                .as_ref()
                .is_none_or(|allow| allow.contains(address))
    }

    /// What `address` counts under: IPv4 as it is, IPv6 by its prefix.
    fn source_key(&self, address: IpAddr) -> IpAddr {
        crate::source::source_key_by(address, self.ipv6_prefix_length)
    }
}

/// New connections a source may open: `burst` at once, refilled at `rate` a second.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What the sources hold and have used on a port.
#[derive(Debug, Default)]
struct Sources {
    /// Connections (or sessions) held, by source key; a source holding none has no entry.
    held: Counts<IpAddr>,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl Sources {
    fn take_token(&mut self, key: IpAddr, now: Instant, rules: &PortRules) -> bool {
        let Some((rate, burst)) = rules.connection_rate else {
            return true;
        };
        if self.buckets.len() >= MAX_RATE_TRACKED_SOURCES && !self.buckets.contains_key(&key) {
            self.buckets.retain(|_, bucket| {
                bucket.refill(now, rate, burst);
                bucket.tokens < burst
            });
            // Not a scan per new source while the table stays nearly full.
            if self.buckets.len() >= MAX_RATE_TRACKED_SOURCES * 3 / 4 {
                self.buckets.clear();
            }
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(now, rate, burst)
    }
}

/// One listening port's rules and what its sources hold.
#[derive(Debug)]
pub(super) struct PortGate {
    rules: RwLock<Arc<PortRules>>,
    sources: Mutex<Sources>,
}

/// A connection or session a source holds on a port; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct SourceLease {
    gate: Arc<PortGate>,
    key: IpAddr,
}

impl Drop for SourceLease {
    fn drop(&mut self) {
        self.gate.sources().held.remove(&self.key);
    }
}

impl PortGate {
    pub(super) fn new(rules: PortRules) -> Arc<Self> {
        Arc::new(Self {
            rules: RwLock::new(Arc::new(rules)),
            sources: Mutex::default(),
        })
    }

    /// New rules for clients from now on; what sources hold already stays theirs.
    pub(super) fn set_rules(&self, rules: PortRules) {
        let mut current = self.rules.write_locked();
        if **current != rules {
            *current = Arc::new(rules);
        }
    }

    pub(super) fn rules(&self) -> Arc<PortRules> {
        self.rules.read_locked().clone()
    }

    fn sources(&self) -> MutexGuard<'_, Sources> {
        self.sources.locked()
    }

    /// Whether the lists let `address` (canonical) in: checked for every datagram.
    pub(super) fn admits(&self, address: IpAddr) -> bool {
        self.rules.read_locked().admits(address)
    }

    /// Admits a new TCP client from `address` (canonical) at `now`: the lists, then what its
    /// source holds, then its source's rate.
    pub(super) fn admit_connection(
        self: &Arc<Self>,
        address: IpAddr,
        now: Instant,
    ) -> Result<SourceLease, ClientRefusal> {
        let rules = self.rules();
        if !rules.admits(address) {
            return Err(ClientRefusal::Denied);
        }
        let key = rules.source_key(address);
        let mut sources = self.sources();
        if sources.held.get(&key) >= rules.max_connections_per_source as usize {
            return Err(ClientRefusal::ConnectionLimit);
        }
        if !sources.take_token(key, now, &rules) {
            return Err(ClientRefusal::RateLimit);
        }
        sources.held.add(key);
        drop(sources);
        Ok(self.lease(key))
    }

    /// Admits a new UDP session from `address` (canonical), whose datagram the lists let in.
    pub(super) fn admit_udp_session(
        self: &Arc<Self>,
        address: IpAddr,
    ) -> Result<SourceLease, ClientRefusal> {
        let rules = self.rules();
        let key = rules.source_key(address);
        let mut sources = self.sources();
        if sources.held.get(&key) >= rules.max_udp_sessions_per_source as usize {
            return Err(ClientRefusal::UdpSessionLimit);
        }
        sources.held.add(key);
        drop(sources);
        Ok(self.lease(key))
    }

    fn lease(self: &Arc<Self>, key: IpAddr) -> SourceLease {
        SourceLease {
            gate: self.clone(),
            key,
        }
    }

    /// Sources holding something now.
    #[cfg(test)]
    fn sources_held(&self) -> usize {
        self.sources().held.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn gate_for(policy: &str) -> Arc<PortGate> {
        PortGate::new(PortRules::new(&serde_json::from_str(policy).unwrap(), 4096))
    }

    #[test]
    fn deny_wins_over_allow_and_an_allow_list_admits_only_its_blocks() {
        let gate = gate_for(r#"{"allow":["10.0.0.0/8","2001:db8::/32"],"deny":["10.9.0.0/16"]}"#);
        let now = Instant::now();
        assert!(gate.admit_connection(ip("10.1.2.3"), now).is_ok());
        assert_eq!(
            gate.admit_connection(ip("10.9.2.3"), now).unwrap_err(),
            ClientRefusal::Denied
        );
        assert_eq!(
            gate.admit_connection(ip("192.0.2.1"), now).unwrap_err(),
            ClientRefusal::Denied
        );
        assert!(gate.admits(ip("2001:db8:5::1")));
        assert!(!gate.admits(ip("2001:db9::1")));
        let open = gate_with_defaults();
        assert!(open.admits(ip("192.0.2.1")) && open.admits(ip("::1")));
    }

    fn gate_with_defaults() -> Arc<PortGate> {
        gate_for("{}")
    }

    #[test]
    fn connections_per_source_are_bounded_and_given_back() {
        let gate = gate_for(r#"{"maxConnectionsPerSource":3}"#);
        let now = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| gate.admit_connection(ip("192.0.2.1"), now).unwrap())
            .collect();
        assert_eq!(
            gate.admit_connection(ip("192.0.2.1"), now).unwrap_err(),
            ClientRefusal::ConnectionLimit
        );
        assert!(gate.admit_connection(ip("192.0.2.2"), now).is_ok());
        drop(held);
        assert_eq!(gate.sources_held(), 0, "every place given back");
        assert!(gate.admit_connection(ip("192.0.2.1"), now).is_ok());
    }

    #[test]
    fn ipv6_sources_count_by_their_prefix() {
        let gate = gate_for(r#"{"maxConnectionsPerSource":1}"#);
        let now = Instant::now();
        let _held = gate.admit_connection(ip("2001:db8:1:2::1"), now).unwrap();
        assert_eq!(
            gate.admit_connection(ip("2001:db8:1:2:ffff::9"), now)
                .unwrap_err(),
            ClientRefusal::ConnectionLimit,
            "the same /64"
        );
        let _other = gate.admit_connection(ip("2001:db8:1:3::1"), now).unwrap();
        let wide = gate_for(r#"{"maxConnectionsPerSource":1,"ipv6PrefixLength":48}"#);
        let _held = wide.admit_connection(ip("2001:db8:1:2::1"), now).unwrap();
        assert!(wide.admit_connection(ip("2001:db8:1:3::1"), now).is_err());
        assert!(wide.admit_connection(ip("2001:db8:2::1"), now).is_ok());
    }

    #[test]
    fn new_connections_follow_the_bucket_and_its_refill() {
        let gate = gate_for(r#"{"connectionRatePerSource":10,"connectionBurstPerSource":5}"#);
        let t0 = Instant::now();
        let admitted = (0..20)
            .filter(|_| gate.admit_connection(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(admitted, 5, "the burst");
        assert_eq!(
            gate.admit_connection(ip("192.0.2.1"), t0).unwrap_err(),
            ClientRefusal::RateLimit
        );
        assert!(gate.admit_connection(ip("192.0.2.2"), t0).is_ok());
        // A tenth of a second buys one more; a second refills at most the burst.
        let t1 = t0 + Duration::from_millis(100);
        assert!(gate.admit_connection(ip("192.0.2.1"), t1).is_ok());
        assert!(gate.admit_connection(ip("192.0.2.1"), t1).is_err());
        let t2 = t1 + Duration::from_secs(10);
        let admitted = (0..20)
            .filter(|_| gate.admit_connection(ip("192.0.2.1"), t2).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // Without a burst the bucket holds a second's worth; without a rate there is none.
        let gate = gate_for(r#"{"connectionRatePerSource":3}"#);
        let admitted = (0..20)
            .filter(|_| gate.admit_connection(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(admitted, 3);
        let gate = gate_with_defaults();
        assert!((0..10_000).all(|_| {
            let lease = gate.admit_connection(ip("192.0.2.1"), t0);
            lease.is_ok()
        }));
    }

    #[test]
    fn rate_buckets_stay_bounded_under_rotating_sources() {
        let gate = gate_for(r#"{"connectionRatePerSource":1000}"#);
        let now = Instant::now();
        for i in 0..(MAX_RATE_TRACKED_SOURCES as u32 * 2) {
            let lease = gate.admit_connection(IpAddr::from(i.to_be_bytes()), now);
            drop(lease);
        }
        assert!(gate.sources().buckets.len() <= MAX_RATE_TRACKED_SOURCES);
        assert_eq!(gate.sources_held(), 0);
    }

    #[test]
    fn udp_sessions_per_source_default_to_a_share_of_the_edge_limit() {
        let gate = PortGate::new(PortRules::new(&ClientPolicy::default(), 8));
        let held: Vec<_> = (0..2)
            .map(|_| gate.admit_udp_session(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(
            gate.admit_udp_session(ip("192.0.2.1")).unwrap_err(),
            ClientRefusal::UdpSessionLimit
        );
        drop(held);
        assert_eq!(gate.sources_held(), 0);
        let set = gate_rules(r#"{"maxUdpSessionsPerSource":1}"#);
        gate.set_rules(set);
        let _one = gate.admit_udp_session(ip("192.0.2.1")).unwrap();
        assert!(gate.admit_udp_session(ip("192.0.2.1")).is_err());
        assert_eq!(gate.sources_held(), 1, "a refusal leaves no entry behind");
    }

    fn gate_rules(policy: &str) -> PortRules {
        PortRules::new(&serde_json::from_str(policy).unwrap(), 8)
    }

    #[test]
    fn new_rules_apply_to_new_clients_and_leases_keep_their_source() {
        let gate = gate_for(r#"{"maxConnectionsPerSource":1}"#);
        let now = Instant::now();
        let held = gate.admit_connection(ip("2001:db8:1:2::1"), now).unwrap();
        gate.set_rules(PortRules::new(
            &serde_json::from_str(r#"{"deny":["2001:db8::/32"],"ipv6PrefixLength":48}"#).unwrap(),
            4096,
        ));
        assert_eq!(
            gate.admit_connection(ip("2001:db8:1:2::1"), now)
                .unwrap_err(),
            ClientRefusal::Denied
        );
        drop(held);
        assert_eq!(gate.sources_held(), 0);
        assert_eq!(gate.rules().first_byte_timeout, None);
        gate.set_rules(gate_rules(r#"{"firstByteTimeoutMs":250}"#));
        assert_eq!(
            gate.rules().first_byte_timeout,
            Some(Duration::from_millis(250))
        );
        gate.set_rules(gate_rules(r#"{"firstByteTimeoutMs":0}"#));
        assert_eq!(gate.rules().first_byte_timeout, None, "0 is off");
    }
}
