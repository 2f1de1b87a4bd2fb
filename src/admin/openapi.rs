//! The OpenAPI 3.1 document of the admin API, served at `/openapi.json`. A test checks that every
//! operation listed here is routed (and so that this document and the router agree).

use serde_json::{Value, json};

fn op(summary: &str, params: &[&str], body: Option<&str>, response: &str) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
            "500": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"}
        }
    });
    let params: Vec<Value> = params
        .iter()
        .map(|p| {
            let (name, location) = p.split_once(':').unwrap_or((p, "query"));
            json!({"name": name, "in": location, "required": location == "path", "schema": {"type": "string"}})
        })
        .collect();
    if !params.is_empty() {
        o["parameters"] = Value::Array(params);
    }
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

/// Every operation as (method, path), for the routing test.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "hooktap admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths(),
        "components": components()
    })
}

fn paths() -> Value {
    let page = ["page", "per_page"];
    let id = "id:path";
    let delivery_id = "delivery_id:path";
    json!({
        "/webhooks": {
            "get": op("List webhooks (oldest first); X-Total-Count has the total", &["status", page[0], page[1]], None, "WebhookList"),
            "post": op("Create a webhook", &[], Some("WebhookInput"), "Webhook")
        },
        "/webhooks/count": {"get": op("Count webhooks", &["status"], None, "Count")},
        "/webhooks/{id}": {
            "get": op("Get a webhook", &[id], None, "Webhook"),
            "put": op("Change the fields given; activating pings the URL first (409 ping_failed unless 2xx)", &[id], Some("WebhookInput"), "Webhook"),
            "delete": op("Delete a webhook and drop its pending deliveries", &[id], None, "Deleted")
        },
        "/webhooks/{id}/ping": {"post": op("Send a signed test request with an empty body", &[id], None, "Ping")},
        "/webhooks/{id}/duplicate": {"post": op("Copy a webhook; the copy starts disabled", &[id], None, "Webhook")},
        "/webhooks/{id}/reset": {"post": op("Reset the webhook's counters", &[id], None, "Webhook")},
        "/webhooks/{id}/recover": {"post": op("Re-queue every failed delivery created in [since, until)", &[id], Some("Window"), "Requeued")},
        "/webhooks/{id}/deliveries": {"get": op("A webhook's deliveries, newest first", &[id, "outcome", page[0], page[1]], None, "DeliveryList")},
        "/webhooks/{id}/deliveries/{delivery_id}": {"get": op("A delivery with every attempt", &[id, delivery_id], None, "DeliveryDetail")},
        "/webhooks/{id}/deliveries/{delivery_id}/redeliver": {"post": op("Send a delivery again now, with the same id (409 in_flight while it is being sent)", &[id, delivery_id], None, "Redelivered")},
        "/events": {"get": op("Derived events, newest first", &["topic", "since", "until", page[0], page[1]], None, "EventList")},
        "/events/stream": {"get": op("Server-sent events: one `event` message per stored event", &["topic"], None, "Event")},
        "/events/{id}": {"get": op("Get an event", &[id], None, "Event")},
        "/rules": {"get": op("The loaded rules and how many events each produced", &[], None, "RuleList")},
        "/reload": {"post": op("Reload rules and file-declared webhooks (422 invalid_config keeps the running ones)", &[], None, "Reloaded")},
        "/metrics": {"get": op("Prometheus metrics (text exposition)", &[], None, "Text")},
        "/openapi.json": {"get": op("This document", &[], None, "Text")},
        "/healthz": {"get": op("Alive (no token needed)", &[], None, "Health")},
        "/readyz": {"get": op("Ready: proxy listening and store open (no token needed; 503 when not)", &[], None, "Health")}
    })
}

