//! What rules can read of the exchange document, known when they are loaded.
//!
//! A [`Reads`] is a tree of the places a set of rules can read: object members by name, array
//! elements, and subtrees read as a whole. The proxy builds the exchange document only as far
//! as the candidate rules of a route read it ([`crate::capture::Exchange::into_document_reading`]):
//! a body member no rule reads is skipped while parsing, a header no rule reads is not copied.
//!
//! The tree must hold everything a rule can read, or a rule would see `null` where the app sent
//! a value. So it is built from what is certain and falls back to the whole subtree wherever a
//! read is not known statically:
//!
//! - a JSONPath of names and indices reads its node as a whole (`$.response.body.id`);
//! - any other JSONPath reads the whole subtree at its leading names and indices
//!   (`$.response.body.items[?@.ok]` reads all of `items`), and the whole document when a
//!   filter holds an absolute path (`[?@.id == $.request.body.id]`) or it starts with a
//!   descent (`$..id`);
//! - `for_each` reads its selection as a whole, so `$.item...` paths and the CEL `item` read
//!   nothing more;
//! - CEL expressions read their [`Needs`]: static member chains, the whole value wherever it is
//!   indexed dynamically, iterated, compared or passed to a function.
//!
//! Array elements are kept in place, each pruned the same way (so indices and lengths do not
//! change), and an array a read expects to be an object is kept whole.

use super::expr::Needs;
use super::selector::{ReadStep, Selector};

/// The places a set of rules can read in a document (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads {
    /// The value is read as a whole: everything under it is kept.
    whole: bool,
    /// Object members read, sorted by name. (A sorted `Vec` rather than a `BTreeMap`: a route
    /// keeps one tree per method, and 40,000 routes of three or four paths each held ~4 KiB
    /// of mostly empty B-tree nodes apiece.)
    fields: Vec<(String, Reads)>,
    /// What is read of an array's elements (of any of them: indices are not told apart).
    items: Option<Box<Reads>>,
}

/// Everything.
pub static EVERYTHING: Reads = Reads {
    whole: true,
    fields: Vec::new(),
    items: None,
};

impl Reads {
    /// Reads of the whole document: the document is built in full.
    pub fn everything() -> Self {
        EVERYTHING.clone()
    }

