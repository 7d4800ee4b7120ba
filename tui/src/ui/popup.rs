//! Overlays: the key help and the disconnect confirmation.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget, Wrap};

const KEYS: [(&str, &str); 11] = [
    ("q, ctrl-c", "quit"),
    ("tab, 1, 2", "switch view: Overview / Connections"),
    ("↑ ↓, j k", "scroll nodes / select a connection"),
    ("pgup pgdn", "move by ten rows"),
    ("g G", "first / last row"),
    ("/", "filter connections (enter applies, esc cancels)"),
    ("", "user:NAME channel:NAME node:ID ask the monitor"),
    ("", "any other word matches anywhere in a row"),
    ("d", "disconnect the selected connection (asks y/n)"),
    ("esc", "clear the message, then the filter"),
    ("?", "this help"),
];

/// A `width` × `height` box in the middle of `area`, shrunk to fit.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [cell] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    cell
}

#[derive(Debug)]
pub struct HelpPopup;

impl Widget for HelpPopup {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let mut lines: Vec<Line<'_>> = KEYS
            .iter()
            .map(|(k, what)| {
                Line::from(vec![
                    Span::styled(format!("{k:>10}  "), Style::new().fg(Color::Cyan).bold()),
                    Span::raw(*what),
                ])
            })
            .collect();
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            "Status: green up (beat ≤ 3 s), yellow stale (≤ 10 s), red down.",
            Style::new().fg(Color::DarkGray),
        ));
        let height = u16::try_from(lines.len())
            .unwrap_or(u16::MAX)
            .saturating_add(2);
        let rect = centered(area, 72, height);
        Clear.render(rect, buf);
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(
                Block::bordered()
                    .title(" Keys — esc closes ")
                    .border_style(Style::new().fg(Color::Cyan)),
            )
            .render(rect, buf);
    }
}

#[derive(Debug)]
pub struct ConfirmPopup<'a> {
    pub conn_id: &'a str,
    pub user: &'a str,
}

impl Widget for ConfirmPopup<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let rect = centered(area, 60, 5);
        Clear.render(rect, buf);
        Paragraph::new(vec![
            Line::from(format!("Disconnect {} (user {})?", self.conn_id, self.user)),
            Line::from(vec![
                Span::styled("y", Style::new().fg(Color::Red).bold()),
                Span::raw(" yes   "),
                Span::styled("n", Style::new().fg(Color::Green).bold()),
                Span::raw(" / esc no"),
            ]),
        ])
        .wrap(Wrap { trim: true })
        .block(
            Block::bordered()
                .title(" Confirm ")
                .border_style(Style::new().fg(Color::Red)),
        )
        .render(rect, buf);
    }
}
