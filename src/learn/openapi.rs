//! Rules proposed from an OpenAPI 3.0 or 3.1 document (JSON or YAML), parsed with the `oas3`
//! crate (which resolves `$ref`s into `components`). `oas3` is built for 3.1; the one 3.0
//! schema form it refuses (boolean `exclusiveMinimum`/`exclusiveMaximum`) is rewritten the 3.1
//! way first, on the document as JSON.
//!
//! Each write operation (POST, PUT, PATCH, DELETE) with a 2xx response is proposed the way
//! [`super::propose`] proposes a group of recorded writes: the path is the template (parameter
//! names made `[A-Za-z0-9_]`), the topic follows REST convention ([`naming`]), helped by the
//! operation's tags (the resource, where the path names none) and `operationId` (the action of
//! a POST to an item, `approveOrder` → `order.approved`). Statuses are the 2xx responses
//! declared (`2XX` becomes the class); the payload has the path parameters, an `id`-like
//! property of the response schema, a declared `Location` header and the JSON body. A
//! `status`-like property with an `enum` of a few values gets a `when` hint. Each rule gets one
//! test made from the schema (there is no real exchange to take it from).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use oas3::spec::{ObjectOrReference, ObjectSchema, Schema};
use serde_json::{Value, json};

use super::naming;
use super::propose::{self, Proposal, ProposedRule, ProposedTest, Status};
use super::secrets::{self, Vault};
use super::template::{Segment, Template};

#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an OpenAPI 3 document: {message}")]
    Parse { path: String, message: String },
}

/// Reads the document and proposes rules.
pub fn learn(path: &Path) -> Result<Proposal, OpenApiError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| OpenApiError::Io {
        path: shown.clone(),
        source,
    })?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    let parse_error = |message: String| OpenApiError::Parse {
        path: shown.clone(),
        message,
    };
    let mut doc: Value = if json {
        serde_json::from_str(&text).map_err(|e| parse_error(e.to_string()))?
    } else {
        yaml_serde::from_str(&text).map_err(|e| parse_error(e.to_string()))?
    };
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !version.starts_with("3.") {
        return Err(parse_error(format!(
            "`openapi` is `{version}`; only 3.0 and 3.1 are read"
        )));
    }
    if version.starts_with("3.0") {
        upgrade_30(&mut doc);
    }
    let spec: oas3::Spec = serde_path_to_error::deserialize(doc)
        .map_err(|e| parse_error(format!("at `{}`: {}", e.path(), e.inner())))?;
    let name = path
        .file_name()
        .map_or(shown.clone(), |n| n.to_string_lossy().into_owned());
    Ok(propose_from(&spec, &name))
}

/// What OpenAPI 3.1 changed in schemas and the parser (built for 3.1) insists on: 3.0's
/// `exclusiveMinimum: true` beside `minimum: 5` is 3.1's `exclusiveMinimum: 5` (and the same
/// for maximum); `false` is dropped. Everything else 3.0 writes, 3.1 reads.
fn upgrade_30(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                match map.get(flag) {
                    Some(Value::Bool(true)) => {
                        let b = map.remove(bound).unwrap_or(Value::Null);
                        if b.is_null() {
                            map.remove(flag);
                        } else {
                            map.insert(flag.to_owned(), b);
                        }
                    }
                    Some(Value::Bool(false)) => {
                        map.remove(flag);
                    }
                    _ => {}
                }
            }
            map.values_mut().for_each(upgrade_30);
        }
        Value::Array(items) => items.iter_mut().for_each(upgrade_30),
        _ => {}
    }
}

/// The object schema behind a schema, `$ref`s followed; `None` for boolean schemas.
fn object(schema: &Schema, spec: &oas3::Spec) -> Option<ObjectSchema> {
    match schema.resolve(spec).ok()? {
        Schema::Object(o) => match *o {
            ObjectOrReference::Object(s) => Some(s),
            ObjectOrReference::Ref { .. } => None,
        },
        Schema::Boolean(_) => None,
    }
}

