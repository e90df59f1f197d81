//! Line-based handshake at the start of a tunnel connection.
//!
//! The edge sends `EDGE <edgeId> <secret>\n`; the hub answers with one JSON
//! line: either the edge's [`EdgeConfig`] or `{"error":"..."}`. The same
//! config JSON (without the newline) is the payload of later CONFIG frames.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::client_policy::ClientPolicy;
use super::frame::MAX_FRAME_PAYLOAD;

/// Longest auth line the hub reads, including the '\n': the auth line is at
/// most 519 bytes, so this only bounds what an unauthenticated peer can make
/// the hub buffer.
pub const MAX_HANDSHAKE_LINE: usize = 1024;
/// Longest hub reply line the edge reads, including the '\n': the reply is
/// the same JSON as a CONFIG frame, so it gets the same bound (a config that
/// lists many ports does not fit in [`MAX_HANDSHAKE_LINE`]).
pub const MAX_REPLY_LINE: usize = MAX_FRAME_PAYLOAD;
/// Longest edge id, in bytes.
pub const MAX_EDGE_ID_LEN: usize = 256;
/// Longest secret, in bytes.
pub const MAX_SECRET_LEN: usize = 256;
/// STUN interval used when the hub does not send one.
pub const DEFAULT_STUN_INTERVAL_SECS: u64 = 300;
/// Smallest STUN interval accepted: zero would make a periodic timer spin
/// (tokio's `interval` even panics on a zero period).
pub const MIN_STUN_INTERVAL_SECS: u64 = 1;
/// Largest STUN interval accepted: one week; huge values overflow
/// `Instant + Duration` arithmetic, which panics.
pub const MAX_STUN_INTERVAL_SECS: u64 = 7 * 24 * 3600;

const AUTH_KEYWORD: &str = "EDGE";

/// "EDGE" + space + id + space + secret + '\n'.
const LONGEST_AUTH_LINE: usize = AUTH_KEYWORD.len() + MAX_EDGE_ID_LEN + MAX_SECRET_LEN + 3;

// The longest valid auth line must fit the hub's line limit, and the error
// strings below spell out these numbers.
const _: () = assert!(LONGEST_AUTH_LINE <= MAX_HANDSHAKE_LINE);
const _: () = assert!(MAX_EDGE_ID_LEN == 256 && MAX_SECRET_LEN == 256);
const _: () = assert!(MIN_STUN_INTERVAL_SECS == 1 && MAX_STUN_INTERVAL_SECS == 604_800);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("handshake line too long (no newline within the size limit)")]
    LineTooLong,
    #[error("handshake line is not valid UTF-8")]
    NotUtf8,
    #[error("malformed handshake line: {0}")]
    Malformed(&'static str),
    #[error("invalid JSON in hub reply or config: {0}")]
    BadJson(String),
    #[error("{0}")]
    InvalidIdentity(&'static str),
    #[error("invalid edge config: {0}")]
    InvalidConfig(&'static str),
}

/// Splits one line (without the '\n', and without a trailing '\r' if present)
/// off the front of `buf`, with the hub-side limit [`MAX_HANDSHAKE_LINE`].
///
/// `Ok(None)` = no newline yet and `buf.len() < MAX_HANDSHAKE_LINE`; error if
/// `MAX_HANDSHAKE_LINE` bytes arrive without a newline. Bytes after the
/// newline stay in `buf` (they may already be frames).
#[cfg(any(test, fuzzing))]
pub fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, HandshakeError> {
    take_line_limited(buf, MAX_HANDSHAKE_LINE)
}

/// [`take_line`] with an explicit limit (including the '\n'); the edge uses
/// [`MAX_REPLY_LINE`] for the hub's reply.
pub fn take_line_limited(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<Bytes>, HandshakeError> {
    let window = &buf[..buf.len().min(max_len)];
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let mut line = buf.split_to(newline + 1);
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(newline - 1);
            }
            Ok(Some(line.freeze()))
        }
        None if buf.len() >= max_len => Err(HandshakeError::LineTooLong),
        None => Ok(None),
    }
}

enum IdentityProblem {
    Empty,
    TooLong,
    BadChar,
}

