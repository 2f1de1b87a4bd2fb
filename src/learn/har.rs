//! HTTP Archive (HAR 1.2) files into [`Sample`]s.
//!
//! The file is read as a stream, entry by entry (`log.entries[i]` is parsed on its own), so a
//! large export does not have to fit in memory twice and one malformed entry costs only itself.
//! What cannot be used is counted in [`Skipped`] with the first place it was seen: entries
//! without a response (status 0, as browsers record blocked requests), unusable URLs, bodies
//! too large, base64 that does not decode. A file that is not JSON at all is an error that
//! names the file, line and column.
//!
//! Bodies: HAR stores `content.text`, base64 when `content.encoding` is `"base64"`. Browsers
//! store the text already decompressed while the headers still say `Content-Encoding: gzip`;
//! other tools store the compressed bytes. Both are handled: a body that is valid UTF-8 is taken
//! as already decoded; other bytes are decoded when they decode, else kept as they are; the
//! header is removed either way.

use std::io::BufReader;
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::template::MAX_DEPTH;
use super::{Sample, Skipped};
use crate::capture::SkipReason;

/// A HAR file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum HarError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not a HAR file (invalid JSON): {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: not a HAR file: {message}")]
    NotHar { path: String, message: String },
}

#[derive(Debug, Deserialize)]
struct Entry {
    request: Request,
    response: Response,
}

#[derive(Debug, Deserialize)]
struct Request {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default, rename = "postData")]
    post_data: Option<PostData>,
}

#[derive(Debug, Deserialize)]
struct Header {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct PostData {
    #[serde(default, rename = "mimeType")]
    mime_type: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    params: Vec<Param>,
    /// Not in HAR 1.2, but some tools write it as for `content`.
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Param {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Response {
    status: i64,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    size: Option<i64>,
    #[serde(default, rename = "mimeType")]
    mime_type: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

/// Reads one HAR file. `max_body` caps each body (after decoding); larger ones are left out.
pub fn read(path: &Path, max_body: usize) -> Result<(Vec<Sample>, Skipped), HarError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| HarError::Io {
        path: shown.clone(),
        source,
    })?;
    let name = path
        .file_name()
        .map_or_else(|| shown.clone(), |n| n.to_string_lossy().into_owned());
    read_from(BufReader::new(file), &shown, &name, max_body)
}

/// Reads HAR JSON from `reader`; `shown` names it in errors, `name` in each sample's origin.
pub fn read_from(
    reader: impl std::io::Read,
    shown: &str,
    name: &str,
    max_body: usize,
) -> Result<(Vec<Sample>, Skipped), HarError> {
    let mut samples = Vec::new();
    let mut skipped = Skipped::default();
    let mut sink = |index: usize, entry: Value| {
        let place = format!("{name} entry {}", index + 1);
        let entry_value = entry;
        match Entry::deserialize(&entry_value) {
            Ok(entry) => {
                if let Some(s) = sample(entry, &place, max_body, &mut skipped) {
                    samples.push(s);
                }
            }
            Err(e) => {
                let (path, at, what) = unusable(&entry_value, &e);
                skipped.add(
                    format!("entry not usable: `{path}` {what}"),
                    &format!("{place}, `{at}`"),
                );
            }
        }
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let found = RootSeed { sink: &mut sink }
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| syntax(shown, &e))?;
    if !found {
        return Err(HarError::NotHar {
            path: shown.to_owned(),
            message: "there is no `log.entries` array".into(),
        });
    }
    Ok((samples, skipped))
}

/// What serde says is wrong, without the value it quotes (`invalid type: string "hunter2",
/// expected i64` → `is not i64`): a HAR file holds credentials, and messages are printed.
/// Only names from this file's own types remain, so there are few distinct messages.
fn without_value(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or_default();
    if let Some(field) = text.strip_prefix("missing field ") {
        return format!("has no {field}");
    }
    if text.starts_with("invalid type:")
        || text.starts_with("invalid value:")
        || text.starts_with("invalid length")
    {
        if let Some((_, expected)) = text.rsplit_once(", expected ") {
            let expected = if expected.starts_with("struct ") {
                "an object"
            } else {
                expected
            };
            return format!("is not {expected}");
        }
    }
    "has the wrong shape".into()
}

/// Where an entry that does not deserialize goes wrong: the JSON path without indexes (for the
/// reason, so reasons stay few), the path with them (for the place) and what is wrong there.
/// The value itself is never shown.
fn unusable(entry: &Value, e: &serde_json::Error) -> (String, String, String) {
    /// Checks one item of a list inside the part (`headers[i]`).
    type Check = fn(&Value) -> Result<(), serde_json::Error>;
    fn first_bad<T: serde::de::DeserializeOwned>(
        value: &Value,
        path: &str,
        lists: &[(&str, Check)],
    ) -> Option<(String, String, String)> {
        let err = T::deserialize(value).err()?;
        for (list, check) in lists {
            if let Some(items) = value.get(list).and_then(Value::as_array) {
                for (i, item) in items.iter().enumerate() {
                    if let Err(e) = check(item) {
                        return Some((
                            format!("{path}.{list}[]"),
                            format!("{path}.{list}[{i}]"),
                            without_value(&e),
                        ));
                    }
                }
            }
        }
        Some((path.to_owned(), path.to_owned(), without_value(&err)))
    }
    fn header(v: &Value) -> Result<(), serde_json::Error> {
        Header::deserialize(v).map(drop)
    }
    fn param(v: &Value) -> Result<(), serde_json::Error> {
        Param::deserialize(v).map(drop)
    }
    let request = entry.get("request").unwrap_or(&Value::Null);
    let response = entry.get("response").unwrap_or(&Value::Null);
    let post = request.get("postData").unwrap_or(&Value::Null);
    let content = response.get("content").unwrap_or(&Value::Null);
    if !entry.is_object() {
        return ("entry".into(), "entry".into(), without_value(e));
    }
    first_bad::<Option<PostData>>(post, "request.postData", &[("params", param)])
        .or_else(|| first_bad::<Request>(request, "request", &[("headers", header)]))
        .or_else(|| first_bad::<Option<Content>>(content, "response.content", &[]))
        .or_else(|| first_bad::<Response>(response, "response", &[("headers", header)]))
        .unwrap_or_else(|| ("entry".into(), "entry".into(), without_value(e)))
}

fn syntax(shown: &str, e: &serde_json::Error) -> HarError {
    if e.is_data() {
        return HarError::NotHar {
            path: shown.to_owned(),
            message: without_value(e),
        };
    }
    HarError::Syntax {
        path: shown.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

/// The root object: only `log` is read.
struct RootSeed<'a> {
    sink: &'a mut dyn FnMut(usize, Value),
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(ObjectVisitor {
            key: "log",
            sink: self.sink,
            inner: true,
        })
    }
}

/// `log`: only `entries` is read.
struct LogSeed<'a> {
    sink: &'a mut dyn FnMut(usize, Value),
}

impl<'de> DeserializeSeed<'de> for LogSeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(ObjectVisitor {
            key: "entries",
            sink: self.sink,
            inner: false,
        })
    }
}

