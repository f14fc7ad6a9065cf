//! The bodies of operations on a running sandbox: `POST /env-instance/{id}/exec`, `/snapshot` and `/fork`.

use std::time::Duration;

use aenv_core::{ExecRequest, SandboxPath};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{
    BodyError,
    create::{validate_env, validate_version},
    lenient::{EnvValues, Ranged, StringMap, Text},
};

/// How long a command runs when the request names no timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout a request may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most instances one fork starts.
pub const MAX_FORK: u64 = 32;

/// `POST /env-instance/{id}/exec`: a command to run in the sandbox.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ExecRequest")]
pub struct Exec {
    /// The program and its arguments (no shell: send ["sh", "-c", "..."] for one).
    #[schemars(required, length(min = 1), inner(regex(pattern = "^[^\\u0000]+$")), extend("example" = ["ls", "-l", "/tmp"]))]
    pub command: Option<Vec<Text>>,
    /// Added to the container's environment for this command.
    #[serde(default)]
    pub env: Option<StringMap<EnvValues>>,
    /// Absolute working directory (the image's when absent).
    #[serde(default)]
    #[schemars(regex(pattern = "^(/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,30}){1,8}/?$"))]
    pub workdir: Option<Text>,
    /// user, user:group, uid or uid:gid (the image's user when absent).
    #[serde(default)]
    #[schemars(regex(pattern = "^[A-Za-z0-9_.-]{1,32}(:[A-Za-z0-9_.-]{1,32})?$"))]
    pub user: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    /// Written to the command's standard input, which is then closed.
    #[serde(default)]
    pub stdin: Option<Text>,
}

/// Seconds (or a Go duration such as "90s"), at most 3600; default 60. Past it the command and everything it
/// started are killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let limit = MAX_EXEC_TIMEOUT.as_secs();
        let d = match Value::deserialize(d)? {
            Value::Number(n) => {
                let secs = n.as_f64().filter(|s| s.is_finite() && *s > 0.0).ok_or_else(|| {
                    D::Error::custom("must be a number of seconds above zero (or a duration such as \"90s\")")
                })?;
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            }
            Value::String(s) => {
                let d = aenv_core::duration::parse_go_duration(&s).map_err(D::Error::custom)?;
                if d.is_zero() {
                    return Err(D::Error::custom("must be longer than zero"));
                }
                d
            }
            other => {
                return Err(D::Error::custom(format!("must be a number of seconds, not {}", super::describe(&other))));
            }
        };
        if d > MAX_EXEC_TIMEOUT {
            return Err(D::Error::custom(format!("is longer than {limit} s; ask for {limit} s or less")));
        }
        Ok(Timeout(d))
    }
}

impl JsonSchema for Timeout {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExecTimeout".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Seconds (or a Go duration such as \"90s\"), at most 3600; default 60. Past it the command and everything it started are killed.",
            "oneOf": [
                {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 3600},
                {"type": "string", "pattern": "^([1-9][0-9]{0,2}(s|ms)|([1-9]|[1-5][0-9])m)$"},
            ],
        })
    }
}

/// `POST /env-instance/{id}/snapshot` (the body is optional): the version of the template it makes.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SnapshotRequest")]
pub struct Snapshot {
    /// Letters, digits, '.', '-', '_' (at most 63); default snap-<random>.
    #[serde(default)]
    #[schemars(regex(pattern = "^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"), extend("example" = "v2"))]
    pub version: Option<Text>,
}

/// `POST /env-instance/{id}/fork`: how many instances to start from a snapshot of this one.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ForkRequest")]
pub struct Fork {
    #[schemars(required)]
    pub count: Option<Ranged<1, 32>>,
}

/// `POST /env-instance/{id}/presign-url`: the SDK's `presign_url(port, expiration_time_in_minutes)`.
#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PresignRequest")]
pub struct Presign {
    /// The sandbox's port the URL reaches.
    #[schemars(required)]
    pub port: Option<Ranged<1, 65535>>,
    /// How long the URL works, in minutes (default 5, at most 1440).
    #[serde(default)]
    pub expiration_time_in_minutes: Option<Ranged<1, 1440>>,
}

