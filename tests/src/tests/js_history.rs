//! herald.js's `history()` in a real headless Chromium against a real gateway: the page
//! imports the client from the gateway's `/herald.js`, publishes, and reads the
//! channel's history back forward, newest first with a limit, and after a position.

use serde_json::{Value, json};

use crate::browser::{Browser, Page, open_herald_page};
use crate::{Redis, ServiceBuilder, token};

/// A page that imports herald.js from the gateway at `gateway_http`.
async fn open_page(browser: &Browser, gateway_http: &str) -> (Page, tokio::task::JoinHandle<()>) {
    open_herald_page(browser, gateway_http, "herald.js history").await
}

/// The offsets of a history answer's publications, after checking that each is the
/// `message` frame published as `{n: offset}` on `news` by `ann`.
fn offsets(answer: &Value) -> Vec<u64> {
    answer["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("publications: {answer}"))
        .iter()
        .map(|p| {
            assert_eq!(
                (&p["type"], &p["channel"], &p["from_user"]),
                (&json!("message"), &json!("news"), &json!("ann")),
                "{p}"
            );
            assert_eq!(p["message"]["n"], p["offset"], "{p}");
            p["offset"].as_u64().expect("offset")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_reads_history_from_a_real_gateway() {
    let redis = Redis::start().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        // Development mode admits the test page's origin.
        .env("HERALD_DEV", "1")
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = open_page(&browser, &gw.http()).await;
    let t = json!(token("ann", &["news"], &["news"]));
    let url = json!(gw.ws());

    // A read made before the client is connected waits for the connection, as a
    // publish does: on an empty channel it answers at once with no publications.
    let empty = page
        .eval(&format!(
            "window.h = new herald.Herald({url}, {{ token: {t} }}); h.history('news')"
        ))
        .await;
    assert_eq!(empty["publications"], json!([]), "{empty}");
    assert_eq!(empty["offset"], 0, "{empty}");

    let acks = page
        .eval(
            "(async () => { const acks = []; \
               for (let n = 1; n <= 5; n++) acks.push(await h.publish('news', { n })); \
               return acks; })()",
        )
        .await;
    let epoch = acks[4]["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(acks[4]["offset"], 5, "{acks}");

    // Oldest first, with the channel's position.
    let all = page.eval("h.history('news')").await;
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert_eq!((&all["offset"], &all["epoch"]), (&json!(5), &json!(epoch)));
    // Newest first, at most two.
    let newest = page
        .eval("h.history('news', { reverse: true, limit: 2 })")
        .await;
    assert_eq!(offsets(&newest), [5, 4]);
    // After a position of the current epoch.
    let after = page
        .eval(&format!(
            "h.history('news', {{ since: {{ offset: 3, epoch: {} }} }})",
            json!(epoch)
        ))
        .await;
    assert_eq!(offsets(&after), [4, 5]);
    // The server's refusals reject with its code.
    let refused = page
        .eval(
            "h.history('secret').then(() => 'read', \
               (e) => [e instanceof herald.HeraldError, e.code, e.channel])",
        )
        .await;
    assert_eq!(refused, json!([true, "forbidden", "secret"]));
    let bad = page
        .eval("h.history('bad name').then(() => 'read', (e) => e.code)")
        .await;
    assert_eq!(bad, "bad_request");
    // The client's own checks never reach the server.
    let local = page
        .eval("h.history('news', { limit: 0 }).then(() => 'read', (e) => e.name)")
        .await;
    assert_eq!(local, "TypeError");

    // A closed client rejects with `closed`.
    let closed = page
        .eval("h.close(); h.history('news').then(() => 'read', (e) => e.code)")
        .await;
    assert_eq!(closed, "closed");
}