/// 1..=max bytes of visible ASCII (0x21..=0x7E): the auth line is split on
/// single spaces, so spaces and control characters cannot appear.
fn check_identity(value: &str, max_len: usize) -> Result<(), IdentityProblem> {
    if value.is_empty() {
        Err(IdentityProblem::Empty)
    } else if value.len() > max_len {
        Err(IdentityProblem::TooLong)
    } else if !value.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        Err(IdentityProblem::BadChar)
    } else {
        Ok(())
    }
}

/// Edge ids: 1..=256 bytes of visible ASCII (no spaces, no control chars).
/// Also used to validate configuration.
pub fn validate_edge_id(id: &str) -> Result<(), HandshakeError> {
    check_identity(id, MAX_EDGE_ID_LEN).map_err(|problem| {
        HandshakeError::InvalidIdentity(match problem {
            IdentityProblem::Empty => "edge id is empty",
            IdentityProblem::TooLong => "edge id is longer than 256 bytes",
            IdentityProblem::BadChar => "edge id contains a space, control or non-ASCII character",
        })
    })
}

/// Secrets: same rules as edge ids. Errors never echo the value.
pub fn validate_secret(secret: &str) -> Result<(), HandshakeError> {
    check_identity(secret, MAX_SECRET_LEN).map_err(|problem| {
        HandshakeError::InvalidIdentity(match problem {
            IdentityProblem::Empty => "secret is empty",
            IdentityProblem::TooLong => "secret is longer than 256 bytes",
            IdentityProblem::BadChar => "secret contains a space, control or non-ASCII character",
        })
    })
}

/// `EDGE <edgeId> <secret>\n`, after validating both parts.
pub fn encode_auth_line(edge_id: &str, secret: &str) -> Result<Vec<u8>, HandshakeError> {
    validate_edge_id(edge_id)?;
    validate_secret(secret)?;
    let mut line = Vec::with_capacity(AUTH_KEYWORD.len() + edge_id.len() + secret.len() + 3);
    line.extend_from_slice(AUTH_KEYWORD.as_bytes());
    line.push(b' ');
    line.extend_from_slice(edge_id.as_bytes());
    line.push(b' ');
    line.extend_from_slice(secret.as_bytes());
    line.push(b'\n');
    Ok(line)
}

#[derive(PartialEq, Eq)]
pub struct AuthLine {
    pub edge_id: String,
    pub secret: String,
}

// Hand-written so a stray `{:?}` in a log line never leaks the secret.
impl std::fmt::Debug for AuthLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLine")
            .field("edge_id", &self.edge_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Parses an auth line (without the '\n'): exactly three parts separated by
/// single spaces, the first being `EDGE` (case-sensitive).
pub fn parse_auth_line(line: &[u8]) -> Result<AuthLine, HandshakeError> {
    let text = std::str::from_utf8(line).map_err(|_| HandshakeError::NotUtf8)?;
    let mut parts = text.split(' ');
    let (Some(keyword), Some(edge_id), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::Malformed(
            "expected exactly \"EDGE <edgeId> <secret>\"",
        ));
    };
    if keyword != AUTH_KEYWORD {
        return Err(HandshakeError::Malformed(
            "line does not start with \"EDGE\"",
        ));
    }
    validate_edge_id(edge_id)?;
    validate_secret(secret)?;
    Ok(AuthLine {
        edge_id: edge_id.to_owned(),
        secret: secret.to_owned(),
    })
}

fn default_stun_interval() -> u64 {
    DEFAULT_STUN_INTERVAL_SECS
}

/// UDP sessions an edge may carry at once when the hub does not say otherwise.
pub const DEFAULT_MAX_UDP_SESSIONS: usize = 4096;
/// The most UDP sessions a hub may allow one edge.
pub const MAX_UDP_SESSIONS_LIMIT: usize = 1 << 20;

fn default_max_udp_sessions() -> usize {
    DEFAULT_MAX_UDP_SESSIONS
}

fn is_default_max_udp_sessions(sessions: &usize) -> bool {
    *sessions == DEFAULT_MAX_UDP_SESSIONS
}