/// An object of which one key matters: `log` (then `inner`) or `entries`.
struct ObjectVisitor<'a> {
    key: &'static str,
    sink: &'a mut dyn FnMut(usize, Value),
    inner: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an object with `{}`", self.key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if key != self.key {
                map.next_value::<IgnoredAny>()?;
            } else if self.inner {
                found |= map.next_value_seed(LogSeed {
                    sink: &mut *self.sink,
                })?;
            } else {
                found |= map.next_value_seed(EntriesSeed {
                    sink: &mut *self.sink,
                })?;
            }
        }
        Ok(found)
    }
}

/// `entries`: each element is handed to the sink as it is parsed.
struct EntriesSeed<'a> {
    sink: &'a mut dyn FnMut(usize, Value),
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut i = 0;
        while let Some(entry) = seq.next_element::<Value>()? {
            (self.sink)(i, entry);
            i += 1;
        }
        Ok(true)
    }
}

/// Headers as a map; HTTP/2 pseudo-headers (`:authority`) are dropped, invalid ones counted.
fn headers(list: &[Header], place: &str, skipped: &mut Skipped) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in list {
        if h.name.starts_with(':') {
            continue;
        }
        match (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => skipped.add("header with an invalid name or value left out", place),
        }
    }
    map
}

/// Text as HAR stores it: plain, or base64 when `encoding` says so.
fn text_bytes(
    text: String,
    encoding: Option<&str>,
    side: &str,
    place: &str,
    skipped: &mut Skipped,
) -> Option<Vec<u8>> {
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Some(text.into_bytes()),
        Some("base64") => {
            let compact: String = text.split_whitespace().collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(b) => Some(b),
                Err(_) => {
                    skipped.add(format!("{side} body: invalid base64, left out"), place);
                    None
                }
            }
        }
        Some(other) => {
            skipped.add(
                format!("{side} body: unknown encoding `{other}`, left out"),
                place,
            );
            None
        }
    }
}

