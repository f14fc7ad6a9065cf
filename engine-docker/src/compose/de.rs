//! How the model reads YAML values: leniently where Compose is ([`Text`], [`Flag`], [`Num`]); keeping what the
//! checks refuse by name rather than failing on it ([`Shaped`], the keys of a struct that are not strings, via
//! [`open`]); in file order ([`Entries`]).

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, Error as _, MapAccess, Visitor},
};
use serde_norway::{Mapping, Value};

/// A string where Compose takes one; numbers and booleans are read as YAML writes them (`user: 1000`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match scalar_text(&v) {
            Some(s) => Ok(Text(s)),
            None => String::deserialize(v).map(Text).map_err(D::Error::custom),
        }
    }
}

/// A boolean; `"true"` / `"false"` (from interpolation) count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                _ => Value::String(s),
            },
            v => v,
        };
        bool::deserialize(v).map(Flag).map_err(D::Error::custom)
    }
}

/// A number; digits in a string (from interpolation) count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Num<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Num<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = match Value::deserialize(d)? {
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(n) => Value::Number(n.into()),
                Err(_) => Value::String(s),
            },
            v => v,
        };
        T::deserialize(v).map(Num).map_err(D::Error::custom)
    }
}

/// A mapping where one is expected, or what was written instead (refused by the checks, naming the key).
#[derive(Debug)]
pub(crate) enum Shaped<T> {
    Ok(T),
    Bad,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Shaped<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            v @ Value::Mapping(_) => T::deserialize(v).map(Shaped::Ok).map_err(D::Error::custom),
            _ => Ok(Shaped::Bad),
        }
    }
}

/// A mapping's entries in file order (services start in it; the first is the default main service).
#[derive(Debug)]
pub(crate) struct Entries<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<K, V> {
            type Value = Entries<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// A struct of the file, which keeps the keys it does not know.
pub(crate) trait Open: DeserializeOwned {
    fn unknown(&mut self) -> &mut Mapping;
}

/// Deserialises a struct of the file, keeping the keys that are not strings (`1: x`) among its unknown keys: serde's
/// derive reads only string keys from a YAML value, and the checks refuse the others by name.
pub(crate) fn open<T: Open>(v: Value) -> Result<T, serde_norway::Error> {
    let Value::Mapping(m) = v else { return T::deserialize(v) };
    let (keys, others): (Mapping, Mapping) = m.into_iter().partition(|(k, _)| k.is_string());
    let mut t = T::deserialize(Value::Mapping(keys))?;
    t.unknown().extend(others);
    Ok(t)
}

/// [`open`] for an optional struct (`healthcheck: null` is no healthcheck).
pub(crate) fn open_option<'de, D: Deserializer<'de>, T: Open>(d: D) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => open(v).map(Some).map_err(D::Error::custom),
    }
}

/// For keys whose null is refused rather than read as absent: `Some` whenever the key is written.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A scalar as text (numbers and booleans as YAML writes them); `None` for null, lists and maps.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
