//! Whole screens drawn into a `TestBackend` from fixed fixtures, checked by
//! their text and, where colour carries meaning, by their style.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;

use super::*;
use crate::app::App;
use crate::event::Event;
use crate::fixtures;
use crate::model::{LimitKind, Overview, RecentHit};

const URL: &str = "http://127.0.0.1:8083";

/// A screen's text, one string per row.
struct Screen {
    lines: Vec<String>,
    buffer: Buffer,
}

impl Screen {
    fn text(&self) -> String {
        self.lines.join("\n")
    }

    #[track_caller]
    fn has(&self, needle: &str) {
        assert!(
            self.text().contains(needle),
            "{needle:?} not on screen:\n{}",
            self.text()
        );
    }

    #[track_caller]
    fn lacks(&self, needle: &str) {
        assert!(
            !self.text().contains(needle),
            "{needle:?} on screen:\n{}",
            self.text()
        );
    }

    /// The row that contains every one of `parts`.
    #[track_caller]
    fn row(&self, parts: &[&str]) -> &str {
        self.lines
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no row with {parts:?}:\n{}", self.text()))
    }

    /// The foreground colour where `needle` starts, in the row containing `row`.
    #[track_caller]
    fn fg_at(&self, row: &str, needle: &str) -> Color {
        let y = self
            .lines
            .iter()
            .position(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row with {row:?}:\n{}", self.text()));
        let line = &self.lines[y];
        let byte = line
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
        // Every symbol on these screens is one cell wide.
        let x = line[..byte].chars().count();
        self.buffer[(x as u16, y as u16)].fg
    }
}

fn screen_of(buffer: &Buffer) -> Screen {
    let area = buffer.area;
    let lines = (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect();
    Screen {
        lines,
        buffer: buffer.clone(),
    }
}

fn draw_app(app: &App, width: u16, height: u16) -> Screen {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|f| draw(f, app)).expect("draw");
    screen_of(terminal.backend().buffer())
}

fn app_with(o: Overview) -> App {
    let mut app = App::new(URL, true);
    app.update(Event::Snapshot(Box::new(o)));
    app
}

fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

#[test]
fn healthy_cluster() {
    let s = draw_app(&app_with(fixtures::healthy()), 120, 40);
    s.has(" Herald ");
    s.has("sample 12:00:05 · monitor http://127.0.0.1:8083");
    s.has("Nodes        4 up  0 stale  0 down");
    s.has("Connections  1,234 · channels 3 · subs 2,468");
    s.has("Messages/s   in 18.0 · out 812.0");
    s.has("delivered/s · 1 s · peak 812");
    s.has(" Nodes (4) ");
    // Wide enough for every column.
    s.row(&[
        "STATUS", "SERVICE", "NODE", "ADDRESS", "BEAT", "CONNS", "SUBS", "IN/s", "OUT/s", "PROBE",
    ]);
    let gw = s.row(&["gw-1"]);
    for part in [
        "● up",
        "ws-gateway",
        "0.3s",
        "1,234",
        "2,468",
        "812.0",
        "1.2ms",
    ] {
        assert!(gw.contains(part), "{part:?} not in {gw:?}");
    }
    assert_eq!(s.fg_at("gw-1", "● up"), Color::Green);
    s.row(&["news", "812", "640", "2.0"]);
    s.row(&["chat:lobby", "300"]);
    s.has("Top channels (3 of 3)");
    s.has("reported 0 · connection 0 · message 0");
    s.has("no rate-limit hits");
    s.lacks("unreachable");
    s.lacks("(stale)");
    // No webhooks in this cluster, and a single Redis: no line for either.
    s.lacks("Webhooks");
    s.lacks("Redis ");
    s.has("q quit · tab view");
}

#[test]
fn a_stale_and_a_down_node() {
    let s = draw_app(&app_with(fixtures::degraded()), 120, 40);
    s.has("Nodes        4 up  1 stale  1 down");
    // A down node's connections no longer count.
    s.has("Connections  1,274");
    let stale = s.row(&["gw-2"]);
    assert!(
        stale.contains("● stale") && stale.contains("5.2s"),
        "{stale}"
    );
    let down = s.row(&["gw-3"]);
    assert!(down.contains("● down") && down.contains("42s"), "{down}");
    assert!(down.contains("FAIL"), "a failing probe shows: {down}");
    assert_eq!(s.fg_at("gw-1", "● up"), Color::Green);
    assert_eq!(s.fg_at("gw-2", "● stale"), Color::Yellow);
    assert_eq!(s.fg_at("gw-3", "● down"), Color::Red);
    // The age is coloured like the status.
    assert_eq!(s.fg_at("gw-3", "42s"), Color::Red);
    // So are the header's non-zero counts.
    assert_eq!(s.fg_at("Nodes ", "1 stale"), Color::Yellow);
    assert_eq!(s.fg_at("Nodes ", "1 down"), Color::Red);
}

#[test]
fn rate_limit_hits() {
    let s = draw_app(&app_with(fixtures::rate_limited()), 120, 40);
    s.has("reported 17 · connection 2 · message 15");
    s.row(&["AT", "WHO", "KIND", "NODE"]);
    s.row(&["12:00:04", "spammer", "message", "gw-1"]);
    s.row(&["11:59:58", "203.0.113.9", "connection", "gw-1"]);
    s.has("Rate-limited 17");
    assert_eq!(s.fg_at("reported 17", "17"), Color::Yellow);
    s.lacks("no rate-limit hits");
}

#[test]
fn webhook_delivery_line() {
    for (width, height) in [(120, 40), (80, 24)] {
        let s = draw_app(&app_with(fixtures::webhooks_failing()), width, height);
        s.has("Webhooks     queued 1,250 · delivered 48,211 · failed 3  failing");
        assert_eq!(s.fg_at("Webhooks ", "3  failing"), Color::Red);
        assert_eq!(s.fg_at("Webhooks ", "failing"), Color::Red);
        // The panel grew by the line; the others are all still there.
        s.has("Messages/s   in 18.0 · out 812.0");
        s.has(" Nodes (4) ");
        s.row(&["gw-1", "ws-gateway"]);
        s.has("Top channels (3 of 3)");
    }
    // A backend that recovered: no alarm, zero failures not coloured.
    let mut o = fixtures::webhooks_failing();
    o.webhooks = Some(crate::model::WebhookView {
        failed: 0,
        failing: false,
        ..o.webhooks.unwrap_or_default()
    });
    let s = draw_app(&app_with(o), 120, 40);
    let row = s.row(&["Webhooks "]).to_owned();
    assert!(
        row.contains("failed 0") && !row.contains("failing"),
        "{row}"
    );
    assert_ne!(s.fg_at("Webhooks ", "failed 0"), Color::Red);
}

#[test]
fn redis_cluster_line() {
    for (width, height) in [(120, 40), (80, 24)] {
        let s = draw_app(&app_with(fixtures::on_redis_cluster()), width, height);
        s.has("Redis        3 shards · 3/3 primaries up · 3/3 replicas up · 16384/16384 slots");
        // A whole cluster is not news: nothing in colour.
        for part in ["3/3 primaries", "3/3 replicas", "16384/16384"] {
            assert_eq!(s.fg_at("Redis ", part), Color::Reset, "{part}");
        }
        s.lacks("down 10.0.1");
        // The panel grew by the line; the others are all still there.
        s.has("Messages/s   in 18.0 · out 812.0");
        s.has(" Nodes (4) ");
        s.row(&["gw-1", "ws-gateway"]);
        s.has("Top channels (3 of 3)");
    }
}

#[test]
fn redis_primary_down() {
    let s = draw_app(&app_with(fixtures::redis_primary_down()), 120, 40);
    s.has(
        "Redis        3 shards · 2/3 primaries up · 2/3 replicas up · 10922/16384 slots  down 10.0.1.2:7000",
    );
    assert_eq!(s.fg_at("Redis ", "2/3 primaries up"), Color::Red);
    assert_eq!(s.fg_at("Redis ", "2/3 replicas up"), Color::Yellow);
    assert_eq!(s.fg_at("Redis ", "10922/16384 slots"), Color::Red);
    assert_eq!(s.fg_at("Redis ", "down 10.0.1.2"), Color::Red);
    assert_ne!(s.fg_at("Redis ", "3 shards"), Color::Red);

    // With webhooks too, on a small terminal: both lines, the rest still there.
    let o = Overview {
        webhooks: fixtures::webhooks_failing().webhooks,
        ..fixtures::redis_primary_down()
    };
    let s = draw_app(&app_with(o), 80, 24);
    s.has("Redis        3 shards · 2/3 primaries up · 2/3 replicas up · 10922/16384 slots");
    s.has("Webhooks     queued 1,250");
    s.has("Messages/s   in 18.0 · out 812.0");
    s.row(&["gw-1", "ws-gateway"]);
    s.has("Top channels");

    // Seen through an unreachable monitor it is old news: greyed like the rest.
    let mut app = app_with(fixtures::redis_primary_down());
    app.update(Event::FetchError("connection refused".to_owned()));
    app.update(Event::FetchError("connection refused".to_owned()));
    let s = draw_app(&app, 120, 40);
    assert_eq!(s.fg_at("Redis ", "2/3 primaries up"), Color::DarkGray);
}

#[test]
fn every_rate_limit_kind_fits_its_column() {
    let mut o = fixtures::rate_limited();
    for (who, kind) in [
        ("198.51.100.7", LimitKind::ConnectRate),
        ("198.51.100.8", LimitKind::NodeCapacity),
        ("carol", LimitKind::Login),
    ] {
        o.ratelimit.recent.insert(
            0,
            RecentHit {
                who: who.to_owned(),
                kind,
                node: "gw-2".to_owned(),
                at: "2026-01-01T12:00:05.000Z".to_owned(),
            },
        );
    }
    for (width, height) in [(120, 40), (80, 24)] {
        let s = draw_app(&app_with(o.clone()), width, height);
        s.row(&["198.51.100.7", "connect_rate ", "gw-2"]);
        s.row(&["198.51.100.8", "node_capacity ", "gw-2"]);
        s.row(&["carol", "login", "gw-2"]);
    }
}

#[test]
fn empty_state() {
    // Before the monitor has answered at all.
    let waiting = draw_app(&App::new(URL, false), 120, 40);
    waiting.has("waiting for the first sample from the monitor");
    waiting.lacks("unreachable");

    let s = draw_app(&app_with(fixtures::empty()), 120, 40);
    s.has("Nodes        0 up  0 stale  0 down");
    s.has("Connections  0 · channels 0 · subs 0");
    s.has("no nodes registered");
    s.has("no channels with subscribers");
    s.has("no rate-limit hits");

    let mut conns = app_with(fixtures::empty());
    conns.update(key(KeyCode::Tab));
    conns.update(Event::Connections(Box::default()));
    let c = draw_app(&conns, 120, 40);
    c.has("Connections (0 shown of 0)");
    c.has("no live connections");
}

#[test]
fn unreachable_monitor_keeps_the_last_data_greyed() {
    let mut app = app_with(fixtures::degraded());
    app.update(Event::FetchError("connection refused".to_owned()));
    app.update(Event::FetchError("connection refused".to_owned()));
    let s = draw_app(&app, 120, 40);
    s.has("monitor unreachable — retrying · last data 12:00:05 · attempt 2: connection refused");
    s.has(" Nodes (6) (stale) ");
    s.has(" Cluster (stale) ");
    // The last data is still there, but no longer in status colours.
    s.row(&["gw-1", "● up"]);
    assert_eq!(s.fg_at("gw-1", "● up"), Color::DarkGray);
    assert_eq!(s.fg_at("gw-3", "● down"), Color::DarkGray);

    // The monitor is back: colours and titles return.
    app.update(Event::Snapshot(Box::new(fixtures::degraded())));
    let back = draw_app(&app, 120, 40);
    back.lacks("unreachable");
    back.lacks("(stale)");
    assert_eq!(back.fg_at("gw-1", "● up"), Color::Green);
}

#[test]
fn unreachable_from_the_start() {
    let mut app = App::new(URL, false);
    app.update(Event::FetchError("connection refused".to_owned()));
    let s = draw_app(&app, 80, 24);
    s.has("monitor unreachable — retrying · attempt 1: connection refused");
    s.has("no data yet: the monitor has not answered");
}

#[test]
fn monitor_without_redis_is_flagged() {
    let mut o = fixtures::healthy();
    o.stale = true;
    let s = draw_app(&app_with(o), 120, 40);
    s.has("the monitor cannot reach Redis");
}

#[test]
fn narrow_terminal_80x24() {
    let mut app = app_with(fixtures::rate_limited());
    let mut o = fixtures::degraded();
    o.ratelimit = fixtures::rate_limited().ratelimit;
    o.nodes.truncate(5);
    o.totals = fixtures::totals(&o.nodes, 3);
    app.update(Event::Snapshot(Box::new(o)));
    let s = draw_app(&app, 80, 24);
    assert_eq!(s.lines.len(), 24);
    s.has("Nodes        4 up  1 stale  0 down");
    s.has("Connections  1,274");
    // Every node fits; the wide-only columns are left out.
    for id in ["auth-1", "bc-1", "mon-1", "gw-1", "gw-2"] {
        s.row(&[id]);
    }
    s.lacks("ADDRESS");
    s.lacks("PROBE");
    s.row(&["STATUS", "SERVICE", "NODE", "BEAT", "CONNS"]);
    assert_eq!(s.fg_at("gw-2", "● stale"), Color::Yellow);
    s.row(&["news", "812"]);
    s.has("reported 17");
    s.row(&["spammer", "message"]);
    // The footer is the last row.
    assert!(s.lines[23].contains("q quit"), "{:?}", s.lines[23]);

    let mut c = app.clone();
    c.update(key(KeyCode::Tab));
    c.update(Event::Connections(Box::new(fixtures::connections())));
    let cs = draw_app(&c, 80, 24);
    cs.row(&["c-1", "alice", "gw-1", "news"]);
    cs.lacks("127.0.0.1 ");
}

#[test]
fn connections_view_selection_filter_and_confirm() {
    let mut app = app_with(fixtures::healthy());
    app.update(key(KeyCode::Tab));
    app.update(Event::Connections(Box::new(fixtures::connections())));
    let s = draw_app(&app, 120, 40);
    s.has(" 1 Overview  2 Connections ");
    s.has("Connections (3 shown of 3)");
    s.row(&[
        "CONN", "USER", "IP", "NODE", "SINCE", "CHANNELS", "IN", "OUT",
    ]);
    s.row(&[
        "▶ c-1",
        "alice",
        "127.0.0.1",
        "gw-1",
        "11:58:00",
        "news",
        "1,500",
    ]);
    s.row(&["c-2", "bob", "news,chat:lobby"]);
    s.has("d disconnect");

    app.update(key(KeyCode::Down));
    let moved = draw_app(&app, 120, 40);
    moved.row(&["▶ c-2", "bob"]);

    app.update(key(KeyCode::Char('/')));
    for c in "bo".chars() {
        app.update(key(KeyCode::Char(c)));
    }
    let filtering = draw_app(&app, 120, 40);
    filtering.has("filter /bo█");
    filtering.has("Connections (1 shown of 3) · filter: bo");
    filtering.lacks("alice");
    app.update(key(KeyCode::Enter));

    app.update(key(KeyCode::Char('d')));
    let confirm = draw_app(&app, 120, 40);
    confirm.has("Disconnect c-2 (user bob)?");
    confirm.has("y yes");

    app.update(key(KeyCode::Char('y')));
    app.update(Event::Disconnected {
        conn_id: "c-2".to_owned(),
        result: Ok(()),
    });
    let done = draw_app(&app, 120, 40);
    done.lacks("Disconnect c-2 (user bob)?");
    done.has("disconnect of c-2 sent");
}

#[test]
fn help_overlay() {
    let mut app = app_with(fixtures::healthy());
    app.update(key(KeyCode::Char('?')));
    let s = draw_app(&app, 80, 24);
    s.has("Keys — esc closes");
    s.has("disconnect the selected connection (asks y/n)");
    s.has("filter connections");
}

#[test]
fn sparkline_shows_the_newest_points() {
    let mut app = App::new(URL, false);
    for i in 0..60u32 {
        let mut o = fixtures::empty();
        o.generated_at = format!("t{i}");
        o.totals.messages_out_per_sec = f64::from(i);
        app.update(Event::Snapshot(Box::new(o)));
    }
    let s = draw_app(&app, 120, 40);
    s.has("delivered/s · 60 s · peak 59");
    // The rightmost bar is the newest and tallest.
    let spark = s.row(&["█"]);
    assert!(spark.trim_end().ends_with("█│"), "{spark:?}");
}

#[test]
fn formatting() {
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(1_000), "1,000");
    assert_eq!(count(1_234_567), "1,234,567");
    assert_eq!(rate(0.0), "0.0");
    assert_eq!(rate(812.04), "812.0");
    assert_eq!(rate(12_345.0), "12.3k");
    assert_eq!(age(350), "0.3s");
    assert_eq!(age(5_200), "5.2s");
    assert_eq!(age(42_000), "42s");
    assert_eq!(age(300_000), "5m");
    assert_eq!(age(7_200_000), "2h");
}

#[test]
fn channels_panel_alone() {
    let channels = fixtures::healthy().top_channels;
    let area = Rect::new(0, 0, 34, 6);
    let mut buf = Buffer::empty(area);
    ChannelsPanel {
        channels: &channels[..2],
        total: 3,
        palette: Palette { stale: false },
    }
    .render(area, &mut buf);
    let s = screen_of(&buf);
    assert_eq!(
        s.lines,
        [
            "┌ Top channels (2 of 3) ─────────┐",
            "│CHANNEL    SUBS   MEMBERS MSG/s │",
            "│news       812    640     2.0   │",
            "│chat:lobby 300    212     0.5   │",
            "│                                │",
            "└────────────────────────────────┘",
        ]
    );
}
