//! The OpenAPI 3.1 document of the admin API, served at `/openapi.json`, derived with `utoipa`
//! from the types the handlers read and answer ([`NewWebhook`], [`WebhookInput`],
//! [`WebhookView`], [`Event`], the query structs, ...) and from the `#[utoipa::path]` attribute
//! on each handler; there are no documentation-only types. Two conventions are added here: the
//! error answer of every operation, and the bounds every integer has by its Rust type.
//!
//! Tests check that the document's paths are exactly the router's, and (src/admin/tests.rs)
//! that the real router answers as the document says; scripts/schemathesis.sh fuzzes a
//! running hooktap against it.
//!
//! [`NewWebhook`]: crate::webhook::NewWebhook
//! [`WebhookInput`]: crate::webhook::WebhookInput
//! [`WebhookView`]: crate::webhook::WebhookView
//! [`Event`]: crate::event::Event

use std::sync::LazyLock;

use axum::Json;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi};

use super::{ErrorBody, events, rules, stats, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "hooktap admin API"),
    paths(
        webhooks::list,
        webhooks::create,
        webhooks::count,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::ping,
        webhooks::duplicate,
        webhooks::reset,
        webhooks::recover,
        webhooks::deliveries,
        webhooks::delivery,
        webhooks::redeliver,
        stats::stats,
        stats::overview,
        events::list,
        events::stream,
        events::get,
        events::deliveries,
        events::rules,
        rules::try_exchange,
        events::reload,
        events::metrics,
        serve,
        events::health,
        events::ready,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Conventions),
    security(("bearer" = []))
)]
struct ApiDoc;

/// What every operation shares: the bearer scheme, and the error answer (`{"code", "message",
/// "field"}`) for every 4xx and 5xx.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = Response::builder()
            .description("An error: `code` for programs, `message` for people, `field` when one input field was rejected")
            .content(
                "application/json",
                utoipa::openapi::content::Content::new(Some(RefOr::Ref(
                    utoipa::openapi::Ref::from_schema_name("ErrorBody"),
                ))),
            )
            .build();
        components
            .responses
            .insert("Error".to_owned(), RefOr::T(error));
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for status in ["4XX", "5XX"] {
                    op.responses.responses.insert(
                        status.to_owned(),
                        RefOr::Ref(utoipa::openapi::Ref::from_response_name("Error")),
                    );
                }
            }
        }
    }
}

/// The range of each integer `format` utoipa writes for a Rust integer type
/// (`non_strict_integers`: `u32` is `uint32`, ...). `usize` has no format of its own; the
/// fields that hold one say `format = UInt64`.
const INTEGER_FORMATS: [(&str, i128, i128); 8] = [
    ("int8", i8::MIN as i128, i8::MAX as i128),
    ("int16", i16::MIN as i128, i16::MAX as i128),
    ("int32", i32::MIN as i128, i32::MAX as i128),
    ("int64", i64::MIN as i128, i64::MAX as i128),
    ("uint8", 0, u8::MAX as i128),
    ("uint16", 0, u16::MAX as i128),
    ("uint32", 0, u32::MAX as i128),
    ("uint64", 0, u64::MAX as i128),
];

/// Gives every integer schema with a known `format` the `minimum` and `maximum` of its type
/// (or keeps a tighter one it declares), so that the document says which numbers the server
/// can read: a `page` of 2^32 does not fit its `u32` and is refused.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            // utoipa writes `UInt32` as `u-int32` (its kebab-case); the format is `uint32`.
            if let Some(Value::String(format)) = map.get_mut("format") {
                if let Some(width) = format.strip_prefix("u-int") {
                    *format = format!("uint{width}");
                }
            }
            let range = map.get("format").and_then(Value::as_str).and_then(|f| {
                INTEGER_FORMATS
                    .iter()
                    .find(|(name, ..)| *name == f)
                    .map(|&(_, min, max)| (min, max))
            });
            if let (true, Some((min, max))) = (is_integer, range) {
                let declared = |key: &str| map.get(key).and_then(number_as_i128);
                let min = declared("minimum").map_or(min, |d| d.max(min));
                let max = declared("maximum").map_or(max, |d| d.min(max));
                map.insert("minimum".to_owned(), i128_number(min));
                map.insert("maximum".to_owned(), i128_number(max));
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// A JSON number as an `i128`, when it is an integer (`1` or `1.0`).
fn number_as_i128(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 2f64.powi(63))
                .map(|f| f as i128)
        })
}

