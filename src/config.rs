//! Reading the JavaScript config objects into typed options. Each config object is a serde
//! struct (`deny_unknown_fields`, camelCase) of the value types below, read once through a
//! small deserializer over the JSON value that knows each value's path. So every error names
//! the field (`limits.maxEdges`, `edges[2].id`), and `start()` can reject with a message a
//! user can act on.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::de::value::{BorrowedStrDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, Expected, IntoDeserializer, Unexpected, Visitor};
use serde_json::Value;
use thiserror::Error;

use crate::protocol::handshake::{validate_edge_id, validate_secret};
use crate::protocol::stun::StunServer;
use crate::transport::tls::server_name;

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

/// Reads `T` from `value`, a config object at `path` ("" for the top level). `null` reads as
/// an empty object, as `undefined` does in JavaScript.
pub(crate) fn from_value<'a, T: Deserialize<'a> + Default>(
    value: &'a Value,
    path: &str,
) -> Result<T, ConfigError> {
    Option::<T>::deserialize(At::new(value, path.to_string()))
        .map(Option::unwrap_or_default)
        .map_err(|e| ConfigError::new(e.field.unwrap_or_else(|| path.to_string()), e.reason))
}

/// The option `field` (a path) must be given.
pub(crate) fn required<T>(value: Option<T>, field: impl Into<String>) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::new(field, "is required"))
}

pub(crate) fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A deserialization error; the path is filled in by the innermost value that has one.
#[derive(Debug)]
pub(crate) struct PathError {
    field: Option<String>,
    reason: String,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<T: fmt::Display>(reason: T) -> Self {
        Self {
            field: None,
            reason: reason.to_string(),
        }
    }

    // A visitor's `expecting` is the whole reason ("must be an integer from 1 to 65535").
    fn invalid_type(_: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::custom(expected)
    }

    fn invalid_value(_: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::custom(expected)
    }

    fn unknown_field(_: &str, known: &'static [&'static str]) -> Self {
        Self::custom(unknown_option(known))
    }

    fn unknown_variant(_: &str, variants: &'static [&'static str]) -> Self {
        let names: Vec<_> = variants.iter().map(|n| format!("'{n}'")).collect();
        Self::custom(format!("must be one of {}", names.join(", ")))
    }
}

fn unknown_option(known: &[&str]) -> String {
    format!("is not a known option (known: {})", known.join(", "))
}

/// A JSON value and its path, deserialized into a config type.
struct At<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> At<'a> {
    fn new(value: &'a Value, path: String) -> Self {
        Self { value, path }
    }

    fn fail<T>(&self, reason: &str) -> Result<T, PathError> {
        Err(PathError {
            field: Some(self.path.clone()),
            reason: reason.to_string(),
        })
    }

    /// Names this value's path in an error that has none yet (its own type's).
    fn locate<T>(path: &str, result: Result<T, PathError>) -> Result<T, PathError> {
        result.map_err(|mut e| {
            e.field.get_or_insert_with(|| path.to_string());
            e
        })
    }
}

impl<'de> IntoDeserializer<'de, PathError> for At<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for At<'de> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let path = self.path.as_str();
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                (None, None) => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| At::new(item, format!("{path}[{i}]"))),
                );
                visitor
                    .visit_seq(&mut seq)
                    .and_then(|v| seq.end().map(|()| v))
            }
            Value::Object(map) => {
                let mut entries = MapDeserializer::new(map.iter().map(|(key, value)| {
                    let at = join_path(path, key);
                    (
                        Key {
                            name: key,
                            path: at.clone(),
                        },
                        At::new(value, at),
                    )
                }));
                visitor
                    .visit_map(&mut entries)
                    .and_then(|v| entries.end().map(|()| v))
            }
        };
        At::locate(path, result)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        // `null` is an option not given, as `undefined` is.
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.value {
            Value::Bool(_) => self.deserialize_any(visitor),
            _ => self.fail("must be true or false"),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.value {
            Value::String(_) => self.deserialize_any(visitor),
            _ => self.fail("must be a string"),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let Value::Object(map) = self.value else {
            return self.fail("must be an object");
        };
        // Unknown keys first, whatever their place: a misspelt option is the likeliest mistake.
        if let Some(unknown) = map.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(PathError {
                field: Some(join_path(&self.path, unknown)),
                reason: unknown_option(fields),
            });
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let Value::String(name) = self.value else {
            return self.fail("must be a string");
        };
        let variant: BorrowedStrDeserializer<'de, PathError> = BorrowedStrDeserializer::new(name);
        At::locate(&self.path, visitor.visit_enum(variant))
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// An object's key, deserialized as a field name; an unknown one is an error at its path.
struct Key<'a> {
    name: &'a str,
    path: String,
}

impl<'de> IntoDeserializer<'de, PathError> for Key<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Key<'de> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        At::locate(&self.path, visitor.visit_borrowed_str(self.name))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// A visitor that reads a string with `parse`; `expecting` is the reason for anything else.
struct StrVisitor<T, F> {
    expecting: &'static str,
    parse: F,
    _value: PhantomData<T>,
}

impl<T, F: FnOnce(&str) -> Result<T, String>> StrVisitor<T, F> {
    fn read<'de, D: Deserializer<'de>>(
        deserializer: D,
        expecting: &'static str,
        parse: F,
    ) -> Result<T, D::Error> {
        deserializer.deserialize_any(Self {
            expecting,
            parse,
            _value: PhantomData,
        })
    }
}

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<T, F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

/// Reads a string that must not be empty, then checks it with `check`.
fn non_empty<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    StrVisitor::read(deserializer, "must be a string", |text| {
        if text.is_empty() {
            Err("must not be empty".to_string())
        } else {
            check(text)
        }
    })
}

