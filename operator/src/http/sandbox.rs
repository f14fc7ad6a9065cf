//! Operations on a running sandbox: `POST /env-instance/{id}/exec` (collected, or streamed as server-sent events)
//! `GET`/`PUT /env-instance/{id}/files?path=` (a file's raw bytes, a directory as a tar), `GET /env-instance/{id}/stats`,
//! `POST /env-instance/{id}/pause` and `/resume`, `POST /env-instance/{id}/snapshot` and `/fork`. Owner-scoped like the other instance routes.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use aenv_core::{ExecOutput, FileUpload, PathContent, SandboxPath};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use warp::hyper::body::Buf;
use warp::{Filter, Reply, hyper::body::Bytes};

use super::{
    ApiError, Caller, MAX_BODY_BYTES,
    body::sandbox::{parse_exec, parse_fork, parse_presign, parse_snapshot},
    reply,
    server::ConnectionCloser,
    with_services,
};
use crate::usecase::{
    Principal, UseCaseError, UseCases,
    sandbox::{ExecResult, MAX_FILE_BYTES},
};

/// How long after a streamed command's timeout its answer may still take to be read: past it the connection is
/// closed.
pub const EXEC_STREAM_GRACE: Duration = Duration::from_secs(10);
fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
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
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
    accept: Option<String>,
    body: Bytes,
    closer: Option<ConnectionCloser>,
) -> Result<warp::reply::Response, ApiError> {
    let stream = wants_stream(&q, accept.as_deref())?;
    let mut request = parse_exec(&body).map_err(ApiError::from)?;
    request.service = query_service(&q)?;
    if !stream {
        let result = svc.exec_collected(&id, caller.as_ref(), request).await?;
        return Ok(reply::<ApiError>(Ok(exec_answer(&result))));
    }
    // Cut at the command's timeout and a grace for what it wrote last: a reader that does not read keeps neither
    // the command (the engine kills it at its timeout whoever reads) nor the connection past that.
    let cutoff =
        super::stream::Cutoff { at: tokio::time::Instant::now() + request.timeout + EXEC_STREAM_GRACE, closer };
    let output = svc.exec(&id, caller.as_ref(), request)?;
    let events = super::stream::pump(output.map(|item| Ok::<_, Infallible>(sse_event(item))), Some(cutoff));
    let body = warp::reply::stream(events);
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
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
) -> Result<warp::reply::Response, ApiError> {
    let path = query_path(&q)?;
    // Streamed both ways: the daemon's archive as it comes, to the client as it takes it; the client's going
    // stops the read (and gives back the owner's heavy-request slot, which the body holds).
    let body = |stream: aenv_core::ByteStream| warp::reply::stream(super::stream::pump(stream, None));
    Ok(match svc.read_path(&id, caller.as_ref(), query_service(&q)?.as_deref(), &path).await? {
        PathContent::File { size, mode, body: bytes } => {
            let mut r =
                warp::reply::with_header(body(bytes), "content-type", "application/octet-stream").into_response();
            let headers = r.headers_mut();
            headers.insert(warp::http::header::CONTENT_LENGTH, warp::http::HeaderValue::from(size));
            if let Ok(v) = warp::http::HeaderValue::from_str(&format!("{:o}", mode & 0o7777)) {
                headers.insert("x-aenv-file-mode", v);
            }
            r
        }
        PathContent::Directory { body: tar } => {
            warp::reply::with_header(body(tar), "content-type", "application/x-tar").into_response()
        }
    })
}

/// Reads a body of at most `limit` bytes, chunked or not: 413 past it.
async fn bounded_body(
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Vec<u8>, UseCaseError> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| UseCaseError::Invalid(format!("the body could not be read: {e}")))?;
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            if (bytes.len() + piece.len()) as u64 > limit {
                return Err(UseCaseError::TooLarge(format!(
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
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
    length: Option<u64>,
    body: impl Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + Unpin + 'static,
) -> Result<warp::reply::Response, ApiError> {
    let path = query_path(&q)?;
    let mode = parse_mode(&q)?;
    let owner = parse_owner(&q)?;
    let service = query_service(&q)?;
    // Who may write is checked before the body is read.
    if svc.instance(&id, caller.as_ref()).is_none() {
        return Err(ApiError::not_found(format!("env instance \"{id}\" not found")));
    }
    let body = body.map(|piece| {
        piece
            .map(|mut b| b.copy_to_bytes(b.remaining()))
            .map_err(|e| std::io::Error::other(format!("the body could not be read: {e}")))
    });
    // A body of a known length streams through to the engine; a chunked one is spooled to a temporary file
    // first (the archive it goes in names its length up front), never held in memory.
    let (size, body) = match length {
        Some(size) if size > MAX_FILE_BYTES => {
            return Err(UseCaseError::TooLarge(format!(
                "the file is {size} bytes; this operator takes at most {MAX_FILE_BYTES}"
            ))
            .into());
        }
        Some(size) => (size, body.boxed()),
        None => spool(body, MAX_FILE_BYTES).await?,
    };
    svc.write_file(&id, caller.as_ref(), FileUpload { path: path.clone(), size, body, mode, owner, service }).await?;
    Ok(reply::<ApiError>(Ok(json!({"path": path.as_str(), "size": size}))))
}

/// Writes `body` (at most `limit` bytes: 413 past it) to an unnamed temporary file: its length, and a stream
/// reading it back.
async fn spool(
    body: impl Stream<Item = std::io::Result<Bytes>> + Unpin,
    limit: u64,
) -> Result<(u64, aenv_core::ByteStream), UseCaseError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let spool_failed = |e: std::io::Error| {
        UseCaseError::Busy(format!("the upload could not be spooled to a temporary file ({e}); try again"))
    };
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| UseCaseError::Busy(format!("the upload could not be spooled: {e}")))?
        .map_err(spool_failed)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut body = body;
    let mut size = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| UseCaseError::Invalid(e.to_string()))?;
        size += piece.len() as u64;
        if size > limit {
            return Err(UseCaseError::TooLarge(format!("the body is larger than this operator takes ({limit} bytes)")));
        }
        file.write_all(&piece).await.map_err(spool_failed)?;
    }
    file.flush().await.map_err(spool_failed)?;
    file.rewind().await.map_err(spool_failed)?;
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = file.read(&mut buf).await?;
        buf.truncate(n);
        Ok((n > 0).then(|| (Bytes::from(buf), file)))
    });
    Ok((size, chunks.boxed()))
}

