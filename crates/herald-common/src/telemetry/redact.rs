//! Scrubbing secrets out of log lines just before they are written.
//!
//! Herald's own events never carry a secret, but other crates log at `debug` and
//! `trace` what they carry: tower-http the request URI (`?token=…`), tungstenite every
//! frame (as text, and as hex), and a future dependency may log headers or bodies. So
//! every formatted line goes through [`scrub`], which replaces with `[redacted]`:
//! - the values the service registered ([`register`]: its API/admin keys, its JWT secret);
//! - anything shaped like a JWT (`eyJ…` with dots);
//! - the credential after `Bearer ` or `Basic `;
//! - the value of a `token`, `password`, `secret`, `api_key`, `admin_key` or
//!   `authorization` field, however it is written (`token=…` in a query,
//!   `"refresh_token":"…"` in JSON, `password: "…"` in a `Debug` dump, escaped
//!   inside a JSON log line, with ANSI colours between name and value);
//! - the password of a URL (`redis://user:…@host`);
//! - a long hex run that decodes to something the rules above would scrub (how
//!   tungstenite prints frame payloads).
//!
//! Scrubbing costs one pass over each line, which is nothing next to formatting it:
//! at the default `info` level a service writes a few lines a minute.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub(crate) const REDACTED: &[u8] = b"[redacted]";
/// Registered values shorter than this are not scrubbed as plain text: they would
/// match ordinary words. The field and `Bearer` rules still cover them.
pub(crate) const MIN_SECRET_LEN: usize = 6;
/// Hex runs shorter than this (16 bytes) are not decoded.
const MIN_HEX_RUN: usize = 32;
/// The shortest text taken for a JWT.
const MIN_JWT_LEN: usize = 20;
/// The shortest credential taken after a bare `Bearer ` (so that prose like "a
/// bearer of news" survives); after an `authorization` field, any length is.
const MIN_CREDENTIAL_LEN: usize = 8;
/// Field names whose values are secrets (matched case-insensitively, also as the end
/// of a longer name: `refresh_token`, `jwt_secret`, `x-api-key`).
const SECRET_FIELDS: &[&[u8]] = &[
    b"token",
    b"password",
    b"passwd",
    b"secret",
    b"api_key",
    b"api-key",
    b"apikey",
    b"admin_key",
    b"authorization",
];
/// Authorization schemes whose credential follows a space.
const SCHEMES: &[&[u8]] = &[b"bearer", b"basic"];

/// The values this process was configured with, in every form a log line may show
/// them (as is, JSON-escaped), longest first. Process-wide, as the subscriber is.
static SECRETS: RwLock<Vec<Box<[u8]>>> = RwLock::new(Vec::new());

/// Adds a value that must never be written to the logs.
pub(crate) fn register(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let forms = [
        secret.to_owned(),
        json_escaped(secret),
        secret.escape_debug().to_string(),
    ];
    let mut secrets = SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for form in forms {
        let form = form.into_bytes().into_boxed_slice();
        if !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `s` as it appears inside a JSON string.
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    quoted[1..quoted.len() - 1].to_owned()
}

/// `line` with every secret replaced (borrowed when there was none).
pub(crate) fn scrub(line: &[u8]) -> Cow<'_, [u8]> {
    let secrets = SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    scrub_with(line, &secrets)
}

/// [`scrub`] with an explicit list of secrets.
pub(crate) fn scrub_with<'a>(line: &'a [u8], secrets: &[Box<[u8]>]) -> Cow<'a, [u8]> {
    let mut first = [false; 256];
    for s in secrets.iter().filter_map(|s| s.first()) {
        first[usize::from(*s)] = true;
    }
    let rules = Rules {
        line,
        secrets,
        first,
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < line.len() {
        match rules.at(i) {
            Some((start, end)) => {
                let out = out.get_or_insert_with(|| Vec::with_capacity(line.len()));
                out.extend_from_slice(&line[copied..start]);
                out.extend_from_slice(REDACTED);
                copied = end;
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut out) => {
            out.extend_from_slice(&line[copied..]);
            Cow::Owned(out)
        }
    }
}

struct Rules<'a> {
    line: &'a [u8],
    secrets: &'a [Box<[u8]>],
    /// Which bytes some secret starts with (most positions need no comparison).
    first: [bool; 256],
}