/// Any string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StrVisitor::read(deserializer, "must be a string", |text| {
            Ok(Self(text.to_string()))
        })
    }
}

/// A string that is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NonEmpty(pub String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(deserializer, |text| Ok(Self(text.to_string())))
    }
}

/// An address to bind listeners to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BindAddress(pub IpAddr);

impl<'de> Deserialize<'de> for BindAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StrVisitor::read(deserializer, "must be a string", |text| {
            text.parse()
                .map(Self)
                .map_err(|_| format!("{text:?} is not an IP address"))
        })
    }
}

/// A host name or IP address to dial and to check the hub's certificate against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostName {
    pub text: String,
    pub server_name: ServerName<'static>,
}

impl HostName {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        Ok(Self {
            text: text.to_string(),
            server_name: server_name(text)?,
        })
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(deserializer, Self::parse)
    }
}

/// An edge id (also an `updateAllowedEdges` entry's `id`), checked as the login checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeId(pub String);

impl EdgeId {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        validate_edge_id(text).map_err(|e| e.to_string())?;
        Ok(Self(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for EdgeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(deserializer, Self::parse)
    }
}

/// An edge's secret, checked as the login checks it; never in a message or log.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub String);

impl Secret {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        validate_secret(text).map_err(|e| e.to_string())?;
        Ok(Self(text.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(deserializer, Self::parse)
    }
}

/// An integer from `MIN` to `MAX`, as a `T` (which holds `MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int<T, const MIN: u64, const MAX: u64>(pub T);

/// A port from 1 to 65535.
pub(crate) type Port = Int<u16, 1, 65535>;
/// A byte count from 1 MiB to 2 GiB (a tunnel's buffer budget).
pub(crate) type BufferBytes = Int<u32, { 1 << 20 }, { 1 << 31 }>;

impl<T: serde::Serialize, const MIN: u64, const MAX: u64> serde::Serialize for Int<T, MIN, MAX> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: TryFrom<u64>, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<T, MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Range<T, const MIN: u64, const MAX: u64>(PhantomData<T>);

        impl<T: TryFrom<u64>, const MIN: u64, const MAX: u64> Visitor<'_> for Range<T, MIN, MAX> {
            type Value = Int<T, MIN, MAX>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "must be an integer from {MIN} to {MAX}")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                let bad = || E::invalid_value(Unexpected::Unsigned(n), &self);
                if !(MIN..=MAX).contains(&n) {
                    return Err(bad());
                }
                T::try_from(n).map(Int).map_err(|_| bad())
            }
        }

        deserializer.deserialize_u64(Range(PhantomData))
    }
}

/// Milliseconds, from 1 to a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Millis(pub Duration);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Int(ms) = Int::<u64, 1, { 24 * 3600 * 1000 }>::deserialize(deserializer)?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

/// A list of ports 1-65535, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PortList(pub Vec<u16>);

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListPort(u16);

        impl<'de> Deserialize<'de> for ListPort {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct PortVisitor;

                impl Visitor<'_> for PortVisitor {
                    type Value = ListPort;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("must be an integer port from 1 to 65535")
                    }

                    fn visit_u64<E: de::Error>(self, n: u64) -> Result<ListPort, E> {
                        match u16::try_from(n) {
                            Ok(port @ 1..) => Ok(ListPort(port)),
                            _ => Err(E::invalid_value(Unexpected::Unsigned(n), &self)),
                        }
                    }
                }

                deserializer.deserialize_u64(PortVisitor)
            }
        }

        let ports: Vec<ListPort> = list(deserializer, "must be an array of ports")?;
        let sorted: std::collections::BTreeSet<u16> = ports.into_iter().map(|p| p.0).collect();
        Ok(Self(sorted.into_iter().collect()))
    }
}

/// STUN servers, `host:port` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StunServers(pub Vec<StunServer>);

impl<'de> Deserialize<'de> for StunServers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry(StunServer);

        impl<'de> Deserialize<'de> for Entry {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                StrVisitor::read(deserializer, "must be a non-empty string", |text| {
                    if text.is_empty() {
                        return Err("must be a non-empty string".to_string());
                    }
                    StunServer::parse(text)
                        .map(Entry)
                        .map_err(|bad| bad.to_string())
                })
            }
        }

        let entries: Vec<Entry> = list(deserializer, "must be an array of strings")?;
        Ok(Self(entries.into_iter().map(|e| e.0).collect()))
    }
}

