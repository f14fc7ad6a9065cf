//! The bodies of warm pools: `POST /env-pool` and `PUT /env-pool/{name}`.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    BodyError,
    lenient::{Ranged, Text},
};
use crate::usecase::PoolRequest;

/// Sandboxes one pool may keep (`aenv_core::pool::MAX_POOL_REPLICAS`).
type PoolCount = Ranged<0, 1000>;

/// `POST /env-pool`: a pool of ready sandboxes of a registered Environment.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EnvPoolCreate")]
pub struct PoolCreate {
    #[schemars(required, regex(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: Option<Text>,
    #[serde(rename = "envName")]
    #[schemars(required,
        regex(pattern = "^[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?@[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"),
        extend("example" = "mini-terminal@1.0.0")
    )]
    pub env_name: Option<Text>,
    /// How many ready sandboxes to keep.
    #[schemars(required)]
    pub replicas: Option<PoolCount>,
    /// Demand may grow the pool up to this many (at least `replicas`); a pool of fixed size without it.
    #[serde(default, rename = "maxReplicas")]
    pub max_replicas: Option<PoolCount>,
}

/// `PUT /env-pool/{name}`: the pool's new size.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EnvPoolScale")]
pub struct PoolScale {
    #[schemars(required)]
    pub replicas: Option<PoolCount>,
    #[serde(default, rename = "maxReplicas")]
    pub max_replicas: Option<PoolCount>,
}

fn required_text(t: Option<Text>, field: &str, example: &str) -> Result<String, BodyError> {
    t.map(|t| t.as_str().trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BodyError::field(field, format!("field `{field}` is required: a string such as {example:?}")))
}

fn replicas(r: Option<PoolCount>) -> Result<u32, BodyError> {
    r.map(|r| r.get::<u32>())
        .ok_or_else(|| BodyError::field("replicas", "field `replicas` is required: how many ready sandboxes to keep"))
}

/// `POST /env-pool`'s body.
pub fn parse_create(bytes: &[u8]) -> Result<PoolRequest, BodyError> {
    let body: PoolCreate = super::decode(bytes, r#"{"name": "warm", "envName": "name@version", "replicas": 2}"#)?;
    Ok(PoolRequest {
        name: required_text(body.name, "name", "warm-terminal")?,
        env_name: required_text(body.env_name, "envName", "mini-terminal@1.0.0")?,
        replicas: replicas(body.replicas)?,
        max_replicas: body.max_replicas.map(|m| m.get::<u32>()),
    })
}

/// `PUT /env-pool/{name}`'s body: `(replicas, maxReplicas)`.
pub fn parse_scale(bytes: &[u8]) -> Result<(u32, Option<u32>), BodyError> {
    let body: PoolScale = super::decode(bytes, r#"{"replicas": 2}"#)?;
    Ok((replicas(body.replicas)?, body.max_replicas.map(|m| m.get::<u32>())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_with_the_field_named() {
        let ok = parse_create(br#"{"name":"warm","envName":"mini@1.0.0","replicas":3,"maxReplicas":8}"#).unwrap();
        assert_eq!(
            ok,
            PoolRequest { name: "warm".into(), env_name: "mini@1.0.0".into(), replicas: 3, max_replicas: Some(8) }
        );
        let lenient = parse_create(br#"{"name":"w","envName":"mini@1","replicas":"3"}"#).unwrap();
        assert_eq!(lenient.replicas, 3, "a whole number as a string, as on every route");
        for (body, field) in [
            (&br#"{"envName":"mini@1","replicas":1}"#[..], "`name`"),
            (br#"{"name":"w","replicas":1}"#, "`envName`"),
            (br#"{"name":"w","envName":"mini@1"}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":-1}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1.5}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":"three"}"#, "`replicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1,"maxReplicas":99999999999}"#, "`maxReplicas`"),
            (br#"{"name":"w","envName":"mini@1","replicas":1,"size":3}"#, "`size`"),
        ] {
            let e = parse_create(body).unwrap_err();
            assert!(e.message.contains(field), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        assert!(parse_create(b"[]").is_err());
        assert!(parse_create(b"{").is_err());
        assert_eq!(parse_scale(br#"{"replicas":0}"#).unwrap(), (0, None));
        assert!(parse_scale(br#"{}"#).unwrap_err().message.contains("`replicas`"));
    }
}
