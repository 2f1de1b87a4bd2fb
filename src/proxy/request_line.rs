//! Request lines that pingora rewrites instead of refusing.
//!
//! pingora 0.9 does not answer an invalid request line (a control byte, DEL or a space inside
//! the target) with 400: it percent-encodes the target and parses the line again
//! (`escape_illegal_request_line` in pingora-core's HTTP/1 server), so a raw NUL reaches the app
//! as `%00`. RFC 9112 3 asks a server not to autocorrect a request line, since it may have been
//! crafted to slip past a filter in front. No proxy phase sees the original bytes, and a `%00`
//! the client sent looks the same as a rewritten NUL. So the client's bytes are read here,
//! beneath pingora ([`super::connection`]), and a parsed request line is checked against them:
//! it was rewritten if the client sent the same method and version around a target that holds
//! such a byte and that pingora's escaping turns into the parsed target.
//!
//! The scan does not need to know where requests begin (pipelining, bodies): it keeps every
//! line of the stream that ends like a request line (` HTTP/1.1`) and holds a control byte,
//! DEL or two spaces, which a body line rarely does. A request may begin in the middle of a line
//! (pipelined right behind a body without a final line break), so a kept line is searched for
//! the method rather than assumed to start with it. Lines are read in place; only a line that
//! continues into the next read is copied, and only its last `KEPT` bytes.

use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

/// What pingora escapes in a target it rewrites (`URI_ESC_CHARSET` in pingora-core; non-ASCII
/// bytes are always escaped by `percent_encode`).
const ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'<').add(b'>').add(b'"');
/// How much of a line that spans reads is kept: longer request lines are checked by their last
/// `KEPT` bytes (see [`Kept::truncated`]).
const KEPT: usize = 8 << 10;
/// How many bytes of suspicious lines are kept per connection. Past it, every request on the
/// connection whose target holds a `%` is treated as rewritten.
const MAX_KEPT_LINES: usize = 64 << 10;

/// The scan of one connection's bytes.
#[derive(Debug, Default)]
pub struct RequestLines {
    /// The end of the current line so far, when it continues past a read (at most [`KEPT`]).
    tail: Vec<u8>,
    /// What the bytes dropped from the front of `tail` held.
    dropped: Dropped,
    /// Suspicious lines seen so far.
    kept: Vec<Kept>,
    kept_bytes: usize,
    /// More suspicious lines than [`MAX_KEPT_LINES`].
    overflowed: bool,
}

/// The part of a long line that is no longer kept.
#[derive(Debug, Default, Clone, Copy)]
struct Dropped {
    any: bool,
    /// It held a control byte or DEL, or two spaces: once set, the rest needs no look.
    trigger: bool,
    /// Spaces seen before `trigger` was set.
    spaces: usize,
}

/// A line that ends like a request line and could hold an invalid target.
#[derive(Debug)]
struct Kept {
    /// The line without its line ending (its last [`KEPT`] bytes when `truncated`).
    line: Vec<u8>,
    truncated: bool,
    /// The dropped front held a control byte or DEL, or two spaces.
    dropped_trigger: bool,
}

