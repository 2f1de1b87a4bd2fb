//! Bounded body copies and the exchange document that rules are evaluated against.
//!
//! The proxy copies candidate bodies chunk by chunk into a [`BodyCapture`] that stops copying
//! at its limit. When the exchange is complete, [`Exchange::into_document`] decodes the copies
//! (`Content-Encoding`, then JSON / form / text) and builds the one JSON document that every
//! JSONPath in the rules is evaluated over. This module never touches the bytes the client
//! receives: it only ever works on its own copy.
//!
//! The proxy builds the document only as far as its candidate rules read it
//! ([`Exchange::into_document_reading`], [`Reads`]): JSON members no rule reads are parsed
//! (validated exactly as a full parse validates them) but not built, headers no rule reads are
//! not copied, and a body no rule reads is not decoded. Rules see the same values either way.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::rules::reads::{EVERYTHING, Reads};
use crate::rules::router::Candidates;

/// A copy of a body as it streams by, bounded by `limit` bytes.
#[derive(Debug)]
pub struct BodyCapture {
    buf: BytesMut,
    limit: usize,
    overflowed: bool,
}

impl BodyCapture {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
            overflowed: false,
        }
    }

    /// Appends a chunk; once the body exceeds the limit the copy is dropped and stays empty.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + chunk.len() > self.limit {
            self.overflowed = true;
            self.buf = BytesMut::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Forgets everything copied so far (a new upstream attempt re-sends the body).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflowed = false;
    }

    /// True when the body was bigger than the limit and so was not captured.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn into_bytes(self) -> Option<Bytes> {
        (!self.overflowed).then(|| self.buf.freeze())
    }
}

/// Why a captured body is `null` in the exchange document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("body larger than max_capture_bytes")]
    TooBig,
    #[error("decoded body larger than max_decoded_bytes")]
    DecodedTooBig,
    #[error("unsupported Content-Encoding `{0}`")]
    UnsupportedEncoding(String),
    #[error("cannot decode {encoding} body: {message}")]
    Undecodable { encoding: String, message: String },
}

impl SkipReason {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooBig => "too_big",
            Self::DecodedTooBig => "decoded_too_big",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::Undecodable { .. } => "undecodable",
        }
    }
}

/// Turns a captured body into the JSON value rules see.
///
/// `Content-Encoding` (gzip, deflate, br, identity, or a chain of them) is undone first, never
/// producing more than `max_decoded` bytes. Then JSON content types are parsed as JSON (falling
/// back to a string when the body is not valid JSON), `application/x-www-form-urlencoded` becomes
/// an object of strings (a repeated key becomes an array of strings), and anything else a string
/// (invalid UTF-8 is replaced). An empty body is `null`.
pub fn decode_body(
    raw: &[u8],
    headers: &HeaderMap,
    max_decoded: usize,
) -> Result<Value, SkipReason> {
    decode_body_reading(raw, headers, max_decoded, &EVERYTHING)
}

/// [`decode_body`], building of a JSON body only what `reads` reads (see [`parse_json_reading`]).
pub fn decode_body_reading(
    raw: &[u8],
    headers: &HeaderMap,
    max_decoded: usize,
    reads: &Reads,
) -> Result<Value, SkipReason> {
    let body = decode_content(raw, headers, max_decoded)?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if content_type == "application/json" || content_type.ends_with("+json") {
        if let Ok(v) = parse_json_reading(&body, reads) {
            return Ok(v);
        }
    } else if content_type == "application/x-www-form-urlencoded" {
        return Ok(pairs_to_object(form_urlencoded::parse(&body)));
    }
    Ok(Value::String(String::from_utf8_lossy(&body).into_owned()))
}

/// Undoes a body's `Content-Encoding` (gzip, deflate, br, identity, or a chain of them),
/// never producing more than `max_decoded` bytes: the bytes the app meant.
pub fn decode_content<'a>(
    raw: &'a [u8],
    headers: &HeaderMap,
    max_decoded: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, SkipReason> {
    let mut body = std::borrow::Cow::Borrowed(raw);
    // Encodings are listed in the order they were applied: undo them from the last.
    let encodings: Vec<String> = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity")
        .collect();
    for encoding in encodings.iter().rev() {
        body = std::borrow::Cow::Owned(decompress(&body, encoding, max_decoded)?);
    }
    Ok(body)
}

