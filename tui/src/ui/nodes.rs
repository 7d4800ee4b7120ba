//! The nodes table: one row per service instance, its heartbeat status in
//! colour and the age of its last beat.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Widget};

use super::table::{Columns, render_note};
use super::{Palette, age, count, rate};
use crate::model::NodeRow;

/// Below this width the address and probe columns are left out, so the node
/// id keeps its room.
const WIDE: u16 = 110;

#[derive(Debug)]
pub struct NodesPanel<'a> {
    pub nodes: &'a [NodeRow],
    /// The first row shown (scrolled with the arrows on the overview).
    pub offset: usize,
    pub palette: Palette,
}

impl Widget for NodesPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.palette;
        let block = p.block(format!("Nodes ({})", self.nodes.len()));
        if self.nodes.is_empty() {
            let note = "no nodes registered — is anything running against this Redis?";
            render_note(block, note, p, area, buf);
            return;
        }
        let wide = area.width >= WIDE;
        let columns = Columns::new(wide)
            .add([
                ("STATUS", Constraint::Length(7)),
                ("SERVICE", Constraint::Length(11)),
                ("NODE", Constraint::Min(12)),
            ])
            .wide_only([("ADDRESS", Constraint::Length(18))])
            .add([
                ("BEAT", Constraint::Length(6)),
                ("CONNS", Constraint::Length(7)),
                ("SUBS", Constraint::Length(6)),
                ("IN/s", Constraint::Length(7)),
                ("OUT/s", Constraint::Length(8)),
            ])
            .wide_only([("PROBE", Constraint::Length(8))]);
        let rows = self.nodes.iter().skip(self.offset).map(|n| {
            let mut cells = vec![
                Cell::from(Span::styled(
                    format!("● {}", n.status.as_str()),
                    p.status(n.status),
                )),
                Cell::from(n.service.clone()),
                Cell::from(n.id.clone()),
            ];
            if wide {
                cells.push(Cell::from(n.address.clone()));
            }
            cells.extend([
                Cell::from(Span::styled(age(n.last_heartbeat_ms), p.status(n.status))),
                Cell::from(count(n.connections)),
                Cell::from(count(n.subscriptions)),
                Cell::from(rate(n.messages_in_per_sec)),
                Cell::from(rate(n.messages_out_per_sec)),
            ]);
            if wide {
                cells.push(Cell::from(probe(n)));
            }
            Row::new(cells).style(p.text())
        });
        columns.table(rows, p).block(block).render(area, buf);
    }
}

fn probe(n: &NodeRow) -> String {
    match (n.probe_ok, n.probe_latency_ms) {
        (Some(true), Some(ms)) if ms < 10.0 => format!("{ms:.1}ms"),
        (Some(true), Some(ms)) => format!("{ms:.0}ms"),
        (Some(true), None) => "ok".to_owned(),
        (Some(false), _) => "FAIL".to_owned(),
        (None, _) => "-".to_owned(),
    }
}
