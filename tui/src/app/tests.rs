//! State transitions: events in, state and actions out, no terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::*;
use crate::fixtures;

fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ch(c: char) -> Event {
    key(KeyCode::Char(c))
}

fn app() -> App {
    App::new("http://monitor", true)
}

fn with_connections() -> App {
    let mut a = app();
    a.update(key(KeyCode::Tab));
    a.update(Event::Connections(Box::new(fixtures::connections())));
    a
}

fn snapshot_at(generated_at: &str, out_per_sec: f64) -> Event {
    let mut o = fixtures::healthy();
    o.generated_at = generated_at.to_owned();
    o.totals.messages_out_per_sec = out_per_sec;
    Event::Snapshot(Box::new(o))
}

#[test]
fn starts_loading_then_loaded() {
    let mut a = app();
    assert_eq!(a.overview.state, LoadingState::Loading);
    assert_eq!(a.connections.state, LoadingState::Idle);
    assert_eq!(
        a.update(Event::Snapshot(Box::new(fixtures::healthy()))),
        None
    );
    assert_eq!(a.overview.state, LoadingState::Loaded);
    assert_eq!(
        a.overview.data.as_ref().map(|o| o.totals.connections),
        Some(1_234)
    );
    assert!(!a.unreachable());
}

#[test]
fn fetch_errors_keep_the_last_data_and_count_retries() {
    let mut a = app();
    a.update(Event::Snapshot(Box::new(fixtures::healthy())));
    a.update(Event::FetchError("connection refused".to_owned()));
    a.update(Event::FetchError("connection refused".to_owned()));
    assert!(a.unreachable());
    assert_eq!(a.overview.failures, 2);
    assert_eq!(
        a.overview.state,
        LoadingState::Error("connection refused".to_owned())
    );
    assert!(a.overview.data.is_some(), "the last data stays on screen");
    // The monitor answers again: back to normal, counter reset.
    a.update(Event::Snapshot(Box::new(fixtures::degraded())));
    assert!(!a.unreachable());
    assert_eq!(a.overview.failures, 0);
}

#[test]
fn sparkline_takes_one_point_per_new_sample_and_keeps_a_minute() {
    let mut a = app();
    a.update(snapshot_at("t1", 10.4));
    a.update(snapshot_at("t1", 10.4)); // polled twice within one sample
    a.update(snapshot_at("t2", 20.6));
    assert_eq!(a.history, [10, 21]);
    for i in 0..100 {
        a.update(snapshot_at(&format!("n{i}"), f64::from(i)));
    }
    assert_eq!(a.history.len(), HISTORY);
    assert_eq!(a.history.back(), Some(&99));
    assert_eq!(a.history.front(), Some(&40));
}

#[test]
fn quit_keys() {
    for e in [
        ch('q'),
        Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    ] {
        let mut a = app();
        a.update(e);
        assert!(a.should_quit);
    }
    // A key release is not a press.
    let mut a = app();
    let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    a.update(Event::Key(release));
    assert!(!a.should_quit);
    // While typing a filter, q is a letter.
    let mut a = app();
    a.update(ch('/'));
    a.update(ch('q'));
    assert!(!a.should_quit);
    assert_eq!(a.filter, "q");
}

#[test]
fn tab_switches_views_and_turns_connection_polling_on_and_off() {
    let mut a = app();
    let on = a.update(key(KeyCode::Tab));
    assert_eq!(a.view, View::Connections);
    assert_eq!(a.connections.state, LoadingState::Loading);
    assert_eq!(
        on,
        Some(Action::Query(ConnQuery {
            active: true,
            ..ConnQuery::default()
        }))
    );
    let off = a.update(key(KeyCode::Tab));
    assert_eq!(a.view, View::Overview);
    assert_eq!(off, Some(Action::Query(ConnQuery::default())));
    // Nothing changed, nothing to tell the poller.
    assert_eq!(a.update(ch('1')), None);
}

