//! Connection tokens: one copy-pasteable string that tells an edge where its
//! hub is and how to authenticate.
//!
//! Format: base64url without padding of the JSON object
//! `{"h":hubHost,"p":hubPort,"e":edgeId,"s":secret[,"f":hubFingerprint][,"m":[[host,port],..]]}`:
//! `m` lists the hubs after the first, so an edge that knows only `h` and `p` still reads it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::handshake::{validate_edge_id, validate_secret};

/// Longest token accepted (after trimming whitespace): real tokens are a few
/// hundred characters; this bounds decoding work on pasted garbage.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The most hubs one edge (and so one token) names.
pub const MAX_HUBS: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionToken {
    pub hub_host: String,
    pub hub_port: u16,
    pub edge_id: String,
    pub secret: String,
    pub hub_fingerprint: Option<String>,
    /// The hubs after the first (`hub_host`, `hub_port`), in order.
    pub more_hubs: Vec<(String, u16)>,
}

// Hand-written so a stray `{:?}` in a log line never leaks the secret.
impl std::fmt::Debug for ConnectionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionToken")
            .field("hub_host", &self.hub_host)
            .field("hub_port", &self.hub_port)
            .field("edge_id", &self.edge_id)
            .field("secret", &"<redacted>")
            .field("hub_fingerprint", &self.hub_fingerprint)
            .field("more_hubs", &self.more_hubs)
            .finish()
    }
}

/// A token field, displayed as its key and its long name, e.g. `"p" (hubPort)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenField {
    HubHost,
    HubPort,
    EdgeId,
    Secret,
    HubFingerprint,
}

impl TokenField {
    /// The JSON key inside the token.
    pub fn key(self) -> &'static str {
        match self {
            TokenField::HubHost => "h",
            TokenField::HubPort => "p",
            TokenField::EdgeId => "e",
            TokenField::Secret => "s",
            TokenField::HubFingerprint => "f",
        }
    }

    /// The name users know from configuration.
    pub fn name(self) -> &'static str {
        match self {
            TokenField::HubHost => "hubHost",
            TokenField::HubPort => "hubPort",
            TokenField::EdgeId => "edgeId",
            TokenField::Secret => "secret",
            TokenField::HubFingerprint => "hubFingerprint",
        }
    }
}

impl std::fmt::Display for TokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\" ({})", self.key(), self.name())
    }
}

/// Messages are meant for users and never contain field values (the secret
/// in particular).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("token uses the standard base64 alphabet ('+' or '/'); connection tokens are base64url ('-' and '_')")]
    StandardAlphabet,
    #[error("token is not valid base64url")]
    NotBase64Url,
    #[error("token does not contain JSON")]
    NotJson,
    #[error("token JSON is not an object")]
    NotObject,
    #[error("token field {0} is missing")]
    MissingField(TokenField),
    #[error("token field {0} must be a string")]
    NotString(TokenField),
    #[error("token field {0} must not be empty")]
    EmptyField(TokenField),
    #[error("token field \"p\" (hubPort) must be an integer from 1 to 65535")]
    BadPort,
    #[error("token field {0} must be at most 256 characters of visible ASCII, without spaces")]
    BadIdentity(TokenField),
    #[error("token field \"m\" (hubs) must be a list of at most {} [host, port] pairs", MAX_HUBS - 1)]
    BadHubs,
}

/// Base64url (no padding) of `{"h":..,"p":..,"e":..,"s":..[,"f":..]}`, keys
/// in exactly that order; `f` omitted when `None`.
pub fn encode_token(token: &ConnectionToken) -> String {
    // Built by hand for a fixed key order; Value's Display does the string
    // escaping and cannot fail.
    let quote = |s: &str| Value::String(s.to_owned()).to_string();
    let mut json = format!(
        "{{\"h\":{},\"p\":{},\"e\":{},\"s\":{}",
        quote(&token.hub_host),
        token.hub_port,
        quote(&token.edge_id),
        quote(&token.secret),
    );
    if let Some(fingerprint) = &token.hub_fingerprint {
        json.push_str(",\"f\":");
        json.push_str(&quote(fingerprint));
    }
    if !token.more_hubs.is_empty() {
        let pairs: Vec<String> = token
            .more_hubs
            .iter()
            .map(|(host, port)| format!("[{},{port}]", quote(host)))
            .collect();
        json.push_str(",\"m\":[");
        json.push_str(&pairs.join(","));
        json.push(']');
    }
    json.push('}');
    URL_SAFE_NO_PAD.encode(json)
}

