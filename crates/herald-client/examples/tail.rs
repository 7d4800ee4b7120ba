//! Follows one channel and prints every message as a JSON line on stdout; connection
//! changes and gaps go to stderr.
//!
//! ```sh
//! HERALD_TOKEN=$(auth-svc token --user ann --channels 'news') \
//!   cargo run -p herald-client --example tail -- news ws://127.0.0.1:8765/ws ws://127.0.0.1:8766/ws
//! ```
//!
//! Arguments: the channel, then gateway URLs (default `$HERALD_URL`, else
//! `ws://127.0.0.1:8765/ws`). The token comes from `$HERALD_TOKEN` (never an
//! argument, which other users of the machine could read). `--since OFFSET@EPOCH`
//! resumes after a position printed earlier. `RUST_LOG=herald_client=debug` shows what
//! the client does.

use std::process::ExitCode;

use futures_util::StreamExt as _;
use herald_client::{Client, ConnState, Event, Options, Position, TokenSource};

const USAGE: &str = "usage: tail CHANNEL [--since OFFSET@EPOCH] [URL…]   (token in $HERALD_TOKEN)";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colour only on a terminal, not in a redirected log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = std::env::args().skip(1);
    let Some(channel) = args.next().filter(|a| !a.starts_with('-')) else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let mut since = None;
    let mut urls = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--since" {
            let parsed = args.next().and_then(|p| {
                let (offset, epoch) = p.split_once('@')?;
                Some(Position::new(offset.parse().ok()?, epoch))
            });
            let Some(p) = parsed else {
                eprintln!("--since wants OFFSET@EPOCH\n{USAGE}");
                return ExitCode::from(64);
            };
            since = Some(p);
        } else {
            urls.push(arg);
        }
    }
    if urls.is_empty() {
        urls.push(
            std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:8765/ws".to_owned()),
        );
    }
    let Ok(token) = std::env::var("HERALD_TOKEN") else {
        eprintln!("HERALD_TOKEN is not set\n{USAGE}");
        return ExitCode::from(64);
    };

    let client = Client::connect(urls, TokenSource::fixed(token), Options::default());
    let mut states = client.states();
    let mut sub = client.subscribe(channel, since);
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = states.borrow_and_update().clone();
                eprintln!("{}", describe(&state));
            }
            event = sub.next() => match event {
                Some(Event::Message(m)) => {
                    let line = serde_json::json!({
                        "channel": m.channel, "offset": m.offset, "epoch": m.epoch,
                        "kind": m.kind.to_string(), "from_user": m.from_user,
                        "timestamp": m.timestamp, "data": m.data,
                    });
                    println!("{line}");
                }
                Some(Event::Gap(g)) => {
                    eprintln!("gap ({}): lost after {} through {}", g.reason.as_str(), g.from, g.to);
                }
                Some(Event::Subscribed(s)) => {
                    eprintln!("subscribed to {} at {}@{}", s.channel, s.offset, s.epoch);
                }
                Some(Event::Error(e)) => eprintln!("subscription refused: {e}"),
                Some(Event::Unsubscribed) => eprintln!("unsubscribed by the application's backend"),
                // Joins and leaves: not asked for (`subscribe` leaves them off).
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let end = client.state();
    client.close().await;
    match end {
        ConnState::Disconnected {
            reconnect: false,
            code: Some(_),
            ..
        } => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn describe(state: &ConnState) -> String {
    match state {
        ConnState::Connecting => "connecting".to_owned(),
        ConnState::Connected { node, conn_id } => format!("connected to {node} ({conn_id})"),
        ConnState::Disconnected {
            code,
            reason,
            reconnect,
        } => {
            let code = code.as_ref().map_or("-", |c| c.as_str());
            let next = if *reconnect {
                "reconnecting"
            } else {
                "stopped"
            };
            format!("disconnected ({code}: {reason}); {next}")
        }
    }
}