/// Undoes `Content-Encoding` when the stored bytes are still encoded, and removes the header
/// (the stored body is plain from here on). Bodies over `max` are left out.
fn plain_body(
    bytes: Vec<u8>,
    headers: &mut HeaderMap,
    max: usize,
    side: &str,
    place: &str,
    skipped: &mut Skipped,
) -> Option<Bytes> {
    // Compressed bytes are practically never valid UTF-8 (gzip starts with 0x1f 0x8b), while
    // a text body that browsers stored decoded is: do not run a decoder over text (raw deflate
    // can "decode" text into garbage without an error).
    let encoded = headers.contains_key(http::header::CONTENT_ENCODING)
        && std::str::from_utf8(&bytes).is_err();
    let body = if encoded {
        match crate::capture::decode_content(&bytes, headers, max) {
            Ok(b) => b.into_owned(),
            Err(SkipReason::DecodedTooBig) => {
                skipped.add(format!("{side} body over {max} bytes, left out"), place);
                None?
            }
            // Stored already decoded (browsers do), or in an encoding we cannot undo.
            Err(_) => bytes,
        }
    } else {
        bytes
    };
    headers.remove(http::header::CONTENT_ENCODING);
    if body.len() > max {
        skipped.add(format!("{side} body over {max} bytes, left out"), place);
        return None;
    }
    Some(Bytes::from(body))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let t = v.split(';').next().unwrap_or_default().trim();
            t.eq_ignore_ascii_case("application/json") || t.to_ascii_lowercase().ends_with("+json")
        })
        .unwrap_or(false)
}

fn set_content_type(headers: &mut HeaderMap, mime: Option<&str>) {
    if headers.contains_key(http::header::CONTENT_TYPE) {
        return;
    }
    if let Some(v) = mime
        .filter(|m| !m.is_empty())
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
}

fn sample(entry: Entry, place: &str, max_body: usize, skipped: &mut Skipped) -> Option<Sample> {
    let Entry { request, response } = entry;
    let status = match u16::try_from(response.status) {
        Ok(s) if (100..=599).contains(&s) => s,
        _ => {
            skipped.add("entry without a response (status 0 or invalid)", place);
            return None;
        }
    };
    let url = url::Url::parse(&request.url)
        .or_else(|_| url::Url::parse("http://relative.invalid").and_then(|b| b.join(&request.url)));
    let Ok(url) = url else {
        skipped.add("entry with an unusable URL", place);
        return None;
    };
    if url.path_segments().is_some_and(|s| s.count() > MAX_DEPTH) {
        skipped.add(
            format!("entry with a path deeper than {MAX_DEPTH} segments"),
            place,
        );
        return None;
    }
    let method = request.method.trim().to_ascii_uppercase();
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        skipped.add("entry with an invalid method", place);
        return None;
    }
    let mut request_headers = headers(&request.headers, place, skipped);
    let mut request_body = None;
    if let Some(post) = request.post_data {
        set_content_type(&mut request_headers, post.mime_type.as_deref());
        let text = match post.text {
            Some(t) => Some(t),
            None if !post.params.is_empty() => Some(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(
                        post.params
                            .iter()
                            .map(|p| (p.name.as_str(), p.value.as_deref().unwrap_or(""))),
                    )
                    .finish(),
            ),
            None => None,
        };
        if let Some(bytes) =
            text.and_then(|t| text_bytes(t, post.encoding.as_deref(), "request", place, skipped))
        {
            request_body = plain_body(
                bytes,
                &mut request_headers,
                max_body,
                "request",
                place,
                skipped,
            );
        }
    }
    let mut response_headers = headers(&response.headers, place, skipped);
    let mut response_body = None;
    if let Some(content) = response.content {
        set_content_type(&mut response_headers, content.mime_type.as_deref());
        match content.text {
            Some(text) => {
                if let Some(bytes) = text_bytes(
                    text,
                    content.encoding.as_deref(),
                    "response",
                    place,
                    skipped,
                ) {
                    response_body = plain_body(
                        bytes,
                        &mut response_headers,
                        max_body,
                        "response",
                        place,
                        skipped,
                    );
                }
            }
            None if content.size.unwrap_or(0) > 0 => {
                skipped.add("response body not recorded in the file", place);
            }
            None => {}
        }
    }
    for (side, body, h) in [
        ("request", &request_body, &request_headers),
        ("response", &response_body, &response_headers),
    ] {
        if let Some(b) = body {
            if !b.is_empty() && is_json(h) && serde_json::from_slice::<Value>(b).is_err() {
                skipped.add(
                    format!("{side} body declared JSON is not valid JSON (kept as text)"),
                    place,
                );
            }
        }
    }
    Some(Sample {
        method,
        path: url.path().to_owned(),
        query: url.query().map(str::to_owned),
        request_headers,
        request_body,
        status,
        response_headers,
        response_body,
        origin: place.to_owned(),
    })
}

