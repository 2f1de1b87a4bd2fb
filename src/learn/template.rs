//! Path templates inferred from the paths seen: segments that vary become `{params}`.
//!
//! All paths go into one tree of segments. At each node, children that look like values are
//! merged into one parameter child: numbers, UUIDs, long hex, codes such as `QVMCL` or `T-1001`
//! (upper-case or mixed letters and digits), and slugs such as `summer-night` when a plural
//! collection has several of them (or ids beside them). A plural collection with more than
//! [`MANY_VALUES`] distinct children takes them all as values (the root, `/api` or `/v1` never
//! do: many collections side by side stay names). Fixed segments stay, so
//! `/orders/new` and `/orders/{order}` are two templates, which the router tells apart as
//! hooktap's does (the literal wins).
//!
//! A parameter is named after the collection it follows, singular: `/orders/17` →
//! `/orders/{order}`; without a collection before it, `{id}`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::naming;

/// Beyond this many distinct children, a node's children are values, whatever they look like.
pub const MANY_VALUES: usize = 8;

/// Paths deeper than this are not put into the tree (its walks recurse once per segment, and a
/// hostile recording could hold a path of 100,000 segments); their templates come from
/// [`Templates::of`], segment by segment.
pub const MAX_DEPTH: usize = 64;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A fixed segment; `collection` when items below it were seen (`/orders/{order}`).
    Literal { text: String, collection: bool },
    /// A `{name}` parameter.
    Param(String),
}

/// A template, e.g. `/orders/{order}/refund`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// The template as rules write it.
    pub fn text(&self) -> String {
        if self.segments.is_empty() {
            return "/".into();
        }
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal { text, .. } => s.push_str(text),
                Segment::Param(name) => {
                    s.push('{');
                    s.push_str(name);
                    s.push('}');
                }
            }
        }
        s
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal { .. } => None,
        })
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: BTreeMap<String, Node>,
    param: Option<Box<Node>>,
}

impl Node {
    fn insert(&mut self, segments: &[&str]) {
        if let Some((first, rest)) = segments.split_first() {
            self.literals
                .entry((*first).to_owned())
                .or_default()
                .insert(rest);
        }
    }

    fn merge(&mut self, other: Node) {
        for (k, v) in other.literals {
            self.literals.entry(k).or_default().merge(v);
        }
        if let Some(p) = other.param {
            self.param.get_or_insert_with(Box::default).merge(*p);
        }
    }

    /// Turns value-like children into the parameter child, then does the same below.
    fn generalize(&mut self, parent: Option<&str>) {
        let keys: Vec<&String> = self.literals.keys().collect();
        let ids = keys.iter().filter(|k| looks_like_id(k)).count();
        let slugs = keys.iter().filter(|k| looks_like_slug(k)).count();
        let plural_parent = parent.is_some_and(naming::is_plural);
        let take_slugs = plural_parent && (slugs >= 3 || (slugs >= 2 && ids > 0));
        // Only below a plural collection: an API root or `/api` with many collections keeps
        // them apart (`/api/orders` and `/api/users` are not one `{id}`).
        let take_all = plural_parent && keys.len() > MANY_VALUES;
        let values: Vec<String> = self
            .literals
            .keys()
            .filter(|k| take_all || looks_like_id(k) || (take_slugs && looks_like_slug(k)))
            .cloned()
            .collect();
        for v in values {
            if let Some(node) = self.literals.remove(&v) {
                self.param.get_or_insert_with(Box::default).merge(node);
            }
        }
        for (k, child) in &mut self.literals {
            child.generalize(Some(k));
        }
        if let Some(p) = &mut self.param {
            p.generalize(None);
        }
    }
}

