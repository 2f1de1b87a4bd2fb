//! The capture body decoders: `BodyCapture` and `decode_body` (gzip, deflate, brotli and
//! chains of them, capped; then JSON, form or text).
//!
//! Input: the `Content-Encoding` value, a newline, the `Content-Type` value, a newline, then
//! the body as captured. The cap on decoded bytes is small (bombs reach it quickly), and the
//! body is also pushed through a `BodyCapture` in chunks, which must keep at most its limit.
#![no_main]

use hooktap::capture::{BodyCapture, SkipReason, decode_body};
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

const MAX_DECODED: usize = 64 * 1024;

fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (encoding, rest) = line(data);
    let (content_type, body) = line(rest);
    let mut headers = HeaderMap::new();
    // A header value the proxy could not have received is left out, as http would refuse it.
    for (name, value) in [
        (header::CONTENT_ENCODING, encoding),
        (header::CONTENT_TYPE, content_type),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    // The body arrives in chunks; the copy keeps all of it or, past the limit, nothing.
    let limit = body.len().saturating_sub(usize::from(encoding.len() % 2));
    let mut capture = BodyCapture::new(limit);
    for chunk in body.chunks(content_type.len().max(1)) {
        capture.push(chunk);
    }
    let overflowed = capture.overflowed();
    match capture.into_bytes() {
        Some(copy) => assert!(!overflowed && copy[..] == body[..]),
        None => assert!(overflowed && body.len() > limit),
    }

    let decoded = decode_body(body, &headers, MAX_DECODED);
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
    match &decoded {
        // Without an encoding to undo, every body has a value.
        Err(reason) => {
            assert!(encoded, "an unencoded body was refused: {reason}");
            let _ = (reason.label(), reason.to_string());
        }
        Ok(v) => {
            if body.is_empty() {
                assert!(v.is_null());
            }
        }
    }
    // The cap holds at its edge too: a smaller cap never decodes more.
    if let Err(SkipReason::DecodedTooBig) = decode_body(body, &headers, 0) {
        assert!(encoded);
    }
});
