//! Operations on a running sandbox: `POST /env-instance/{id}/exec` (collected, or streamed as server-sent events)
//! `GET`/`PUT /env-instance/{id}/files?path=` (a file's raw bytes, a directory as a tar), `GET /env-instance/{id}/stats`,
//! `POST /env-instance/{id}/pause` and `/resume`, `POST /env-instance/{id}/snapshot` and `/fork`. Owner-scoped like the other instance routes.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use aenv_core::{ExecOutput, ExecRequest, FileUpload, PathContent, SandboxPath, duration::parse_go_duration};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use warp::hyper::body::Buf;
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES, reply,
    request::{describe, string_map, validate_env, validate_version},
    with_services,
};
use crate::service::{
    Principal, ServiceError, Services,
    sandbox::{ExecResult, MAX_FILE_BYTES},
};

/// How long a command runs when the request names no timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout a request may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

const EXEC_KEYS: &[&str] = &["command", "env", "workdir", "user", "timeout", "stdin"];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Parses an exec body: `{"command": [...], "env"?, "workdir"?, "user"?, "timeout"?, "stdin"?}`.
pub fn parse_exec(body: &[u8]) -> Result<ExecRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not JSON ({e}); send {{\"command\": [\"program\", \"arg\"]}}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(format!("the body must be a JSON object, not {}", describe(&value))));
    };
    if let Some(unknown) = obj.keys().find(|k| !EXEC_KEYS.contains(&k.as_str())) {
        return Err(bad(format!("unknown field `{unknown}`; the fields are {}", EXEC_KEYS.join(", "))));
    }
    let command = match obj.get("command") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if s.contains('\0') => Err(bad(format!("field `command[{i}]` contains a NUL"))),
                Value::String(s) if i == 0 && s.is_empty() => {
                    Err(bad("field `command[0]` (the program) is empty; name a program"))
                }
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(format!("field `command[{i}]` must be a string, not {}", describe(other)))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::String(_)) => {
            return Err(bad(
                "field `command` must be an array (the program and its arguments); for a shell line send [\"sh\", \"-c\", \"...\"]",
            ));
        }
        _ => return Err(bad("field `command` is required: a non-empty array such as [\"ls\", \"-l\"]")),
    };
    let env = match obj.get("env") {
        Some(v) => string_map(v, "env")?,
        None => Default::default(),
    };
    validate_env(&env, "env")?;
    let workdir = optional_string(&obj, "workdir")?;
    if let Some(dir) = &workdir {
        SandboxPath::parse(dir).map_err(|e| bad(format!("field `workdir`: {e}")))?;
    }
    let user = optional_string(&obj, "user")?;
    if let Some(u) = &user
        && (u.is_empty() || u.len() > 256 || u.contains(['\0', '\n']))
    {
        return Err(bad("field `user` must be a user or uid, optionally `:group` (such as \"1000:1000\")"));
    }
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => DEFAULT_EXEC_TIMEOUT,
        Some(Value::Number(n)) => {
            let secs = n.as_f64().filter(|s| s.is_finite() && *s > 0.0).ok_or_else(|| {
                bad("field `timeout` must be a number of seconds above zero (or a duration such as \"90s\")")
            })?;
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
        }
        Some(Value::String(s)) => {
            let d = parse_go_duration(s).map_err(|e| bad(format!("field `timeout`: {e}")))?;
            if d.is_zero() {
                return Err(bad("field `timeout` must be longer than zero"));
            }
            d
        }
        Some(other) => {
            return Err(bad(format!("field `timeout` must be a number of seconds, not {}", describe(other))));
        }
    };
    if timeout > MAX_EXEC_TIMEOUT {
        return Err(bad(format!(
            "field `timeout` is longer than {} s; ask for {} s or less",
            MAX_EXEC_TIMEOUT.as_secs(),
            MAX_EXEC_TIMEOUT.as_secs()
        )));
    }
    let stdin = optional_string(&obj, "stdin")?.map(String::into_bytes);
    Ok(ExecRequest { command, env, workdir, user, stdin, timeout, service: None })
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(format!("field `{key}` must be a string, not {}", describe(other)))),
    }
}