impl RequestLines {
    /// Reads the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (piece, ended) = match memchr::memchr(b'\n', data) {
                Some(end) => (&data[..end], true),
                None => (data, false),
            };
            data = &data[piece.len() + usize::from(ended)..];
            if !ended {
                self.keep(piece);
            } else if self.tail.is_empty() && !self.dropped.any {
                self.end_line(piece, Dropped::default());
            } else {
                self.keep(piece);
                let line = std::mem::take(&mut self.tail);
                let dropped = std::mem::take(&mut self.dropped);
                self.end_line(&line, dropped);
                self.tail = line;
                self.tail.clear();
            }
        }
    }

    /// Adds `piece` to the current line, keeping its last [`KEPT`] bytes.
    fn keep(&mut self, piece: &[u8]) {
        let excess = (self.tail.len() + piece.len()).saturating_sub(KEPT);
        if excess > 0 {
            let from_tail = excess.min(self.tail.len());
            self.dropped.add(&self.tail[..from_tail]);
            self.tail.drain(..from_tail);
            self.dropped.add(&piece[..excess - from_tail]);
            self.tail.extend_from_slice(&piece[excess - from_tail..]);
        } else {
            self.tail.extend_from_slice(piece);
        }
    }

    fn end_line(&mut self, line: &[u8], dropped: Dropped) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(head) = line
            .strip_suffix(b" HTTP/1.1")
            .or_else(|| line.strip_suffix(b" HTTP/1.0"))
        else {
            return;
        };
        let spaces = dropped.spaces + head.iter().filter(|&&b| b == b' ').count();
        if !dropped.trigger && spaces < 2 && !head.iter().any(|&b| is_control(b)) {
            return;
        }
        if self.kept_bytes + line.len() > MAX_KEPT_LINES {
            self.overflowed = true;
            return;
        }
        self.kept_bytes += line.len();
        self.kept.push(Kept {
            line: line.to_vec(),
            truncated: dropped.any,
            dropped_trigger: dropped.trigger,
        });
    }

    /// Whether any line was kept: only then can a request line have been rewritten.
    pub fn suspects(&self) -> bool {
        !self.kept.is_empty() || self.overflowed
    }

    /// Whether `parsed`, a request line as pingora parsed it (without its line ending), was made
    /// by rewriting a line this connection sent.
    pub fn rewritten(&self, parsed: &[u8]) -> bool {
        if !self.suspects() {
            return false;
        }
        let (Some(method_end), Some(version_start)) =
            (memchr::memchr(b' ', parsed), memchr::memrchr(b' ', parsed))
        else {
            return false;
        };
        if method_end >= version_start {
            return false;
        }
        let target = &parsed[method_end + 1..version_start];
        if self.overflowed {
            return target.contains(&b'%');
        }
        let method_sp = &parsed[..=method_end];
        let sp_version = &parsed[version_start..];
        self.kept
            .iter()
            .any(|k| k.rewrites_to(method_sp, target, sp_version))
    }
}

impl Dropped {
    fn add(&mut self, bytes: &[u8]) {
        self.any |= !bytes.is_empty();
        for &b in bytes {
            if self.trigger {
                return;
            }
            if is_control(b) {
                self.trigger = true;
            } else if b == b' ' {
                self.spaces += 1;
                self.trigger = self.spaces >= 2;
            }
        }
    }
}

impl Kept {
    /// Whether pingora's rewrite of a request at the end of this line is `method_sp` (the
    /// method and its space), `target`, `sp_version` (a space and the version).
    fn rewrites_to(&self, method_sp: &[u8], target: &[u8], sp_version: &[u8]) -> bool {
        let Some(before_version) = self.line.strip_suffix(sp_version) else {
            return false;
        };
        // The request starts at one of the places where its method does.
        let whole = memchr::memmem::find_iter(before_version, method_sp).any(|at| {
            let raw = &before_version[at + method_sp.len()..];
            raw.iter().any(|&b| is_control(b) || b == b' ')
                && escaped(raw).eq(target.iter().copied())
        });
        // Or before the kept part: what is kept is the end of the raw target.
        whole
            || (self.truncated
                && (self.dropped_trigger
                    || before_version.iter().any(|&b| is_control(b) || b == b' '))
                && target.ends_with(&escaped(before_version).collect::<Vec<u8>>()))
    }
}