/// An `i128` within the formats' ranges (`i64::MIN` to `u64::MAX`) as a JSON number.
fn i128_number(n: i128) -> Value {
    i64::try_from(n)
        .map(Value::from)
        .or_else(|_| u64::try_from(n).map(Value::from))
        .unwrap_or(Value::Null)
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    // utoipa's types serialize to JSON without error: every map key is a string.
    let mut doc =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes to JSON");
    bound_integers(&mut doc);
    doc
});

/// The document, as served.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn serve() -> Json<&'static Value> {
    Json(document())
}

/// Every operation as (method, path), for the routing test.
pub fn operations() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = document()["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::webhook::WebhookInput;

    /// Every `$ref` points at something the document defines.
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} is not defined");
        }
    }

    /// Every integer schema names a standard format and carries that type's bounds (or
    /// tighter ones), so the document says which numbers the server reads.
    #[test]
    fn every_integer_is_bounded_by_its_type() {
        fn integers<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
            match v {
                Value::Object(m) => {
                    if m.get("format").is_some()
                        && m.get("type").is_some_and(|t| {
                            t == "integer"
                                || t.as_array().is_some_and(|a| a.contains(&"integer".into()))
                        })
                    {
                        out.push(m);
                    }
                    m.values().for_each(|v| integers(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| integers(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        integers(document(), &mut all);
        assert!(all.len() > 20, "{}", all.len());
        for schema in all {
            let format = schema["format"].as_str().unwrap_or_default();
            let (_, min, max) = INTEGER_FORMATS
                .iter()
                .find(|(name, ..)| *name == format)
                .unwrap_or_else(|| panic!("unknown integer format {format}"));
            let bound = |k: &str| schema.get(k).and_then(number_as_i128);
            let (low, high) = (bound("minimum"), bound("maximum"));
            assert!(
                low.is_some_and(|l| l >= *min) && high.is_some_and(|h| h <= *max),
                "{schema:?}"
            );
        }
        let page = document()["paths"]["/events"]["get"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "page")
            .map(|p| &p["schema"])
            .expect("a page parameter");
        assert_eq!(page["maximum"], u32::MAX, "{page}");
    }

    /// The paths `router()` in `mod.rs` routes, read from its source: every `.route("...")`.
    fn routed_paths() -> BTreeSet<String> {
        let source = include_str!("mod.rs");
        source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.trim_start().strip_prefix('"')?;
                rest.split_once('"').map(|(path, _)| path.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_document_lists_exactly_the_routed_paths() {
        let documented: BTreeSet<String> = operations().into_iter().map(|(_, p)| p).collect();
        let mut routed = routed_paths();
        // The console's page is not part of the API (its script and style sheet are routed in console.rs).
        assert!(routed.remove("/"));
        assert!(routed.len() > 15, "{routed:?}");
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_webhook_schemas_come_from_the_types() {
        let doc = document();
        let input = &doc["components"]["schemas"]["WebhookInput"];
        let properties: Vec<&String> = input["properties"]
            .as_object()
            .map(|p| p.keys().collect())
            .unwrap_or_default();
        assert_eq!(properties, WebhookInput::fields());
        assert_eq!(input["additionalProperties"], false);
        assert!(doc["components"]["schemas"]["Webhook"]["properties"]["counters"].is_object());
        assert!(
            doc["paths"]["/webhooks/{id}"]["put"]["responses"]["4XX"].is_object(),
            "errors are documented"
        );
    }
}
