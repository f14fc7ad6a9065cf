//! The request-body schemas of docs/openapi.json, generated from the body types (schemars, OpenAPI 3.0 form).
//! `request_schemas()` is what the document must hold under `components.schemas`; the tests below fail when it
//! does not, and `AENV_WRITE_OPENAPI=1 cargo test -p aenv-operator --lib openapi` writes it there. Fields are
//! documented in their canonical form: the leniencies of [`super::lenient`] (numbers as strings, `null` as absent)
//! are accepted, not advertised.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Map, Value};

use super::{create, env_services, pools, sandbox};

/// The components every request body of the API refers to (its own and the nested ones), by name.
pub fn request_schemas() -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    fn add<T: JsonSchema>(g: &mut schemars::SchemaGenerator) {
        g.subschema_for::<T>();
    }
    add::<create::FromTemplate>(&mut generator);
    add::<create::Inline>(&mut generator);
    add::<pools::PoolCreate>(&mut generator);
    add::<pools::PoolScale>(&mut generator);
    add::<env_services::ServiceCreate>(&mut generator);
    add::<env_services::ServiceChange>(&mut generator);
    add::<sandbox::Exec>(&mut generator);
    add::<sandbox::Snapshot>(&mut generator);
    add::<sandbox::Fork>(&mut generator);
    add::<sandbox::Presign>(&mut generator);
    let mut schemas = generator.take_definitions(true);
    for schema in schemas.values_mut() {
        canonical(schema);
    }
    schemas
}

/// `null` is taken as "absent" everywhere: a leniency, like numbers as strings, not a documented form. So an
/// optional field's schema is its value's (no `nullable`, no `anyOf` with null, no `default: null`), and
/// descriptions read as one paragraph (doc comments wrap lines).
fn canonical(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            obj.remove("nullable");
            if obj.get("default") == Some(&Value::Null) {
                obj.remove("default");
            }
            if let Some(Value::Array(options)) = obj.get("anyOf")
                && options.len() == 2
                && options[1] == serde_json::json!({"enum": [null]})
            {
                let only = options[0].clone();
                obj.remove("anyOf");
                match only {
                    Value::Object(inner) if inner.contains_key("$ref") && !obj.is_empty() => {
                        obj.insert("allOf".into(), Value::Array(vec![Value::Object(inner)]));
                    }
                    Value::Object(inner) => {
                        for (k, v) in inner {
                            obj.entry(k).or_insert(v);
                        }
                    }
                    other => {
                        obj.insert("allOf".into(), Value::Array(vec![other]));
                    }
                }
            }
            if let Some(Value::String(d)) = obj.get_mut("description") {
                *d = d.split("\n\n").map(|p| p.replace('\n', " ")).collect::<Vec<_>>().join("\n\n");
            }
            obj.values_mut().for_each(canonical);
        }
        Value::Array(items) => items.iter_mut().for_each(canonical),
        _ => {}
    }
}