fn decompress(body: &[u8], encoding: &str, max: usize) -> Result<Vec<u8>, SkipReason> {
    let reader: Box<dyn Read + '_> = match encoding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        // `deflate` is meant to be zlib-wrapped, but servers send raw deflate too.
        "deflate" if body.first().is_some_and(|b| b & 0x0f == 8) => {
            Box::new(flate2::read::ZlibDecoder::new(body))
        }
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(body)),
        "br" => Box::new(brotli::Decompressor::new(body, 4096)),
        other => return Err(SkipReason::UnsupportedEncoding(other.to_owned())),
    };
    let mut out = Vec::new();
    // Read one byte past the cap to tell "exactly max" from "more than max": a compression
    // bomb stops here instead of exhausting memory.
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| SkipReason::Undecodable {
            encoding: encoding.to_owned(),
            message: e.to_string(),
        })?;
    if out.len() > max {
        return Err(SkipReason::DecodedTooBig);
    }
    Ok(out)
}

/// Key/value pairs as a JSON object: one value is a string, a repeated key an array of strings.
fn pairs_to_object<'a>(
    pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
) -> Value {
    let mut map = Map::new();
    for (k, v) in pairs {
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            None => {
                map.insert(k.into_owned(), v);
            }
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
        }
    }
    Value::Object(map)
}

/// JSON text as a value holding only what `reads` reads: members no read reaches are left
/// out (arrays keep all their elements, each pruned alike; see [`Reads`]).
///
/// It fails exactly when `serde_json::from_slice` fails: what is left out is still parsed
/// with the same checks (UTF-8 and escapes in strings, number range, nesting depth), without
/// being built. (`serde::de::IgnoredAny` would skip faster but does not check strings' UTF-8,
/// numbers' range or the nesting limit, so a body the full parse refuses, and rules then see
/// as text, would parse.)
pub fn parse_json_reading(bytes: &[u8], reads: &Reads) -> serde_json::Result<Value> {
    // JSON text is UTF-8 as a whole (outside strings no byte above 0x7f is valid either), so
    // one check of the whole text spares the parser checking each string on its own: a third
    // of its work on a typical order body. Text that is not UTF-8 gets the parse's own error.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return serde_json::from_slice(bytes);
    };
    if reads.is_whole() {
        return serde_json::from_str(text);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match Pruned(reads)
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
    {
        Ok(value) => Ok(value),
        // The full parse decides what a body it would refuse, or read as serde_json's own
        // private tokens (see [`PRIVATE_KEY`]), is: a second parse only for such bodies.
        Err(_) => serde_json::from_str(text),
    }
}