#[test]
fn scrolling_is_clamped() {
    let mut a = with_connections();
    for _ in 0..10 {
        a.update(ch('j'));
    }
    assert_eq!(a.selected, 2);
    a.update(key(KeyCode::Up));
    assert_eq!(
        a.selected_connection().map(|c| c.info.user.as_str()),
        Some("bob")
    );
    a.update(ch('g'));
    assert_eq!(a.selected, 0);
    a.update(ch('G'));
    assert_eq!(a.selected, 2);
    a.update(key(KeyCode::PageUp));
    assert_eq!(a.selected, 0);

    // On the overview, the arrows scroll the nodes table.
    let mut o = app();
    o.update(Event::Snapshot(Box::new(fixtures::degraded())));
    o.update(key(KeyCode::Down));
    o.update(key(KeyCode::Down));
    assert_eq!(o.node_offset, 2);
    o.update(key(KeyCode::End));
    assert_eq!(o.node_offset, 5);
}

#[test]
fn selection_follows_the_connection_across_refreshes() {
    let mut a = with_connections();
    a.update(ch('j'));
    assert_eq!(
        a.selected_connection().map(|c| c.info.conn_id.as_str()),
        Some("c-2")
    );
    // Rows are listed oldest first whatever order they arrive in.
    let mut shuffled = fixtures::connections();
    shuffled.connections.reverse();
    a.update(Event::Connections(Box::new(shuffled)));
    let ids: Vec<_> = a
        .visible_connections()
        .iter()
        .map(|c| c.info.conn_id.clone())
        .collect();
    assert_eq!(ids, ["c-1", "c-2", "c-3"]);
    assert_eq!(
        a.selected_connection().map(|c| c.info.conn_id.as_str()),
        Some("c-2")
    );
    // c-1 went away: c-2 moves up a row and stays selected.
    let mut page = fixtures::connections();
    page.connections.remove(0);
    a.update(Event::Connections(Box::new(page)));
    assert_eq!(a.selected, 0);
    assert_eq!(
        a.selected_connection().map(|c| c.info.conn_id.as_str()),
        Some("c-2")
    );
    // Everything went away: nothing selected, no panic.
    a.update(Event::Connections(Box::default()));
    assert_eq!(a.selected_connection(), None);
    assert_eq!(a.selected, 0);
}

#[test]
fn filter_narrows_as_you_type_and_esc_restores() {
    let mut a = with_connections();
    a.update(ch('/'));
    assert!(matches!(a.mode, Mode::Filter { .. }));
    for c in "lobby".chars() {
        assert_eq!(a.update(ch(c)), None, "local terms need no new query");
    }
    let users: Vec<_> = a
        .visible_connections()
        .iter()
        .map(|c| c.info.user.clone())
        .collect();
    assert_eq!(users, ["bob"]);
    assert_eq!(
        a.selected_connection().map(|c| c.info.user.as_str()),
        Some("bob")
    );
    a.update(key(KeyCode::Backspace));
    assert_eq!(a.filter, "lobb");
    // esc while typing: back to the filter before `/` (none).
    a.update(key(KeyCode::Esc));
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.filter, "");
    assert_eq!(a.visible_connections().len(), 3);
}

#[test]
fn field_terms_go_to_the_monitor_on_enter() {
    let mut a = with_connections();
    a.update(ch('/'));
    for c in "user:car".chars() {
        a.update(ch(c));
    }
    // Narrowed locally by substring while typing.
    assert_eq!(a.visible_connections().len(), 1);
    for c in "ol news".chars() {
        a.update(ch(c));
    }
    assert_eq!(a.visible_connections().len(), 0, "carol is not on news");
    let applied = a.update(key(KeyCode::Enter));
    assert_eq!(
        applied,
        Some(Action::Query(ConnQuery {
            active: true,
            user: Some("carol".to_owned()),
            ..ConnQuery::default()
        }))
    );
    assert_eq!(a.mode, Mode::Normal);
    // esc in normal mode clears the filter and the query.
    let cleared = a.update(key(KeyCode::Esc));
    assert_eq!(a.filter, "");
    assert_eq!(
        cleared,
        Some(Action::Query(ConnQuery {
            active: true,
            ..ConnQuery::default()
        }))
    );
}

#[test]
fn slash_on_the_overview_opens_the_connections_filter() {
    let mut a = app();
    let action = a.update(ch('/'));
    assert_eq!(a.view, View::Connections);
    assert!(matches!(a.mode, Mode::Filter { .. }));
    assert!(matches!(
        action,
        Some(Action::Query(ConnQuery { active: true, .. }))
    ));
}