/// What the hub tells an edge: handshake answer and CONFIG frame payload
/// (same JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeConfig {
    #[serde(default)]
    pub listen_ports: Vec<u16>,
    #[serde(default)]
    pub listen_ports_udp: Vec<u16>,
    #[serde(default = "default_stun_interval")]
    pub stun_interval_secs: u64,
    /// The hub's limit of UDP sessions for this edge, which the edge applies too. Sent only
    /// when it is not [`DEFAULT_MAX_UDP_SESSIONS`].
    #[serde(
        default = "default_max_udp_sessions",
        skip_serializing_if = "is_default_max_udp_sessions"
    )]
    pub max_udp_sessions: usize,
    /// Which hub process answered (handshake answer only, `remoteingress/1` only): an edge
    /// that keeps several tunnels through one load-balanced address tells replicas apart by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Which clients the edge serves and how many per source, on every port (`remoteingress/1`
    /// only; sent when any rule is set).
    #[serde(default, skip_serializing_if = "ClientPolicy::is_empty")]
    pub clients: ClientPolicy,
    /// Rules of single ports, over `clients` field by field (sent when there are any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_clients: BTreeMap<u16, ClientPolicy>,
}

/// The longest instance id a hub may report.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// An instance id is 1 to [`MAX_INSTANCE_ID_LEN`] characters of visible ASCII.
pub fn validate_instance_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("instanceId must be 1 to 64 characters of visible ASCII");
    }
    Ok(())
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen_ports: Vec::new(),
            listen_ports_udp: Vec::new(),
            stun_interval_secs: DEFAULT_STUN_INTERVAL_SECS,
            max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
            instance_id: None,
            clients: ClientPolicy::default(),
            port_clients: BTreeMap::new(),
        }
    }
}

