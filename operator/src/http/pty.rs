//! `GET /env-instance/{id}/pty`: an interactive terminal over a WebSocket. Binary frames carry the terminal's bytes
//! both ways, raw (no channel byte: a terminal has one stream each way); text frames carry JSON control messages
//! (`resize`, `signal` in; `exit`, `error` out). Everything that can be refused (the query, the instance, the
//! program) is refused before the upgrade, as a plain HTTP answer; the terminal then lives as long as the socket.

use std::{collections::HashMap, sync::Arc};

use aenv_core::{PtyInput, PtyOutput, PtyRequest, WindowSize};
use futures::{SinkExt, StreamExt, channel::mpsc, stream::BoxStream};
use serde::Deserialize;
use serde_json::json;
use tracing::debug;
use warp::{
    Filter, Reply,
    filters::ws::{Message, WebSocket, Ws},
};

use super::{ApiError, Caller, with_services};
use crate::usecase::{Principal, UseCases};

const QUERY: &[super::query::Param] = &[
    super::query::Param::text("cmd"),
    super::query::Param::text("cwd"),
    super::query::Param::text("env"),
    super::query::Param::text("user"),
    super::query::Param::count("cols"),
    super::query::Param::count("rows"),
    super::query::Param::text("service"),
];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// A control message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Control {
    Resize { cols: u32, rows: u32 },
    Signal { signal: String },
}

/// The byte a terminal's line discipline turns into `signal` for the foreground program.
fn signal_byte(signal: &str) -> Option<u8> {
    match signal.strip_prefix("SIG").unwrap_or(signal) {
        "INT" => Some(0x03),
        "QUIT" => Some(0x1c),
        "TSTP" => Some(0x1a),
        _ => None,
    }
}

/// The request the query describes.
pub(crate) fn parse_query(q: &HashMap<String, String>) -> Result<PtyRequest, ApiError> {
    let command = match q.get("cmd").map(String::as_str) {
        None | Some("") => vec!["/bin/sh".to_string()],
        Some(raw) if raw.starts_with('[') => {
            let argv: Vec<String> = serde_json::from_str(raw).map_err(|e| {
                bad(format!(
                    "query `cmd`: a JSON array of strings such as [\"/bin/sh\",\"-l\"], or one program path ({e})"
                ))
            })?;
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(bad("query `cmd`: the array must start with the program to run"));
            }
            argv
        }
        Some(program) => vec![program.to_string()],
    };
    let env = match q.get("env") {
        None => Default::default(),
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            bad(format!("query `env`: a JSON object of strings such as {{\"LANG\":\"C.UTF-8\"}} ({e})"))
        })?,
    };
    let side = |name: &str, default: u16| -> Result<u32, ApiError> {
        match q.get(name) {
            None => Ok(u32::from(default)),
            Some(v) => v.parse().map_err(|_| bad(format!("query `{name}` must be a whole number (got {v:?})"))),
        }
    };
    let d = WindowSize::default();
    let size = WindowSize::new(side("cols", d.cols)?, side("rows", d.rows)?)
        .map_err(|e| bad(format!("query `cols`/`rows`: {e}")))?;
    let text = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let service = match q.get("service") {
        None => None,
        Some(s) if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control()) => {
            return Err(bad(format!(
                "query `service` must name a service of the instance's compose stack (got {s:?})"
            )));
        }
        Some(s) => Some(s.clone()),
    };
    Ok(PtyRequest { command, env, workdir: text("cwd"), user: text("user"), service, size })
}

async fn open(
    svc: Arc<UseCases>,
    id: String,
    caller: Option<Principal>,
    q: HashMap<String, String>,
    ws: Ws,
) -> Result<warp::reply::Response, ApiError> {
    let request = parse_query(&q)?;
    let (input_tx, input_rx) = mpsc::channel::<PtyInput>(32);
    let output = svc.pty(&id, caller.as_ref(), request, input_rx.boxed()).await?;
    Ok(ws.on_upgrade(move |socket| relay(socket, input_tx, output)).into_response())
}

