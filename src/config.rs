//! Reading the JavaScript config objects into typed options. Every error names the field, so
//! `start()` can reject with a message a user can act on.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The fields of one config object, with the path used in error messages
/// (`config`, `edges[2]`, `tls`).
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `undefined`/`null` read as an empty object when `optional`.
    pub fn of(value: &'a Value, path: &str, known: &[&str]) -> Result<Self, ConfigError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => EMPTY.get_or_init(Map::new),
            _ => return Err(ConfigError::new(path, "must be an object")),
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::new(
                join_path(path, unknown),
                format!("is not a known option (known: {})", known.join(", ")),
            ));
        }
        Ok(Self {
            path: path.to_string(),
            map,
        })
    }

    pub fn name(&self, key: &str) -> String {
        join_path(&self.path, key)
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ConfigError::new(self.name(key), "must be a string")),
        }
    }

    pub fn required_string(&self, key: &str) -> Result<String, ConfigError> {
        match self.string(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(ConfigError::new(self.name(key), "must not be empty")),
            None => Err(ConfigError::new(self.name(key), "is required")),
        }
    }

    pub fn integer(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::new(
                self.name(key),
                format!("must be an integer from {min} to {max}"),
            )),
        }
    }

    /// A byte count from 1 MiB to 2 GiB (a tunnel's buffer budget).
    pub fn buffer_bytes(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        // The range check keeps the value within u32.
        Ok(self
            .integer(key, 1 << 20, 1 << 31)?
            .map(|n| n.min(u64::from(u32::MAX)) as u32))
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ConfigError::new(self.name(key), "must be true or false")),
        }
    }

    pub fn port(&self, key: &str, min: u16) -> Result<Option<u16>, ConfigError> {
        // The range check keeps the value within u16.
        Ok(self.integer(key, u64::from(min), 65535)?.map(|n| n as u16))
    }

    pub fn millis(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self
            .integer(key, 1, 24 * 3600 * 1000)?
            .map(Duration::from_millis))
    }

    /// One of a fixed set of strings.
    pub fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| Some(*value))
            .ok_or_else(|| {
                let names: Vec<_> = choices.iter().map(|(n, _)| format!("'{n}'")).collect();
                ConfigError::new(
                    self.name(key),
                    format!("must be one of {}", names.join(", ")),
                )
            })
    }

    /// A list of ports 1-65535, sorted and without duplicates.
    pub fn port_list(&self, key: &str) -> Result<Vec<u16>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(ConfigError::new(
                self.name(key),
                "must be an array of ports",
            ));
        };
        let mut ports = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_u64() {
                // The range check keeps the value within u16.
                Some(n @ 1..=65535) => ports.insert(n as u16),
                _ => {
                    return Err(ConfigError::new(
                        format!("{}[{i}]", self.name(key)),
                        "must be an integer port from 1 to 65535",
                    ))
                }
            };
        }
        Ok(ports.into_iter().collect())
    }

    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(ConfigError::new(
                self.name(key),
                "must be an array of strings",
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ConfigError::new(
                    format!("{}[{i}]", self.name(key)),
                    "must be a non-empty string",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses an address to bind listeners to.
pub fn bind_address(
    fields: &Fields<'_>,
    key: &str,
    default: &str,
) -> Result<std::net::IpAddr, ConfigError> {
    let text = fields.string(key)?.unwrap_or_else(|| default.to_string());
    text.parse()
        .map_err(|_| ConfigError::new(fields.name(key), format!("{text:?} is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field_path() {
        let v = json!({"port": 70000, "list": [1, 0], "mode": "x"});
        let f = Fields::of(&v, "edges[1]", &["port", "list", "mode"]).unwrap();
        assert_eq!(
            f.port("port", 1).unwrap_err().to_string(),
            "edges[1].port: must be an integer from 1 to 65535"
        );
        assert_eq!(f.port_list("list").unwrap_err().field, "edges[1].list[1]");
        assert_eq!(
            f.choice("mode", &[("a", 1), ("b", 2)])
                .unwrap_err()
                .to_string(),
            "edges[1].mode: must be one of 'a', 'b'"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_are_rejected() {
        let err = Fields::of(&json!({"tunelPort": 1}), "", &["tunnelPort"])
            .err()
            .unwrap();
        assert_eq!(err.field, "tunelPort");
        assert!(Fields::of(&json!([1]), "config", &[]).is_err());
        assert!(Fields::of(&Value::Null, "config", &[]).is_ok());
    }

    #[test]
    fn port_lists_are_sorted_and_deduplicated() {
        let v = json!({"p": [443, 80, 443]});
        let f = Fields::of(&v, "", &["p"]).unwrap();
        assert_eq!(f.port_list("p").unwrap(), vec![80, 443]);
        assert_eq!(f.port_list("missing").unwrap(), Vec::<u16>::new());
    }
}
