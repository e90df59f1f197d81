//! Which clients an edge serves on its public ports, and how much each source may take: the
//! hub's operator sets it per edge and per port, the hub sends it in the login answer and
//! CONFIG (`remoteingress/1` only), and the edge applies it when a client connects or a
//! datagram arrives, before any stream is opened.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::Int;

use super::handshake::MAX_UDP_SESSIONS_LIMIT;

/// Entries an allow or deny list may hold.
pub const MAX_CIDRS_PER_LIST: usize = 4096;
/// Concurrent TCP connections per source on a port, by default: a quarter of the hub's default
/// `maxStreamsPerEdge`, room for a carrier-grade NAT or a load test behind one address (a
/// benchmark holds 10,000 idle connections from one), yet no one address takes every stream.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: u32 = 16_384;
/// The prefix that groups IPv6 sources by default (and everywhere else the edge and hub count
/// sources): one host is usually given a whole /64.
pub const DEFAULT_IPV6_PREFIX_LENGTH: u8 = 64;
/// The longest `firstByteTimeoutMs`: an hour.
pub const MAX_FIRST_BYTE_TIMEOUT_MS: u64 = 3_600_000;
/// The largest count or rate a limit may be set to.
pub const MAX_PER_SOURCE_LIMIT: u64 = 1_000_000;

/// A block of addresses: an IPv4 or IPv6 network and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `203.0.113.0/24`, `2001:db8::/32`, or one address (`198.51.100.7`, a /32 or /128). Bits
    /// past the prefix are cleared: `10.1.2.3/8` is `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IPv4 or IPv6 address or CIDR block");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= most)
                    .ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// Whether `address` is in the block; an IPv4 block never holds an IPv6 address, so
    /// IPv4-mapped addresses must be made canonical first.
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

/// `address` with the bits past `prefix` cleared.
pub fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CidrVisitor;

        impl Visitor<'_> for CidrVisitor {
            type Value = Cidr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("must be an IPv4 or IPv6 CIDR block such as \"203.0.113.0/24\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Cidr, E> {
                Cidr::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(CidrVisitor)
    }
}

/// An allow or deny list: at most [`MAX_CIDRS_PER_LIST`] blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }
}

impl<'de> Deserialize<'de> for CidrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = CidrList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "must be an array of at most {MAX_CIDRS_PER_LIST} CIDR blocks"
                )
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<CidrList, A::Error> {
                let mut blocks = Vec::new();
                while let Some(block) = seq.next_element::<Cidr>()? {
                    if blocks.len() == MAX_CIDRS_PER_LIST {
                        return Err(de::Error::invalid_length(blocks.len() + 1, &self));
                    }
                    blocks.push(block);
                }
                Ok(CidrList(blocks))
            }
        }

        deserializer.deserialize_seq(ListVisitor)
    }
}

/// A count or rate per source.
pub type PerSource = Int<u32, 1, MAX_PER_SOURCE_LIMIT>;

/// The client rules of an edge or of one of its ports; a field not given is the edge's (for a
/// port) or the default. JavaScript's `clients` object and the wire's are the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientPolicy {
    /// When given, only sources in these blocks are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<CidrList>,
    /// Sources in these blocks are not served (this wins over `allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<CidrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<PerSource>,
    /// New connections per second (a token bucket's refill); none by default, since a load
    /// balancer or a benchmark behind one address opens thousands a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_per_source: Option<PerSource>,
    /// New connections at once (the bucket's size); the rate (a second's worth) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_burst_per_source: Option<PerSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_udp_sessions_per_source: Option<Int<u32, 1, { MAX_UDP_SESSIONS_LIMIT as u64 }>>,
    /// A TCP client that sends nothing this long after connecting is closed, and no stream is
    /// opened before its first byte; 0 (the default) opens the stream at once and waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<Int<u32, 0, MAX_FIRST_BYTE_TIMEOUT_MS>>,
    /// IPv6 sources count together by this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix_length: Option<Int<u8, 32, 128>>,
}