impl Rules<'_> {
    /// The span to redact found at `i`, if any. Spans start at or after `i`.
    fn at(&self, i: usize) -> Option<(usize, usize)> {
        let line = self.line;
        let b = line[i];
        if self.first[usize::from(b)]
            && let Some(s) = self
                .secrets
                .iter()
                .find(|s| !s.is_empty() && line[i..].starts_with(s))
        {
            return Some((i, i + s.len()));
        }
        let prev = i.checked_sub(1).map(|p| line[p]);
        if b == b':' {
            return self.url_password(i);
        }
        if b == b'e'
            && !prev.is_some_and(is_b64url)
            && let Some(span) = self.jwt(i)
        {
            return Some(span);
        }
        if b.is_ascii_hexdigit()
            && !prev.is_some_and(|p| p.is_ascii_hexdigit())
            && let Some(span) = self.hex(i)
        {
            return Some(span);
        }
        // A word starts here: after a non-alphanumeric byte, or right after an ANSI
        // colour sequence (which ends in a letter).
        let word_start = !prev.is_some_and(|p| p.is_ascii_alphanumeric()) || after_ansi(line, i);
        if word_start && b.is_ascii_alphabetic() {
            return self.field_or_scheme(i);
        }
        None
    }

    /// `eyJ…` with at least one dot: a JWT (or a JWS of some other kind).
    fn jwt(&self, i: usize) -> Option<(usize, usize)> {
        let rest = &self.line[i..];
        if !rest.starts_with(b"eyJ") {
            return None;
        }
        let len = rest
            .iter()
            .position(|&c| !is_b64url(c) && c != b'.')
            .unwrap_or(rest.len());
        let dots = rest[..len].iter().filter(|&&c| c == b'.').count();
        (dots >= 1 && len >= MIN_JWT_LEN).then_some((i, i + len))
    }

    /// `scheme://user:password@host`: the password.
    fn url_password(&self, i: usize) -> Option<(usize, usize)> {
        let line = self.line;
        if !line[i..].starts_with(b"://") {
            return None;
        }
        let from = i + 3;
        let len = line[from..]
            .iter()
            .position(|&c| matches!(c, b'/' | b'@' | b'"' | b'\'' | b'>' | b'\\') || is_space(c))
            .unwrap_or(line.len() - from);
        let at = from + len;
        if line.get(at) != Some(&b'@') {
            return None;
        }
        let colon = line[from..at].iter().position(|&c| c == b':')? + from;
        (colon + 1 < at).then_some((colon + 1, at))
    }

    /// A long hex run that decodes to something with a secret in it.
    fn hex(&self, i: usize) -> Option<(usize, usize)> {
        let rest = &self.line[i..];
        let len = rest
            .iter()
            .position(|c| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if len < MIN_HEX_RUN {
            return None;
        }
        let even = len - len % 2;
        let decoded: Vec<u8> = rest[..even]
            .chunks_exact(2)
            .map(|p| (hex_value(p[0]) << 4) | hex_value(p[1]))
            .collect();
        matches!(scrub_with(&decoded, self.secrets), Cow::Owned(_)).then_some((i, i + len))
    }

    /// `Bearer <credential>`, or a secret field's value.
    fn field_or_scheme(&self, i: usize) -> Option<(usize, usize)> {
        let line = self.line;
        for scheme in SCHEMES {
            if starts_with_ignore_case(&line[i..], scheme) {
                let mut j = i + scheme.len();
                let spaces = line[j..].iter().take_while(|&&c| c == b' ').count();
                j += spaces;
                let len = credential_len(&line[j..]);
                if spaces > 0 && len >= MIN_CREDENTIAL_LEN {
                    return Some((j, j + len));
                }
            }
        }
        let name = SECRET_FIELDS
            .iter()
            .find(|f| starts_with_ignore_case(&line[i..], f))?;
        let after = i + name.len();
        if line
            .get(after)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return None;
        }
        self.value_after(after)
    }

    /// The value after a field name: past quotes, colours and spaces, an `=` or `:`,
    /// then a quoted string (to its closing quote, escapes respected) or a bare word.
    fn value_after(&self, from: usize) -> Option<(usize, usize)> {
        let line = self.line;
        let mut j = skip_noise(line, from, true);
        if !matches!(line.get(j), Some(b'=' | b':')) {
            return None;
        }
        j = skip_noise(line, j + 1, false);
        if line[j..].starts_with(b"Some(") {
            j += 5;
        }
        let slashes = line[j..].iter().take_while(|&&c| c == b'\\').count();
        if let Some(&q) = line.get(j + slashes)
            && (q == b'"' || q == b'\'')
        {
            let start = j + slashes + 1;
            let end = closing_quote(line, start, q, slashes).unwrap_or_else(|| {
                // No closing quote on this line: everything to its end.
                line.len() - line.iter().rev().take_while(|&&c| is_space(c)).count()
            });
            return (end > start).then_some((start, end));
        }
        for scheme in SCHEMES {
            if starts_with_ignore_case(&line[j..], scheme)
                && line.get(j + scheme.len()) == Some(&b' ')
            {
                j += scheme.len();
                j += line[j..].iter().take_while(|&&c| c == b' ').count();
            }
        }
        let len = line[j..]
            .iter()
            .position(|&c| {
                is_space(c)
                    || matches!(
                        c,
                        b'&' | b','
                            | b';'
                            | b'"'
                            | b'\''
                            | b'\\'
                            | b'}'
                            | b']'
                            | b')'
                            | b'<'
                            | b'>'
                            | b'|'
                            | 0x1b
                    )
            })
            .unwrap_or(line.len() - j);
        (len > 0).then_some((j, j + len))
    }
}

