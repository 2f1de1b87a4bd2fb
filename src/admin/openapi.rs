//! The OpenAPI 3.1 document of the admin API, served at `/openapi.json`, derived with `utoipa`
//! from the types the handlers read and answer ([`WebhookInput`], [`WebhookView`], [`Event`],
//! [`Delivery`], ...) and from the `#[utoipa::path]` attribute on each handler. A test checks
//! that the document's paths are exactly the router's.
//!
//! Answers that the handlers build as ad-hoc JSON are described by the small `*Doc` types
//! below; they are documentation only.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{ErrorBody, events, webhooks};
use crate::event::{Attempt, Delivery, DeliveryState, Event};
use crate::webhook::{
    BatchOrder, Counters, ModeKind, Origin, Profile, WebhookInput, WebhookStatus, WebhookView,
};

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
        events::list,
        events::stream,
        events::get,
        events::rules,
        events::reload,
        events::metrics,
        openapi_json,
        healthz,
        events::ready,
    ),
    components(schemas(
        ErrorBody,
        WebhookInput,
        WebhookView,
        WebhookStatus,
        Profile,
        ModeKind,
        BatchOrder,
        Origin,
        Counters,
        Event,
        Delivery,
        DeliveryState,
        Attempt,
    )),
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

/// `{"count": n}`
#[derive(ToSchema)]
#[schema(as = Count)]
#[allow(dead_code)]
pub struct CountDoc {
    count: usize,
}

/// The answer to deleting a webhook.
#[derive(ToSchema)]
#[schema(as = Deleted)]
#[allow(dead_code)]
pub struct DeletedDoc {
    id: uuid::Uuid,
    deleted: bool,
    dropped_deliveries: usize,
}

/// A ping's request and answer.
#[derive(ToSchema)]
#[schema(as = Ping)]
#[allow(dead_code)]
pub struct PingDoc {
    success: bool,
    status: Option<u16>,
    duration_ms: u64,
    summary: String,
    request_url: String,
    /// `[name, value]` pairs.
    request_headers: Vec<Vec<String>>,
    request_body: String,
    /// `[name, value]` pairs.
    response_headers: Vec<Vec<String>>,
    response_body: String,
}

/// `{"requeued": n}`
#[derive(ToSchema)]
#[schema(as = Requeued)]
#[allow(dead_code)]
pub struct RequeuedDoc {
    requeued: usize,
}

/// A delivery with every attempt.
#[derive(ToSchema)]
#[schema(as = DeliveryDetail)]
#[allow(dead_code)]
pub struct DeliveryDetailDoc {
    delivery: Delivery,
    attempts: Vec<Attempt>,
}

/// The delivery as re-queued.
#[derive(ToSchema)]
#[schema(as = Redelivered)]
#[allow(dead_code)]
pub struct RedeliveredDoc {
    delivery: Delivery,
}

/// A loaded rule and how many events it produced.
#[derive(ToSchema)]
#[schema(as = Rule)]
#[allow(dead_code)]
pub struct RuleDoc {
    name: String,
    topic: String,
    methods: Vec<String>,
    path: String,
    events: u64,
}

/// What a reload loaded.
#[derive(ToSchema)]
#[schema(as = Reloaded)]
#[allow(dead_code)]
pub struct ReloadedDoc {
    reloaded: bool,
    rules: usize,
    webhooks: usize,
    /// `[name, dropped deliveries]` of each config-declared webhook that left the file.
    removed: Vec<Vec<Value>>,
}

/// Health: `{"status": "ok"}`, or readiness: `{"proxy": bool, "store": bool}`.
#[derive(ToSchema)]
#[schema(as = Health)]
#[allow(dead_code)]
pub struct HealthDoc {
    status: Option<String>,
    proxy: Option<bool>,
    store: Option<bool>,
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// Alive (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "meta", operation_id = "healthz", security(()),
    responses((status = 200, description = "Alive", body = HealthDoc)))]
#[allow(dead_code)]
fn healthz() {}

/// The document, as served.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// Every operation as (method, path), for the routing test.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
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
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} is not defined");
        }
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
        // The dashboard page is not part of the API.
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
