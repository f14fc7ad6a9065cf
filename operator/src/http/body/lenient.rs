//! The small value types every body is made of, with the one leniency rule of the API: a string field takes a
//! JSON number as its decimal text, a whole-number field takes a string of one, a map of strings takes any scalar
//! as its text. Their schemas are what a client should send (a string, an integer): the leniency is for payloads
//! written by hand or passed through Go maps, not a second documented form.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

/// A string; a JSON number is taken as its decimal text (`2` → `"2"`, `1.5` → `"1.5"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
        Ok(Text(serde_json::Number::from_f64(v).map(|n| n.to_string()).unwrap_or_else(|| v.to_string())))
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string"})
    }
}

/// A whole number; a string of one is taken too (`"2"`). Fractions are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Whole(pub i64);

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = Whole;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number such as 2")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
        i64::try_from(v).map(Whole).map_err(|_| E::custom(format!("{v} is too large; write a whole number such as 2")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
        Ok(Whole(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
        Err(E::custom(format!("{v} is not a whole number; write one such as 2")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Whole, E> {
        v.trim().parse::<i64>().map(Whole).map_err(|_| E::custom(format!("{v:?} is not a whole number such as 2")))
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WholeVisitor)
    }
}

impl JsonSchema for Whole {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Whole".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer"})
    }
}

/// A whole number from `MIN` to `MAX` (a [`Whole`], so `"3"` is taken too); the schema carries the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ranged<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> Ranged<MIN, MAX> {
    /// The value as an unsigned type it fits (the range is checked when decoded).
    pub fn get<T: TryFrom<i64> + Default>(self) -> T {
        T::try_from(self.0).unwrap_or_default()
    }
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Whole(n) = Whole::deserialize(d)?;
        if (MIN..=MAX).contains(&n) {
            Ok(Ranged(n))
        } else {
            Err(de::Error::custom(format!("must be a whole number from {MIN} to {MAX} (got {n})")))
        }
    }
}

impl<const MIN: i64, const MAX: i64> JsonSchema for Ranged<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Ranged_{MIN}_{MAX}").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// Which map of strings: what its values may hold (their schema says it).
pub trait MapRule {
    /// The schema of one value.
    fn value_schema() -> Schema;
    /// Why `value` is refused, if it is.
    fn refuse(value: &str) -> Option<&'static str>;
}

/// Environment variables: values without NUL (names are checked after decoding: OpenAPI 3.0 has no schema for
/// keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvValues;

impl MapRule for EnvValues {
    fn value_schema() -> Schema {
        json_schema!({"type": "string", "pattern": "^[^\\u0000]*$"})
    }

    fn refuse(value: &str) -> Option<&'static str> {
        value.contains('\0').then_some("contains a NUL character")
    }
}

/// Labels: values of at most 1024 characters without control characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelValues;

impl MapRule for LabelValues {
    fn value_schema() -> Schema {
        json_schema!({"type": "string", "maxLength": 256, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"})
    }

    fn refuse(value: &str) -> Option<&'static str> {
        (value.len() > 1024 || value.chars().any(char::is_control))
            .then_some("must be at most 1024 characters without control characters")
    }
}

/// A map of strings (`{"KEY": "value"}`); any scalar value is taken as its text (`2`, `true`), as Go's `%v`
/// writes it. Values are checked by `R` as they are decoded, so a refusal names `field.KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringMap<R>(pub BTreeMap<String, String>, std::marker::PhantomData<R>);

impl<R> Default for StringMap<R> {
    fn default() -> Self {
        StringMap(BTreeMap::new(), std::marker::PhantomData)
    }
}

impl<R> StringMap<R> {
    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// One value of a [`StringMap`].
struct Scalar<R>(String, std::marker::PhantomData<R>);

impl<'de, R: MapRule> Deserialize<'de> for Scalar<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
                TextVisitor.visit_f64(v).map(Text::into_string)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        let value = d.deserialize_any(V)?;
        match R::refuse(&value) {
            Some(why) => Err(de::Error::custom(why)),
            None => Ok(Scalar(value, std::marker::PhantomData)),
        }
    }
}

impl<'de, R: MapRule> Deserialize<'de> for StringMap<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<R>(std::marker::PhantomData<R>);
        impl<'de, R: MapRule> Visitor<'de> for V<R> {
            type Value = BTreeMap<String, String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values, such as {\"KEY\": \"value\"}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, Scalar(v, _))) = map.next_entry::<String, Scalar<R>>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
        }
        d.deserialize_any(V::<R>(std::marker::PhantomData)).map(|m| StringMap(m, std::marker::PhantomData))
    }
}

impl<R: MapRule> JsonSchema for StringMap<R> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "StringMap".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut schema = json_schema!({"type": "object"});
        schema.insert("additionalProperties".into(), R::value_schema().to_value());
        schema
    }
}

/// A key AEnvironment clients send that means nothing here: any value, accepted and ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

impl JsonSchema for Ignored {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Ignored".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "accepted and ignored (an AEnvironment key that means nothing on this operator)"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Probe {
        t: Option<Text>,
        w: Option<Whole>,
        r: Option<Ranged<1, 32>>,
        m: Option<StringMap<EnvValues>>,
    }

    fn probe(json: &str) -> Result<Probe, String> {
        super::super::decode::<Probe>(json.as_bytes(), "{}").map_err(|e| e.message)
    }

    #[test]
    fn numbers_and_strings_one_rule() {
        let p = probe(r#"{"t":2,"w":"3","r":"32","m":{"A":1,"B":true,"C":"x","D":1.5}}"#).unwrap();
        assert_eq!(p.t, Some(Text("2".into())));
        assert_eq!(p.w, Some(Whole(3)));
        assert_eq!(p.r.map(|r| r.0), Some(32));
        let m = p.m.unwrap().into_inner();
        assert_eq!((m["A"].as_str(), m["B"].as_str(), m["C"].as_str(), m["D"].as_str()), ("1", "true", "x", "1.5"));
        assert_eq!(probe(r#"{"t":1.5}"#).unwrap().t, Some(Text("1.5".into())));
        assert!(probe(r#"{"t":null,"w":null,"m":null}"#).is_ok());
        for (body, field) in [
            (r#"{"t":true}"#, "`t`"),
            (r#"{"t":[]}"#, "`t`"),
            (r#"{"w":1.5}"#, "`w`"),
            (r#"{"w":"two"}"#, "`w`"),
            (r#"{"r":0}"#, "`r`"),
            (r#"{"r":"33"}"#, "`r`"),
            (r#"{"m":{"A":{}}}"#, "`m.A`"),
            (r#"{"m":{"A":"x\u0000"}}"#, "`m.A`"),
            (r#"{"m":[]}"#, "`m`"),
        ] {
            let e = probe(body).unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
    }
}