/// A control byte or DEL: never valid in a request line, the trigger of pingora's rewrite
/// (besides a space in the target).
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// `raw` as pingora escapes a target it rewrites.
fn escaped(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    percent_encode(raw, ESCAPED).flat_map(str::bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(reads: &[&[u8]]) -> RequestLines {
        let mut lines = RequestLines::default();
        for read in reads {
            lines.feed(read);
        }
        lines
    }

    #[test]
    fn valid_lines_and_bodies_are_not_kept() {
        let lines = scan(&[
            b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 9\r\n\r\nbinary\0\x01\n",
            b"{\"text\": \"a line about GET / HTTP/1.1\"}\n",
        ]);
        assert!(lines.kept.is_empty(), "{lines:?}");
        assert!(!lines.rewritten(b"GET /a%00b HTTP/1.1"));
    }

    #[test]
    fn a_raw_control_byte_or_space_matches_its_rewrite() {
        for (raw, rewritten) in [
            (&b"GET /a\0b HTTP/1.1\r\n"[..], &b"GET /a%00b HTTP/1.1"[..]),
            (b"GET /a b HTTP/1.1\n", b"GET /a%20b HTTP/1.1"),
            (
                b"GET /a\tb?q=%41\x7f\"<> HTTP/1.0\r\n",
                b"GET /a%09b?q=%41%7F%22%3C%3E HTTP/1.0",
            ),
            (b"GET /a\rb HTTP/1.1\r\n", b"GET /a%0Db HTTP/1.1"),
            (b"M_1 /\xff\0 HTTP/1.1\r\n", b"M_1 /%FF%00 HTTP/1.1"),
        ] {
            let lines = scan(&[raw]);
            assert!(lines.rewritten(rewritten), "{}", raw.escape_ascii());
        }
    }

    #[test]
    fn a_target_sent_escaped_is_not_a_rewrite() {
        let lines = scan(&[b"GET /a\0b HTTP/1.1\r\n\r\n"]);
        assert!(!lines.rewritten(b"GET /a%00c HTTP/1.1"));
        assert!(!lines.rewritten(b"POST /a%00b HTTP/1.1"));
        assert!(!lines.rewritten(b"GET /a%00b HTTP/1.0"));
        // The same bytes sent escaped by the client, behind a body line with two spaces.
        let lines = scan(&[b"x y GET /a%20b HTTP/1.1\r\n"]);
        assert!(!lines.rewritten(b"GET /a%20b HTTP/1.1"));
    }

    #[test]
    fn a_line_split_across_reads_is_found() {
        let lines = scan(&[
            b"xx\r\nGE",
            b"T /a",
            b"\0b HTT",
            b"P/1.1\r",
            b"\nHost: x\r\n\r\n",
        ]);
        assert!(lines.rewritten(b"GET /a%00b HTTP/1.1"));
    }

    #[test]
    fn a_request_pipelined_behind_a_body_is_found() {
        let lines = scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\":GET /x\0 HTTP/1.1\r\n\r\n",
        ]);
        assert!(lines.rewritten(b"GET /x%00 HTTP/1.1"));
        let lines = scan(&[b"GET / HTTP/1.1\r\n\r\nGET /x y HTTP/1.1\r\n\r\n"]);
        assert!(lines.rewritten(b"GET /x%20y HTTP/1.1"));
    }

    #[test]
    fn a_long_line_is_checked_by_its_end() {
        let long = "a".repeat(3 * KEPT);
        let raw = format!("GET /\0{long} HTTP/1.1\r\n");
        let lines = scan(&[&raw.as_bytes()[..100], &raw.as_bytes()[100..]]);
        assert!(lines.rewritten(format!("GET /%00{long} HTTP/1.1").as_bytes()));
        let raw = format!("GET /{long}\0 HTTP/1.1\r\n");
        let lines = scan(&[&raw.as_bytes()[..100], &raw.as_bytes()[100..]]);
        assert!(lines.rewritten(format!("GET /{long}%00 HTTP/1.1").as_bytes()));
        // Valid, long and in pieces: nothing kept.
        let raw = format!("GET /{long}%20 HTTP/1.1\r\n");
        let lines = scan(&[&raw.as_bytes()[..100], &raw.as_bytes()[100..]]);
        assert!(lines.kept.is_empty());
    }

    #[test]
    fn long_lines_cost_at_most_kept_bytes() {
        let mut lines = RequestLines::default();
        for _ in 0..100 {
            lines.feed(&[0u8; 64 << 10]);
        }
        assert_eq!(lines.tail.len(), KEPT);
        lines.feed(b"\n");
        assert!(lines.tail.is_empty() && lines.kept.is_empty());
    }

    #[test]
    fn too_many_suspicious_lines_make_every_escape_suspect() {
        let mut lines = RequestLines::default();
        let line = format!("GET /{}\0 HTTP/1.1\r\n", "a".repeat(1000));
        for _ in 0..100 {
            lines.feed(line.as_bytes());
        }
        assert!(lines.overflowed);
        assert!(lines.rewritten(b"GET /b%20c HTTP/1.1"));
        assert!(!lines.rewritten(b"GET /b HTTP/1.1"));
    }
}
