//! Names by REST convention: singular resources, past-tense events, parameter names.
//!
//! A POST to a collection creates (`order.created`), PUT/PATCH (or POST) on an item updates,
//! DELETE deletes, and a POST to an item's action is that action: `order.refunded` where the
//! action is a simple verb this module knows, else the action's own word (`order.send_invoice`).

use super::template::{Segment, Template};

/// Verbs whose past tense is not the `-ed` rule, or whose last consonant doubles.
const IRREGULAR: &[(&str, &str)] = &[
    ("pay", "paid"),
    ("prepay", "prepaid"),
    ("send", "sent"),
    ("resend", "resent"),
    ("buy", "bought"),
    ("sell", "sold"),
    ("hold", "held"),
    ("make", "made"),
    ("set", "set"),
    ("reset", "reset"),
    ("split", "split"),
    ("put", "put"),
    ("shut", "shut"),
    ("cancel", "cancelled"),
    ("submit", "submitted"),
    ("resubmit", "resubmitted"),
    ("commit", "committed"),
    ("admit", "admitted"),
    ("transfer", "transferred"),
    ("refer", "referred"),
    ("ship", "shipped"),
    ("stop", "stopped"),
    ("plan", "planned"),
    ("drop", "dropped"),
    ("tag", "tagged"),
    ("ban", "banned"),
    ("unban", "unbanned"),
    ("pin", "pinned"),
    ("unpin", "unpinned"),
    ("scan", "scanned"),
    ("check-in", "checked_in"),
    ("checkin", "checked_in"),
    ("check_in", "checked_in"),
    ("check-out", "checked_out"),
    ("check_out", "checked_out"),
    ("log-in", "logged_in"),
    ("login", "logged_in"),
    ("logout", "logged_out"),
    ("sign", "signed"),
];

/// Simple action verbs: an action path segment that is one of these is an event in the past
/// tense (`refund` → `refunded`); any other keeps its own word.
const VERBS: &[&str] = &[
    "accept",
    "activate",
    "add",
    "approve",
    "archive",
    "assign",
    "attach",
    "authorize",
    "block",
    "book",
    "cancel",
    "capture",
    "charge",
    "check-in",
    "checkin",
    "check_in",
    "check-out",
    "check_out",
    "claim",
    "clone",
    "close",
    "complete",
    "confirm",
    "copy",
    "deactivate",
    "decline",
    "delete",
    "deliver",
    "deny",
    "detach",
    "disable",
    "dispatch",
    "dispute",
    "download",
    "duplicate",
    "enable",
    "end",
    "escalate",
    "expire",
    "export",
    "finalize",
    "finish",
    "flag",
    "follow",
    "freeze",
    "fulfill",
    "hide",
    "hold",
    "import",
    "invite",
    "issue",
    "join",
    "leave",
    "like",
    "lock",
    "login",
    "logout",
    "mark",
    "merge",
    "move",
    "notify",
    "open",
    "pause",
    "pay",
    "prepay",
    "print",
    "process",
    "publish",
    "rate",
    "reactivate",
    "redeem",
    "refund",
    "register",
    "reject",
    "release",
    "remind",
    "remove",
    "renew",
    "reopen",
    "reply",
    "report",
    "request",
    "resend",
    "reserve",
    "reset",
    "resolve",
    "restore",
    "resubmit",
    "resume",
    "retry",
    "return",
    "reverse",
    "review",
    "revoke",
    "schedule",
    "scan",
    "send",
    "settle",
    "share",
    "ship",
    "show",
    "sign",
    "split",
    "start",
    "stop",
    "submit",
    "subscribe",
    "suspend",
    "sync",
    "transfer",
    "unarchive",
    "unassign",
    "unblock",
    "unfollow",
    "unfreeze",
    "unlock",
    "unpublish",
    "unsubscribe",
    "update",
    "upgrade",
    "downgrade",
    "upload",
    "validate",
    "verify",
    "void",
    "vote",
    "withdraw",
    "ban",
    "unban",
    "pin",
    "unpin",
    "tag",
    "drop",
    "plan",
    "buy",
    "sell",
    "make",
    "commit",
    "admit",
    "refer",
    "set",
    "put",
    "shut",
    "approve",
];

