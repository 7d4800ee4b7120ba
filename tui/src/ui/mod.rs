//! Drawing: one frame from one `&App`, nothing else. Each panel is a widget in
//! its own module; this file lays them out and draws the bars around them.

mod channels;
mod cluster;
mod connections;
mod nodes;
mod popup;
mod ratelimit;
mod table;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget, Wrap};

pub use self::channels::ChannelsPanel;
pub use self::cluster::ClusterPanel;
pub use self::connections::ConnectionsPanel;
pub use self::nodes::NodesPanel;
pub use self::popup::{ConfirmPopup, HelpPopup};
pub use self::ratelimit::RateLimitPanel;
use crate::app::{App, LoadingState, Mode, View};
use crate::model::{Status, clock};

/// The spinner shown while a request is outstanding or being retried.
const SPINNER: [&str; 4] = ["|", "/", "-", "\\"];

/// Colours that depend on whether the data is current: stale data is drawn
/// grey, whatever it says, so nobody reads an old "up" as a live one.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    pub stale: bool,
}

impl Palette {
    pub fn text(self) -> Style {
        if self.stale {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new()
        }
    }

    pub fn dim(self) -> Style {
        Style::new().fg(Color::DarkGray)
    }

    pub fn header(self) -> Style {
        self.text().add_modifier(Modifier::BOLD)
    }

    pub fn status(self, s: Status) -> Style {
        if self.stale {
            return self.text();
        }
        match s {
            Status::Up => Style::new().fg(Color::Green),
            Status::Stale => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            Status::Down => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    /// A bordered panel; a stale one says so in its title.
    pub fn block(self, title: String) -> Block<'static> {
        let title = if self.stale {
            format!(" {title} (stale) ")
        } else {
            format!(" {title} ")
        };
        Block::bordered().title(title).border_style(if self.stale {
            self.dim()
        } else {
            Style::new().fg(Color::Cyan)
        })
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    let banner = banner(app);
    let [title, banner_area, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(banner.is_some())),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);

    title_bar(app, title, frame.buffer_mut());
    if let Some(b) = banner {
        b.render(banner_area, frame.buffer_mut());
    }
    match app.view {
        View::Overview => overview(frame, body, app),
        View::Connections => {
            let palette = Palette {
                stale: app.connections.is_stale(),
            };
            frame.render_widget(ConnectionsPanel { app, palette }, body);
        }
    }
    footer_bar(app).render(footer, frame.buffer_mut());

    match &app.mode {
        Mode::Help => frame.render_widget(HelpPopup, area),
        Mode::Confirm { conn_id, user } => {
            frame.render_widget(ConfirmPopup { conn_id, user }, area)
        }
        Mode::Normal | Mode::Filter { .. } => {}
    }
}

fn title_bar(app: &App, area: Rect, buf: &mut Buffer) {
    let mut spans = vec![Span::styled(" Herald ", Style::new().bold().reversed())];
    for (i, v) in View::ALL.into_iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.title());
        spans.push(if v == app.view {
            Span::styled(label, Style::new().fg(Color::Cyan).bold().underlined())
        } else {
            Span::styled(label, Style::new().fg(Color::DarkGray))
        });
    }
    let tabs = Line::from(spans);
    let tabs_width = u16::try_from(tabs.width()).unwrap_or(u16::MAX);
    tabs.render(area, buf);

    // Right-aligned: the spinner, the sample's time, then the URL if it fits.
    let spinning = matches!(
        app.overview.state,
        LoadingState::Loading | LoadingState::Error(_)
    );
    let mut parts = Vec::new();
    if spinning {
        parts.push(SPINNER[(app.ticks % 4) as usize].to_owned());
    }
    if let Some(o) = &app.overview.data {
        parts.push(format!("sample {}", clock(&o.generated_at)));
    }
    parts.push(format!("monitor {}", app.monitor_url));
    let room = usize::from(area.width.saturating_sub(tabs_width + 2));
    let mut right = String::new();
    for part in parts {
        let next = if right.is_empty() {
            part
        } else {
            format!("{right} · {part}")
        };
        if next.chars().count() > room {
            break;
        }
        right = next;
    }
    right.push(' ');
    Paragraph::new(Span::styled(right, Style::new().fg(Color::DarkGray)))
        .alignment(Alignment::Right)
        .render(area, buf);
}