/// Writes [`write`]'s HAR to `path`, readable by its owner only (mode 0600 on Unix, also when
/// the file existed with a wider mode): what is left of a recording is still the app's data.
pub fn save(path: &Path, samples: &[Sample], base: &str) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(&write(samples, base))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut file = std::io::BufWriter::new(file);
        file.write_all(text.as_bytes())?;
        file.flush()
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())
    }
}

/// A body as `--save-har` keeps it: JSON with credential fields dropped and credential-like
/// strings replaced ([`redact_json`](super::secrets::redact_json)), a form the same way
/// ([`redact_pairs`](super::secrets::redact_pairs)), other text and bytes as they are.
fn redacted_body(body: &Bytes, headers: &HeaderMap) -> Bytes {
    let Ok(text) = std::str::from_utf8(body) else {
        return body.clone();
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if v.is_object() || v.is_array() {
            return Bytes::from(super::secrets::redact_json(&v).to_string());
        }
    }
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("x-www-form-urlencoded"));
    if form {
        return Bytes::from(super::secrets::redact_pairs(text));
    }
    body.clone()
}

/// HAR 1.2 text for samples (the recording proxy's `--save-har`), credentials left out:
/// credential headers, and credentials in query strings, JSON and form bodies.
pub fn write(samples: &[Sample], base: &str) -> Value {
    let headers = |h: &HeaderMap| -> Vec<Value> {
        h.iter()
            .filter(|(n, _)| !super::secrets::is_secret_header(n.as_str()))
            .map(|(n, v)| {
                serde_json::json!({"name": n.as_str(), "value": String::from_utf8_lossy(v.as_bytes())})
            })
            .collect()
    };
    let content_type = |h: &HeaderMap| {
        h.get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let body = |b: &Option<Bytes>, h: &HeaderMap| -> (Option<String>, Option<&'static str>) {
        match b.as_ref().map(|b| redacted_body(b, h)) {
            None => (None, None),
            Some(b) => match std::str::from_utf8(&b) {
                Ok(s) => (Some(s.to_owned()), None),
                Err(_) => (
                    Some(base64::engine::general_purpose::STANDARD.encode(b)),
                    Some("base64"),
                ),
            },
        }
    };
    let entries: Vec<Value> = samples
        .iter()
        .map(|s| {
            let url = match &s.query {
                Some(q) => format!("{base}{}?{}", s.path, super::secrets::redact_pairs(q)),
                None => format!("{base}{}", s.path),
            };
            let (req_text, req_enc) = body(&s.request_body, &s.request_headers);
            let (resp_text, resp_enc) = body(&s.response_body, &s.response_headers);
            let mut request = serde_json::json!({
                "method": s.method, "url": url, "httpVersion": "HTTP/1.1",
                "headers": headers(&s.request_headers), "queryString": [], "cookies": [],
                "headersSize": -1, "bodySize": s.request_body.as_ref().map_or(0, |b| b.len()),
            });
            if let Some(text) = req_text {
                request["postData"] =
                    serde_json::json!({"mimeType": content_type(&s.request_headers), "text": text});
                if let Some(e) = req_enc {
                    request["postData"]["encoding"] = e.into();
                }
            }
            let mut content = serde_json::json!({
                "size": s.response_body.as_ref().map_or(0, |b| b.len()),
                "mimeType": content_type(&s.response_headers),
            });
            if let Some(text) = resp_text {
                content["text"] = text.into();
            }
            if let Some(e) = resp_enc {
                content["encoding"] = e.into();
            }
            serde_json::json!({
                "startedDateTime": "1970-01-01T00:00:00.000Z", "time": 0,
                "request": request,
                "response": {
                    "status": s.status, "statusText": "", "httpVersion": "HTTP/1.1",
                    "headers": headers(&s.response_headers), "cookies": [], "content": content,
                    "redirectURL": "", "headersSize": -1, "bodySize": -1,
                },
                "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0},
            })
        })
        .collect();
    serde_json::json!({"log": {"version": "1.2", "creator": {"name": "hooktap", "version": env!("CARGO_PKG_VERSION")}, "entries": entries}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: serde_json::Value) -> (Vec<Sample>, Skipped) {
        read_from(v.to_string().as_bytes(), "t.har", "t.har", 1 << 20).expect("a HAR")
    }

    #[test]
    fn form_params_mime_types_pseudo_headers_and_relative_urls() {
        let (samples, skipped) = read(serde_json::json!({"log": {"entries": [{
            "request": {"method": "post", "url": "/scans?x=1",
                "headers": [{"name": ":authority", "value": "a"}, {"name": "X-Ok", "value": "1"}],
                "postData": {"mimeType": "application/x-www-form-urlencoded",
                    "params": [{"name": "ticket", "value": "T 1"}, {"name": "gate"}]}},
            "response": {"status": 201, "headers": [],
                "content": {"mimeType": "application/json", "text": "{\"result\":\"valid\"}"}}
        }]}}));
        assert!(skipped.is_empty(), "{:?}", skipped.lines());
        let s = &samples[0];
        assert_eq!(
            (s.method.as_str(), s.path.as_str(), s.query.as_deref()),
            ("POST", "/scans", Some("x=1"))
        );
        assert_eq!(s.request_headers.len(), 2, "{:?}", s.request_headers);
        assert_eq!(
            s.request_value(),
            serde_json::json!({"ticket": "T 1", "gate": ""})
        );
        assert_eq!(s.response_value(), serde_json::json!({"result": "valid"}));
        assert_eq!(s.origin, "t.har entry 1");
    }

    #[test]
    fn written_har_reads_back_without_credential_headers() {
        let (samples, _) = read(serde_json::json!({"log": {"entries": [{
            "request": {"method": "PUT", "url": "http://h/orders/1",
                "headers": [{"name": "Authorization", "value": "Bearer zzz-planted"}],
                "postData": {"mimeType": "application/octet-stream", "encoding": "base64", "text": "/wD+"}},
            "response": {"status": 200, "headers": [{"name": "Set-Cookie", "value": "a=planted"}],
                "content": {"mimeType": "text/plain", "text": "done"}}
        }]}}));
        let text = write(&samples, "http://h").to_string();
        assert!(!text.contains("planted"), "{text}");
        let (again, skipped) = read_from(text.as_bytes(), "w", "w", 1 << 20).expect("reads back");
        assert!(skipped.is_empty());
        assert_eq!(
            again[0].request_body.as_deref(),
            Some(&[0xff, 0x00, 0xfe][..])
        );
        assert_eq!(again[0].response_body.as_deref(), Some(&b"done"[..]));
        assert_eq!(again[0].path, "/orders/1");
    }

    #[test]
    fn entries_with_very_deep_paths_are_skipped_and_counted() {
        let deep = format!("http://h{}", "/1".repeat(20_000));
        let (samples, skipped) = read(serde_json::json!({"log": {"entries": [
            {"request": {"method": "POST", "url": deep}, "response": {"status": 201}},
            {"request": {"method": "POST", "url": format!("http://h{}", "/a".repeat(MAX_DEPTH))},
                "response": {"status": 201}},
        ]}}));
        assert_eq!(samples.len(), 1);
        assert_eq!(
            skipped.count("entry with a path deeper than 64 segments"),
            1
        );
    }

    #[test]
    fn unusable_entries_say_where_but_never_the_value() {
        let bad = |entry: serde_json::Value| {
            read(serde_json::json!({"log": {"entries": [entry.clone(), entry]}})).1
        };
        let ok_response = serde_json::json!({"status": 200});
        let skipped = bad(serde_json::json!({
            "request": {"method": "GET", "url": "http://h/", "headers": [
                {"name": "a", "value": "1"}, {"name": "Authorization", "value": ["tk-planted-1"]}]},
            "response": ok_response}));
        let lines = skipped.lines().join("\n");
        assert!(!lines.contains("planted"), "{lines}");
        assert!(
            lines.contains("entry not usable: `request.headers[]` is not a string"),
            "{lines}"
        );
        assert!(
            lines.contains("t.har entry 1, `request.headers[1]`"),
            "{lines}"
        );
        assert_eq!(skipped.count("entry not usable"), 2);
        let skipped = bad(serde_json::json!({
            "request": {"method": "GET", "url": "http://h/"},
            "response": {"status": "pw-planted-2"}}));
        let lines = skipped.lines().join("\n");
        assert!(!lines.contains("planted"), "{lines}");
        assert!(lines.contains("`response` is not i64"), "{lines}");
        let skipped =
            bad(serde_json::json!({"request": {"url": "http://h/"}, "response": ok_response}));
        let lines = skipped.lines().join("\n");
        assert!(lines.contains("`request` has no `method`"), "{lines}");
        let e = read_from(
            &br#"{"log": "pw-planted-3"}"#[..],
            "t.har",
            "t.har",
            1 << 20,
        )
        .expect_err("not a HAR")
        .to_string();
        assert!(!e.contains("planted"), "{e}");
    }
}