/// Whether a word reads as a plural collection name (`orders`, `categories`, not `status`).
pub fn is_plural(word: &str) -> bool {
    let w = word.to_ascii_lowercase();
    if w == "people" || w == "children" || w == "data" || w == "media" {
        return true;
    }
    w.len() > 2
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
}

/// `orders` → `order`, `categories` → `category`, `addresses` → `address`, `people` → `person`.
pub fn singular(word: &str) -> String {
    let w = word.to_ascii_lowercase();
    match w.as_str() {
        "people" => return "person".into(),
        "children" => return "child".into(),
        "data" | "media" => return w,
        _ => {}
    }
    if !is_plural(&w) {
        return w;
    }
    if let Some(stem) = w.strip_suffix("ies") {
        return format!("{stem}y");
    }
    for suffix in ["sses", "xes", "ches", "shes", "zzes"] {
        if let Some(stem) = w.strip_suffix(suffix) {
            return format!("{stem}{}", &suffix[..suffix.len() - 2]);
        }
    }
    w[..w.len() - 1].to_owned()
}

/// A topic word: lower-case `[a-z0-9_]`, other characters as `_`, never empty.
pub fn topic_word(word: &str) -> String {
    let mut out = String::new();
    for c in word.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_owned();
    if out.is_empty() {
        "resource".into()
    } else {
        out
    }
}

/// The name of a parameter that follows the segment `previous`: `orders` → `order`.
pub fn param_name(previous: &str) -> String {
    let word = topic_word(&singular(previous));
    if word.starts_with(|c: char| c.is_ascii_digit()) {
        format!("p{word}")
    } else {
        word
    }
}

/// The past tense of a simple verb this module knows: `refund` → `refunded`.
pub fn past(verb: &str) -> Option<String> {
    let v = verb.to_ascii_lowercase();
    if !VERBS.contains(&v.as_str()) {
        return None;
    }
    if let Some((_, p)) = IRREGULAR.iter().find(|(k, _)| *k == v) {
        return Some((*p).to_owned());
    }
    let v = topic_word(&v);
    Some(if v.ends_with('e') {
        format!("{v}d")
    } else if let Some(stem) = v
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        format!("{stem}ied")
    } else {
        format!("{v}ed")
    })
}

/// What a write does, by REST convention.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Naming {
    /// `order`.
    pub resource: String,
    /// `created`, `updated`, `deleted`, `refunded`, `send_invoice`.
    pub event: String,
    /// The resource qualified by its parent collection (`shop_order`), for when two templates
    /// would otherwise share a topic.
    pub qualified: Option<String>,
}

impl Naming {
    pub fn topic(&self) -> String {
        format!("{}.{}", self.resource, self.event)
    }
}

/// The literal before segment `i` that names a resource, and the one before that.
fn resource_before(segments: &[Segment], i: usize) -> (Option<String>, Option<String>) {
    let mut found = segments[..i].iter().rev().filter_map(|s| match s {
        Segment::Literal { text, .. } if !is_prefix_word(text) => Some(topic_word(&singular(text))),
        _ => None,
    });
    (found.next(), found.next())
}

/// Segments that are API furniture, never a resource: `api`, `v2`, `rest`.
fn is_prefix_word(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s == "api"
        || s == "rest"
        || s.is_empty()
        || (s.starts_with('v') && s.len() > 1 && s[1..].bytes().all(|b| b.is_ascii_digit()))
}

fn qualify(parent: Option<String>, resource: &str) -> Option<String> {
    parent.map(|p| format!("{p}_{resource}"))
}

