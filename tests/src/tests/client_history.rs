//! herald-client's `history()` against a real gateway, on both engines: the same
//! messages a subscription delivers, oldest or newest first, limited, after a
//! position; asked before the connection is up; the gateway's refusals as typed
//! errors.

use herald_client::{
    Client, ErrorCode, HistoryError, HistoryQuery, Message, Position, TokenSource,
};
use serde_json::json;

use super::client::{messages, options, subscribed};
use super::gateway::gateway;
use crate::{Backend, token};

async fn read(client: &Client, query: HistoryQuery) -> Vec<Message> {
    client
        .history("news", query)
        .await
        .expect("history")
        .publications
}

async fn history_reads_what_a_subscription_delivers(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let t = token("ann", &["news"], &["news"]);
    let client = Client::connect([gw.ws()], TokenSource::fixed(t), options());
    // Asked right away: it waits for the connection. Nothing was published yet.
    let empty = client
        .history("news", HistoryQuery::default())
        .await
        .expect("history");
    assert!(empty.publications.is_empty(), "{empty:?}");
    assert_eq!(empty.position.offset, 0, "{empty:?}");

    let mut news = client.subscribe("news", None);
    subscribed(&mut news).await;
    for n in 1..=5 {
        client
            .publish("news", &json!({"n": n}))
            .await
            .expect("acknowledged");
    }
    let live = messages(&mut news, 5).await;

    // Oldest first, each the very value the subscription delivered.
    let all = client
        .history("news", HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(all.publications, live);
    assert_eq!(all.position, live[4].position());
    let newest = read(
        &client,
        HistoryQuery {
            limit: Some(2),
            reverse: true,
            ..HistoryQuery::default()
        },
    )
    .await;
    assert_eq!(newest, [live[4].clone(), live[3].clone()]);
    let first = read(
        &client,
        HistoryQuery {
            limit: Some(3),
            ..HistoryQuery::default()
        },
    )
    .await;
    assert_eq!(first, live[..3]);
    let after = read(
        &client,
        HistoryQuery {
            since: Some(live[1].position()),
            ..HistoryQuery::default()
        },
    )
    .await;
    assert_eq!(after, live[2..]);
    // Another epoch's offset says nothing about this one: from the oldest kept.
    let other = read(
        &client,
        HistoryQuery {
            since: Some(Position::new(2, "another-epoch")),
            ..HistoryQuery::default()
        },
    )
    .await;
    assert_eq!(other, live);
    client.close().await;
}

async fn history_refusals_are_typed_errors(mut backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let t = token("bob", &["news"], &[]);
    let client = Client::connect([gw.ws()], TokenSource::fixed(t), options());
    let refusal = |r: Result<_, HistoryError>| match r {
        Err(HistoryError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Only who may subscribe may read.
    assert_eq!(
        refusal(client.history("secret", HistoryQuery::default()).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refusal(
            client
                .history(
                    "news",
                    HistoryQuery {
                        limit: Some(0),
                        ..HistoryQuery::default()
                    }
                )
                .await
        ),
        ErrorCode::BadRequest
    );
    // The connection outlives each refusal.
    assert!(
        client
            .history("news", HistoryQuery::default())
            .await
            .is_ok()
    );
    if let Backend::Redis(redis) = &mut backend {
        redis.kill().await;
        assert_eq!(
            refusal(client.history("news", HistoryQuery::default()).await),
            ErrorCode::Unavailable
        );
    }
    client.close().await;
}

crate::both_engines!(
    history_reads_what_a_subscription_delivers,
    history_refusals_are_typed_errors,
);