impl ClientPolicy {
    /// These rules with `port`'s fields where it has them.
    pub fn for_port(&self, port: &ClientPolicy) -> ClientPolicy {
        ClientPolicy {
            allow: port.allow.clone().or_else(|| self.allow.clone()),
            deny: port.deny.clone().or_else(|| self.deny.clone()),
            max_connections_per_source: port
                .max_connections_per_source
                .or(self.max_connections_per_source),
            connection_rate_per_source: port
                .connection_rate_per_source
                .or(self.connection_rate_per_source),
            connection_burst_per_source: port
                .connection_burst_per_source
                .or(self.connection_burst_per_source),
            max_udp_sessions_per_source: port
                .max_udp_sessions_per_source
                .or(self.max_udp_sessions_per_source),
            first_byte_timeout_ms: port.first_byte_timeout_ms.or(self.first_byte_timeout_ms),
            ipv6_prefix_length: port.ipv6_prefix_length.or(self.ipv6_prefix_length),
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == ClientPolicy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_mask_and_match_within_their_family() {
        let block = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(block.to_string(), "10.0.0.0/8");
        assert!(block.contains(ip("10.200.0.1")));
        assert!(!block.contains(ip("11.0.0.1")));
        assert!(
            !block.contains(ip("::ffff:10.0.0.1")),
            "canonical addresses only"
        );
        let one = Cidr::parse("198.51.100.7").unwrap();
        assert_eq!(one.to_string(), "198.51.100.7/32");
        assert!(one.contains(ip("198.51.100.7")) && !one.contains(ip("198.51.100.8")));
        let v6 = Cidr::parse("2001:db8:aa::/48").unwrap();
        assert!(v6.contains(ip("2001:db8:aa:1::9")));
        assert!(!v6.contains(ip("2001:db8:ab::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let everyone = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(everyone.contains(ip("203.0.113.9")) && !everyone.contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn malformed_blocks_are_refused_with_the_text() {
        for text in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "host.example",
            "10.0.0.0/8/8",
        ] {
            let error = Cidr::parse(text).unwrap_err();
            assert!(error.contains(&format!("{text:?}")), "{error}");
        }
    }

    #[test]
    fn lists_are_bounded() {
        let many: Vec<String> = (0..=MAX_CIDRS_PER_LIST)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let error = serde_json::from_value::<CidrList>(serde_json::json!(many)).unwrap_err();
        assert!(error.to_string().contains("at most 4096"), "{error}");
        let fits = &many[..MAX_CIDRS_PER_LIST];
        assert_eq!(
            serde_json::from_value::<CidrList>(serde_json::json!(fits))
                .unwrap()
                .0
                .len(),
            MAX_CIDRS_PER_LIST
        );
    }

    #[test]
    fn a_port_overrides_the_edge_field_by_field() {
        let edge: ClientPolicy = serde_json::from_str(
            r#"{"deny":["192.0.2.0/24"],"maxConnectionsPerSource":100,"firstByteTimeoutMs":5000}"#,
        )
        .unwrap();
        let port: ClientPolicy =
            serde_json::from_str(r#"{"allow":["10.0.0.0/8"],"maxConnectionsPerSource":5}"#)
                .unwrap();
        let rules = edge.for_port(&port);
        assert_eq!(rules.max_connections_per_source, Some(Int(5)));
        assert_eq!(rules.first_byte_timeout_ms, Some(Int(5000)));
        assert_eq!(rules.deny, edge.deny);
        assert_eq!(rules.allow, port.allow);
        assert_eq!(edge.for_port(&ClientPolicy::default()), edge);
    }

    #[test]
    fn the_wire_form_is_fixed_and_reads_back() {
        let policy: ClientPolicy = serde_json::from_str(
            r#"{"allow":["10.9.8.7/16","::1"],"connectionRatePerSource":20,"ipv6PrefixLength":56}"#,
        )
        .unwrap();
        let text = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            text,
            r#"{"allow":["10.9.0.0/16","::1/128"],"connectionRatePerSource":20,"ipv6PrefixLength":56}"#
        );
        assert_eq!(serde_json::from_str::<ClientPolicy>(&text).unwrap(), policy);
        assert!(ClientPolicy::default().is_empty());
        assert_eq!(
            serde_json::to_string(&ClientPolicy::default()).unwrap(),
            "{}"
        );
    }
}