/// How deep [`schema_holds_secret`] looks into schemas written inline.
const MAX_SCHEMA_DEPTH: usize = 32;

/// Whether a property anywhere below `schema` (object properties, array items, `allOf`/`anyOf`/
/// `oneOf`, additional properties) is named as a credential. Each `$ref` is followed once per
/// question (`seen`), so self-referring schemas end and the walk stays linear in the document;
/// beyond [`MAX_SCHEMA_DEPTH`] inline levels it answers yes: what cannot be checked is not put
/// into a payload whole.
fn schema_holds_secret(
    schema: &Schema,
    spec: &oas3::Spec,
    depth: usize,
    seen: &mut HashSet<String>,
) -> bool {
    if depth > MAX_SCHEMA_DEPTH {
        return true;
    }
    if let Schema::Object(o) = schema {
        if let ObjectOrReference::Ref { ref_path, .. } = o.as_ref() {
            if !seen.insert(ref_path.clone()) {
                return false;
            }
        }
    }
    let Some(o) = object(schema, spec) else {
        return false;
    };
    let mut below = |s: &Schema| schema_holds_secret(s, spec, depth + 1, seen);
    o.properties
        .iter()
        .any(|(k, p)| secrets::is_secret_key(k) || below(p))
        || o.items.as_deref().is_some_and(&mut below)
        || o.prefix_items.iter().any(&mut below)
        || o.additional_properties.as_ref().is_some_and(&mut below)
        || o.all_of.iter().chain(&o.any_of).chain(&o.one_of).any(below)
}

/// `{order-id}` → `order_id`: names the router accepts.
fn param(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() {
        s = "id".into();
    }
    s
}

fn template_of(path: &str) -> Template {
    let parts: Vec<&str> = path
        .strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let is_param = |p: &str| p.starts_with('{') && p.ends_with('}');
    let segments = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if is_param(p) {
                Segment::Param(param(&p[1..p.len() - 1]))
            } else {
                Segment::Literal {
                    text: (*p).to_owned(),
                    collection: parts.get(i + 1).is_some_and(|n| is_param(n)),
                }
            }
        })
        .collect();
    Template { segments }
}