/// Moves bytes between the socket and the terminal until either ends: the terminal's end is sent as an `exit`
/// frame then a close; the socket's end (a close, an error, a dropped connection) drops the input, which ends
/// the program.
async fn relay(
    socket: WebSocket,
    mut input: mpsc::Sender<PtyInput>,
    mut output: BoxStream<'static, Result<PtyOutput, aenv_core::EngineError>>,
) {
    let (mut to_client, mut from_client) = socket.split();
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(PtyOutput::Bytes(bytes))) => {
                    if to_client.send(Message::binary(bytes)).await.is_err() { break; }
                }
                Some(Ok(PtyOutput::Exited(code))) => {
                    let _ = to_client.send(Message::text(json!({"type": "exit", "exitCode": code}).to_string())).await;
                    let _ = to_client.send(Message::close_with(1000u16, "exited")).await;
                    break;
                }
                Some(Err(e)) => {
                    let _ = to_client.send(Message::text(json!({"type": "error", "message": e.to_string()}).to_string())).await;
                    let _ = to_client.send(Message::close_with(1011u16, "terminal failed")).await;
                    break;
                }
                None => {
                    let _ = to_client.send(Message::close()).await;
                    break;
                }
            },
            frame = from_client.next() => {
                let msg = match frame {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => { debug!(error = %e, "terminal socket failed"); break; }
                    None => break,
                };
                if msg.is_close() { break; }
                let typed = if msg.is_binary() {
                    Some(PtyInput::Bytes(msg.into_bytes().to_vec()))
                } else if msg.is_text() {
                    match control(msg.to_str().unwrap_or_default()) {
                        Ok(i) => Some(i),
                        Err(why) => {
                            let frame = json!({"type": "error", "message": why}).to_string();
                            if to_client.send(Message::text(frame)).await.is_err() { break; }
                            None
                        }
                    }
                } else {
                    None
                };
                if let Some(i) = typed && input.send(i).await.is_err() { break; }
            }
        }
    }
    // Dropping the input and the output ends the program (if it still runs) and everything held for it.
    input.close_channel();
}

/// A text frame's control message, as terminal input.
fn control(text: &str) -> Result<PtyInput, String> {
    let parsed: Control = serde_json::from_str(text).map_err(|e| {
        format!("a text frame is a control message: {{\"type\":\"resize\",\"cols\":C,\"rows\":R}} or {{\"type\":\"signal\",\"signal\":\"SIGINT\"}} ({e})")
    })?;
    match parsed {
        Control::Resize { cols, rows } => WindowSize::new(cols, rows).map(PtyInput::Resize).map_err(|e| format!("resize: {e}")),
        Control::Signal { signal } => signal_byte(&signal).map(|b| PtyInput::Bytes(vec![b])).ok_or_else(|| {
            format!("signal {signal:?}: a terminal delivers SIGINT, SIGQUIT and SIGTSTP (to end the program, close the socket)")
        }),
    }
}

/// The terminal route.
pub fn routes(
    svc: Arc<UseCases>,
    who: Caller,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("env-instance" / String / "pty")
        .and(warp::get())
        .and(who)
        .and(super::query::query(QUERY))
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(with_services(svc))
        .then(|id: String, c: Option<Principal>, q: HashMap<String, String>, ws: Option<Ws>, svc: Arc<UseCases>| async move {
            let Some(ws) = ws else {
                // A plain GET (a browser's address bar, curl without the headers) is told how to ask, not 405.
                return ApiError::new(
                    426,
                    format!(
                        "GET /env-instance/{id}/pty opens a terminal over a WebSocket: send `Connection: Upgrade`, \
                         `Upgrade: websocket` and `Sec-WebSocket-Key` (any WebSocket client does)"
                    ),
                )
                .into_reply();
            };
            open(svc, id, c, q, ws).await.unwrap_or_else(ApiError::into_reply)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn query_defaults_to_the_shell_on_80_by_24() {
        let r = parse_query(&q(&[])).unwrap();
        assert_eq!(r.command, vec!["/bin/sh"]);
        assert_eq!(r.size, WindowSize { cols: 80, rows: 24 });
    }

    #[test]
    fn query_takes_an_argv_and_env_as_json() {
        let r = parse_query(&q(&[("cmd", r#"["/bin/sh","-l"]"#), ("env", r#"{"A":"1"}"#), ("cols", "120")])).unwrap();
        assert_eq!(r.command, vec!["/bin/sh", "-l"]);
        assert_eq!(r.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(r.size.cols, 120);
        assert!(parse_query(&q(&[("cmd", "[]")])).is_err());
        assert!(parse_query(&q(&[("env", "A=1")])).is_err());
        assert!(parse_query(&q(&[("rows", "0")])).is_err());
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            control(r#"{"type":"resize","cols":100,"rows":30}"#),
            Ok(PtyInput::Resize(WindowSize { cols: 100, rows: 30 }))
        );
        assert_eq!(control(r#"{"type":"signal","signal":"SIGINT"}"#), Ok(PtyInput::Bytes(vec![3])));
        assert!(control(r#"{"type":"signal","signal":"SIGKILL"}"#).is_err());
        assert!(control("hello").is_err());
    }
}