/// The one line that says something is wrong with the data source, if anything is.
fn banner(app: &App) -> Option<Paragraph<'static>> {
    let warn = Style::new().fg(Color::White).bg(Color::Red).bold();
    if let LoadingState::Error(e) = &app.overview.state {
        let since = app
            .overview
            .data
            .as_ref()
            .map(|o| format!(" · last data {}", clock(&o.generated_at)))
            .unwrap_or_default();
        // The cause goes last: on a narrow screen it is what gets cut.
        let text = format!(
            " monitor unreachable — retrying{since} · attempt {}: {e} ",
            app.overview.failures
        );
        return Some(Paragraph::new(text).style(warn));
    }
    if app.overview.data.as_ref().is_some_and(|o| o.stale) {
        let text = " the monitor cannot reach Redis — it is serving its last sample ";
        return Some(Paragraph::new(text).style(Style::new().fg(Color::Black).bg(Color::Yellow)));
    }
    None
}

fn footer_bar(app: &App) -> Paragraph<'static> {
    if let Mode::Filter { .. } = app.mode {
        return Paragraph::new(Line::from(vec![
            Span::styled(" filter /", Style::new().fg(Color::Cyan).bold()),
            Span::raw(app.filter.clone()),
            Span::styled("█", Style::new().fg(Color::Cyan)),
            Span::styled(
                "   enter apply · esc cancel · user:NAME channel:NAME node:ID match exactly",
                Style::new().fg(Color::DarkGray),
            ),
        ]));
    }
    if let Some(n) = &app.notice {
        let style = if n.error {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new().fg(Color::Green)
        };
        return Paragraph::new(Span::styled(format!(" {}", n.text), style));
    }
    let hints = match app.view {
        View::Overview => " q quit · tab view · ↑↓/jk scroll · / filter connections · ? help",
        View::Connections => {
            " q quit · tab view · ↑↓/jk select · / filter · d disconnect · esc clear · ? help"
        }
    };
    Paragraph::new(Span::styled(hints, Style::new().fg(Color::DarkGray)))
}

fn overview(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(o) = &app.overview.data else {
        let text = match &app.overview.state {
            LoadingState::Error(_) => "no data yet: the monitor has not answered",
            _ => "waiting for the first sample from the monitor…",
        };
        frame.render_widget(
            Paragraph::new(format!("\n{text}\n{}", app.monitor_url))
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true })
                .block(Block::bordered().title(" Overview ")),
            area,
        );
        return;
    };
    let palette = Palette {
        stale: app.unreachable(),
    };
    // The Redis and webhook lines only where the monitor reports them.
    let cluster_h = 5 + u16::from(o.redis_cluster.is_some()) + u16::from(o.webhooks.is_some());
    // The nodes table gets what it needs up to half the room; the bottom row the rest.
    let rest = area.height.saturating_sub(cluster_h);
    let wanted = u16::try_from(o.nodes.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let nodes_h = wanted.clamp(4, (rest / 2).max(4));
    let [cluster, nodes, bottom] = Layout::vertical([
        Constraint::Length(cluster_h),
        Constraint::Length(nodes_h),
        Constraint::Min(0),
    ])
    .areas(area);
    frame.render_widget(
        ClusterPanel {
            overview: o,
            history: &app.history,
            palette,
        },
        cluster,
    );
    frame.render_widget(
        NodesPanel {
            nodes: &o.nodes,
            offset: app.node_offset,
            palette,
        },
        nodes,
    );
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(bottom);
    frame.render_widget(
        ChannelsPanel {
            channels: &o.top_channels,
            total: o.totals.channels,
            palette,
        },
        left,
    );
    frame.render_widget(
        RateLimitPanel {
            ratelimit: &o.ratelimit,
            palette,
        },
        right,
    );
}

// === Formatting ===

/// `1234567` → `1,234,567`: counts are read at a glance.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with one decimal, or `12.3k` once it gets wide.
pub fn rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.1}")
    }
}

/// A beat's age: `0.4s`, `12s`, `5m`, `2h`.
pub fn age(ms: u64) -> String {
    match ms {
        0..10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{}s", ms / 1000),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

#[cfg(test)]
mod tests;