/// The leading verb of an operationId: `approveOrder`, `approve_order` → `approve`.
fn leading_verb(operation_id: &str) -> String {
    operation_id
        .split(|c: char| c == '_' || c == '-' || c.is_ascii_uppercase())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

struct Op {
    template: Template,
    naming: naming::Naming,
    methods: BTreeSet<String>,
    statuses: BTreeSet<Status>,
    /// Response body properties (of the first 2xx JSON response).
    properties: Vec<String>,
    /// The properties declared as strings (their synthetic test value is `"1"`, not `1`).
    strings: Vec<String>,
    /// The properties named as credentials or holding one at any depth (`data.token`).
    secret_properties: Vec<String>,
    json_body: bool,
    location: bool,
    outcome: Option<(String, Vec<String>)>,
    described: Vec<String>,
}

/// The path of the first server's URL (`https://api.test/v1` → `/v1`), its variables filled
/// with their defaults: requests carry it before the document's paths.
fn base_path(spec: &oas3::Spec) -> String {
    let Some(server) = spec.servers.first() else {
        return String::new();
    };
    let mut url = server.url.clone();
    for (name, var) in &server.variables {
        url = url.replace(&format!("{{{name}}}"), &var.default);
    }
    let path = match url::Url::parse(&url) {
        Ok(u) => u.path().to_owned(),
        // Relative server URLs (`/v1`) are relative to where the document is served.
        Err(_) => url::Url::parse("http://document.invalid/")
            .and_then(|b| b.join(&url))
            .map(|u| u.path().to_owned())
            .unwrap_or_default(),
    };
    path.trim_end_matches('/').to_owned()
}

fn propose_from(spec: &oas3::Spec, name: &str) -> Proposal {
    let base = base_path(spec);
    let mut ops: BTreeMap<(String, String), Op> = BTreeMap::new();
    let mut without_2xx = Vec::new();
    let mut reads = 0;
    for (path, method, op) in spec.operations() {
        let method = method.as_str().to_owned();
        if !super::is_write(&method) {
            reads += 1;
            continue;
        }
        let template = template_of(&format!("{base}{path}"));
        let mut naming = naming::name(&template, &method);
        if method == "POST" && naming::post_to_item(&template) {
            let verb = op
                .operation_id
                .as_deref()
                .map(leading_verb)
                .unwrap_or_default();
            naming.event = match naming::past(&verb) {
                Some(done) if verb != "update" && verb != "create" => done,
                _ => "updated".into(),
            };
        }
        if naming.resource == "resource" || naming.resource == "root" {
            if let Some(tag) = op.tags.first() {
                naming.resource = naming::topic_word(&naming::singular(tag));
            }
        }
        let mut statuses = BTreeSet::new();
        let mut properties = Vec::new();
        let mut strings = Vec::new();
        let mut secret_properties = Vec::new();
        let (mut json_body, mut location, mut outcome) = (false, false, None);
        let responses = op.responses(spec);
        for (code, response) in &responses {
            let status = match code.as_str() {
                "2XX" | "2xx" => Status::Class(2),
                c => match c.parse::<u16>() {
                    Ok(n) if (200..300).contains(&n) => Status::Code(n),
                    _ => continue,
                },
            };
            statuses.insert(status);
            location |= response
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case("location"));
            let media = response
                .content
                .iter()
                .find(|(t, _)| t.as_str() == "application/json" || t.ends_with("+json"));
            if let Some((_, media)) = media {
                json_body = true;
                if properties.is_empty() {
                    if let Some(o) = media.schema.as_ref().and_then(|s| object(s, spec)) {
                        properties = o.properties.keys().cloned().collect();
                        secret_properties = o
                            .properties
                            .iter()
                            .filter(|(k, p)| {
                                secrets::is_secret_key(k)
                                    || schema_holds_secret(p, spec, 0, &mut HashSet::new())
                            })
                            .map(|(k, _)| k.clone())
                            .collect();
                        strings = o
                            .properties
                            .iter()
                            .filter(|(_, p)| {
                                object(p, spec).is_some_and(|p| {
                                    p.schema_type
                                        .as_ref()
                                        .is_some_and(|t| t.contains(oas3::spec::SchemaType::String))
                                })
                            })
                            .map(|(k, _)| k.clone())
                            .collect();
                        outcome = outcome_enum(&o, spec);
                    }
                }
            }
        }
        if statuses.is_empty() {
            without_2xx.push(format!(
                "{method} {path}: no 2xx response declared, no rule"
            ));
            continue;
        }
        let mut described = vec![format!("{method} {path}")];
        if let Some(id) = &op.operation_id {
            described.push(format!("operationId {id}"));
        }
        if !op.tags.is_empty() {
            described.push(format!("tags {}", op.tags.join(", ")));
        }
        let key = (template.text(), naming.event.clone());
        let entry = ops.entry(key).or_insert_with(|| Op {
            template,
            naming,
            methods: BTreeSet::new(),
            statuses: BTreeSet::new(),
            properties: Vec::new(),
            strings: Vec::new(),
            secret_properties: Vec::new(),
            json_body: false,
            location: false,
            outcome: None,
            described: Vec::new(),
        });
        entry.methods.insert(method);
        entry.statuses.extend(statuses);
        if entry.properties.is_empty() {
            entry.properties = properties;
            entry.strings = strings;
            entry.secret_properties = secret_properties;
        }
        entry.json_body |= json_body;
        entry.location |= location;
        entry.outcome = entry.outcome.take().or(outcome);
        entry.described.push(described.join(", "));
    }
    let mut notes = vec![
        format!(
            "Rules proposed by `hooktap learn` from the OpenAPI document {name}: {reads} read and {} write operations.",
            ops.values().map(|o| o.methods.len()).sum::<usize>() + without_2xx.len()
        ),
        "Review them before use: names and payloads are guesses from the document.".into(),
    ];
    if !base.is_empty() {
        notes.push(format!(
            "Paths start with `{base}`, the path of the document's first server."
        ));
    }
    if !without_2xx.is_empty() {
        notes.push("Writes without a 2xx response:".into());
        notes.extend(without_2xx.into_iter().map(|l| format!("  {l}")));
    }
    let mut too_many = propose::TooManyParams::default();
    let mut ordered: Vec<Op> = ops
        .into_values()
        .filter(|o| !too_many.left_out(&o.template, o.methods.len()))
        .collect();
    notes.extend(too_many.notes("operation"));
    ordered.sort_by_key(|o| (o.template.segments.len(), o.template.text()));
    let mut taken = BTreeSet::new();
    let mut rules: Vec<ProposedRule> = ordered
        .into_iter()
        .map(|o| {
            let topic = propose::unique_topic(&o.naming, &mut taken);
            rule(o, topic)
        })
        .collect();
    rules.sort_by(|a, b| (&a.path, &a.methods).cmp(&(&b.path, &b.methods)));
    Proposal {
        rules,
        notes,
        vault: Vault::default(),
    }
}

