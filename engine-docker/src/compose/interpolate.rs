//! `${VAR}` interpolation as Compose does it, from the instance's environment variables.
//!
//! Supported: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), `${VAR:+alt}`,
//! `${VAR+alt}`, `${VAR:?message}`, `${VAR?message}`, and `$$` for a literal `$`. Defaults may themselves hold
//! `${...}`. An unset variable without a default becomes the empty string, as with Compose.
//!
//! [`interpolate_document`] runs it over every string value of the parsed YAML, before the model reads it.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::{Refusal, join};

/// Interpolates one string. The error says what is wrong, without the key (the caller adds it).
pub(crate) fn interpolate(input: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end = matching_brace(body_and_tail)
                .ok_or_else(|| format!("invalid interpolation format in {input:?}: a \"${{\" is not closed"))?;
            out.push_str(&expand(&body_and_tail[..end], vars, input)?);
            rest = &body_and_tail[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                // A lone `$` (not followed by a name) stays as it is.
                out.push('$');
                rest = after;
            } else {
                out.push_str(vars.get(&after[..len]).map(String::as_str).unwrap_or(""));
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the variable name at the start of `s`: `[A-Za-z_][A-Za-z0-9_]*`.
fn name_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Index of the `}` closing a `${` whose body starts `s`, counting nested `${`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand(body: &str, vars: &BTreeMap<String, String>, whole: &str) -> Result<String, String> {
    let len = name_len(body);
    if len == 0 {
        return Err(format!("invalid interpolation format in {whole:?}: \"${{{body}}}\" names no variable"));
    }
    let (name, op) = body.split_at(len);
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (operator, arg) = if let Some(arg) = op.strip_prefix(":-") {
        (":-", arg)
    } else if let Some(arg) = op.strip_prefix(":+") {
        (":+", arg)
    } else if let Some(arg) = op.strip_prefix(":?") {
        (":?", arg)
    } else if op.is_empty() {
        ("", "")
    } else {
        // One character (not one byte: the text may be anything) is the operator.
        op.split_at(op.char_indices().nth(1).map_or(op.len(), |(i, _)| i))
    };
    match operator {
        "" => Ok(value.cloned().unwrap_or_default()),
        ":-" if set_nonempty => Ok(value.cloned().unwrap_or_default()),
        ":-" => interpolate(arg, vars),
        "-" if value.is_some() => Ok(value.cloned().unwrap_or_default()),
        "-" => interpolate(arg, vars),
        ":+" if set_nonempty => interpolate(arg, vars),
        ":+" => Ok(String::new()),
        "+" if value.is_some() => interpolate(arg, vars),
        "+" => Ok(String::new()),
        ":?" if set_nonempty => Ok(value.cloned().unwrap_or_default()),
        "?" if value.is_some() => Ok(value.cloned().unwrap_or_default()),
        ":?" | "?" => {
            let why = interpolate(arg, vars)?;
            let why = if why.is_empty() { "it is required".to_string() } else { why };
            Err(format!("required variable {name} is missing a value: {why}"))
        }
        _ => Err(format!("invalid interpolation format in {whole:?}: unknown operator in \"${{{body}}}\"")),
    }
}

/// Interpolates every string value of a document (never keys), naming the key on error.
pub(crate) fn interpolate_document(doc: &mut Value, vars: &BTreeMap<String, String>) -> Result<(), Refusal> {
    interpolate_value(doc, vars, "")
}

fn interpolate_value(v: &mut Value, vars: &BTreeMap<String, String>, path: &str) -> Result<(), Refusal> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate(s, vars).map_err(|e| Refusal::at(path, format!("`{path}`: {e}")))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, vars, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                interpolate_value(item, vars, &join(path, &key))?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, vars, path)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([("A".into(), "1".into()), ("EMPTY".into(), String::new()), ("B_2".into(), "two".into())])
    }

    #[test]
    fn a_multibyte_operator_is_an_error_not_a_panic() {
        // Found by the fuzz test: the operator was cut at a byte, inside a character.
        assert!(interpolate("${A\u{FFFD}x}", &vars()).unwrap_err().contains("unknown operator"));
    }

    #[test]
    fn forms() {
        let v = vars();
        let cases = [
            ("plain", "plain"),
            ("$A", "1"),
            ("x${A}y", "x1y"),
            ("${B_2}", "two"),
            ("$B_2.txt", "two.txt"),
            ("${MISSING}", ""),
            ("$MISSING", ""),
            ("${MISSING:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${MISSING-def}", "def"),
            ("${A:-def}", "1"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${MISSING:-${A}}", "1"),
            ("${MISSING:-${OTHER:-deep}}", "deep"),
            ("$$A", "$A"),
            ("cost: 5$", "cost: 5$"),
            ("$ 1", "$ 1"),
            ("${A:?needed}", "1"),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, &v).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn errors() {
        let v = vars();
        assert!(interpolate("${A", &v).unwrap_err().contains("not closed"));
        assert!(interpolate("${}", &v).unwrap_err().contains("names no variable"));
        assert!(interpolate("${A*x}", &v).unwrap_err().contains("unknown operator"));
        let e = interpolate("${MISSING:?set MISSING please}", &v).unwrap_err();
        assert!(e.contains("MISSING") && e.contains("set MISSING please"), "{e}");
        assert!(interpolate("${EMPTY?x}", &v).is_ok());
        assert!(interpolate("${EMPTY:?x}", &v).is_err());
    }
}