/// Skips quotes, backslashes, ANSI colour sequences and spaces (and, `before` the
/// separator, nothing else).
fn skip_noise(line: &[u8], mut j: usize, before: bool) -> usize {
    loop {
        match line.get(j) {
            Some(b' ') => j += 1,
            Some(b'"' | b'\'' | b'\\') if before => j += 1,
            Some(0x1b) if line.get(j + 1) == Some(&b'[') => {
                j += 2;
                while let Some(&c) = line.get(j) {
                    j += 1;
                    if (0x40..=0x7e).contains(&c) {
                        break;
                    }
                }
            }
            _ => return j,
        }
    }
}

/// Where the string opened by `quote` (itself preceded by `slashes` backslashes, as
/// when JSON sits inside a JSON string) ends: at the next `quote` escaped exactly as
/// much as the opening one. Inside, a quote of the value carries more backslashes.
fn closing_quote(line: &[u8], start: usize, quote: u8, slashes: usize) -> Option<usize> {
    let level = 2 * (slashes + 1);
    let mut run = 0;
    for (k, &c) in line.iter().enumerate().skip(start) {
        if c == quote && run % level == slashes {
            return Some(k - slashes);
        }
        run = if c == b'\\' { run + 1 } else { 0 };
    }
    None
}

/// Whether an ANSI sequence (`ESC [ digits/semicolons letter`) ends right before `i`.
fn after_ansi(line: &[u8], i: usize) -> bool {
    let Some(mut k) = i.checked_sub(2) else {
        return false;
    };
    while k > 0 && (line[k].is_ascii_digit() || line[k] == b';') {
        k -= 1;
    }
    line[k] == b'[' && k >= 1 && line[k - 1] == 0x1b
}