impl EdgeConfig {
    /// Checks what serde cannot: ports are 1..=65535 and the STUN interval
    /// is within [`MIN_STUN_INTERVAL_SECS`]..=[`MAX_STUN_INTERVAL_SECS`].
    /// The hub calls this on its own config before sending it.
    pub fn validate(&self) -> Result<(), HandshakeError> {
        if self.listen_ports.contains(&0) {
            return Err(HandshakeError::InvalidConfig(
                "listenPorts must be from 1 to 65535",
            ));
        }
        if self.listen_ports_udp.contains(&0) {
            return Err(HandshakeError::InvalidConfig(
                "listenPortsUdp must be from 1 to 65535",
            ));
        }
        if !(MIN_STUN_INTERVAL_SECS..=MAX_STUN_INTERVAL_SECS).contains(&self.stun_interval_secs) {
            return Err(HandshakeError::InvalidConfig(
                "stunIntervalSecs must be from 1 to 604800",
            ));
        }
        if !(1..=MAX_UDP_SESSIONS_LIMIT).contains(&self.max_udp_sessions) {
            return Err(HandshakeError::InvalidConfig(
                "maxUdpSessions must be from 1 to 1048576",
            ));
        }
        if let Some(id) = &self.instance_id {
            validate_instance_id(id).map_err(HandshakeError::InvalidConfig)?;
        }
        if self.port_clients.contains_key(&0) {
            return Err(HandshakeError::InvalidConfig(
                "portClients ports must be from 1 to 65535",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubReply {
    Accepted(EdgeConfig),
    Rejected { error: String },
}

fn push_ports(out: &mut Vec<u8>, ports: &[u16]) {
    out.push(b'[');
    for (i, port) in ports.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(port.to_string().as_bytes());
    }
    out.push(b']');
}

// Written by hand (not serde_json::to_vec) so the byte layout is fixed and
// encoding is infallible.
fn push_config(out: &mut Vec<u8>, config: &EdgeConfig) {
    out.extend_from_slice(b"{\"listenPorts\":");
    push_ports(out, &config.listen_ports);
    out.extend_from_slice(b",\"listenPortsUdp\":");
    push_ports(out, &config.listen_ports_udp);
    out.extend_from_slice(b",\"stunIntervalSecs\":");
    out.extend_from_slice(config.stun_interval_secs.to_string().as_bytes());
    if config.max_udp_sessions != DEFAULT_MAX_UDP_SESSIONS {
        out.extend_from_slice(b",\"maxUdpSessions\":");
        out.extend_from_slice(config.max_udp_sessions.to_string().as_bytes());
    }
    if let Some(id) = &config.instance_id {
        out.extend_from_slice(b",\"instanceId\":");
        out.extend_from_slice(serde_json::Value::String(id.clone()).to_string().as_bytes());
    }
    // Numbers, strings and port-keyed maps only: serde_json cannot fail on them.
    if !config.clients.is_empty() {
        out.extend_from_slice(b",\"clients\":");
        serde_json::to_writer(&mut *out, &config.clients).expect("rules serialize");
    }
    if !config.port_clients.is_empty() {
        out.extend_from_slice(b",\"portClients\":");
        serde_json::to_writer(&mut *out, &config.port_clients).expect("rules serialize");
    }
    out.push(b'}');
}

/// `{"listenPorts":[..],"listenPortsUdp":[..],"stunIntervalSecs":300}\n` or
/// `{"error":"unauthorized"}\n`.
pub fn encode_reply(reply: &HubReply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        HubReply::Accepted(config) => push_config(&mut out, config),
        HubReply::Rejected { error } => {
            // Value's Display escapes the string (including '\n'), so the
            // reply always stays one line.
            let quoted = serde_json::Value::String(error.clone()).to_string();
            out.extend_from_slice(b"{\"error\":");
            out.extend_from_slice(quoted.as_bytes());
            out.push(b'}');
        }
    }
    out.push(b'\n');
    out
}

fn parse_object(json: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, HandshakeError> {
    std::str::from_utf8(json).map_err(|_| HandshakeError::NotUtf8)?;
    match serde_json::from_slice(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(HandshakeError::Malformed("JSON is not an object")),
        Err(e) => Err(HandshakeError::BadJson(e.to_string())),
    }
}

fn config_from_object(
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<EdgeConfig, HandshakeError> {
    let config: EdgeConfig = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| HandshakeError::BadJson(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Parses the hub's reply line (without the '\n'): an object with an
/// `"error"` string is a rejection, any other object an [`EdgeConfig`]
/// (unknown keys ignored, ports 1..=65535).
pub fn parse_reply(line: &[u8]) -> Result<HubReply, HandshakeError> {
    let mut map = parse_object(line)?;
    match map.remove("error") {
        Some(serde_json::Value::String(error)) => Ok(HubReply::Rejected { error }),
        Some(_) => Err(HandshakeError::Malformed("\"error\" is not a string")),
        None => Ok(HubReply::Accepted(config_from_object(map)?)),
    }
}

/// JSON without a newline, for CONFIG frames.
pub fn encode_config(config: &EdgeConfig) -> Vec<u8> {
    let mut out = Vec::new();
    push_config(&mut out, config);
    out
}

/// Parses a CONFIG frame payload (same rules as an accepting reply).
pub fn parse_config(payload: &[u8]) -> Result<EdgeConfig, HandshakeError> {
    config_from_object(parse_object(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tcp: &[u16], udp: &[u16], stun: u64) -> EdgeConfig {
        EdgeConfig {
            listen_ports: tcp.to_vec(),
            listen_ports_udp: udp.to_vec(),
            stun_interval_secs: stun,
            ..EdgeConfig::default()
        }
    }

    #[test]
    fn auth_line_exact_bytes() {
        assert_eq!(
            encode_auth_line("edge-1", "s3cr3t!").unwrap(),
            b"EDGE edge-1 s3cr3t!\n"
        );
        let longest = encode_auth_line(&"i".repeat(256), &"s".repeat(256)).unwrap();
        assert_eq!(longest.len(), LONGEST_AUTH_LINE);
        assert_eq!(longest.len(), 519);
        assert!(longest.len() <= MAX_HANDSHAKE_LINE);
    }

    #[test]
    fn auth_line_round_trip() {
        let wire = encode_auth_line("my.edge_01", "~!@#$%^&*()").unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let line = take_line(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            parse_auth_line(&line),
            Ok(AuthLine {
                edge_id: "my.edge_01".into(),
                secret: "~!@#$%^&*()".into()
            })
        );
    }

    #[test]
    fn malformed_auth_lines() {
        let malformed = |line: &[u8]| match parse_auth_line(line) {
            Err(HandshakeError::Malformed(_)) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        };
        let invalid = |line: &[u8]| match parse_auth_line(line) {
            Err(HandshakeError::InvalidIdentity(_)) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        };
        malformed(b"");
        malformed(b"EDGE");
        malformed(b"EDGE id");
        malformed(b"EDGE id secret extra");
        malformed(b"EDGE id secret ");
        malformed(b"HELLO id secret");
        malformed(b"edge id secret");
        malformed(b"EDGE\tid\tsecret");
        malformed(b" EDGE id secret");
        invalid(b"EDGE  secret"); // empty id
        invalid(b"EDGE id "); // empty secret
        invalid(b"EDGE id\tx secret");
        invalid(b"EDGE id sec\x7fret");
        invalid(b"EDGE id secret\r"); // take_line strips CR; a raw one is invalid
        assert_eq!(
            parse_auth_line(b"EDGE id s\xffcret"),
            Err(HandshakeError::NotUtf8)
        );
        let long = format!("EDGE {} secret", "x".repeat(257));
        invalid(long.as_bytes());
    }

    #[test]
    fn identity_validation() {
        assert_eq!(validate_edge_id("a"), Ok(()));
        assert_eq!(validate_edge_id(&"~".repeat(256)), Ok(()));
        assert_eq!(validate_secret("!"), Ok(()));
        for bad in ["", " ", "a b", "a\tb", "a\nb", "é", "\u{7f}"] {
            assert!(validate_edge_id(bad).is_err(), "{bad:?}");
            assert!(validate_secret(bad).is_err(), "{bad:?}");
        }
        assert!(validate_edge_id(&"x".repeat(257)).is_err());
        assert!(validate_secret(&"x".repeat(257)).is_err());
        assert!(encode_auth_line("", "s").is_err());
        assert!(encode_auth_line("id", "has space").is_err());
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let secret = "hunter2 with space";
        let err = encode_auth_line("edge", secret).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret contains a space, control or non-ASCII character"
        );
        let err = parse_auth_line(b"EDGE edge hunter2\x01").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let parsed = parse_auth_line(b"EDGE edge hunter2").unwrap();
        assert!(!format!("{parsed:?}").contains("hunter2"));
    }

    #[test]
    fn take_line_partial_crlf_and_pipelined() {
        let mut buf = BytesMut::from(&b"EDGE a"[..]);
        assert_eq!(take_line(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"EDGE a");

        buf.extend_from_slice(b" b\r");
        assert_eq!(take_line(&mut buf), Ok(None));
        buf.extend_from_slice(b"\nsecond\nthird");
        assert_eq!(
            take_line(&mut buf),
            Ok(Some(Bytes::from_static(b"EDGE a b")))
        );
        assert_eq!(take_line(&mut buf), Ok(Some(Bytes::from_static(b"second"))));
        assert_eq!(take_line(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"third");

        let mut buf = BytesMut::from(&b"\n\r\n"[..]);
        assert_eq!(take_line(&mut buf), Ok(Some(Bytes::new())));
        assert_eq!(take_line(&mut buf), Ok(Some(Bytes::new())));
        assert!(buf.is_empty());

        // Only a trailing CR is stripped.
        let mut buf = BytesMut::from(&b"a\rb\r\r\n"[..]);
        assert_eq!(take_line(&mut buf), Ok(Some(Bytes::from_static(b"a\rb\r"))));
    }

    #[test]
    fn take_line_length_limit() {
        // 1023 bytes + '\n' = exactly the limit: accepted.
        let mut buf = BytesMut::from(&[b'x'; MAX_HANDSHAKE_LINE - 1][..]);
        assert_eq!(take_line(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            take_line(&mut buf).unwrap().map(|l| l.len()),
            Some(MAX_HANDSHAKE_LINE - 1)
        );

        // 1024 bytes without a newline: rejected even before more arrive.
        let mut buf = BytesMut::from(&[b'x'; MAX_HANDSHAKE_LINE][..]);
        assert_eq!(take_line(&mut buf), Err(HandshakeError::LineTooLong));
        buf.extend_from_slice(b"\n");
        assert_eq!(take_line(&mut buf), Err(HandshakeError::LineTooLong));

        // Over the limit with pipelined data behind a short first line is fine.
        let mut buf = BytesMut::from(&b"ok\n"[..]);
        buf.extend_from_slice(&[b'y'; 4096]);
        assert_eq!(take_line(&mut buf), Ok(Some(Bytes::from_static(b"ok"))));

        let mut buf = BytesMut::from(&[b'x'; 2000][..]);
        assert_eq!(take_line_limited(&mut buf, 4096), Ok(None));
        assert_eq!(
            take_line_limited(&mut buf, 2000),
            Err(HandshakeError::LineTooLong)
        );
    }

    #[test]
    fn reply_exact_bytes() {
        assert_eq!(
            encode_reply(&HubReply::Accepted(config(&[80, 443], &[53], 300))),
            b"{\"listenPorts\":[80,443],\"listenPortsUdp\":[53],\"stunIntervalSecs\":300}\n"
        );
        assert_eq!(
            encode_reply(&HubReply::Accepted(EdgeConfig::default())),
            b"{\"listenPorts\":[],\"listenPortsUdp\":[],\"stunIntervalSecs\":300}\n"
        );
        // A limit other than the default follows the documented keys; the default is implied.
        let limited = EdgeConfig {
            max_udp_sessions: 256,
            ..config(&[80], &[], 300)
        };
        let line = encode_reply(&HubReply::Accepted(limited.clone()));
        assert_eq!(
            line,
            b"{\"listenPorts\":[80],\"listenPortsUdp\":[],\"stunIntervalSecs\":300,\"maxUdpSessions\":256}\n"
        );
        assert_eq!(
            parse_reply(&line[..line.len() - 1]),
            Ok(HubReply::Accepted(limited))
        );
        assert_eq!(
            parse_config(br#"{"maxUdpSessions":0}"#),
            Err(HandshakeError::InvalidConfig(
                "maxUdpSessions must be from 1 to 1048576"
            ))
        );
        assert_eq!(
            encode_reply(&HubReply::Rejected {
                error: "unauthorized".into()
            }),
            b"{\"error\":\"unauthorized\"}\n"
        );
        assert_eq!(
            encode_reply(&HubReply::Rejected {
                error: "a\"b\nc".into()
            }),
            b"{\"error\":\"a\\\"b\\nc\"}\n"
        );
        assert_eq!(
            encode_config(&config(&[1, 65535], &[], 60)),
            b"{\"listenPorts\":[1,65535],\"listenPortsUdp\":[],\"stunIntervalSecs\":60}"
        );
    }

    #[test]
    fn hand_written_json_matches_serde() {
        let c = config(&[22, 80, 443, 65535], &[53, 3478], 120);
        assert_eq!(encode_config(&c), serde_json::to_vec(&c).unwrap());
        let limited = EdgeConfig {
            max_udp_sessions: 9,
            ..c
        };
        assert_eq!(
            encode_config(&limited),
            serde_json::to_vec(&limited).unwrap()
        );
        let named = EdgeConfig {
            instance_id: Some("hub-\"7\\".into()),
            ..limited
        };
        assert_eq!(encode_config(&named), serde_json::to_vec(&named).unwrap());
        assert_eq!(parse_config(&encode_config(&named)), Ok(named));
    }

    #[test]
    fn reply_round_trips() {
        for reply in [
            HubReply::Accepted(config(&[80, 443], &[53], 300)),
            HubReply::Accepted(EdgeConfig::default()),
            HubReply::Rejected {
                error: "unauthorized".into(),
            },
            HubReply::Rejected {
                error: "line\nbreak \u{1} ünïcode".into(),
            },
        ] {
            let wire = encode_reply(&reply);
            let mut buf = BytesMut::from(&wire[..]);
            let line = take_line_limited(&mut buf, MAX_REPLY_LINE)
                .unwrap()
                .unwrap();
            assert!(buf.is_empty());
            assert_eq!(parse_reply(&line), Ok(reply));
        }
    }

    #[test]
    fn config_listing_every_port_fits_reply_and_frame_limits() {
        let all: Vec<u16> = (1..=u16::MAX).collect();
        let c = config(&all, &all, MAX_STUN_INTERVAL_SECS);
        let wire = encode_reply(&HubReply::Accepted(c.clone()));
        assert!(wire.len() <= MAX_REPLY_LINE);
        let mut buf = BytesMut::from(&wire[..]);
        // The hub-side auth-line limit is far too small for such a reply.
        assert_eq!(take_line(&mut buf), Err(HandshakeError::LineTooLong));
        let line = take_line_limited(&mut buf, MAX_REPLY_LINE)
            .unwrap()
            .unwrap();
        assert_eq!(parse_reply(&line), Ok(HubReply::Accepted(c.clone())));
        assert!(encode_config(&c).len() <= MAX_FRAME_PAYLOAD);
    }

    #[test]
    fn reply_defaults_and_unknown_keys() {
        assert_eq!(
            parse_reply(b"{}"),
            Ok(HubReply::Accepted(EdgeConfig::default()))
        );
        assert_eq!(
            parse_reply(br#"{"listenPorts":[8080],"future":{"x":[1,2]},"v":2}"#),
            Ok(HubReply::Accepted(config(&[8080], &[], 300)))
        );
        assert_eq!(
            parse_reply(br#"{"error":"nope","listenPorts":[1]}"#),
            Ok(HubReply::Rejected {
                error: "nope".into()
            })
        );
        assert_eq!(
            parse_config(br#" {"stunIntervalSecs":30,"listenPortsUdp":[5000]} "#),
            Ok(config(&[], &[5000], 30))
        );
    }

    #[test]
    fn bad_replies_rejected() {
        for bad in [
            &br#"{"listenPorts":[0]}"#[..],
            br#"{"listenPortsUdp":[443,0]}"#,
            br#"{"listenPorts":[65536]}"#,
            br#"{"listenPorts":[-1]}"#,
            br#"{"listenPorts":[80.5]}"#,
            br#"{"listenPorts":["80"]}"#,
            br#"{"listenPorts":null}"#,
            br#"{"listenPorts":80}"#,
            br#"{"stunIntervalSecs":0}"#,
            br#"{"stunIntervalSecs":604801}"#,
            br#"{"stunIntervalSecs":-5}"#,
            br#"{"error":42}"#,
            b"[]",
            b"\"error\"",
            b"null",
            b"",
            b"{",
            b"{} {}",
            b"{}x",
            b"{\"error\":\"\xff\"}",
        ] {
            assert!(
                parse_reply(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_reply(br#"{"listenPorts":[0]}"#),
            Err(HandshakeError::InvalidConfig(
                "listenPorts must be from 1 to 65535"
            ))
        );
        assert_eq!(
            parse_reply(b"[1]"),
            Err(HandshakeError::Malformed("JSON is not an object"))
        );
        assert_eq!(parse_reply(b"\xff"), Err(HandshakeError::NotUtf8));
        assert!(matches!(
            parse_reply(br#"{"listenPorts":[65536]}"#),
            Err(HandshakeError::BadJson(_))
        ));
        assert!(parse_config(br#"{"error":"x"}"#).is_ok()); // CONFIG has no error form
        assert!(parse_config(b"[]").is_err());
        assert!(parse_config(br#"{"listenPortsUdp":[0]}"#).is_err());
    }

    #[test]
    fn validate_bounds() {
        assert_eq!(config(&[1, 65535], &[1], 1).validate(), Ok(()));
        assert_eq!(config(&[], &[], MAX_STUN_INTERVAL_SECS).validate(), Ok(()));
        assert!(config(&[], &[], 0).validate().is_err());
        assert!(config(&[0], &[], 300).validate().is_err());
        let named = |id: &str| EdgeConfig {
            instance_id: Some(id.into()),
            ..config(&[], &[], 300)
        };
        assert_eq!(named(&"i".repeat(MAX_INSTANCE_ID_LEN)).validate(), Ok(()));
        for bad in ["", "has space", &"i".repeat(MAX_INSTANCE_ID_LEN + 1)] {
            assert!(named(bad).validate().is_err(), "{bad:?}");
        }
    }
}
