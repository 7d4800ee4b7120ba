//! The live connections list: scrollable, filterable, with the selected row
//! the target of `d`.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, StatefulWidget, Table, TableState, Widget};

use super::{Palette, count};
use crate::app::{App, LoadingState};
use crate::model::clock;

/// Below this width the IP and message counters are left out, so ids and
/// channels keep their room.
const WIDE: u16 = 120;

#[derive(Debug)]
pub struct ConnectionsPanel<'a> {
    pub app: &'a App,
    pub palette: Palette,
}

impl Widget for ConnectionsPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.palette;
        let app = self.app;
        let visible = app.visible_connections();
        let total = app.connections.data.as_ref().map_or(0, |d| d.total);
        let truncated = app.connections.data.as_ref().is_some_and(|d| d.truncated);
        let mut title = format!(
            "Connections ({} shown of {}{})",
            count(visible.len() as u64),
            count(total),
            if truncated { "+" } else { "" }
        );
        if !app.filter.is_empty() {
            title.push_str(&format!(" · filter: {}", app.filter));
        }
        let block = p.block(title);

        if visible.is_empty() {
            let text = match (&app.connections.state, app.connections.data.is_some()) {
                (LoadingState::Error(e), _) => format!("cannot list connections: {e}"),
                (_, false) => "loading connections…".to_owned(),
                (_, true) if !app.filter.is_empty() => {
                    "no connection matches the filter".to_owned()
                }
                (_, true) => "no live connections".to_owned(),
            };
            Paragraph::new(Line::from(Span::styled(text, p.dim())))
                .block(block)
                .render(area, buf);
            return;
        }

        let wide = area.width >= WIDE;
        let mut header = vec!["CONN", "USER"];
        let mut widths = vec![Constraint::Length(17), Constraint::Length(12)];
        if wide {
            header.push("IP");
            widths.push(Constraint::Length(15));
        }
        header.extend(["NODE", "SINCE", "CHANNELS"]);
        widths.extend([
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Fill(1),
        ]);
        if wide {
            header.extend(["IN", "OUT"]);
            widths.extend([Constraint::Length(6), Constraint::Length(7)]);
        }
        let rows = visible.iter().map(|c| {
            let mut cells = vec![c.conn_id.clone(), c.user.clone()];
            if wide {
                cells.push(c.ip.clone());
            }
            cells.extend([
                c.node.clone(),
                clock(&c.connected_at).to_owned(),
                c.channels.join(","),
            ]);
            if wide {
                cells.extend([count(c.messages_in), count(c.messages_out)]);
            }
            Row::new(cells).style(p.text())
        });
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(p.header()))
            .block(block)
            .column_spacing(1)
            .highlight_symbol("▶ ")
            .row_highlight_style(
                Style::new()
                    .bg(Color::DarkGray)
                    .fg(Color::White)
                    .add_modifier(Modifier::BOLD),
            );
        // Built fresh each frame: with offset 0 the table scrolls just far
        // enough to show the selection, so no scroll state needs keeping.
        let mut state = TableState::default().with_selected(Some(app.selected));
        StatefulWidget::render(table, area, buf, &mut state);
    }
}