/// Names a write to `template` with `method` (POST, PUT, PATCH or DELETE).
pub fn name(template: &Template, method: &str) -> Naming {
    let segs = &template.segments;
    let n = segs.len();
    let naming = |resource: String, event: &str, parent: Option<String>| Naming {
        qualified: qualify(parent, &resource),
        resource,
        event: event.to_owned(),
    };
    let Some(last) = segs.last() else {
        return naming("root".into(), event_for(method), None);
    };
    match (method, last) {
        ("POST", Segment::Literal { text, collection }) if !is_prefix_word(text) => {
            let action = !collection && !is_plural(text) && n >= 2;
            if !action {
                let (parent, _) = resource_before(segs, n - 1);
                return naming(topic_word(&singular(text)), "created", parent);
            }
            // An action: on the item before it (`/orders/{order}/refund`) or on a named
            // resource (`/cart/checkout`).
            let (resource, parent) = resource_before(segs, n - 1);
            let event = past(text).unwrap_or_else(|| topic_word(text));
            match resource {
                Some(r) => naming(r, &event, parent),
                None => naming(topic_word(text), "created", None),
            }
        }
        (_, Segment::Literal { text, .. }) if !is_prefix_word(text) => {
            let (parent, _) = resource_before(segs, n - 1);
            naming(topic_word(&singular(text)), event_for(method), parent)
        }
        _ => {
            let (resource, parent) = resource_before(segs, n);
            naming(
                resource.unwrap_or_else(|| "resource".into()),
                event_for(method),
                parent,
            )
        }
    }
}

fn event_for(method: &str) -> &'static str {
    match method {
        "DELETE" => "deleted",
        "POST" => "created",
        _ => "updated",
    }
}

/// The event a POST to an item (no action segment) is: an update.
pub fn post_to_item(template: &Template) -> bool {
    matches!(template.segments.last(), Some(Segment::Param(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::template::Templates;

    fn topic(paths: &[&str], method: &str, path: &str) -> String {
        let t = Templates::infer(paths.iter().copied());
        let template = t.of(path);
        let mut n = name(&template, method);
        if method == "POST" && post_to_item(&template) {
            n.event = "updated".into();
        }
        n.topic()
    }

    #[test]
    fn rest_conventions() {
        let seen = [
            "/orders",
            "/orders/1",
            "/orders/2/refund",
            "/orders/3/send-invoice",
            "/shops/ABCD/orders",
            "/api/v1/categories",
            "/cart/checkout",
            "/login",
            "/orders/4/items",
            "/orders/4/items/9",
        ];
        assert_eq!(topic(&seen, "POST", "/orders"), "order.created");
        assert_eq!(topic(&seen, "PATCH", "/orders/1"), "order.updated");
        assert_eq!(topic(&seen, "PUT", "/orders/1"), "order.updated");
        assert_eq!(topic(&seen, "POST", "/orders/1"), "order.updated");
        assert_eq!(topic(&seen, "DELETE", "/orders/1"), "order.deleted");
        assert_eq!(topic(&seen, "POST", "/orders/2/refund"), "order.refunded");
        assert_eq!(
            topic(&seen, "POST", "/orders/3/send-invoice"),
            "order.send_invoice"
        );
        assert_eq!(topic(&seen, "POST", "/shops/ABCD/orders"), "order.created");
        assert_eq!(
            topic(&seen, "POST", "/api/v1/categories"),
            "category.created"
        );
        assert_eq!(topic(&seen, "POST", "/cart/checkout"), "cart.checkout");
        assert_eq!(topic(&seen, "POST", "/login"), "login.created");
        assert_eq!(topic(&seen, "POST", "/orders/4/items"), "item.created");
        assert_eq!(topic(&seen, "DELETE", "/orders/4/items/9"), "item.deleted");
    }

    #[test]
    fn words() {
        for (plural, one) in [
            ("orders", "order"),
            ("categories", "category"),
            ("addresses", "address"),
            ("boxes", "box"),
            ("matches", "match"),
            ("people", "person"),
            ("status", "status"),
        ] {
            assert_eq!(singular(plural), one);
        }
        for (verb, done) in [
            ("refund", "refunded"),
            ("cancel", "cancelled"),
            ("approve", "approved"),
            ("pay", "paid"),
            ("ship", "shipped"),
            ("verify", "verified"),
            ("check-in", "checked_in"),
        ] {
            assert_eq!(past(verb).as_deref(), Some(done));
        }
        assert_eq!(past("checkout"), None);
        assert_eq!(topic_word("Send-Invoice!"), "send_invoice");
    }
}
