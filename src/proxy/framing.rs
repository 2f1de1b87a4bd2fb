//! Message framing at the proxy's two edges: how long a message body is, as every party must
//! read it (RFC 9112 6). pingora parses the framing headers and rejects what is plainly
//! contradictory (differing `Content-Length`s, a request whose last transfer coding is not
//! `chunked`); these rules decide what may be passed on, and in which single form, so that the
//! app and the client read a message exactly as hooktap did.
//!
//! Pure functions over header maps; the proxy applies their answers. They must not allocate for
//! a message that is already in canonical form (one `Content-Length` of plain digits, or
//! `Transfer-Encoding: chunked`), which is nearly every message.

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

/// How a message's body is delimited, in the one form hooktap forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked` and no `Content-Length`.
    Chunked,
    /// One `Content-Length` of this many bytes, in decimal without leading zeros.
    Length(u64),
}

/// Why a message's framing cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFraming {
    /// Malformed: chunked applied more than once or not last, an empty coding list, or
    /// `Content-Length` values that are not digits or disagree.
    #[error("malformed framing: {0}")]
    Malformed(&'static str),
    /// A transfer coding other than `chunked` (`gzip`, `identity`, ...): hooktap would pass on
    /// a body it cannot read, so it does not.
    #[error("transfer coding other than chunked: {0}")]
    UnknownCoding(String),
}

impl BadFraming {
    /// The answer to a request framed like this: 400, or 501 for a transfer coding the server
    /// does not implement (RFC 9112 6.1).
    pub fn request_status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::UnknownCoding(_) => 501,
        }
    }
}

/// The framing a message is forwarded with: `Ok(None)` when its headers are already in the
/// one canonical form (or it has neither header), `Ok(Some(f))` when they must be replaced by
/// `f` alone.
///
/// - `Transfer-Encoding` must list `chunked` exactly once, as its only coding (across all its
///   field lines, case-insensitive, empty list elements ignored). A `Content-Length` beside it
///   is dropped (pingora already drops it, RFC 9112 6.3).
/// - Otherwise every `Content-Length` value, in every field line and comma-separated list,
///   must be the same number (RFC 9110 8.6): repeated identical values and leading zeros
///   (`2, 02`) become the single value `2`. Leading zeros are valid (`1*DIGIT`), but a lax
///   reader may take `010` for octal and a strict one may refuse it: after hooktap, nobody
///   reads the length differently from hooktap.
pub fn framing(headers: &HeaderMap) -> Result<Option<Framing>, BadFraming> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return transfer_encoding(headers);
    }
    content_length(headers)
}

fn transfer_encoding(headers: &HeaderMap) -> Result<Option<Framing>, BadFraming> {
    let mut values = headers.get_all(TRANSFER_ENCODING).iter();
    let canonical = values.next().is_some_and(|v| v.as_bytes() == b"chunked")
        && values.next().is_none()
        && !headers.contains_key(CONTENT_LENGTH);
    if canonical {
        return Ok(None);
    }
    let mut chunked = 0;
    let mut last_is_chunked = false;
    for value in &headers.get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                chunked += 1;
            }
        }
    }
    if chunked == 0 {
        // No chunked at all: `identity`, `gzip`, or nothing but commas.
        return match unknown_codings(headers) {
            Some(codings) => Err(BadFraming::UnknownCoding(codings)),
            None => Err(BadFraming::Malformed("empty Transfer-Encoding")),
        };
    }
    if !last_is_chunked {
        return Err(BadFraming::Malformed(
            "chunked is not the last transfer coding",
        ));
    }
    if chunked > 1 {
        return Err(BadFraming::Malformed("chunked applied more than once"));
    }
    if let Some(codings) = unknown_codings(headers) {
        return Err(BadFraming::UnknownCoding(codings));
    }
    Ok(Some(Framing::Chunked))
}

/// The codings other than `chunked`, as one string for the log; `None` when there are none.
fn unknown_codings(headers: &HeaderMap) -> Option<String> {
    let unknown: Vec<String> = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    (!unknown.is_empty()).then(|| unknown.join(", "))
}