async fn snapshot(
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<Value, ApiError> {
    let version = parse_snapshot(&bounded_body(body, MAX_BODY_BYTES).await?)?;
    let t = svc.snapshot(&id, caller.as_ref(), version).await?;
    Ok(json!({
        "envName": format!("{}@{}", t.spec.name, t.spec.version),
        "image": t.spec.template.image,
        // Memory and processes are not saved (see /readyz `memoryCheckpoints` for what the daemon could do).
        "filesystemOnly": true,
    }))
}

async fn fork(
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<Value, ApiError> {
    let count = parse_fork(&bounded_body(body, MAX_BODY_BYTES).await?)?;
    let (t, ids) = svc.fork(&id, caller.as_ref(), count).await?;
    Ok(json!({"envName": format!("{}@{}", t.spec.name, t.spec.version), "instances": ids}))
}

/// A presigned URL for one port of the instance: `data.url` (what the SDK's `presign_url()` reads) and when it
/// expires.
async fn presign(
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Result<Value, ApiError> {
    let (port, minutes) = parse_presign(&bounded_body(body, MAX_BODY_BYTES).await?)?;
    let (url, expires) = svc.presign(&id, caller.as_ref(), port, minutes)?;
    Ok(json!({"url": url, "port": port, "expire_at": super::wire::format_time(expires)}))
}

/// The query parameters of the sandbox operations (each reads those it needs).
const QUERY: &[super::query::Param] = &[
    super::query::Param::bool("stream"),
    super::query::Param::text("service"),
    super::query::Param::text("path"),
    super::query::Param::text("mode"),
    super::query::Param::text("owner"),
];

/// The sandbox-operation routes.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let query = super::query::query(QUERY);
    let exec = warp::path!("env-instance" / String / "exec")
        .and(warp::post())
        .and(who.clone())
        .and(query)
        .and(warp::header::optional::<String>("accept"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::ext::optional::<ConnectionCloser>())
        .and(with_services(svc.clone()))
        .then(
            |id: String,
             c: Option<Principal>,
             q: HashMap<String, String>,
             accept: Option<String>,
             body: Bytes,
             closer: Option<ConnectionCloser>,
             svc: Arc<UseCases>| async move {
                exec(svc, id, c, q, accept, body, closer).await.unwrap_or_else(ApiError::into_reply)
            },
        );
    let get_file = warp::path!("env-instance" / String / "files")
        .and(warp::get())
        .and(who.clone())
        .and(query)
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| async move {
            get_file(svc, id, c, q).await.unwrap_or_else(ApiError::into_reply)
        });
    let put_file = warp::path!("env-instance" / String / "files")
        .and(warp::put())
        .and(who.clone())
        .and(query)
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(
            |id: String,
             c: Option<Principal>,
             q: HashMap<String, String>,
             length: Option<u64>,
             body,
             svc: Arc<UseCases>| async move {
                put_file(svc, id, c, q, length, body).await.unwrap_or_else(ApiError::into_reply)
            },
        );
    let snapshot = warp::path!("env-instance" / String / "snapshot")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body, svc: Arc<UseCases>| async move {
            reply(snapshot(svc, id, c, body).await)
        });
    let fork = warp::path!("env-instance" / String / "fork")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body, svc: Arc<UseCases>| async move {
            reply(fork(svc, id, c, body).await)
        });
    let presign = warp::path!("env-instance" / String / "presign-url")
        .and(warp::post())
        .and(who.clone())
        .and(warp::body::stream())
        .and(with_services(svc.clone()))
        .then(|id: String, c: Option<Principal>, body, svc: Arc<UseCases>| async move {
            reply(presign(svc, id, c, body).await)
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
        .then(|id: String, paused: bool, c: Option<Principal>, svc: Arc<UseCases>| async move {
            reply(svc.set_paused(&id, c.as_ref(), paused).await.map(|i| super::wire::instance(&i)))
        });
    let stats = warp::path!("env-instance" / String / "stats")
        .and(warp::get())
        .and(who)
        .and(query)
        .and(with_services(svc))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, svc: Arc<UseCases>| async move {
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
        .or(presign)
        .unify()
        .or(pause)
        .unify()
}

#[cfg(test)]
mod tests {
    use super::*;

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