/// An array of `T`; `expecting` is the reason when it is not an array.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
    expecting: &'static str,
) -> Result<Vec<T>, D::Error> {
    struct ListVisitor<T>(&'static str, PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(ListVisitor(expecting, PhantomData))
}

/// The struct's or enum's names serde derived (its fields or variants), for comparing with
/// index.d.ts in tests.
#[cfg(test)]
pub fn serde_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);

    impl fmt::Display for Names {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl fmt::Debug for Names {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    impl std::error::Error for Names {}

    impl de::Error for Names {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Names(&[])
        }
    }

    /// Answers the first `deserialize_struct` / `deserialize_enum` with the names it is given.
    struct Introspect;

    impl<'de> Deserializer<'de> for Introspect {
        type Error = Names;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Names> {
            Err(Names(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Names> {
            Err(Names(fields))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Names> {
            Err(Names(variants))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
            ignored_any
        }
    }

    match T::deserialize(Introspect) {
        Err(Names(names)) => names,
        Ok(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "camelCase")]
    struct Sample {
        port: Option<Port>,
        list: Option<PortList>,
        mode: Option<Mode>,
        flag: Option<bool>,
        name: Option<NonEmpty>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "camelCase")]
    struct Inner {
        wait_ms: Option<Millis>,
    }

    #[derive(Debug, Clone, Copy, Deserialize)]
    #[serde(rename_all = "camelCase")]
    enum Mode {
        A,
        B,
    }

    fn error(value: serde_json::Value) -> String {
        from_value::<Sample>(&value, "edges[1]")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_field_path() {
        assert_eq!(
            error(json!({"port": 70000})),
            "edges[1].port: must be an integer from 1 to 65535"
        );
        assert_eq!(
            error(json!({"list": [1, 0]})),
            "edges[1].list[1]: must be an integer port from 1 to 65535"
        );
        assert_eq!(
            error(json!({"mode": "x"})),
            "edges[1].mode: must be one of 'a', 'b'"
        );
        assert_eq!(error(json!({"mode": 1})), "edges[1].mode: must be a string");
        assert_eq!(
            error(json!({"flag": "yes"})),
            "edges[1].flag: must be true or false"
        );
        assert_eq!(
            error(json!({"name": ""})),
            "edges[1].name: must not be empty"
        );
        assert_eq!(
            error(json!({"inner": {"waitMs": -5}})),
            "edges[1].inner.waitMs: must be an integer from 1 to 86400000"
        );
        assert_eq!(
            error(json!({"inner": 3})),
            "edges[1].inner: must be an object"
        );
        assert_eq!(error(json!(7)), "edges[1]: must be an object");
    }

    #[test]
    fn unknown_keys_are_rejected_before_bad_values() {
        // "aaa" sorts before the bad port: the unknown key is still the error reported.
        let err = from_value::<Sample>(&json!({"port": 0, "portt": 1}), "").unwrap_err();
        assert_eq!(err.field, "portt");
        assert_eq!(
            err.reason,
            "is not a known option (known: port, list, mode, flag, name, inner)"
        );
        let err = from_value::<Sample>(&json!({"inner": {"wait": 1}}), "").unwrap_err();
        assert_eq!(err.field, "inner.wait");
    }

    #[test]
    fn null_and_missing_are_not_given() {
        let s = from_value::<Sample>(&Value::Null, "").unwrap();
        assert!(s.port.is_none() && s.inner.is_none());
        let s = from_value::<Sample>(&json!({"port": null, "inner": null}), "").unwrap();
        assert!(s.port.is_none() && s.inner.is_none());
        let s = from_value::<Sample>(&json!({"port": 80, "flag": false}), "").unwrap();
        assert_eq!(s.port, Some(Int(80)));
        assert_eq!(s.flag, Some(false));
    }

    #[test]
    fn integers_are_whole_and_in_range() {
        for bad in [
            json!(1.5),
            json!(-1),
            json!("80"),
            json!(true),
            json!(65536),
        ] {
            assert!(
                from_value::<Sample>(&json!({ "port": bad }), "").is_err(),
                "{bad}"
            );
        }
        let v = json!(2147483648u64);
        assert_eq!(
            BufferBytes::deserialize(At::new(&v, String::new())).unwrap(),
            Int(1 << 31)
        );
    }

    #[test]
    fn port_lists_are_sorted_and_deduplicated() {
        let s = from_value::<Sample>(&json!({"list": [443, 80, 443]}), "").unwrap();
        assert_eq!(s.list, Some(PortList(vec![80, 443])));
        assert_eq!(
            error(json!({"list": 80})),
            "edges[1].list: must be an array of ports"
        );
    }

    #[test]
    fn introspection_gives_the_serde_names() {
        assert_eq!(
            serde_names::<Sample>(),
            ["port", "list", "mode", "flag", "name", "inner"]
        );
        assert_eq!(serde_names::<Mode>(), ["a", "b"]);
    }
}