/// A segment that is a value rather than a name: a number, a UUID, long hex, a code.
pub fn looks_like_id(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let letters = s.bytes().filter(u8::is_ascii_alphabetic).count();
    let word_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if digits == s.len() {
        return true;
    }
    if !word_chars {
        // Percent-encoded, `@me`, `a+b`, `{x}`: a value (names are plain words, and template
        // syntax must never come from the traffic).
        return true;
    }
    if is_uuid(s) {
        return true;
    }
    // Versions (`v2`) and names with a trailing digit (`oauth2`, `s3`) are names.
    let trailing_digit_name = s
        .strip_suffix(|c: char| c.is_ascii_digit())
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()));
    if trailing_digit_name {
        return false;
    }
    if digits > 0 && letters + digits > 0 {
        return true;
    }
    // Codes: upper-case letters (`QVMCL`, `ABC-DEF`), never how path names are written.
    let upper = s.bytes().filter(u8::is_ascii_uppercase).count();
    upper >= 3 && upper == letters
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `summer-night`, `jazz_at_the_park`: lower-case words joined, as slugs are written.
fn looks_like_slug(s: &str) -> bool {
    s.contains(['-', '_'])
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The templates of a set of paths.
#[derive(Debug)]
pub struct Templates {
    root: Node,
}

impl Templates {
    pub fn infer<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut root = Node::default();
        for p in paths {
            let segments = split(p);
            if segments.len() <= MAX_DEPTH {
                root.insert(&segments);
            }
        }
        root.generalize(None);
        Self { root }
    }

    /// The template a path falls under (any path, also one not seen while inferring).
    pub fn of(&self, path: &str) -> Template {
        let mut node = Some(&self.root);
        let mut segments = Vec::new();
        let mut names = Names::default();
        let mut previous: Option<&str> = None;
        for seg in split(path) {
            let literal = node.and_then(|n| n.literals.get(seg));
            let param = node.and_then(|n| n.param.as_deref());
            match (literal, param) {
                (Some(next), _) => {
                    segments.push(Segment::Literal {
                        text: seg.to_owned(),
                        collection: next.param.is_some(),
                    });
                    node = Some(next);
                    previous = Some(seg);
                }
                (None, Some(next)) => {
                    let base = previous.map_or_else(|| "id".to_owned(), naming::param_name);
                    segments.push(Segment::Param(names.fresh(base)));
                    node = Some(next);
                    previous = None;
                }
                (None, None) => {
                    // Not seen while inferring: judge the segment alone.
                    if looks_like_id(seg) {
                        let base = previous.map_or_else(|| "id".to_owned(), naming::param_name);
                        segments.push(Segment::Param(names.fresh(base)));
                        previous = None;
                    } else {
                        segments.push(Segment::Literal {
                            text: seg.to_owned(),
                            collection: false,
                        });
                        previous = Some(seg);
                    }
                    node = None;
                }
            }
        }
        Template { segments }
    }
}

/// Unique parameter names within one template: `{id}`, `{id2}`, … Each base name keeps its next
/// number, so naming stays linear in the number of parameters (a hostile path of 20,000 `/1`
/// segments must not take quadratic or cubic time).
#[derive(Default)]
struct Names {
    used: HashSet<String>,
    next: HashMap<String, usize>,
}

impl Names {
    fn fresh(&mut self, base: String) -> String {
        if self.used.insert(base.clone()) {
            return base;
        }
        let n = self.next.entry(base.clone()).or_insert(2);
        loop {
            let name = format!("{base}{n}");
            *n += 1;
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }
}

/// `/a/b/` → `["a", "b", ""]`; `/` → `[]`.
fn split(path: &str) -> Vec<&str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(paths: &[&str]) -> Vec<String> {
        let t = Templates::infer(paths.iter().copied());
        paths.iter().map(|p| t.of(p).text()).collect()
    }

