//! `[webhook.transform]`: one webhook's own shape of an event's body.
//!
//! The same field syntax as a rule's `[rule.payload]` ([`crate::rules::shape`]), evaluated
//! over `{ payload, topic, event_id, time }` instead of the exchange, so one receiver can get
//! a WooCommerce-shaped body and another a compact one from the same event. The transform is
//! kept as written (JSON) in the webhook's record and compiled once per distinct transform.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use serde_json::{Map, Value};

use crate::event::Event;
use crate::rules::expr::{EvalError, Needs, Scope, Vars};
use crate::rules::raw::{RawNode, RawNodeKind};
use crate::rules::selector::Docs;
use crate::rules::shape::Shape;

/// A compiled transform.
#[derive(Debug)]
pub struct Transform {
    shape: Shape,
    /// What the expressions read (only that is converted for them).
    needs: Needs,
}

/// Compiled transforms by their JSON text: webhooks are few and change rarely, and compiling
/// CEL on every send would cost more than the send's own work.
static COMPILED: LazyLock<Mutex<HashMap<String, Arc<Transform>>>> = LazyLock::new(Mutex::default);

/// Beyond this many distinct transforms the cache starts afresh (each is compiled again once).
const CACHE_MAX: usize = 256;

impl Transform {
    /// Checks a transform as written: a table of fields. The error names every bad field.
    pub fn compile(raw: &Value) -> Result<Self, String> {
        let RawNodeKind::Table(fields) = RawNode::from_json(raw).kind else {
            return Err(format!(
                "transform must be a table of fields, such as {{ id = \"$.payload.id\" }}; got {raw}"
            ));
        };
        let mut errors = Vec::new();
        let shape = Shape::object(fields, &Scope::transform(), "transform", &mut errors);
        if errors.is_empty() {
            let mut needs = Needs::default();
            shape.collect_needs(&mut needs);
            Ok(Self { shape, needs })
        } else {
            let messages: Vec<String> = errors.into_iter().map(|e| e.message).collect();
            Err(messages.join("; "))
        }
    }

    /// The compiled form of `raw`, compiled once.
    pub fn cached(raw: &Value) -> Result<Arc<Self>, String> {
        let key = raw.to_string();
        let mut cache = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = cache.get(&key) {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(Self::compile(raw)?);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&t));
        Ok(t)
    }

    /// The body for `event`. A field whose expression fails is `null`; the errors come back
    /// beside the value, for the log.
    pub fn apply(&self, event: &Event) -> (Value, Vec<EvalError>) {
        let time = event
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let doc = Value::Object(Map::from_iter([
            ("payload".to_owned(), event.payload.clone()),
            ("topic".to_owned(), Value::String(event.topic.clone())),
            ("event_id".to_owned(), Value::String(event.id.to_string())),
            ("time".to_owned(), Value::String(time)),
        ]));
        let mut vars = Vars::new();
        for name in ["payload", "topic", "event_id", "time"] {
            vars.set_needed(name, &doc[name], &self.needs);
        }
        let mut errors = Vec::new();
        let v = self.shape.eval_lenient(Docs::of(&doc), &vars, &mut errors);
        (v, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Topic;
    use serde_json::json;

    #[test]
    fn reshapes_an_event_over_payload_topic_id_and_time() {
        let t = Transform::compile(&json!({
            "id": "$.payload.id",
            "kind": {"expr": "topic.split('.')[1]"},
            "meta": {"event": {"expr": "event_id"}, "v": {"value": 2}},
            "bad": {"expr": "payload.missing + 1"},
        }))
        .expect("valid");
        let e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            json!({"id": 7}),
        );
        let (v, errors) = t.apply(&e);
        assert_eq!(
            v,
            json!({"id": 7, "kind": "created", "meta": {"event": e.id.to_string(), "v": 2}, "bad": null})
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = Transform::compile(&json!({"x": {"expr": "request.body"}})).unwrap_err();
        assert!(
            e.contains("transform field `x`") && e.contains("unknown variable `request`"),
            "{e}"
        );
        assert!(Transform::compile(&json!("$.payload")).is_err());
    }
}