/// The collected answer: `{"exitCode", "stdout", "stderr", "timedOut", ...}`.
pub fn exec_answer(r: &ExecResult) -> Value {
    let mut answer = json!({
        "exitCode": r.exit.exit_code,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "timedOut": r.exit.timed_out,
        "truncated": r.truncated,
    });
    if r.exit.timed_out {
        answer["killed"] = Value::Bool(r.exit.killed);
    }
    if let Some(m) = &r.exit.message {
        answer["message"] = Value::from(m.as_str());
    }
    answer
}

/// One server-sent event of a streamed exec: `stdout` and `stderr` carry a JSON string, `exit` the exit as the
/// collected answer has it, `error` a message.
fn sse_event(item: Result<ExecOutput, aenv_core::EngineError>) -> Bytes {
    let (event, data) = match item {
        Ok(ExecOutput::Stdout(b)) => ("stdout", Value::from(String::from_utf8_lossy(&b))),
        Ok(ExecOutput::Stderr(b)) => ("stderr", Value::from(String::from_utf8_lossy(&b))),
        Ok(ExecOutput::Exited(exit)) => {
            let mut v = json!({"exitCode": exit.exit_code, "timedOut": exit.timed_out});
            if exit.timed_out {
                v["killed"] = Value::Bool(exit.killed);
            }
            if let Some(m) = exit.message {
                v["message"] = Value::from(m);
            }
            ("exit", v)
        }
        Err(e) => ("error", json!({"message": e.to_string()})),
    };
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn wants_stream(q: &HashMap<String, String>, accept: Option<&str>) -> Result<bool, ApiError> {
    let by_query = match q.get("stream").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(bad(format!("query `stream` must be true or false (got {other:?})"))),
    };
    Ok(by_query || accept.is_some_and(|a| a.contains("text/event-stream")))
}

async fn exec(
    svc: Arc<Services>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
    accept: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, ApiError> {
    let stream = wants_stream(&q, accept.as_deref())?;
    let mut request = parse_exec(&body)?;
    request.service = query_service(&q)?;
    if !stream {
        let result = svc.exec_collected(&id, caller.as_ref(), request).await?;
        return Ok(reply::<ApiError>(Ok(exec_answer(&result))));
    }
    let mut output = svc.exec(&id, caller.as_ref(), request)?;
    // Through a channel, as the logs are: the engine's stream is not `Sync`, which warp's body wants. A client that
    // goes away drops the receiver, which ends the engine's stream (and the command with it).
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(item) = output.next().await {
            if tx.send(Ok::<_, Infallible>(sse_event(item))).await.is_err() {
                return;
            }
        }
    });
    let body = warp::reply::stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = warp::reply::with_header(body, "content-type", "text/event-stream").into_response();
    response.headers_mut().insert("cache-control", warp::http::HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `?service=NAME`: which service of a compose stack an operation acts on (its main service when absent).
fn query_service(q: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match q.get("service") {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control()) => {
            Err(bad(format!("query `service` must name a service of the instance's compose stack (got {s:?})")))
        }
        Some(s) => Ok(Some(s.clone())),
    }
}

fn query_path(q: &HashMap<String, String>) -> Result<SandboxPath, ApiError> {
    let raw = q.get("path").ok_or_else(|| bad("query `path` is required: an absolute path such as /tmp/a.txt"))?;
    SandboxPath::parse(raw).map_err(|e| bad(format!("query `path`: {e}")))
}

async fn get_file(
    svc: Arc<Services>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let path = query_path(&q)?;
    Ok(match svc.read_path(&id, caller.as_ref(), query_service(&q)?.as_deref(), &path).await? {
        PathContent::File { bytes, mode } => {
            let mut r = warp::reply::with_header(bytes, "content-type", "application/octet-stream").into_response();
            if let Ok(v) = warp::http::HeaderValue::from_str(&format!("{:o}", mode & 0o7777)) {
                r.headers_mut().insert("x-aenv-file-mode", v);
            }
            r
        }
        PathContent::Directory { tar } => {
            warp::reply::with_header(tar, "content-type", "application/x-tar").into_response()
        }
    })
}