/// A `status`-like property with an `enum` of 2 to 5 strings.
fn outcome_enum(o: &ObjectSchema, spec: &oas3::Spec) -> Option<(String, Vec<String>)> {
    for key in ["status", "state", "result", "outcome"] {
        let Some(p) = o.properties.get(key).and_then(|s| object(s, spec)) else {
            continue;
        };
        let values: Vec<String> = p
            .enum_values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if (2..=5).contains(&values.len()) {
            return Some((format!("$.response.body.{key}"), values));
        }
    }
    None
}

const ID_FIELDS: &[&str] = &["id", "code", "uuid", "number", "reference"];

fn rule(o: Op, topic: String) -> ProposedRule {
    let mut fields = Vec::new();
    let mut expect_fields = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for p in o.template.params() {
        fields.push((p.to_owned(), format!("$.params.{p}")));
        expect_fields.push(p.to_owned());
        taken.push(p.to_owned());
    }
    let id = ID_FIELDS
        .iter()
        .find(|k| o.properties.iter().any(|p| p == *k))
        .map(|k| (*k).to_owned());
    if let Some(k) = &id {
        let name = if taken.contains(k) {
            format!("{}_{k}", o.naming.resource)
        } else {
            k.clone()
        };
        fields.push((name.clone(), format!("$.response.body.{k}")));
        expect_fields.push(name.clone());
        taken.push(name);
    }
    if o.location {
        fields.push(("location".into(), "$.response.headers.location".into()));
        taken.push("location".into());
    }
    if o.json_body {
        if !o.secret_properties.is_empty() {
            for p in &o.properties {
                let plain = p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if plain && !o.secret_properties.contains(p) && !taken.contains(p) {
                    fields.push((p.clone(), format!("$.response.body.{p}")));
                    taken.push(p.clone());
                }
            }
        } else if !taken.iter().any(|t| t == "body") {
            fields.push(("body".into(), "$.response.body".into()));
        }
    }
    if fields.is_empty() && !o.secret_properties.is_empty() {
        // An empty payload means the whole answer (see `emit`): give the status instead.
        fields.push(("status".into(), "$.response.status".into()));
    }
    let methods: Vec<String> = o.methods.iter().cloned().collect();
    let statuses: Vec<Status> = o.statuses.iter().cloned().collect();
    let name = propose::rule_name(&topic);
    let status = statuses
        .iter()
        .find_map(|s| match s {
            Status::Code(c) => Some(*c),
            Status::Class(_) => None,
        })
        .unwrap_or(200);
    let path: String = o
        .template
        .segments
        .iter()
        .map(|s| match s {
            Segment::Literal { text, .. } => format!("/{text}"),
            Segment::Param(_) => "/1".to_owned(),
        })
        .collect();
    let path = if path.is_empty() { "/".into() } else { path };
    let mut body = serde_json::Map::new();
    if let Some(k) = &id {
        let value = if o.strings.contains(k) {
            json!("1")
        } else {
            json!(1)
        };
        body.insert(k.clone(), value);
    }
    if let Some((p, values)) = &o.outcome {
        if let (Some(key), Some(v)) = (p.rsplit('.').next(), values.first()) {
            body.insert(key.to_owned(), Value::String(v.clone()));
        }
    }
    let test = ProposedTest {
        name: format!(
            "{name}: {} {} (made from the document)",
            methods[0],
            o.template.text()
        ),
        method: methods[0].clone(),
        path,
        request_headers: Vec::new(),
        request_body: None,
        status,
        response_headers: if body.is_empty() {
            Vec::new()
        } else {
            vec![("content-type".into(), "application/json".into())]
        },
        response_body: (!body.is_empty()).then_some(Value::Object(body)),
        expect_event: true,
    };
    let mut comments = vec![format!(
        "{}: from the OpenAPI document.",
        o.described.join("; ")
    )];
    let shown: Vec<String> = statuses
        .iter()
        .map(|s| match s {
            Status::Code(c) => c.to_string(),
            Status::Class(c) => format!("{c}xx"),
        })
        .collect();
    comments.push(format!(
        "Successful answers declared: {}.",
        shown.join(", ")
    ));
    ProposedRule {
        name,
        topic,
        methods,
        path: o.template.text(),
        statuses,
        fields,
        required: Vec::new(),
        comments,
        when_hint: o
            .outcome
            .map(|(p, values)| (p, values.into_iter().map(|v| (v, 0)).collect())),
        tests: vec![test],
        expect_fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_31: &str = r##"
openapi: 3.1.0
info: {title: shop, version: "1"}
paths:
  /orders:
    get:
      responses: {"200": {description: list}}
    post:
      operationId: createOrder
      tags: [orders]
      responses:
        "201":
          description: created
          headers: {Location: {schema: {type: string}}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Order"}
        "422": {description: invalid}
  /orders/{order-id}:
    patch:
      responses: {"200": {description: ok, content: {application/json: {schema: {$ref: "#/components/schemas/Order"}}}}}
    put:
      responses: {"2XX": {description: ok}}
    delete:
      responses: {"204": {description: gone}}
    post:
      operationId: approveOrder
      responses: {"200": {description: approved}}
  /orders/{order-id}/refund:
    post:
      responses: {"200": {description: refunded}}
  /sessions:
    post:
      responses:
        "201":
          description: logged in
          content: {application/json: {schema: {type: object, properties: {user: {type: string}, token: {type: string}}}}}
  /broken:
    post:
      responses: {"500": {description: always}}
components:
  schemas:
    Order:
      type: [object]
      properties:
        id: {type: integer}
        status: {type: string, enum: [new, paid]}
"##;

    fn learn_text(text: &str, file: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(file);
        std::fs::write(&p, text).expect("write");
        let proposal = learn(&p).expect("a valid document");
        super::super::emit::render(&proposal, 1 << 20).expect("renders, loads and tests")
    }

    #[test]
    fn a_31_yaml_document_gives_one_rule_per_write() {
        let out = learn_text(SPEC_31, "shop.yaml");
        for want in [
            "topic = \"order.created\"",
            "topic = \"order.updated\"",
            "method = [\"PATCH\", \"PUT\"]",
            "status = [200, \"2xx\"]",
            "topic = \"order.deleted\"",
            "topic = \"order.approved\"",
            "topic = \"order.refunded\"",
            "topic = \"session.created\"",
            "path = \"/orders/{order_id}\"",
            "location = \"$.response.headers.location\"",
            "user = \"$.response.body.user\"",
            "when = [{ path = \"$.response.body.status\", equals = \"paid\" }]",
            "POST /broken: no 2xx response declared, no rule",
        ] {
            assert!(out.contains(want), "missing `{want}` in:\n{out}");
        }
        assert!(!out.contains("$.response.body.token"), "{out}");
        assert_eq!(out.matches("[[rule]]").count(), 6, "{out}");
    }

    #[test]
    fn a_30_json_document_is_read_and_bad_documents_are_named() {
        let spec = json!({
            "openapi": "3.0.3",
            "info": {"title": "t", "version": "1"},
            "servers": [{"url": "https://api.test/{v}/", "variables": {"v": {"default": "v1"}}}],
            "paths": {"/bookings/{code}/cancel": {"post": {"responses": {"200": {"description": "ok",
                "content": {"application/json": {"schema": {"type": "object", "nullable": true,
                    "properties": {"code": {"type": "string"},
                        "seats": {"type": "integer", "minimum": 0, "exclusiveMinimum": true,
                            "maximum": 9, "exclusiveMaximum": false}}}}}}}}}}
        });
        let out = learn_text(&spec.to_string(), "api.json");
        assert!(out.contains("topic = \"booking.cancelled\""), "{out}");
        assert!(
            out.contains("path = \"/v1/bookings/{code}/cancel\""),
            "{out}"
        );
        assert!(out.contains("body = { code = \"1\" }"), "{out}");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, "openapi: [").expect("write");
        let e = learn(&p).expect_err("not a document").to_string();
        assert!(e.contains("bad.yaml: not an OpenAPI 3 document"), "{e}");
        std::fs::write(
            &p,
            "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {/a: {post: {responses: 7}}}\n",
        )
        .expect("write");
        let e = learn(&p).expect_err("bad responses").to_string();
        assert!(e.contains("at `paths./a.post.responses`"), "{e}");
        std::fs::write(
            &p,
            "swagger: '2.0'\nopenapi: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n",
        )
        .expect("write");
        let e = learn(&p).expect_err("version 2").to_string();
        assert!(e.contains("only 3.0 and 3.1 are read"), "{e}");
    }

    #[test]
    fn nested_credentials_in_a_schema_keep_their_property_out_and_self_references_end() {
        let spec = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/logins": {"post": {"responses": {"201": {"description": "ok",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "data": {"$ref": "#/components/schemas/Auth"}}}}}}}}},
                "/grants": {"post": {"responses": {"201": {"description": "ok",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "data": {"$ref": "#/components/schemas/Auth"}}}}}}}}},
                "/folders": {"post": {"responses": {"201": {"description": "ok",
                    "content": {"application/json": {"schema":
                        {"$ref": "#/components/schemas/Folder"}}}}}}}
            },
            "components": {"schemas": {
                "Auth": {"type": "object", "properties": {
                    "session": {"type": "array", "items": {"type": "object",
                        "properties": {"refresh_token": {"type": "string"}}}}}},
                "Folder": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "parent": {"$ref": "#/components/schemas/Folder"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Folder"}}}}
            }}
        });
        let out = learn_text(&spec.to_string(), "api.json");
        assert!(out.contains("name = \"$.response.body.name\""), "{out}");
        assert!(!out.contains("$.response.body.data"), "{out}");
        // Nothing clean to list: the status, not the whole answer (an empty payload would be).
        assert!(out.contains("status = \"$.response.status\""), "{out}");
        // The login payload is field by field; the folder's, free of credentials, is whole.
        assert_eq!(
            out.matches("body = \"$.response.body\"").count(),
            1,
            "{out}"
        );
    }
}