/// The document `doc` with its request-body components replaced by the generated ones.
pub fn with_request_schemas(mut doc: Value) -> Value {
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        schemas.extend(request_schemas());
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::{prelude::*, strategy::BoxedStrategy, test_runner::TestRunner};

    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    fn doc() -> Value {
        serde_json::from_str(&std::fs::read_to_string(DOC).unwrap()).unwrap()
    }

    /// docs/openapi.json holds exactly the generated request schemas (written there with AENV_WRITE_OPENAPI=1),
    /// and every JSON request body of its paths refers to one of them.
    #[test]
    fn the_document_holds_the_generated_request_schemas() {
        let current = doc();
        let wanted = with_request_schemas(current.clone());
        if std::env::var_os("AENV_WRITE_OPENAPI").is_some() && wanted != current {
            let text = serde_json::to_string_pretty(&wanted).unwrap() + "\n";
            std::fs::write(DOC, text).unwrap();
            return;
        }
        let generated = request_schemas();
        for (name, schema) in &generated {
            assert_eq!(
                current.pointer(&format!("/components/schemas/{name}")),
                Some(schema),
                "docs/openapi.json's {name} is not what the body types generate: run AENV_WRITE_OPENAPI=1 cargo test -p aenv-operator --lib openapi"
            );
        }
        let mut bodies = 0;
        for (path, ops) in current["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") else { continue };
                let refs: Vec<&str> = match schema.get("oneOf") {
                    Some(Value::Array(items)) => items.iter().filter_map(|s| s["$ref"].as_str()).collect(),
                    _ => schema["$ref"].as_str().into_iter().collect(),
                };
                assert!(!refs.is_empty(), "{method} {path}: its body schema is written by hand: {schema}");
                for r in refs {
                    let name = r.trim_start_matches("#/components/schemas/");
                    assert!(generated.contains_key(name), "{method} {path}: {name} is not a body type's schema");
                }
                bodies += 1;
            }
        }
        assert!(bodies >= 12, "only {bodies} JSON request bodies in the document");
    }

    /// A generator of values that `schema` accepts, following `$ref`s into `schemas`. Maps (objects whose
    /// properties are not listed) get keys of letters, digits and '_' only: OpenAPI 3.0 has no schema for keys
    /// (no `propertyNames`), so their rules (a variable name without '='; a label key outside `aenv.io/`) are
    /// checked after decoding and cannot be in the document.
    fn values(schema: &Value, schemas: &Map<String, Value>, depth: u32) -> BoxedStrategy<Value> {
        if let Some(r) = schema["$ref"].as_str() {
            let target = &schemas[r.trim_start_matches("#/components/schemas/")];
            return values(target, schemas, depth + 1);
        }
        if let Some(Value::Array(options)) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
            let strategies: Vec<_> = options.iter().map(|o| values(o, schemas, depth + 1)).collect();
            return proptest::strategy::Union::new(strategies).boxed();
        }
        if let Some(Value::Array(choices)) = schema.get("enum") {
            return prop::sample::select(choices.clone()).boxed();
        }
        match schema["type"].as_str() {
            Some("string") => {
                let pattern = schema["pattern"].as_str().map(|p| p.trim_start_matches('^').trim_end_matches('$'));
                let max = schema["maxLength"].as_u64().unwrap_or(24).min(24);
                let min = schema["minLength"].as_u64().unwrap_or(0).min(max);
                let regex = pattern.map(str::to_string).unwrap_or_else(|| format!("\\PC{{{min},{max}}}"));
                proptest::string::string_regex(&regex)
                    .unwrap_or_else(|e| panic!("pattern {regex:?}: {e}"))
                    .prop_map(Value::String)
                    .boxed()
            }
            Some("integer") => {
                let lo = schema["minimum"].as_i64().unwrap_or(-1_000_000);
                let hi = schema["maximum"].as_i64().unwrap_or(1_000_000);
                (lo..=hi).prop_map(Value::from).boxed()
            }
            Some("number") => {
                let lo = schema["minimum"].as_f64().unwrap_or(-1e6);
                let hi = schema["maximum"].as_f64().unwrap_or(1e6);
                let exclusive = schema["exclusiveMinimum"].as_bool() == Some(true);
                (lo..=hi)
                    .prop_filter("above the exclusive minimum", move |n| !exclusive || *n > lo)
                    .prop_map(Value::from)
                    .boxed()
            }
            Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
            Some("array") => {
                let items = values(&schema["items"], schemas, depth + 1);
                let max = schema["maxItems"].as_u64().unwrap_or(3).min(3) as usize;
                let min = (schema["minItems"].as_u64().unwrap_or(0) as usize).min(max);
                prop::collection::vec(items, min..=max).prop_map(Value::Array).boxed()
            }
            Some("object") => object(schema, schemas, depth),
            _ => prop_oneof![Just(Value::Null), any::<i32>().prop_map(Value::from), "[a-z]{0,5}".prop_map(Value::from)]
                .boxed(),
        }
    }

    fn object(schema: &Value, schemas: &Map<String, Value>, depth: u32) -> BoxedStrategy<Value> {
        let required: Vec<&str> =
            schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                let is_required = required.contains(&name.as_str());
                let name = name.clone();
                let value = values(prop, schemas, depth + 1);
                let pair = value.prop_map(move |v| (name.clone(), v));
                if is_required {
                    fields.push(pair.prop_map(Some).boxed());
                } else if depth < 6 {
                    fields.push(prop::option::of(pair).boxed());
                }
            }
        }
        let extra = match schema.get("additionalProperties") {
            Some(values_schema @ Value::Object(_)) => prop::collection::btree_map(
                "[A-Za-z_][A-Za-z0-9_]{0,7}",
                values(values_schema, schemas, depth + 1),
                0..3,
            )
            .boxed(),
            _ => Just(BTreeMap::new()).boxed(),
        };
        let min_properties = schema["minProperties"].as_u64().unwrap_or(0) as usize;
        (fields, extra)
            .prop_map(|(fields, extra)| {
                let mut obj: Map<String, Value> = extra.into_iter().collect();
                obj.extend(fields.into_iter().flatten());
                Value::Object(obj)
            })
            .prop_filter("minProperties", move |v| v.as_object().is_some_and(|o| o.len() >= min_properties))
            .boxed()
    }

    /// Each body schema with the parser of its routes: what they refuse, as a message.
    type Parser = fn(&[u8]) -> Result<(), String>;

    fn parsers() -> Vec<(&'static str, Parser)> {
        fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<(), String> {
            r.map(drop).map_err(|e| e.to_string())
        }
        vec![
            ("CreateFromTemplate", |b| ok(create::parse_create(b, create::Strictness::Strict))),
            ("CreateInline", |b| {
                ok(create::parse_create(b, create::Strictness::Strict))?;
                ok(create::parse_create(b, create::Strictness::Lenient))
            }),
            ("EnvPoolCreate", |b| ok(pools::parse_create(b))),
            ("EnvPoolScale", |b| ok(pools::parse_scale(b))),
            ("EnvServiceCreate", |b| ok(env_services::parse_create(b))),
            ("EnvServiceUpdate", |b| ok(env_services::parse_update(b))),
            ("ExecRequest", |b| ok(sandbox::parse_exec(b))),
            ("SnapshotRequest", |b| ok(sandbox::parse_snapshot(b))),
            ("ForkRequest", |b| ok(sandbox::parse_fork(b))),
            ("PresignRequest", |b| ok(sandbox::parse_presign(b))),
        ]
    }

    /// No body that its schema accepts is refused by the parser of its routes (what is left to the use-cases and
    /// the engine, such as a registered template or a compose file that parses, is past the parser). Before the
    /// bodies were typed, docs/openapi.json accepted bodies the API refused (`"ttl": "forever"`, a port above
    /// 65535 as a string, an artifact list without an image).
    #[test]
    fn every_body_the_schema_accepts_is_parsed() {
        let schemas = request_schemas();
        for (name, parse) in parsers() {
            let schema = schemas.get(name).unwrap_or_else(|| panic!("no schema {name}"));
            let strategy = values(schema, &schemas, 0);
            let mut runner = TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
            runner
                .run(&strategy, |body| {
                    let bytes = serde_json::to_vec(&body).unwrap();
                    prop_assert!(parse(&bytes).is_ok(), "{name}: {body} refused: {:?}", parse(&bytes));
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// The schemas say what the parser refuses: values just outside a few of its rules match no schema (a schema
    /// that said nothing would pass the test above without documenting anything).
    #[test]
    fn the_schemas_say_what_the_parser_refuses() {
        let schemas = request_schemas();
        let deploy = &schemas["DeployConfig"]["properties"];
        for (field, bad) in [("ttl", "forever"), ("cpu", "lots"), ("memory", "512m"), ("network", "a b")] {
            let re = regex::Regex::new(deploy[field]["pattern"].as_str().unwrap()).unwrap();
            assert!(!re.is_match(bad), "DeployConfig.{field} accepts {bad:?}");
        }
        assert_eq!(schemas["ForkRequest"]["properties"]["count"]["maximum"], 32);
        assert_eq!(schemas["EnvServiceCreate"]["additionalProperties"], false);
        assert_eq!(schemas["CreateInline"]["required"], serde_json::json!(["name", "artifacts"]));
    }
}