#[test]
fn server_query_parses_field_terms() {
    let q = server_query("user:alice  ch:news node:gw-1 free words u:");
    assert_eq!(q.user.as_deref(), Some("alice"));
    assert_eq!(q.channel.as_deref(), Some("news"));
    assert_eq!(q.node.as_deref(), Some("gw-1"));
    assert!(!q.active);
    assert_eq!(server_query("alice"), ConnQuery::default());
}

#[test]
fn disconnect_asks_first_then_acts_on_yes() {
    let mut a = with_connections();
    a.update(ch('j'));
    assert_eq!(a.update(ch('d')), None, "nothing happens before the answer");
    assert_eq!(
        a.mode,
        Mode::Confirm {
            conn_id: "c-2".to_owned(),
            user: "bob".to_owned()
        }
    );
    // Keys other than y/n/esc are ignored while asking; q does not quit.
    assert_eq!(a.update(ch('x')), None);
    assert!(matches!(a.mode, Mode::Confirm { .. }));
    assert_eq!(
        a.update(ch('y')),
        Some(Action::Disconnect {
            conn_id: "c-2".to_owned()
        })
    );
    assert_eq!(a.mode, Mode::Normal);

    a.update(Event::Disconnected {
        conn_id: "c-2".to_owned(),
        result: Err("monitor answered 401 Unauthorized: bad key".to_owned()),
    });
    let notice = a.notice.clone().expect("a notice");
    assert!(notice.error);
    assert!(notice.text.contains("401"), "{}", notice.text);
    // esc clears the notice first.
    a.update(key(KeyCode::Esc));
    assert_eq!(a.notice, None);
}

#[test]
fn disconnect_can_be_declined() {
    for answer in [ch('n'), key(KeyCode::Esc), ch('q')] {
        let mut a = with_connections();
        a.update(ch('d'));
        assert_eq!(a.update(answer), None);
        assert_eq!(a.mode, Mode::Normal);
        assert!(!a.should_quit);
    }
}

#[test]
fn disconnect_needs_a_key_a_view_and_a_selection() {
    let mut no_key = App::new("http://m", false);
    no_key.update(key(KeyCode::Tab));
    no_key.update(Event::Connections(Box::new(fixtures::connections())));
    no_key.update(ch('d'));
    assert_eq!(no_key.mode, Mode::Normal);
    assert!(
        no_key
            .notice
            .as_ref()
            .is_some_and(|n| n.error && n.text.contains("admin key"))
    );

    let mut overview = app();
    overview.update(ch('d'));
    assert_eq!(overview.mode, Mode::Normal);

    let mut empty = app();
    empty.update(key(KeyCode::Tab));
    empty.update(Event::Connections(Box::default()));
    empty.update(ch('d'));
    assert_eq!(empty.mode, Mode::Normal);
    assert!(
        empty
            .notice
            .as_ref()
            .is_some_and(|n| n.text.contains("no connection"))
    );
}

#[test]
fn help_opens_and_closes() {
    let mut a = app();
    a.update(ch('?'));
    assert_eq!(a.mode, Mode::Help);
    a.update(ch('j'));
    assert_eq!(a.mode, Mode::Help, "other keys do not leak through");
    a.update(key(KeyCode::Esc));
    assert_eq!(a.mode, Mode::Normal);
    a.update(ch('?'));
    a.update(ch('q'));
    assert!(a.should_quit);
}

#[test]
fn ticks_and_resizes_change_nothing_but_the_spinner() {
    let mut a = app();
    a.update(Event::Snapshot(Box::new(fixtures::healthy())));
    let before = a.clone();
    a.update(Event::Resize);
    a.update(Event::Tick);
    assert_eq!(a.ticks, 1);
    a.ticks = 0;
    assert_eq!(a, before);
}

#[test]
fn connection_errors_are_separate_from_overview_errors() {
    let mut a = with_connections();
    a.update(Event::ConnectionsError("monitor answered 503".to_owned()));
    assert!(a.connections.is_stale());
    assert!(!a.unreachable());
    assert_eq!(
        a.visible_connections().len(),
        3,
        "the last page stays listed"
    );
}
