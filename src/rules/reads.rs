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

use std::collections::BTreeMap;

use super::expr::Needs;
use super::selector::{ReadStep, Selector};

/// The places a set of rules can read in a document (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads {
    /// The value is read as a whole: everything under it is kept.
    whole: bool,
    /// Object members read, by name.
    fields: BTreeMap<String, Reads>,
    /// What is read of an array's elements (of any of them: indices are not told apart).
    items: Option<Box<Reads>>,
}

/// Everything.
pub static EVERYTHING: Reads = Reads {
    whole: true,
    fields: BTreeMap::new(),
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
        self.fields.get(name)
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
            self.fields.entry(name.clone()).or_default().merge(reads);
        }
        if let Some(items) = &other.items {
            self.items.get_or_insert_default().merge(items);
        }
    }

    /// Adds the subtree at `path`, read as a whole.
    fn add_path(&mut self, path: &[ReadStep<'_>]) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => *self = Self::everything(),
            Some((ReadStep::Name(name), rest)) => self
                .fields
                .entry((*name).to_owned())
                .or_default()
                .add_path(rest),
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
            self.fields
                .entry(name.to_owned())
                .or_default()
                .add_needs(needs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::expr::{Expr, Scope, Want};

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