/// Reads a body of at most `limit` bytes, chunked or not: 413 past it.
async fn bounded_body(
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Vec<u8>, ServiceError> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ServiceError::Invalid(format!("the body could not be read: {e}")))?;
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            if (bytes.len() + piece.len()) as u64 > limit {
                return Err(ServiceError::TooLarge(format!(
                    "the body is larger than this operator takes ({limit} bytes)"
                )));
            }
            bytes.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

fn parse_mode(q: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    q.get("mode")
        .map(|m| {
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad(format!("query `mode` must be octal permission bits such as 644 (got {m:?})")))
        })
        .transpose()
}

fn parse_owner(q: &HashMap<String, String>) -> Result<Option<(u64, u64)>, ApiError> {
    q.get("owner")
        .map(|o| {
            let (u, g) = o.split_once(':').unwrap_or((o, o));
            match (u.parse::<u32>(), g.parse::<u32>()) {
                (Ok(u), Ok(g)) => Ok((u64::from(u), u64::from(g))),
                _ => Err(bad(format!("query `owner` must be a numeric uid or uid:gid such as 1000:1000 (got {o:?})"))),
            }
        })
        .transpose()
}

async fn put_file(
    svc: Arc<Services>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<warp::reply::Response, ApiError> {
    let path = query_path(&q)?;
    let mode = parse_mode(&q)?;
    let owner = parse_owner(&q)?;
    let service = query_service(&q)?;
    // Who may write is checked before the body is read.
    if svc.instance(&id, caller.as_ref()).is_none() {
        return Err(ApiError::not_found(format!("env instance \"{id}\" not found")));
    }
    let bytes = bounded_body(body, MAX_FILE_BYTES).await?;
    let size = bytes.len();
    svc.write_file(&id, caller.as_ref(), FileUpload { path: path.clone(), bytes, mode, owner, service }).await?;
    Ok(reply::<ApiError>(Ok(json!({"path": path.as_str(), "size": size}))))
}

/// Most instances one fork starts.
pub const MAX_FORK: u64 = 32;

/// An optional JSON object body (absent or empty: `{}`), with only `keys`.
async fn object_body(
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    keys: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let bytes = bounded_body(body, MAX_BODY_BYTES).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(obj)) => {
            super::request::only(&obj, keys)?;
            Ok(obj)
        }
        Ok(other) => Err(bad(format!("the body must be a JSON object, not {}", describe(&other)))),
        Err(e) => Err(bad(format!("the body is not JSON ({e})"))),
    }
}