/// Parses a presign body: the port and the minutes.
pub fn parse_presign(bytes: &[u8]) -> Result<(u16, i64), BodyError> {
    let body: Presign = super::decode(bytes, r#"{"port": 8081, "expiration_time_in_minutes": 5}"#)?;
    let port = body
        .port
        .map(|p| p.get::<u16>())
        .ok_or_else(|| bad("port", "field `port` is required: the sandbox's port the URL reaches (1 to 65535)"))?;
    Ok((port, body.expiration_time_in_minutes.map_or(5, |m| m.get::<i64>())))
}

fn bad(field: &str, message: impl Into<String>) -> BodyError {
    BodyError::field(field, message)
}

/// Parses an exec body: `{"command": [...], "env"?, "workdir"?, "user"?, "timeout"?, "stdin"?}`.
pub fn parse_exec(bytes: &[u8]) -> Result<ExecRequest, BodyError> {
    let body: Exec = super::decode(bytes, r#"{"command": ["program", "arg"]}"#)?;
    let command: Vec<String> = body.command.unwrap_or_default().into_iter().map(Text::into_string).collect();
    if command.is_empty() {
        return Err(bad("command", "field `command` is required: a non-empty array such as [\"ls\", \"-l\"]"));
    }
    if let Some(i) = command.iter().position(|c| c.contains('\0')) {
        return Err(bad(&format!("command[{i}]"), format!("field `command[{i}]` contains a NUL")));
    }
    if command[0].is_empty() {
        return Err(bad("command[0]", "field `command[0]` (the program) is empty; name a program"));
    }
    let env = body.env.unwrap_or_default().into_inner();
    validate_env(&env, "env")?;
    let workdir = body.workdir.map(Text::into_string);
    if let Some(dir) = &workdir {
        SandboxPath::parse(dir).map_err(|e| bad("workdir", format!("field `workdir`: {e}")))?;
    }
    let user = body.user.map(Text::into_string);
    if let Some(u) = &user
        && (u.is_empty() || u.len() > 256 || u.contains(['\0', '\n']))
    {
        return Err(bad("user", "field `user` must be a user or uid, optionally `:group` (such as \"1000:1000\")"));
    }
    let timeout = body.timeout.map_or(DEFAULT_EXEC_TIMEOUT, |t| t.0);
    let stdin = body.stdin.map(|s| s.into_string().into_bytes());
    Ok(ExecRequest { command, env, workdir, user, stdin, timeout, service: None })
}

/// Parses a snapshot body (absent or blank: no version asked for).
pub fn parse_snapshot(bytes: &[u8]) -> Result<Option<String>, BodyError> {
    let body: Snapshot = super::decode_optional(bytes, r#"{"version": "v2"}"#)?;
    let version = body.version.map(Text::into_string);
    if let Some(v) = &version {
        if v.is_empty() {
            return Err(bad("version", "field `version` is empty; name a version or leave it out"));
        }
        validate_version(v, "version")?;
    }
    Ok(version)
}

/// Parses a fork body: the number of instances.
pub fn parse_fork(bytes: &[u8]) -> Result<usize, BodyError> {
    let body: Fork = super::decode_optional(bytes, r#"{"count": 2}"#)?;
    body.count.map(|c| c.get::<usize>()).ok_or_else(|| {
        bad("count", format!("field `count` is required: how many instances to start (1 to {MAX_FORK})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_bodies_are_checked_field_by_field() {
        let r = parse_exec(
            br#"{"command":["ls","-l"],"env":{"A":"1"},"workdir":"/tmp","user":"1000","timeout":2.5,"stdin":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.command, ["ls", "-l"]);
        assert_eq!(r.timeout, Duration::from_millis(2500));
        assert_eq!(r.stdin.as_deref(), Some(&b"x"[..]));
        assert_eq!(parse_exec(br#"{"command":["true"],"timeout":"90s"}"#).unwrap().timeout, Duration::from_secs(90));
        assert_eq!(parse_exec(br#"{"command":["sleep",1]}"#).unwrap().command, ["sleep", "1"], "a number is its text");
        for (body, field) in [
            (&br#"{"command":"ls -l"}"#[..], "command"),
            (br#"{"command":[]}"#, "command"),
            (br#"{}"#, "command"),
            (br#"{"command":[""]}"#, "command[0]"),
            (br#"{"command":["ls",[]]}"#, "command[1]"),
            (br#"{"command":["ls"],"workdir":"tmp"}"#, "workdir"),
            (br#"{"command":["ls"],"timeout":0}"#, "timeout"),
            (br#"{"command":["ls"],"timeout":-1}"#, "timeout"),
            (br#"{"command":["ls"],"timeout":99999}"#, "timeout"),
            (br#"{"command":["ls"],"env":{"A=B":"1"}}"#, "env"),
            (br#"{"command":["ls"],"cmd":["x"]}"#, "cmd"),
            (br#"[1]"#, "object"),
        ] {
            let e = parse_exec(body).unwrap_err();
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
    }

    #[test]
    fn snapshot_and_fork_bodies() {
        assert_eq!(parse_snapshot(b"").unwrap(), None);
        assert_eq!(parse_snapshot(br#"{"version":"v2"}"#).unwrap().as_deref(), Some("v2"));
        assert!(parse_snapshot(br#"{"version":""}"#).unwrap_err().message.contains("`version`"));
        assert!(parse_snapshot(br#"{"name":"x"}"#).unwrap_err().message.contains("`name`"));
        assert_eq!(parse_fork(br#"{"count":3}"#).unwrap(), 3);
        assert!(parse_fork(b"").unwrap_err().message.contains("`count` is required"));
        assert!(parse_fork(br#"{"count":33}"#).unwrap_err().message.contains("`count`"));
    }
}
