//! Herald's terminal dashboard: polls the monitor's HTTP API and draws the
//! cluster live (docs/protocol.md). It talks to nothing but the monitor.
//!
//! # Layout
//! - `config`: flags and environment.
//! - `model`: the monitor's JSON.
//! - `event`: the closed set of things that change state.
//! - `app`: state and the pure `App::update`.
//! - `fetch`: the polling tasks and the disconnect request.
//! - `terminal`: raw mode and alternate screen, always restored.
//! - `ui`: one widget per panel, and the layout.

pub mod app;
pub mod config;
pub mod event;
pub mod fetch;
pub mod model;
pub mod terminal;
pub mod ui;

#[cfg(test)]
mod fixtures;

use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::app::{Action, App};
use crate::config::Config;
use crate::event::Event;
use crate::fetch::{Client, ConnQuery};
use crate::terminal::TerminalGuard;

/// How long one request may take; longer than this and the monitor counts as
/// unreachable for that round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for a few seconds of answers while a frame is being drawn.
const EVENT_QUEUE: usize = 64;

/// Runs the dashboard until the user quits or the process is told to stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::new(&config.monitor, config.admin_key.clone(), REQUEST_TIMEOUT)
        .context("bad monitor URL")?;
    let can_disconnect = config.admin_key.as_deref().is_some_and(|k| !k.is_empty());
    let every = Duration::from_millis(config.refresh_ms);

    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    let (query_tx, query_rx) = watch::channel(ConnQuery::default());
    // Every fetch runs in this set: aborted, and waited for, when the dashboard ends.
    let mut tasks = JoinSet::new();
    tasks.spawn(fetch::poll_overview(client.clone(), every, tx.clone()));
    tasks.spawn(fetch::poll_connections(
        client.clone(),
        every,
        query_rx,
        tx.clone(),
    ));

    let mut guard = TerminalGuard::init().context("cannot set up the terminal")?;
    let mut app = App::new(config.monitor.clone(), can_disconnect);
    let mut input = EventStream::new();
    let mut frame = tokio::time::interval(Duration::from_secs(1) / config.fps.max(1));
    frame.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut stop = std::pin::pin!(stop_signal());

    let result: anyhow::Result<()> = loop {
        let action = tokio::select! {
            _ = frame.tick() => {
                app.update(Event::Tick);
                if let Err(e) = guard.terminal.draw(|f| ui::draw(f, &app)) {
                    break Err(e).context("cannot draw");
                }
                debug_panic();
                None
            }
            Some(event) = rx.recv() => app.update(event),
            input_event = input.next() => match input_event {
                Some(Ok(TermEvent::Key(key))) => app.update(Event::Key(key)),
                Some(Ok(TermEvent::Resize(..))) => app.update(Event::Resize),
                Some(Ok(_)) => None,
                Some(Err(e)) => break Err(e).context("cannot read the terminal"),
                // The terminal is gone; nobody is watching.
                None => break Ok(()),
            },
            () = &mut stop => break Ok(()),
        };
        match action {
            Some(Action::Query(q)) => {
                query_tx.send_replace(q);
            }
            Some(Action::Disconnect { conn_id }) => {
                tasks.spawn(fetch::disconnect(client.clone(), conn_id, tx.clone()));
            }
            None => {}
        }
        // Forget the disconnects that are done.
        while tasks.try_join_next().is_some() {}
        if app.should_quit {
            break Ok(());
        }
    };

    tasks.shutdown().await;
    drop(guard);
    result
}

/// In debug builds, `HERALD_TUI_DEBUG_PANIC=1` panics after the first frame, so
/// the end-to-end tests can prove a panic leaves the terminal usable.
fn debug_panic() {
    #[cfg(debug_assertions)]
    if std::env::var_os("HERALD_TUI_DEBUG_PANIC").is_some() {
        panic!("HERALD_TUI_DEBUG_PANIC is set: panicking on purpose");
    }
}

/// SIGTERM or SIGHUP (the terminal closed): leave through the same path as `q`,
/// so the terminal is restored. Ctrl-C arrives as a key in raw mode.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