async fn snapshot(
    svc: Arc<Services>,
    id: String,
    caller: Option<Principal>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<Value, ApiError> {
    let obj = object_body(body, &["version"]).await?;
    let version = optional_string(&obj, "version")?;
    if let Some(v) = &version {
        if v.is_empty() {
            return Err(bad("field `version` is empty; name a version or leave it out"));
        }
        validate_version(v, "version")?;
    }
    let t = svc.snapshot(&id, caller.as_ref(), version).await?;
    Ok(json!({
        "envName": format!("{}@{}", t.spec.name, t.spec.version),
        "image": t.spec.template.image,
        // Memory and processes are not saved (see /readyz `memoryCheckpoints` for what the daemon could do).
        "filesystemOnly": true,
    }))
}

async fn fork(
    svc: Arc<Services>,
    id: String,
    caller: Option<Principal>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<Value, ApiError> {
    let obj = object_body(body, &["count"]).await?;
    let count = match obj.get("count") {
        Some(Value::Number(n)) => n.as_u64().filter(|c| (1..=MAX_FORK).contains(c)),
        None => return Err(bad(format!("field `count` is required: how many instances to start (1 to {MAX_FORK})"))),
        Some(_) => None,
    }
    .ok_or_else(|| bad(format!("field `count` must be a whole number from 1 to {MAX_FORK}")))?;
    let (t, ids) = svc.fork(&id, caller.as_ref(), count as usize).await?;
    Ok(json!({"envName": format!("{}@{}", t.spec.name, t.spec.version), "instances": ids}))
}

/// The sandbox-operation routes.
pub fn routes(
    svc: Arc<Services>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = warp::query::<HashMap<String, String>>();
    let exec = warp::path!("env-instance" / String / "exec")
        .and(warp::post())
        .and(who.clone())
        .and(query)
        .and(warp::header::optional::<String>("accept"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_services(svc.clone()))
        .then(
            |id: String,
             c: Option<Principal>,
             q: HashMap<String, String>,
             accept: Option<String>,
             body: Bytes,
             svc: Arc<Services>| async move {
                exec(svc, id, c, q, accept, body).await.unwrap_or_else(ApiError::into_reply)
            },
        );
    let get_file = warp::path!("env-instance" / String / "files")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<Services>| async move {
            get_file(svc, id, c, q).await.unwrap_or_else(ApiError::into_reply)
        });
    let put_file = warp::path!("env-instance" / String / "files")
        .and(warp::put())
        .and(who.clone())
        .and(query)
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, body, svc: Arc<Services>| async move {
            put_file(svc, id, c, q, body).await.unwrap_or_else(ApiError::into_reply)
        });
    let snapshot = warp::path!("env-instance" / String / "snapshot")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body, svc: Arc<Services>| async move {
            reply(snapshot(svc, id, c, body).await)
        });
    let fork = warp::path!("env-instance" / String / "fork")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body, svc: Arc<Services>| async move {
            reply(fork(svc, id, c, body).await)
        });
    let pause = warp::path!("env-instance" / String / String)
        .and(warp::post())
        .and_then(|id: String, action: String| async move {
            match action.as_str() {
                "pause" => Ok((id, true)),
                "resume" => Ok((id, false)),
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(who.clone())
        .and(with_services(svc.clone()))
        .then(|id: String, paused: bool, c: Option<Principal>, svc: Arc<Services>| async move {
            reply(svc.set_paused(&id, c.as_ref(), paused).await.map(|i| super::wire::instance(&i)))
        });
    let stats = warp::path!("env-instance" / String / "stats")
        .and(warp::get())
        .and(who)
        .and(query)
        .and(with_services(svc))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<Services>| async move {
            let service = match query_service(&q) {
                Ok(s) => s,
                Err(e) => return e.into_reply(),
            };
            reply(
                svc.stats(&id, c.as_ref(), service.as_deref())
                    .await
                    .map(|s| serde_json::to_value(s).unwrap_or_default()),
            )
        });
    exec.or(get_file)
        .unify()
        .or(stats)
        .unify()
        .or(snapshot)
        .unify()
        .or(fork)
        .unify()
        .or(put_file)
        .unify()
        .or(pause)
        .unify()
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
        for (body, field) in [
            (&br#"{"command":"ls -l"}"#[..], "command"),
            (br#"{"command":[]}"#, "command"),
            (br#"{}"#, "command"),
            (br#"{"command":[""]}"#, "command[0]"),
            (br#"{"command":["ls",1]}"#, "command[1]"),
            (br#"{"command":["ls"],"workdir":"tmp"}"#, "workdir"),
            (br#"{"command":["ls"],"timeout":0}"#, "timeout"),
            (br#"{"command":["ls"],"timeout":-1}"#, "timeout"),
            (br#"{"command":["ls"],"timeout":99999}"#, "timeout"),
            (br#"{"command":["ls"],"env":{"A=B":"1"}}"#, "env"),
            (br#"{"command":["ls"],"cmd":["x"]}"#, "cmd"),
            (br#"[1]"#, "object"),
        ] {
            let e = parse_exec(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
    }

    #[test]
    fn modes_and_owners_are_numeric() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(parse_mode(&q("mode", "755")).unwrap(), Some(0o755));
        assert!(parse_mode(&q("mode", "999")).is_err());
        assert!(parse_mode(&q("mode", "17777")).is_err());
        assert_eq!(parse_owner(&q("owner", "1000:50")).unwrap(), Some((1000, 50)));
        assert_eq!(parse_owner(&q("owner", "7")).unwrap(), Some((7, 7)));
        assert!(parse_owner(&q("owner", "root")).is_err());
    }
}