/// Deserialises a value keeping what the [`Reads`] read.
struct Pruned<'r>(&'r Reads);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.is_whole() {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

/// Scalars as serde_json's own `Value` makes them; objects and arrays pruned.
impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        match self.0.elements() {
            Some(each) => {
                while let Some(v) = seq.next_element_seed(Pruned(each))? {
                    items.push(v);
                }
            }
            None => {
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(v);
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut first = true;
        while let Some(key) = map.next_key_seed(Key)? {
            if std::mem::take(&mut first) && key.starts_with(PRIVATE_KEY) {
                return Err(serde::de::Error::custom(PRIVATE_KEY));
            }
            match self.0.field(&key) {
                // `insert` as serde_json's own: a repeated key's last value wins.
                Some(reads) => {
                    let v = map.next_value_seed(Pruned(reads))?;
                    out.insert(key.into_owned(), v);
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Value::Object(out))
    }
}

/// The prefix of the keys by which serde_json marks its own values: with its `raw_value` or
/// `arbitrary_precision` feature on (a dependency turns `raw_value` on), an object whose first
/// key is `$serde_json::private::RawValue` (or `…::Number`) is read by the full parse as the
/// value that key holds. The pruned parse leaves such bodies to the full parse.
const PRIVATE_KEY: &str = "$serde_json::private::";

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A value parsed and checked as a full parse would, and dropped: strings are borrowed from
/// the text (or unescaped into the parser's scratch space), nothing is allocated.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key_seed(Key)? {
            Some(key) if key.starts_with(PRIVATE_KEY) => {
                return Err(serde::de::Error::custom(PRIVATE_KEY));
            }
            Some(_) => map.next_value_seed(Skip)?,
            None => return Ok(()),
        }
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// Headers as an object keyed by lower-case name; repeated headers are joined with `, `.
pub fn headers_to_json(headers: &HeaderMap) -> Value {
    headers_reading(headers, &EVERYTHING)
}

/// [`headers_to_json`], holding only the headers `reads` reads.
fn headers_reading(headers: &HeaderMap, reads: &Reads) -> Value {
    let mut map = Map::new();
    for name in headers.keys() {
        if reads.field(name.as_str()).is_none() {
            continue;
        }
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(map)
}

/// A query string as an object of strings (a repeated key becomes an array).
pub fn query_to_json(query: Option<&str>) -> Value {
    pairs_to_object(form_urlencoded::parse(query.unwrap_or_default().as_bytes()))
}

/// The request half of an exchange, as captured.
#[derive(Debug)]
pub struct RequestParts {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// The response half of an exchange, as captured.
#[derive(Debug)]
pub struct ResponseParts {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// A complete request/response pair, ready to become the document rules see.
#[derive(Debug)]
pub struct Exchange {
    pub request: RequestParts,
    pub response: ResponseParts,
}

/// The document plus what could not be decoded (for logs and metrics).
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    pub skipped: Vec<(&'static str, SkipReason)>,
}

impl Exchange {
    /// Builds `{"request": {...}, "response": {...}, "params": {}}`; rules fill in `params`.
    pub fn into_document(self, max_decoded: usize) -> Document {
        self.into_document_reading(&EVERYTHING, max_decoded)
    }

    /// The document as far as the `candidates`' rules read it (the whole document when their
    /// reads are not known): what the proxy evaluates them over.
    pub fn into_document_for(self, candidates: &Candidates, max_decoded: usize) -> Document {
        let reads = candidates.reads.as_deref().unwrap_or(&EVERYTHING);
        self.into_document_reading(reads, max_decoded)
    }

    /// [`Exchange::into_document`], built only as far as `reads` reads it: a body no rule reads
    /// is `null` and not decoded (a body over the capture limit is still reported), headers
    /// and query parameters no rule reads are left out, JSON members no rule reads are parsed
    /// but not built. Every read in `reads` finds what it would find in the full document.
    pub fn into_document_reading(self, reads: &Reads, max_decoded: usize) -> Document {
        let mut skipped = Vec::new();
        let mut body = |side: &'static str,
                        raw: Option<Bytes>,
                        headers: &HeaderMap,
                        reads: Option<&Reads>| match (raw, reads) {
            (None, _) => {
                skipped.push((side, SkipReason::TooBig));
                Value::Null
            }
            (Some(_), None) => Value::Null,
            (Some(raw), Some(reads)) => decode_body_reading(&raw, headers, max_decoded, reads)
                .unwrap_or_else(|reason| {
                    skipped.push((side, reason));
                    Value::Null
                }),
        };
        let request_reads = reads.field("request");
        let response_reads = reads.field("response");
        let request_body = body(
            "request",
            self.request.body,
            &self.request.headers,
            part(request_reads, "body"),
        );
        let response_body = body(
            "response",
            self.response.body,
            &self.response.headers,
            part(response_reads, "body"),
        );
        let headers = |headers: &HeaderMap, reads: Option<&Reads>| match reads {
            None => Value::Object(Map::new()),
            Some(reads) => headers_reading(headers, reads),
        };
        let query = match part(request_reads, "query") {
            None => Value::Object(Map::new()),
            Some(_) => query_to_json(self.request.query.as_deref()),
        };
        // Built field by field: `json!` with expressions serialises each value into a new one,
        // which deep-copied both parsed bodies on every matched request.
        let request = object([
            ("method", Value::String(self.request.method)),
            ("path", Value::String(self.request.path)),
            ("query", query),
            (
                "headers",
                headers(&self.request.headers, part(request_reads, "headers")),
            ),
            ("body", request_body),
        ]);
        let response = object([
            ("status", Value::from(self.response.status)),
            (
                "headers",
                headers(&self.response.headers, part(response_reads, "headers")),
            ),
            ("body", response_body),
        ]);
        let value = object([
            ("request", request),
            ("response", response),
            ("params", Value::Object(Map::new())),
        ]);
        Document { value, skipped }
    }
}

/// What `reads` reads of its member `name`.
fn part<'r>(reads: Option<&'r Reads>, name: &str) -> Option<&'r Reads> {
    reads.and_then(|r| r.field(name))
}

/// An object of these fields, in this order.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                http::HeaderValue::from_str(v).expect("test header value"),
            );
        }
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).expect("write to Vec");
        enc.finish().expect("finish gzip")
    }

    #[test]
    fn capture_drops_the_copy_past_the_limit() {
        let mut c = BodyCapture::new(4);
        c.push(b"abc");
        c.push(b"de");
        assert!(c.overflowed());
        c.push(b"f");
        assert_eq!(c.into_bytes(), None);
        let mut c = BodyCapture::new(4);
        c.push(b"ab");
        c.reset();
        c.push(b"abcd");
        assert_eq!(c.into_bytes().as_deref(), Some(&b"abcd"[..]));
    }

    #[test]
    fn the_document_holds_each_part_in_its_place() {
        let exchange = Exchange {
            request: RequestParts {
                method: "POST".into(),
                path: "/orders".into(),
                query: Some("a=1&a=2".into()),
                headers: headers(&[("content-type", "application/json"), ("x-tag", "t")]),
                body: Some(Bytes::from_static(br#"{"email":"a@b.c"}"#)),
            },
            response: ResponseParts {
                status: 201,
                headers: headers(&[("content-type", "application/json")]),
                body: None,
            },
        };
        let doc = exchange.into_document(1000);
        assert_eq!(
            doc.value,
            serde_json::json!({
                "request": {
                    "method": "POST",
                    "path": "/orders",
                    "query": {"a": ["1", "2"]},
                    "headers": {"content-type": "application/json", "x-tag": "t"},
                    "body": {"email": "a@b.c"},
                },
                "response": {"status": 201, "headers": {"content-type": "application/json"}, "body": null},
                "params": {},
            })
        );
        assert_eq!(doc.skipped, vec![("response", SkipReason::TooBig)]);
        // The order rules and payloads see (serde_json keeps insertion order).
        let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
        assert_eq!(
            keys(&doc.value["request"]),
            Some(
                ["method", "path", "query", "headers", "body"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            keys(&doc.value),
            Some(["request", "response", "params"].map(String::from).to_vec())
        );
    }

    #[test]
    fn json_form_and_text_bodies() {
        let h = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(
            decode_body(br#"{"a":1}"#, &h, 100),
            Ok(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            decode_body(b"{broken", &h, 100),
            Ok(Value::String("{broken".into()))
        );
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert_eq!(
            decode_body(b"email=a%40b.c&tag=x&tag=y", &h, 100),
            Ok(serde_json::json!({"email": "a@b.c", "tag": ["x", "y"]}))
        );
        assert_eq!(
            decode_body(b"hi\xff", &HeaderMap::new(), 100),
            Ok(Value::String("hi\u{fffd}".into()))
        );
        assert_eq!(decode_body(b"", &HeaderMap::new(), 100), Ok(Value::Null));
    }

    #[test]
    fn gzip_is_decoded_and_bombs_are_capped() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        assert_eq!(
            decode_body(&gzip(br#"{"id":7}"#), &h, 100),
            Ok(serde_json::json!({"id": 7}))
        );
        let bomb = gzip(&vec![b' '; 10_000_000]);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            decode_body(&bomb, &h, 1_000_000),
            Err(SkipReason::DecodedTooBig)
        );
        assert!(matches!(
            decode_body(b"not gzip", &h, 100),
            Err(SkipReason::Undecodable { .. })
        ));
    }

    /// What a full parse refuses inside a member no rule reads is refused too (rules then see
    /// the body as text, as they would have), and what it accepts gives the same values.
    #[test]
    fn pruned_json_checks_what_it_skips_as_a_full_parse_does() {
        let mut reads = Reads::default();
        reads.add_selector(&crate::rules::selector::Selector::parse("$.a").expect("valid"));
        let deep = format!(r#"{{"a": 1, "b": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        let shallow = format!(r#"{{"a": 1, "b": {}{}}}"#, "[".repeat(100), "]".repeat(100));
        let cases: [&[u8]; 12] = [
            deep.as_bytes(),
            shallow.as_bytes(),
            b"{\"a\": 1, \"b\": \"\xff\"}",
            b"{\"a\": \"\xc3\"}",
            b"{\"a\": 1}\xff",
            "{\"a\": \"caf\u{e9} \u{1F600}\", \"b\": \"\u{fc}\"}".as_bytes(),
            br#"{"a": 1, "b": 1e400}"#,
            br#"{"a": 1, "b": "\ud800"}"#,
            br#"{"a": 1, "b": "\q"}"#,
            br#"{"a": 1} {}"#,
            br#"{"a": 1, "a": {"x": 2}, "b": [1, 2}"#,
            br#"{"a": 1, "b": 2, "a": {"x": [1.5, -3, null]}}"#,
        ];
        for text in cases {
            let full = serde_json::from_slice::<Value>(text);
            let pruned = parse_json_reading(text, &reads);
            assert_eq!(
                full.is_ok(),
                pruned.is_ok(),
                "{}: {full:?} {pruned:?}",
                String::from_utf8_lossy(text)
            );
            if let (Ok(full), Ok(pruned)) = (full, pruned) {
                assert_eq!(pruned, serde_json::json!({"a": full["a"]}));
            }
        }
        // serde_json's private tokens (its `raw_value` feature is on in this build): what the
        // full parse makes of them, whether read or skipped, escaped or not.
        let tokens: [&[u8]; 5] = [
            br#"{"$serde_json::private::RawValue": "{"a": 99}"}"#,
            br#"{"a": 1, "b": {"$serde_json::private::RawValue": "not json"}}"#,
            br#"{"a": 1, "b": {"$serde_json::private::RawValue": "not json"}}"#,
            br#"{"a": {"$serde_json::private::Number": "1"}}"#,
            br#"{"a": 1, "b": {"x": 1, "$serde_json::private::RawValue": "2"}}"#,
        ];
        for text in tokens {
            let full = serde_json::from_slice::<Value>(text);
            let pruned = parse_json_reading(text, &reads);
            assert_eq!(
                full.as_ref().ok().map(|v| &v["a"]),
                pruned.as_ref().ok().map(|v| &v["a"]),
                "{}: {full:?} {pruned:?}",
                String::from_utf8_lossy(text)
            );
        }
        // serde's IgnoredAny, for contrast, accepts the first and third: not used for that.
        let ignored = |text: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok();
        assert!(ignored(deep.as_bytes()) && ignored(b"\"\xff\""));
    }

    #[test]
    fn headers_no_rule_reads_are_left_out() {
        let h = headers(&[("x-a", "1"), ("x-b", "2"), ("x-a", "3")]);
        let mut reads = Reads::default();
        reads.add_selector(&crate::rules::selector::Selector::parse("$['x-a']").expect("valid"));
        assert_eq!(
            headers_reading(&h, &reads),
            serde_json::json!({"x-a": "1, 3"})
        );
        assert_eq!(headers_reading(&h, &EVERYTHING), headers_to_json(&h));
    }

    #[test]
    fn brotli_and_deflate_are_decoded() {
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(b"hello").expect("write to Vec");
        }
        let h = headers(&[("content-encoding", "br")]);
        assert_eq!(decode_body(&br, &h, 100), Ok(Value::String("hello".into())));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello").expect("write to Vec");
        let h = headers(&[("content-encoding", "deflate")]);
        assert_eq!(
            decode_body(&z.finish().expect("finish"), &h, 100),
            Ok(Value::String("hello".into()))
        );
    }
}