fn required_string(map: &mut Map<String, Value>, field: TokenField) -> Result<String, TokenError> {
    match map.remove(field.key()) {
        None => Err(TokenError::MissingField(field)),
        Some(Value::String(s)) if s.is_empty() => Err(TokenError::EmptyField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::NotString(field)),
    }
}

/// Parses a token: trims surrounding whitespace, tolerates trailing '='
/// padding, rejects the standard alphabet, ignores unknown keys.
pub fn decode_token(text: &str) -> Result<ConnectionToken, TokenError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenError::Empty);
    }
    if text.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    // Padding is optional; the decoder below rejects any left in the middle.
    let unpadded = text.trim_end_matches('=');
    if unpadded.contains(['+', '/']) {
        return Err(TokenError::StandardAlphabet);
    }
    let json = URL_SAFE_NO_PAD
        .decode(unpadded)
        .map_err(|_| TokenError::NotBase64Url)?;
    let mut map = match serde_json::from_slice(&json) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(TokenError::NotObject),
        Err(_) => return Err(TokenError::NotJson),
    };

    let hub_host = required_string(&mut map, TokenField::HubHost)?;
    let hub_port = match map.remove(TokenField::HubPort.key()) {
        None => return Err(TokenError::MissingField(TokenField::HubPort)),
        Some(value) => value
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .ok_or(TokenError::BadPort)?,
    };
    let edge_id = required_string(&mut map, TokenField::EdgeId)?;
    validate_edge_id(&edge_id).map_err(|_| TokenError::BadIdentity(TokenField::EdgeId))?;
    let secret = required_string(&mut map, TokenField::Secret)?;
    validate_secret(&secret).map_err(|_| TokenError::BadIdentity(TokenField::Secret))?;
    // null is treated as absent: some encoders write optional fields that way.
    let hub_fingerprint = match map.remove(TokenField::HubFingerprint.key()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(TokenError::EmptyField(TokenField::HubFingerprint))
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(TokenError::NotString(TokenField::HubFingerprint)),
    };

    let more_hubs = match map.remove("m") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(pairs)) if pairs.len() < MAX_HUBS => pairs
            .iter()
            .map(hub_pair)
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::BadHubs)?,
        Some(_) => return Err(TokenError::BadHubs),
    };

    Ok(ConnectionToken {
        hub_host,
        hub_port,
        edge_id,
        secret,
        hub_fingerprint,
        more_hubs,
    })
}