fn credential_len(s: &[u8]) -> usize {
    s.iter()
        .position(|&c| !(is_b64url(c) || matches!(c, b'.' | b'~' | b'+' | b'/' | b'=')))
        .unwrap_or(s.len())
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn is_space(c: u8) -> bool {
    c.is_ascii_whitespace()
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.to_ascii_lowercase().wrapping_sub(b'a').wrapping_add(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";

    fn secrets() -> Vec<Box<[u8]>> {
        ["e2e-api-key", "s3cr3t-\"quoted\""]
            .iter()
            .flat_map(|s| [s.to_string(), json_escaped(s)])
            .map(|s| s.into_bytes().into_boxed_slice())
            .collect()
    }

    #[track_caller]
    fn check(input: &str, expected: &str) {
        let out = scrub_with(input.as_bytes(), &secrets());
        assert_eq!(String::from_utf8_lossy(&out), expected, "input: {input}");
    }

    #[test]
    fn jwts_anywhere() {
        check(
            &format!("uri=/ws?a=1&t={JWT}&b=2"),
            "uri=/ws?a=1&t=[redacted]&b=2",
        );
        check(&format!("x {JWT}."), "x [redacted]");
        check(
            "eyJhbGciOiJIUzI1NiJ9 alone is a header",
            "eyJhbGciOiJIUzI1NiJ9 alone is a header",
        );
        check("keyJ.x", "keyJ.x");
    }

    #[test]
    fn query_and_form_fields() {
        check(
            "request{method=GET uri=/ws?channels=a&token=abc.def&batch=1}",
            "request{method=GET uri=/ws?channels=a&token=[redacted]&batch=1}",
        );
        check("/v1/x?access_token=zz", "/v1/x?access_token=[redacted]");
        check("token=", "token=");
        check("token_expired=true tokens=5", "token_expired=true tokens=5");
        check("reason=invalid_token", "reason=invalid_token");
    }

    #[test]
    fn json_fields() {
        check(
            r#"{"type":"auth","token":"abc","channels":["x"]}"#,
            r#"{"type":"auth","token":"[redacted]","channels":["x"]}"#,
        );
        check(
            r#"{"refresh_token": "fam.secret", "password":"p w, \"q\" \\"}"#,
            r#"{"refresh_token": "[redacted]", "password":"[redacted]"}"#,
        );
        // JSON inside a JSON log line: quotes escaped once more.
        check(
            r#"{"fields":{"message":"body {\"password\":\"p\\\"w\",\"user\":\"u\"}"}}"#,
            r#"{"fields":{"message":"body {\"password\":\"[redacted]\",\"user\":\"u\"}"}}"#,
        );
        check(
            r#"Login { user: "u", password: "pw" }"#,
            r#"Login { user: "u", password: "[redacted]" }"#,
        );
        check(r#"token: Some("abc")"#, r#"token: Some("[redacted]")"#);
        check("jwt_secret=hunter22 next", "jwt_secret=[redacted] next");
    }

    #[test]
    fn headers() {
        check(
            "authorization: Bearer abc.def-ghi",
            "authorization: Bearer [redacted]",
        );
        check(
            r#"{"authorization": "Bearer abc", "host": "h"}"#,
            r#"{"authorization": "[redacted]", "host": "h"}"#,
        );
        check(
            "Authorization: Basic dXNlcjpwdw==",
            "Authorization: Basic [redacted]",
        );
        check("x-api-key: k123", "x-api-key: [redacted]");
        check("a bearer of news", "a bearer of news");
        check("sent Bearer abcdefgh12", "sent Bearer [redacted]");
        check("bearer", "bearer");
    }

    #[test]
    fn ansi_colours_between_name_and_value() {
        check(
            "\x1b[3mtoken\x1b[0m\x1b[2m=\x1b[0mabc def",
            "\x1b[3mtoken\x1b[0m\x1b[2m=\x1b[0m[redacted] def",
        );
    }

    #[test]
    fn registered_values_and_urls() {
        check("key e2e-api-key sent", "key [redacted] sent");
        check(r#"msg="s3cr3t-\"quoted\"""#, r#"msg="[redacted]""#);
        check(
            "redis://:pw@127.0.0.1:6379/0",
            "redis://:[redacted]@127.0.0.1:6379/0",
        );
        check("redis://user:pw@h", "redis://user:[redacted]@h");
        check("redis://127.0.0.1:6379", "redis://127.0.0.1:6379");
        check("http://h:80/a@b", "http://h:80/a@b");
    }

    #[test]
    fn hex_payloads() {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let frame = hex(r#"{"type":"auth","token":"abc"}"#);
        check(&format!("payload: 0x{frame}\n"), "payload: 0x[redacted]\n");
        let key = hex("Bearer e2e-api-key");
        check(&format!("p={key}"), "p=[redacted]");
        let harmless = hex(r#"{"type":"ping","id":1}"#);
        check(
            &format!("payload: 0x{harmless}"),
            &format!("payload: 0x{harmless}"),
        );
    }

    #[test]
    fn plain_lines_are_borrowed() {
        let line = b"2024-01-01T00:00:00Z  INFO ws_gateway: listening addr=127.0.0.1:1\n";
        assert!(matches!(scrub_with(line, &secrets()), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_are_not_registered() {
        register("abc");
        assert!(!SECRETS.read().unwrap().iter().any(|s| &**s == b"abc"));
    }
}
