//! The query string of a route, read by one rule for every route: each parameter the route knows is given at
//! most once, percent-encoded correctly as UTF-8, and, where it takes one of a few values (an enum, a boolean, a
//! count), one of them. Anything else is a 400 that names the parameter and what it accepts, before the handler
//! runs. Parameters a route does not know are ignored, as upstream's handlers ignore them (proxies and clients add
//! their own).
//!
//! warp's own `query::<T>()` rejects a repeated or undecodable parameter with a rejection that carries no name,
//! and which loses to another route's 405 when the two are combined; this filter's rejection is answered before.

use std::collections::HashMap;

use warp::{Filter, Rejection};

use super::ApiError;

/// What a query parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any text.
    Text,
    /// One of these values, spelled exactly.
    OneOf(&'static [&'static str]),
    /// `true` or `false` (`1` and `0` too).
    Bool,
    /// A whole number from 0.
    Count,
}

/// One query parameter a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
}

impl Param {
    pub const fn text(name: &'static str) -> Self {
        Param { name, kind: Kind::Text }
    }
    pub const fn one_of(name: &'static str, values: &'static [&'static str]) -> Self {
        Param { name, kind: Kind::OneOf(values) }
    }
    pub const fn bool(name: &'static str) -> Self {
        Param { name, kind: Kind::Bool }
    }
    pub const fn count(name: &'static str) -> Self {
        Param { name, kind: Kind::Count }
    }
}

/// An instance's status, as `?status=` filters it (an empty value filters nothing).
pub const STATUSES: &[&str] = &["Pending", "Creating", "Running", "Paused", "Failed", "Terminated", ""];

/// A refused query string, answered as it says.
#[derive(Debug)]
pub struct BadQuery(pub ApiError);

impl warp::reject::Reject for BadQuery {}

/// The answer to a refused query string, for a route whose rejection a later route of the same path would
/// otherwise replace; other rejections go on.
pub async fn refused(rej: Rejection) -> Result<warp::reply::Response, Rejection> {
    match rej.find::<BadQuery>() {
        Some(BadQuery(e)) => Ok(e.clone().into_reply()),
        None => Err(rej),
    }
}

/// The query string as `params` allow it: the known parameters, each once, by name.
pub fn query(params: &'static [Param]) -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Copy {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(move |raw: String| async move { parse(&raw, params).map_err(|e| warp::reject::custom(BadQuery(e))) })
}

/// `raw` (the query string without `?`) as `params` allow it.
pub fn parse(raw: &str, params: &[Param]) -> Result<HashMap<String, String>, ApiError> {
    let mut found = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).map_err(|why| ApiError::bad_request(format!("the query string: a name {why}")))?;
        let Some(param) = params.iter().find(|p| p.name == name) else {
            continue;
        };
        let value = decode(value).map_err(|why| ApiError::bad_request(format!("query `{name}`: the value {why}")))?;
        check(param, &value)?;
        if found.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!("query `{name}` is given more than once: give it once")));
        }
    }
    Ok(found)
}

fn check(param: &Param, value: &str) -> Result<(), ApiError> {
    let name = param.name;
    let fits = match param.kind {
        Kind::Text => true,
        Kind::OneOf(values) => values.contains(&value),
        Kind::Bool => matches!(value, "true" | "false" | "1" | "0"),
        Kind::Count => value.parse::<u64>().is_ok(),
    };
    if fits {
        return Ok(());
    }
    let accepts = match param.kind {
        Kind::Text => String::new(),
        Kind::OneOf(values) => {
            let named: Vec<String> =
                values.iter().map(|v| if v.is_empty() { "empty".to_string() } else { format!("`{v}`") }).collect();
            format!("one of {}", named.join(", "))
        }
        Kind::Bool => "true or false".to_string(),
        Kind::Count => "a whole number from 0".to_string(),
    };
    Err(ApiError::bad_request(format!("query `{name}` must be {accepts} (got {value:?})")))
}

/// A name or value of `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte, and the bytes UTF-8.
fn decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' && !(bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))) {
            return Err("has a `%` that is not followed by two hex digits (write a literal % as %25)");
        }
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &[Param] = &[Param::one_of("filter", &["expired"]), Param::text("envName")];

    #[test]
    fn known_parameters_are_read_once_and_unknown_ones_ignored() {
        let q = parse("filter=expired&envName=a%40b+c&utm=1&utm=2", PODS).unwrap();
        assert_eq!(q.get("filter").map(String::as_str), Some("expired"));
        assert_eq!(q.get("envName").map(String::as_str), Some("a@b c"));
        assert_eq!(q.len(), 2);
        assert!(parse("", PODS).unwrap().is_empty());
    }

    #[test]
    fn repeated_malformed_and_unknown_values_name_the_parameter() {
        for (raw, names) in [
            ("envName=a&envName=b", "query `envName` is given more than once"),
            ("filter=AAA", "query `filter` must be one of `expired` (got \"AAA\")"),
            ("envName=%zz", "query `envName`: the value has a `%`"),
            ("envName=%ff", "query `envName`: the value is not UTF-8"),
            ("filter=expired&filter=expired", "query `filter` is given more than once"),
        ] {
            let e = parse(raw, PODS).unwrap_err();
            assert_eq!(e.status, 400, "{raw}");
            assert!(e.message.starts_with(names), "{raw}: {}", e.message);
        }
        let e = parse("tail=-1", &[Param::count("tail")]).unwrap_err();
        assert!(e.message.contains("`tail` must be a whole number"), "{}", e.message);
        let e = parse("follow=yes", &[Param::bool("follow")]).unwrap_err();
        assert!(e.message.contains("`follow` must be true or false"), "{}", e.message);
        assert!(parse("status=", &[Param::one_of("status", STATUSES)]).is_ok());
    }
}