fn content_length(headers: &HeaderMap) -> Result<Option<Framing>, BadFraming> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let single = values.next().is_none();
    let digits = first.as_bytes();
    if single && (digits.first() != Some(&b'0') || digits.len() == 1) && decimal(digits).is_some() {
        return Ok(None);
    }
    let mut length = None;
    for value in &headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(item.trim_ascii())
                .ok_or(BadFraming::Malformed("Content-Length is not a number"))?;
            match length {
                None => length = Some(n),
                Some(previous) if previous != n => {
                    return Err(BadFraming::Malformed("Content-Length values differ"));
                }
                Some(_) => {}
            }
        }
    }
    // At least one value was present, so `length` is set unless every item was rejected.
    length
        .map(|n| Some(Framing::Length(n)))
        .ok_or(BadFraming::Malformed("Content-Length is not a number"))
}

/// `1*DIGIT` as a number; `None` for anything else (a sign, spaces, hex, overflow).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn cl(values: &[&str]) -> Result<Option<Framing>, BadFraming> {
        let lines: Vec<_> = values.iter().map(|v| ("content-length", *v)).collect();
        framing(&headers(&lines))
    }

    fn te(values: &[&str]) -> Result<Option<Framing>, BadFraming> {
        let lines: Vec<_> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
        framing(&headers(&lines))
    }

    #[test]
    fn canonical_messages_are_left_alone() {
        assert_eq!(framing(&HeaderMap::new()), Ok(None));
        assert_eq!(cl(&["0"]), Ok(None));
        assert_eq!(cl(&["1234"]), Ok(None));
        assert_eq!(te(&["chunked"]), Ok(None));
    }

    #[test]
    fn agreeing_lengths_become_one() {
        for values in [
            &["2", "2"][..],
            &["2", "02"],
            &["2, 2"],
            &["02"],
            &["0002"],
            &[" 2 ,2", "2"],
        ] {
            assert_eq!(cl(values), Ok(Some(Framing::Length(2))), "{values:?}");
        }
        assert_eq!(cl(&["00"]), Ok(Some(Framing::Length(0))));
        assert_eq!(
            cl(&["18446744073709551615"]),
            Ok(None),
            "u64::MAX is canonical"
        );
    }

    #[test]
    fn disagreeing_or_invalid_lengths_are_malformed() {
        for values in [
            &["2", "3"][..],
            &["2, 3"],
            &["+2"],
            &["-1"],
            &["0x10"],
            &[""],
            &["2,"],
            &["18446744073709551616"],
        ] {
            assert!(
                matches!(cl(values), Err(BadFraming::Malformed(_))),
                "{values:?}: {:?}",
                cl(values)
            );
        }
    }

    #[test]
    fn one_chunked_becomes_canonical() {
        for values in [
            &["Chunked"][..],
            &[" chunked "],
            &[", chunked"],
            &["CHUNKED,"],
        ] {
            assert_eq!(te(values), Ok(Some(Framing::Chunked)), "{values:?}");
        }
        let both = headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        assert_eq!(
            framing(&both),
            Ok(Some(Framing::Chunked)),
            "the length goes"
        );
    }

    #[test]
    fn chunked_twice_or_not_last_is_malformed() {
        for values in [
            &["chunked, chunked"][..],
            &["chunked", "chunked"],
            &["chunked, gzip"],
            &[","],
            &[""],
        ] {
            assert!(
                matches!(te(values), Err(BadFraming::Malformed(_))),
                "{values:?}: {:?}",
                te(values)
            );
        }
    }

    #[test]
    fn other_codings_are_unknown() {
        assert_eq!(
            te(&["gzip, chunked"]),
            Err(BadFraming::UnknownCoding("gzip".into()))
        );
        assert_eq!(
            te(&["identity"]),
            Err(BadFraming::UnknownCoding("identity".into()))
        );
        assert_eq!(
            te(&["deflate", "chunked"]),
            Err(BadFraming::UnknownCoding("deflate".into()))
        );
        assert_eq!(
            BadFraming::UnknownCoding("gzip".into()).request_status(),
            501
        );
        assert_eq!(BadFraming::Malformed("x").request_status(), 400);
    }

    #[test]
    fn chunked_then_identity_is_malformed_not_unknown() {
        // The last coding decides how the body ends: not chunked, so it is not a chunked body
        // with an extra coding but a body delimited by the connection's close.
        assert!(matches!(
            te(&["chunked, identity"]),
            Err(BadFraming::Malformed(_))
        ));
    }
}
