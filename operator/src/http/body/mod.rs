//! The JSON request bodies of the REST API, as serde models: one type per body, decoded through
//! `serde_path_to_error` so that a refusal names the field's path (`deployConfig.ports[1]`) and says what to write
//! instead. The request-body schemas of docs/openapi.json are generated from these same types ([`openapi`]), so
//! the document and the handlers cannot drift apart.
//!
//! The rules, the same on every route:
//! - **Numbers and strings** ([`lenient`]): a field that holds a string takes a JSON number as its decimal text
//!   (`"cpu": 2` is `"2"`); a field that holds a whole number takes a string of one (`"replicas": "2"`). A map of
//!   strings (`environment_variables`, `labels`) takes any scalar value as its text. `null` is the same as leaving
//!   the field out. AEnvironment's payloads come from Go maps and from users' `config.json`, where either form
//!   appears.
//! - **Unknown fields**: the bodies this operator defines (`/env-pool`, `/env-service`, exec, snapshot, fork) and
//!   `deployConfig` on the public API refuse a field they do not know, naming it and listing the known ones (a
//!   typo never passes silently). The Env bodies AEnvironment itself defines (`POST /env-instance`, `/env`,
//!   `/pods`, `/services`) ignore unknown top-level keys, as its Go and gin decoders do (the api-service sends
//!   `Env.ToJSON()`, with snake and camel duplicates); `deployConfig` is lenient on the controller API only
//!   (`/pods`, `/services`), which forwards whatever deployConfig envhub holds.
//! - Everything the schema can say (types, ranges, patterns, lengths, enums) is in the types; what it cannot
//!   (that a compose file parses, that a label key is not reserved) is checked after decoding, with the same
//!   field path in the refusal.

pub mod create;
pub mod env_services;
pub mod lenient;
pub mod openapi;
pub mod pools;
pub mod sandbox;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A body refused: the field at fault (its path, as the API spells it; `None` for the body as a whole) and a
/// message that names it and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    pub field: Option<String>,
    pub message: String,
}

impl BodyError {
    /// A refusal of `field`; the message should name it (`field \`x\` must be ...`).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        BodyError { field: Some(field.into()), message: message.into() }
    }

    /// A refusal of the body as a whole.
    pub fn body(message: impl Into<String>) -> Self {
        BodyError { field: None, message: message.into() }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError { field: e.field, ..ApiError::bad_request(e.message) }
    }
}

impl From<aenv_core::InvalidSpec> for BodyError {
    fn from(e: aenv_core::InvalidSpec) -> Self {
        BodyError { field: Some(e.field), message: e.message }
    }
}

/// A JSON type, in words.
pub(crate) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses `bytes` as one JSON object, or refuses it saying what a body must be (`example` shows one).
pub fn object(bytes: &[u8], example: &str) -> Result<serde_json::Map<String, Value>, BodyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => {
            Err(BodyError::body(format!("the body must be a JSON object such as {example}, not {}", describe(&other))))
        }
        Err(e) => Err(BodyError::body(format!("the body is not valid JSON ({e}); send an object such as {example}"))),
    }
}

/// Decodes `value` as a `T`, naming the path of the field a refusal is about.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, BodyError> {
    from_value_at(value, "")
}

/// Decodes `value`, found at `prefix` of the body (`deployConfig`; empty for the body itself), as a `T`.
pub fn from_value_at<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, BodyError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner_path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let path = match (prefix, inner_path.as_str()) {
            ("", "." | "") => return BodyError::body(format!("the body: {inner}")),
            (prefix, "." | "") => prefix.to_string(),
            ("", path) => path.to_string(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        BodyError::field(path.clone(), format!("field `{path}`: {inner}"))
    })
}

/// Decodes a body that must be a JSON object of type `T` (`example` shows one).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], example: &str) -> Result<T, BodyError> {
    from_value(Value::Object(object(bytes, example)?))
}

/// Decodes an optional body: absent or blank is `T::default()`.
pub fn decode_optional<T: DeserializeOwned + Default>(bytes: &[u8], example: &str) -> Result<T, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode(bytes, example)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        a: Option<Vec<Inner>>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        b: u16,
    }

    #[test]
    fn refusals_name_the_path() {
        let e = decode::<Probe>(br#"{"a":[{"b":1},{"b":"x"}]}"#, "{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a[1].b"), "{e:?}");
        assert!(e.message.starts_with("field `a[1].b`: "), "{e:?}");
        let e = decode::<Probe>(br#"{"c":1}"#, "{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("c"), "an unknown field is named as the path: {e:?}");
        assert!(e.message.contains("unknown field `c`"), "{e:?}");
        assert!(decode::<Probe>(b"[1]", "{}").unwrap_err().message.contains("JSON object"));
        assert!(decode::<Probe>(b"{", "{}").unwrap_err().message.contains("not valid JSON"));
    }
}