    /// Whether the value is read as a whole.
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// What is read of the member `name`, if anything.
    pub fn field(&self, name: &str) -> Option<&Reads> {
        if self.whole {
            return Some(&EVERYTHING);
        }
        self.fields
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| &self.fields[at].1)
    }

    /// The entry for the member `name`, added empty if it is not there yet.
    fn field_mut(&mut self, name: &str) -> &mut Reads {
        let at = match self.fields.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(at) => at,
            Err(at) => {
                self.fields.insert(at, (name.to_owned(), Reads::default()));
                at
            }
        };
        &mut self.fields[at].1
    }

    /// What is read of an array's elements, when the array is read element by element only:
    /// `None` means the array is to be kept whole (it is read whole, or a read expects an
    /// object there and must see the array as it is).
    pub fn elements(&self) -> Option<&Reads> {
        match &self.items {
            Some(items) if !self.whole && self.fields.is_empty() => Some(items),
            _ => None,
        }
    }

    /// Adds what `other` reads.
    pub fn merge(&mut self, other: &Reads) {
        if self.whole {
            return;
        }
        if other.whole {
            *self = Self::everything();
            return;
        }
        for (name, reads) in &other.fields {
            self.field_mut(name).merge(reads);
        }
        if let Some(items) = &other.items {
            self.items.get_or_insert_default().merge(items);
        }
    }

    /// Gives back the spare capacity of every member list (trees are built once and kept).
    pub fn shrink(&mut self) {
        self.fields.shrink_to_fit();
        for (_, reads) in &mut self.fields {
            reads.shrink();
        }
        if let Some(items) = &mut self.items {
            items.shrink();
        }
    }

    /// Adds the subtree at `path`, read as a whole.
    fn add_path(&mut self, path: &[ReadStep<'_>]) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => *self = Self::everything(),
            Some((ReadStep::Name(name), rest)) => self.field_mut(name).add_path(rest),
            Some((ReadStep::Index, rest)) => self.items.get_or_insert_default().add_path(rest),
        }
    }

    /// Adds what a JSONPath over the exchange can read.
    pub fn add_selector(&mut self, selector: &Selector) {
        self.add_path(&selector.read_prefix());
    }

    /// Adds what CEL expressions read of their variables, which are named as the document's
    /// top-level members (`request`, `response`, `params`).
    pub fn add_needs(&mut self, needs: &Needs) {
        if self.whole {
            return;
        }
        if needs.is_whole() {
            *self = Self::everything();
            return;
        }
        for (name, needs) in needs.fields() {
            self.field_mut(name).add_needs(needs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Exchange, RequestParts, ResponseParts};
    use crate::rules::RuleSet;
    use crate::rules::expr::{Expr, Scope, Want};
    use crate::rules::raw::RawRuleFile;
    use serde_json::{Value, json};

    const RESPONSE: &str = r#"{"id": 7, "status": "paid", "total": 90.5,
        "customer": {"name": "Ada", "address": {"city": "London"}},
        "lines": [{"sku": "a", "qty": 1, "id": 1}, {"sku": "b", "qty": 2, "id": 2}],
        "notes": "long text no rule reads"}"#;

    fn exchange(method: &str, path: &str, response: &str) -> Exchange {
        let mut request_headers = http::HeaderMap::new();
        request_headers.insert("content-type", "application/json".parse().expect("valid"));
        request_headers.insert("x-tag", "vip".parse().expect("valid"));
        request_headers.insert("user-agent", "curl".parse().expect("valid"));
        let mut response_headers = http::HeaderMap::new();
        response_headers.insert("content-type", "application/json".parse().expect("valid"));
        Exchange {
            request: RequestParts {
                method: method.to_owned(),
                path: path.to_owned(),
                query: Some("page=2".to_owned()),
                headers: request_headers,
                body: Some(bytes::Bytes::from_static(
                    br#"{"email": "a@b.c", "tickets": 2}"#,
                )),
            },
            response: ResponseParts {
                status: 201,
                headers: response_headers,
                body: Some(bytes::Bytes::copy_from_slice(response.as_bytes())),
            },
        }
    }

    /// The rules' payloads over `POST /x`, after checking that the pruned document gives
    /// every candidate exactly what the full one gives; and the pruned document.
    fn evaluated(rules: &str) -> (Vec<Value>, Value) {
        payloads_of(rules, "POST", "/x")
    }

    fn payloads_of(rules: &str, method: &str, path: &str) -> (Vec<Value>, Value) {
        let file: RawRuleFile = toml::from_str(rules).expect("rule file parses");
        let mut set = RuleSet::default();
        for r in file.rule {
            set.add(r).expect("rule compiles");
        }
        let m = http::Method::from_bytes(method.as_bytes()).expect("method");
        let candidates = set.candidates(&m, path).expect("a candidate");
        let told = |doc: &mut Value| -> Vec<(String, Vec<Value>, Vec<String>)> {
            set.explain(&candidates, doc)
                .into_iter()
                .map(|e| {
                    let payloads = e.matches.into_iter().map(|m| m.event.payload).collect();
                    (e.rule.name.clone(), payloads, e.reasons)
                })
                .collect()
        };
        let mut full = exchange(method, path, RESPONSE)
            .into_document(1 << 20)
            .value;
        let mut pruned = exchange(method, path, RESPONSE)
            .into_document_for(&candidates, 1 << 20)
            .value;
        let from_full = told(&mut full);
        assert_eq!(from_full, told(&mut pruned), "pruned: {pruned}");
        let payloads = from_full.into_iter().flat_map(|(_, p, _)| p).collect();
        (payloads, pruned)
    }

    fn rule(body: &str) -> String {
        format!("[[rule]]\nname = \"r\"\ntopic = \"t.r\"\npath = \"/x\"\n{body}\n")
    }

    #[test]
    fn a_nested_field_and_array_elements_are_built_alone() {
        let (payloads, doc) = evaluated(&rule(
            "[rule.payload]\ncity = \"$.response.body.customer.address.city\"\nfirst = \"$.response.body.lines[0].sku\"\nlast = \"$.response.body.lines[-1].sku\"",
        ));
        assert_eq!(
            payloads,
            vec![json!({"city": "London", "first": "a", "last": "b"})]
        );
        assert_eq!(
            doc["response"]["body"],
            json!({"customer": {"address": {"city": "London"}}, "lines": [{"sku": "a"}, {"sku": "b"}]}),
            "elements are kept in place, pruned alike"
        );
        assert_eq!(doc["request"]["body"], Value::Null, "not read: not decoded");
        assert_eq!(doc["request"]["headers"], json!({}));
        assert_eq!(doc["request"]["query"], json!({}));
        assert_eq!(
            doc["request"]["method"], "POST",
            "fixed parts are always there"
        );
        assert_eq!(doc["response"]["status"], 201);
    }

    #[test]
    fn a_subtree_read_whole_is_built_whole() {
        let (payloads, doc) = evaluated(&rule(
            "[rule.payload]\ncustomer = \"$.response.body.customer\"\nemail = \"$.request.body.email\"",
        ));
        let customer = json!({"name": "Ada", "address": {"city": "London"}});
        assert_eq!(
            payloads,
            vec![json!({"customer": customer, "email": "a@b.c"})]
        );
        assert_eq!(doc["response"]["body"], json!({"customer": customer}));
        assert_eq!(doc["request"]["body"], json!({"email": "a@b.c"}));
        // No payload at all: the whole response body.
        let (payloads, doc) = evaluated(&rule(""));
        let whole: Value = serde_json::from_str(RESPONSE).expect("json");
        assert_eq!(payloads, vec![whole.clone()]);
        assert_eq!(doc["response"]["body"], whole);
    }

    #[test]
    fn cel_reads_are_built() {
        let (payloads, doc) = evaluated(&rule(
            "when = \"response.body.total > 10.0 && request.headers['x-tag'] == 'vip'\"\n[rule.payload]\nname = { expr = \"response.body.customer.name.upperAscii()\" }\nskus = { expr = \"response.body.lines.map(l, l.sku)\" }",
        ));
        assert_eq!(payloads, vec![json!({"name": "ADA", "skus": ["a", "b"]})]);
        assert_eq!(doc["request"]["headers"], json!({"x-tag": "vip"}));
        let body = &doc["response"]["body"];
        assert_eq!(body["customer"], json!({"name": "Ada"}));
        assert_eq!(
            body["lines"],
            serde_json::from_str::<Value>(RESPONSE).expect("json")["lines"],
            "iterated: whole"
        );
        assert_eq!(body.get("notes"), None);
    }

    #[test]
    fn for_each_reads_its_items_whole() {
        let (payloads, doc) = evaluated(&rule(
            "for_each = \"$.response.body.lines\"\nwhen = [{ path = \"$.item.qty\", gt = 1 }]\ndedupe = { key = \"item.sku\", window = \"1m\" }\n[rule.payload]\nsku = \"$.item.sku\"\norder = \"$.response.body.id\"",
        ));
        assert_eq!(payloads, vec![json!({"sku": "b", "order": 7})]);
        let all: Value = serde_json::from_str(RESPONSE).expect("json");
        assert_eq!(
            doc["response"]["body"],
            json!({"id": 7, "lines": all["lines"]})
        );
    }

    #[test]
    fn wildcards_filters_and_descents_read_their_subtree() {
        let (payloads, doc) = evaluated(&rule(
            "[rule.payload]\nskus = \"$.response.body.lines[*].sku\"\nbig = \"$.response.body.lines[?@.qty > 1].id\"",
        ));
        assert_eq!(payloads, vec![json!({"skus": ["a", "b"], "big": 2})]);
        let all: Value = serde_json::from_str(RESPONSE).expect("json");
        assert_eq!(doc["response"]["body"], json!({"lines": all["lines"]}));
        let (payloads, doc) = evaluated(&rule("[rule.payload]\nids = \"$.response.body..id\""));
        assert_eq!(payloads, vec![json!({"ids": [7, 1, 2]})]);
        assert_eq!(
            doc["response"]["body"], all,
            "a descent reads the whole body"
        );
        let (_, doc) = evaluated(&rule(
            "[rule.payload]\nmine = \"$.response.body.lines[?@.sku == $.request.body.email]\"",
        ));
        assert_eq!(
            doc["request"]["headers"]["user-agent"], "curl",
            "a filter with an absolute path reads the whole document"
        );
    }

    #[test]
    fn each_method_builds_what_its_own_candidates_read() {
        let rules = "[[rule]]\nname = \"put\"\ntopic = \"t.put\"\nmethod = \"PUT\"\npath = \"/x/{id}\"\npayload = \"$.response.body\"\n\n\
                     [[rule]]\nname = \"delete\"\ntopic = \"t.delete\"\nmethod = \"DELETE\"\npath = \"/x/{n}\"\n[rule.payload]\nid = \"$.params.n\"\n\n\
                     [[rule]]\nname = \"any\"\ntopic = \"t.any\"\npath = \"/x/{id}\"\n[rule.payload]\nref = \"$.response.body.customer.name\"\n";
        let (payloads, doc) = payloads_of(rules, "DELETE", "/x/7");
        assert_eq!(payloads, vec![json!({"id": "7"}), json!({"ref": "Ada"})]);
        assert_eq!(
            doc["response"]["body"],
            json!({"customer": {"name": "Ada"}})
        );
        let (_, doc) = payloads_of(rules, "PUT", "/x/7");
        assert_eq!(
            doc["response"]["body"],
            serde_json::from_str::<Value>(RESPONSE).expect("json")
        );
        let (_, doc) = payloads_of(rules, "PATCH", "/x/7");
        assert_eq!(
            doc["response"]["body"],
            json!({"customer": {"name": "Ada"}})
        );
    }

    fn of_paths(paths: &[&str]) -> Reads {
        let mut r = Reads::default();
        for p in paths {
            r.add_selector(&Selector::parse(p).expect("valid path"));
        }
        r
    }

    #[test]
    fn plain_paths_read_their_node_and_others_their_plain_prefix() {
        let r = of_paths(&["$.response.body.id", "$.response.body.items[-1].sku"]);
        let body = r
            .field("response")
            .and_then(|r| r.field("body"))
            .expect("body read");
        assert!(!body.is_whole());
        assert!(body.field("id").is_some_and(Reads::is_whole));
        let items = body.field("items").expect("items read");
        assert!(!items.is_whole());
        assert!(
            items
                .elements()
                .and_then(|e| e.field("sku"))
                .is_some_and(Reads::is_whole)
        );
        assert!(body.field("other").is_none());
        assert!(r.field("request").is_none());

        let r = of_paths(&["$.response.body.items[?@.ok == true].id"]);
        let items = r
            .field("response")
            .and_then(|r| r.field("body"))
            .and_then(|r| r.field("items"));
        assert!(items.is_some_and(Reads::is_whole), "{r:?}");
        assert!(of_paths(&["$..id"]).is_whole());
        assert!(of_paths(&["$.response.body.items[?@.id == $.request.body.id]"]).is_whole());
        assert!(of_paths(&["$"]).is_whole());
    }

    #[test]
    fn an_array_also_read_by_name_is_kept_whole() {
        let r = of_paths(&["$.a[0].x", "$.a.b"]);
        assert_eq!(r.field("a").map(Reads::elements), Some(None));
    }

    #[test]
    fn cel_needs_are_read_at_their_variables() {
        let e = Expr::compile(
            "response.body.total > 10.0 && request.headers['x-tag'] == 'a' && size(response.body.lines) > 0",
            &Scope::exchange(false),
            Want::Bool,
        )
        .expect("valid");
        let mut r = Reads::default();
        r.add_needs(e.needs());
        let response = r.field("response").expect("response read");
        let body = response.field("body").expect("body read");
        assert!(body.field("total").is_some_and(Reads::is_whole));
        assert!(body.field("lines").is_some_and(Reads::is_whole));
        assert!(body.field("status").is_none());
        assert!(response.field("headers").is_none());
        let headers = r
            .field("request")
            .and_then(|r| r.field("headers"))
            .expect("headers read");
        assert!(headers.field("x-tag").is_some() && headers.field("x-other").is_none());
    }
}