fn components() -> Value {
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        "schemas": {
            "Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "examples": ["invalid", "unauthorized", "not_found", "conflict", "ping_failed"]},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The input field that was rejected"}
            }},
            "WebhookInput": {"type": "object", "additionalProperties": false, "properties": {
                "name": {"type": "string"}, "url": {"type": "string"}, "secret": {"type": "string", "writeOnly": true},
                "topics": {"type": "array", "items": {"type": "string"}},
                "status": {"enum": ["active", "paused", "disabled"]}, "retry": {"type": "string", "examples": ["5s,30s,1m"]},
                "failure_threshold": {"type": "integer"}, "timeout": {"type": "string"},
                "signature": {"enum": ["hooktap", "standard", "mautic"]}, "header_prefix": {"type": "string"},
                "mode": {"enum": ["realtime", "batch"]}, "batch_interval": {"type": "string"}, "batch_max": {"type": "integer"},
                "batch_order": {"enum": ["chronological", "reverse"]}, "ordered": {"type": "boolean"}, "concurrency": {"type": "integer"}
            }},
            "Webhook": {"type": "object", "description": "A webhook; the secret is never returned and URL credentials are masked", "properties": {
                "id": {"type": "string", "format": "uuid"}, "origin": {"enum": ["config", "api"]}, "name": {"type": "string"},
                "url": {"type": "string"}, "topics": {"type": "array", "items": {"type": "string"}},
                "status": {"enum": ["active", "paused", "disabled"]}, "disabled_reason": {"type": ["string", "null"]},
                "retry": {"type": "array", "items": {"type": "string"}}, "failure_threshold": {"type": "integer"},
                "timeout": {"type": "string"}, "signature": {"type": "string"}, "header_prefix": {"type": "string"},
                "mode": {"enum": ["realtime", "batch"]}, "ordered": {"type": "boolean"}, "concurrency": {"type": "integer"},
                "counters": {"type": "object", "properties": {
                    "delivered": {"type": "integer"}, "failed": {"type": "integer"}, "retries": {"type": "integer"},
                    "consecutive_failures": {"type": "integer"}, "last_delivered_at": {"type": ["string", "null"]},
                    "last_failure_at": {"type": ["string", "null"]}
                }},
                "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}
            }},
            "WebhookList": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}},
            "Count": {"type": "object", "properties": {"count": {"type": "integer"}}},
            "Deleted": {"type": "object", "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}, "dropped_deliveries": {"type": "integer"}}},
            "Ping": {"type": "object", "properties": {
                "success": {"type": "boolean"}, "status": {"type": ["integer", "null"]}, "duration_ms": {"type": "integer"},
                "summary": {"type": "string"}, "request_url": {"type": "string"}, "request_headers": {"type": "array"},
                "request_body": {"type": "string"}, "response_headers": {"type": "array"}, "response_body": {"type": "string"}
            }},
            "Window": {"type": "object", "required": ["since"], "properties": {
                "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}
            }},
            "Requeued": {"type": "object", "properties": {"requeued": {"type": "integer"}}},
            "Delivery": {"type": "object", "properties": {
                "id": {"type": "string"}, "event_id": {"type": "string"}, "webhook_id": {"type": "string"}, "topic": {"type": "string"},
                "state": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer"},
                "due_ms": {"type": "integer"}, "queue_ms": {"type": "integer"}, "schedule_start": {"type": "integer"}, "last_summary": {"type": ["string", "null"]},
                "created_at": {"type": "string"}, "updated_at": {"type": "string"}
            }},
            "Redelivered": {"type": "object", "properties": {"delivery": {"$ref": "#/components/schemas/Delivery"}}},
            "DeliveryList": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
            "Attempt": {"type": "object", "properties": {
                "id": {"type": "string"}, "delivery_id": {"type": "string"}, "webhook_id": {"type": "string"}, "number": {"type": "integer"},
                "created_at": {"type": "string"}, "duration_ms": {"type": "integer"}, "summary": {"type": "string"}, "success": {"type": "boolean"},
                "request_method": {"type": "string"}, "request_url": {"type": "string"}, "request_headers": {"type": "array"},
                "request_body": {"type": "string"}, "response_code": {"type": ["integer", "null"]}, "response_message": {"type": "string"},
                "response_headers": {"type": "array"}, "response_body": {"type": "string"}
            }},
            "DeliveryDetail": {"type": "object", "properties": {
                "delivery": {"$ref": "#/components/schemas/Delivery"},
                "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}}
            }},
            "Event": {"type": "object", "properties": {
                "id": {"type": "string"}, "created_at": {"type": "string"}, "topic": {"type": "string"}, "resource": {"type": "string"},
                "event": {"type": "string"}, "rule": {"type": "string"}, "payload": {}
            }},
            "EventList": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "RuleList": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "topic": {"type": "string"}, "methods": {"type": "array"}, "path": {"type": "string"}, "events": {"type": "integer"}
            }}},
            "Reloaded": {"type": "object", "properties": {"reloaded": {"type": "boolean"}, "rules": {"type": "integer"}, "webhooks": {"type": "integer"}, "removed": {"type": "array"}}},
            "Health": {"type": "object"},
            "Text": {"type": "string"}
        }
    })
}

#[cfg(test)]
mod tests {
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
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} is not defined");
        }
    }
}
