//! The live connections list: scrollable, filterable, with the selected row
//! the target of `d`.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Row, StatefulWidget, TableState, Widget};

use super::table::{Columns, render_note};
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
            render_note(block, text, p, area, buf);
            return;
        }

        let wide = area.width >= WIDE;
        let columns = Columns::new(wide)
            .add([
                ("CONN", Constraint::Length(17)),
                ("USER", Constraint::Length(12)),
            ])
            .wide_only([("IP", Constraint::Length(15))])
            .add([
                ("NODE", Constraint::Length(14)),
                ("SINCE", Constraint::Length(8)),
                ("CHANNELS", Constraint::Fill(1)),
            ])
            .wide_only([
                ("IN", Constraint::Length(6)),
                ("OUT", Constraint::Length(7)),
            ]);
        let rows = visible.iter().map(|c| {
            let (c, connected_at) = (&c.info, &c.connected_at);
            let mut cells = vec![c.conn_id.clone(), c.user.clone()];
            if wide {
                cells.push(c.ip.clone());
            }
            cells.extend([
                c.node.clone(),
                clock(connected_at).to_owned(),
                c.channels.join(","),
            ]);
            if wide {
                cells.extend([count(c.messages_in), count(c.messages_out)]);
            }
            Row::new(cells).style(p.text())
        });
        let table = columns
            .table(rows, p)
            .block(block)
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
