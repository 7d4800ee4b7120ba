//! Files the gateway serves over plain HTTP: the browser client `herald.js` (and its
//! type declarations), so a page imports the client that matches its gateway, and, in
//! development mode, the chat demo under `/demo/`.
//!
//! The files are compiled in: a gateway binary (or its 32 MB image) has nothing to
//! find on disk, and the client it serves is always the one it was built with.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One compiled-in file.
#[derive(Debug)]
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: &'static str,
}

/// FNV-1a over the bytes, at compile time: a stable validator that changes with the
/// content, without a hashing crate or work at start-up.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// `"<16 hex digits>"`, the quoted form an ETag header takes.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($path:literal, $content_type:literal) => {{
        const BODY: &str = include_str!($path);
        const TAG: [u8; 18] = etag_of(BODY.as_bytes());
        Asset {
            body: BODY,
            content_type: $content_type,
            // The tag is ASCII by construction.
            etag: match std::str::from_utf8(&TAG) {
                Ok(s) => s,
                Err(_) => panic!("etag is ASCII"),
            },
        }
    }};
}

static HERALD_JS: Asset = asset!(
    "../../../clients/js/herald.js",
    "text/javascript; charset=utf-8"
);
static HERALD_DTS: Asset = asset!(
    "../../../clients/js/herald.d.ts",
    "application/typescript; charset=utf-8"
);
static DEMO_HTML: Asset = asset!(
    "../../../examples/chat/index.html",
    "text/html; charset=utf-8"
);
static DEMO_JS: Asset = asset!(
    "../../../examples/chat/chat.js",
    "text/javascript; charset=utf-8"
);
static DEMO_CSS: Asset = asset!("../../../examples/chat/chat.css", "text/css; charset=utf-8");

/// The client library: public, cacheable, and importable from any origin (a module
/// script from another origin is fetched with CORS).
fn client(asset: &'static Asset, req: &Request) -> Response {
    let mut res = serve(asset, req);
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// The demo changes with the binary only; revalidate every time so a rebuilt
/// development gateway is seen at once.
fn demo(asset: &'static Asset, req: &Request) -> Response {
    let mut res = serve(asset, req);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The asset, or 304 when the client's copy matches.
fn serve(asset: &'static Asset, req: &Request) -> Response {
    let etag = HeaderValue::from_static(asset.etag);
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == asset.etag
        });
    if fresh {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::ETAG, etag),
        ],
        asset.body,
    )
        .into_response()
}

/// `/herald.js` and `/herald.d.ts` always; the chat demo at `/demo/` when `dev`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(dev: bool) -> Router<S> {
    let router = Router::new()
        .route(
            "/herald.js",
            get(|req: Request| async move { client(&HERALD_JS, &req) }),
        )
        .route(
            "/herald.d.ts",
            get(|req: Request| async move { client(&HERALD_DTS, &req) }),
        );
    if !dev {
        return router;
    }
    router
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route(
            "/demo/",
            get(|req: Request| async move { demo(&DEMO_HTML, &req) }),
        )
        .route(
            "/demo/chat.js",
            get(|req: Request| async move { demo(&DEMO_JS, &req) }),
        )
        .route(
            "/demo/chat.css",
            get(|req: Request| async move { demo(&DEMO_CSS, &req) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_the_content() {
        assert_eq!(etag_of(b"a"), etag_of(b"a"));
        assert_ne!(etag_of(b"a"), etag_of(b"b"));
        let tag = HERALD_JS.etag;
        assert!(tag.len() == 18 && tag.starts_with('"') && tag.ends_with('"'));
        // FNV-1a's published test vector for "a".
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