    #[test]
    fn numbers_uuids_and_codes_become_params_named_after_their_collection() {
        assert_eq!(
            templates(&[
                "/orders/17",
                "/orders/18/refund",
                "/events/QVMCL/bookings/AB12CD",
                "/users/0b6e3f5a-4d52-4a8e-9c43-0f1b2a3c4d5e",
                "/api/v2/categories/3",
            ]),
            [
                "/orders/{order}",
                "/orders/{order}/refund",
                "/events/{event}/bookings/{booking}",
                "/users/{user}",
                "/api/v2/categories/{category}",
            ]
        );
    }

    #[test]
    fn fixed_segments_stay_beside_params() {
        assert_eq!(
            templates(&[
                "/orders/new",
                "/orders/1",
                "/orders/2",
                "/oauth2/token",
                "/files/{x}*"
            ]),
            [
                "/orders/new",
                "/orders/{order}",
                "/orders/{order}",
                "/oauth2/token",
                "/files/{file}"
            ]
        );
    }

    #[test]
    fn slugs_in_a_collection_become_params_but_actions_do_not() {
        assert_eq!(
            templates(&[
                "/concerts/summer-night",
                "/concerts/jazz-at-noon",
                "/concerts/winter-gala/tickets",
                "/orders/5/send-invoice",
                "/orders/6/mark-paid",
            ]),
            [
                "/concerts/{concert}",
                "/concerts/{concert}",
                "/concerts/{concert}/tickets",
                "/orders/{order}/send-invoice",
                "/orders/{order}/mark-paid",
            ]
        );
    }

    #[test]
    fn many_distinct_names_are_values_and_names_stay_unique() {
        let words = [
            "rock", "jazz", "pop", "folk", "soul", "punk", "metal", "blues", "opera", "indie",
        ];
        let paths: Vec<String> = words.iter().map(|w| format!("/tags/{w}")).collect();
        let t = Templates::infer(paths.iter().map(String::as_str));
        assert_eq!(t.of("/tags/anything").text(), "/tags/{tag}");
        // A path deep enough to overflow a recursive walk is judged segment by segment.
        let deep = "/a".repeat(200_000);
        let t = Templates::infer([deep.as_str(), "/b/1"]);
        assert_eq!(t.of(&deep).segments.len(), 200_000);
        assert_eq!(t.of("/b/2").text(), "/b/{b}");
        assert_eq!(t.of("/1/2").text(), "/{id}/{id2}");
    }

    #[test]
    fn many_collections_under_an_api_prefix_or_the_root_stay_names() {
        let collections = [
            "orders",
            "users",
            "products",
            "carts",
            "invoices",
            "refunds",
            "coupons",
            "reviews",
            "shipments",
            "payments",
        ];
        let mut paths: Vec<String> = collections.iter().map(|c| format!("/api/{c}")).collect();
        paths.extend(collections.iter().map(|c| format!("/{c}")));
        paths.extend(
            [
                "/favicon.ico",
                "/main.js",
                "/robots.txt",
                "/styles.css",
                "/index.html",
            ]
            .map(String::from),
        );
        let t = Templates::infer(paths.iter().map(String::as_str));
        for p in &paths {
            assert_eq!(&t.of(p).text(), p);
        }
        assert_eq!(t.of("/api/orders/17").text(), "/api/orders/{order}");
    }

    #[test]
    fn a_huge_path_of_values_is_named_in_linear_time() {
        // Quadratic-per-segment naming made this hang; finishing at all is the check.
        let huge = "/1".repeat(20_000);
        let t = Templates::infer([huge.as_str(), "/orders/1"]);
        let template = t.of(&huge);
        let names: Vec<&str> = template.params().collect();
        assert_eq!(names.len(), 20_000);
        assert_eq!(names[0], "id");
        assert_eq!(names[1], "id2");
        assert_eq!(names[19_999], "id20000");
        // `{id2}` taken by a base of its own does not repeat.
        let mut names = Names::default();
        assert_eq!(names.fresh("id".into()), "id");
        assert_eq!(names.fresh("id2".into()), "id2");
        assert_eq!(names.fresh("id".into()), "id3");
    }
}