/// `[host, port]`: a non-empty host and a port from 1 to 65535.
fn hub_pair(pair: &Value) -> Option<(String, u16)> {
    match pair.as_array()?.as_slice() {
        [Value::String(host), port] if !host.is_empty() => {
            let port = u16::try_from(port.as_u64()?).ok().filter(|&p| p != 0)?;
            Some((host.clone(), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fingerprint: Option<&str>) -> ConnectionToken {
        ConnectionToken {
            hub_host: "hub.example.com".into(),
            hub_port: 8443,
            edge_id: "edge-1".into(),
            secret: "s3cret".into(),
            hub_fingerprint: fingerprint.map(str::to_owned),
            more_hubs: Vec::new(),
        }
    }

    /// Encodes arbitrary JSON text the way a token would be.
    fn tok(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    // Expected strings computed independently with:
    // printf '%s' '<json>' | base64 -w0 | tr '+/' '-_' | tr -d =
    const SAMPLE: &str =
        "eyJoIjoiaHViLmV4YW1wbGUuY29tIiwicCI6ODQ0MywiZSI6ImVkZ2UtMSIsInMiOiJzM2NyZXQifQ";
    const SAMPLE_WITH_F: &str = "eyJoIjoiaHViLmV4YW1wbGUuY29tIiwicCI6ODQ0MywiZSI6ImVkZ2UtMSIsInMiOiJzM2NyZXQiLCJmIjoiQUI6Q0Q6RUYifQ";

    #[test]
    fn exact_encoding() {
        assert_eq!(encode_token(&sample(None)), SAMPLE);
        assert_eq!(encode_token(&sample(Some("AB:CD:EF"))), SAMPLE_WITH_F);
    }

    #[test]
    fn round_trips() {
        for token in [
            sample(None),
            sample(Some("AB:CD:EF")),
            ConnectionToken {
                hub_host: "2001:db8::1".into(),
                hub_port: 1,
                edge_id: "~".repeat(256),
                secret: "!\"#$%&'()*+,-./\\".into(),
                hub_fingerprint: Some("h\u{e9}llo \"quoted\"".into()),
                more_hubs: vec![("2001:db8::2".into(), 2), ("hub-\"c\"".into(), 65535)],
            },
            ConnectionToken {
                hub_host: "x".into(),
                hub_port: 65535,
                edge_id: "e".into(),
                secret: "s".into(),
                hub_fingerprint: None,
                more_hubs: Vec::new(),
            },
        ] {
            let text = encode_token(&token);
            assert!(!text.contains(['+', '/', '=']));
            assert_eq!(decode_token(&text), Ok(token));
        }
    }

    #[test]
    fn lenient_input() {
        let expected = Ok(sample(None));
        assert_eq!(decode_token(&format!("  \n{SAMPLE}\r\n\t ")), expected);
        // Standard base64 of this JSON has '+' and "==" padding; base64url
        // with the padding left on is accepted.
        let json = r#"{"h":"h?","p":1,"e":"e>>","s":"s~~~"}"#;
        let padded = format!("{SAMPLE}==");
        assert_eq!(padded.len() % 4, 0);
        assert_eq!(decode_token(&padded), expected);
        let url_padded = "eyJoIjoiaD8iLCJwIjoxLCJlIjoiZT4-IiwicyI6InN-fn4ifQ==";
        let token = decode_token(url_padded).unwrap();
        assert_eq!(token.edge_id, "e>>");
        assert_eq!(token.secret, "s~~~");
        assert_eq!(tok(json), url_padded.trim_end_matches('='));
        // Unknown keys ignored, null fingerprint = absent.
        let extra = tok(r#"{"v":2,"h":"a","p":2,"e":"b","s":"c","f":null,"x":{"y":[]}}"#);
        assert_eq!(
            decode_token(&extra),
            Ok(ConnectionToken {
                hub_host: "a".into(),
                hub_port: 2,
                edge_id: "b".into(),
                secret: "c".into(),
                hub_fingerprint: None,
                more_hubs: Vec::new(),
            })
        );
    }

    /// Several hubs: the first in `h`/`p`, where an edge that knows no `m` finds it, the rest
    /// in `m`.
    #[test]
    fn several_hubs() {
        let token = ConnectionToken {
            more_hubs: vec![("hub-b".into(), 443), ("10.0.0.3".into(), 8443)],
            ..sample(None)
        };
        let json = r#"{"h":"hub.example.com","p":8443,"e":"edge-1","s":"s3cret","m":[["hub-b",443],["10.0.0.3",8443]]}"#;
        assert_eq!(encode_token(&token), tok(json));
        assert_eq!(decode_token(&tok(json)), Ok(token));
        let null = r#"{"h":"h","p":1,"e":"e","s":"s","m":null}"#;
        assert_eq!(decode_token(&tok(null)).unwrap().more_hubs, []);
        let most = format!(
            r#"{{"h":"h","p":1,"e":"e","s":"s","m":[{}]}}"#,
            vec![r#"["h",2]"#; MAX_HUBS - 1].join(",")
        );
        assert_eq!(
            decode_token(&tok(&most)).unwrap().more_hubs.len(),
            MAX_HUBS - 1
        );
        let too_many = most.replace("[[", r#"[["h",3],["#);
        for bad in [
            too_many.as_str(),
            r#"{"h":"h","p":1,"e":"e","s":"s","m":"hub-b:443"}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[["hub-b"]]}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[["",443]]}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[["hub-b",0]]}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[["hub-b",65536]]}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[["hub-b",443,1]]}"#,
            r#"{"h":"h","p":1,"e":"e","s":"s","m":[{"host":"hub-b","port":443}]}"#,
        ] {
            assert_eq!(decode_token(&tok(bad)), Err(TokenError::BadHubs), "{bad}");
        }
    }

    #[test]
    fn encoding_errors() {
        assert_eq!(decode_token(""), Err(TokenError::Empty));
        assert_eq!(decode_token(" \t\n"), Err(TokenError::Empty));
        assert_eq!(
            decode_token(&"A".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
        assert_eq!(
            decode_token("eyJoIjoiaD8iLCJwIjoxLCJlIjoiZT4+IiwicyI6InN+fn4ifQ=="),
            Err(TokenError::StandardAlphabet)
        );
        assert_eq!(decode_token("ab/c"), Err(TokenError::StandardAlphabet));
        for bad in ["not a token", "abc$", "a", "ab=c", "eyJ.eyJ", "abcde"] {
            assert_eq!(decode_token(bad), Err(TokenError::NotBase64Url), "{bad}");
        }
        // Valid base64url, but the payload is not JSON / not an object.
        assert_eq!(decode_token(&tok("hello")), Err(TokenError::NotJson));
        assert_eq!(decode_token(&tok("{\"h\":")), Err(TokenError::NotJson));
        assert_eq!(decode_token(&tok("{} x")), Err(TokenError::NotJson));
        assert_eq!(
            decode_token(&URL_SAFE_NO_PAD.encode(b"{\"h\":\"\xff\"}")),
            Err(TokenError::NotJson)
        );
        assert_eq!(decode_token(&tok("[1,2]")), Err(TokenError::NotObject));
        assert_eq!(decode_token(&tok("\"str\"")), Err(TokenError::NotObject));
    }

    #[test]
    fn field_errors() {
        use TokenError::*;
        use TokenField::*;
        let cases: &[(&str, TokenError)] = &[
            (r#"{"p":1,"e":"e","s":"s"}"#, MissingField(HubHost)),
            (r#"{"h":5,"p":1,"e":"e","s":"s"}"#, NotString(HubHost)),
            (r#"{"h":"","p":1,"e":"e","s":"s"}"#, EmptyField(HubHost)),
            (r#"{"h":"h","e":"e","s":"s"}"#, MissingField(HubPort)),
            (r#"{"h":"h","p":0,"e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":65536,"e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":-1,"e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":443.0,"e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":"443","e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":null,"e":"e","s":"s"}"#, BadPort),
            (r#"{"h":"h","p":1,"s":"s"}"#, MissingField(EdgeId)),
            (r#"{"h":"h","p":1,"e":7,"s":"s"}"#, NotString(EdgeId)),
            (r#"{"h":"h","p":1,"e":"","s":"s"}"#, EmptyField(EdgeId)),
            (r#"{"h":"h","p":1,"e":"a b","s":"s"}"#, BadIdentity(EdgeId)),
            (r#"{"h":"h","p":1,"e":"e"}"#, MissingField(Secret)),
            (r#"{"h":"h","p":1,"e":"e","s":null}"#, NotString(Secret)),
            (r#"{"h":"h","p":1,"e":"e","s":""}"#, EmptyField(Secret)),
            (
                r#"{"h":"h","p":1,"e":"e","s":"tab\tsecret"}"#,
                BadIdentity(Secret),
            ),
            (
                r#"{"h":"h","p":1,"e":"e","s":"s","f":1}"#,
                NotString(HubFingerprint),
            ),
            (
                r#"{"h":"h","p":1,"e":"e","s":"s","f":""}"#,
                EmptyField(HubFingerprint),
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(decode_token(&tok(json)).as_ref(), Err(expected), "{json}");
        }
        let long_id = format!(r#"{{"h":"h","p":1,"e":"{}","s":"s"}}"#, "x".repeat(257));
        assert_eq!(decode_token(&tok(&long_id)), Err(BadIdentity(EdgeId)));
    }

    #[test]
    fn messages_are_clear_and_never_contain_the_secret() {
        assert_eq!(
            TokenError::NotBase64Url.to_string(),
            "token is not valid base64url"
        );
        assert_eq!(
            TokenError::NotJson.to_string(),
            "token does not contain JSON"
        );
        assert_eq!(
            TokenError::MissingField(TokenField::HubPort).to_string(),
            "token field \"p\" (hubPort) is missing"
        );
        assert_eq!(
            TokenError::BadPort.to_string(),
            "token field \"p\" (hubPort) must be an integer from 1 to 65535"
        );
        assert_eq!(
            TokenError::NotString(TokenField::EdgeId).to_string(),
            "token field \"e\" (edgeId) must be a string"
        );
        assert_eq!(
            TokenError::EmptyField(TokenField::Secret).to_string(),
            "token field \"s\" (secret) must not be empty"
        );
        let secret = "topsecret\u{1}value";
        let json = format!(
            r#"{{"h":"h","p":1,"e":"e","s":"{}"}}"#,
            "topsecret\\u0001value"
        );
        let err = decode_token(&tok(&json)).unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!(!format!("{err:?}").contains("topsecret"));
        let token = ConnectionToken {
            secret: secret.into(),
            ..sample(None)
        };
        assert!(!format!("{token:?}").contains("topsecret"));
    }
}
