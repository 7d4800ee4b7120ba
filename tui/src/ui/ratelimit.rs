//! Rate-limit hits: the total, a count per kind, and the latest offenders.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Widget};

use super::table::Columns;
use super::{Palette, count};
use crate::model::{RateLimitView, clock};

/// The widest KIND column: every kind Herald reports (`node_capacity` is the
/// longest, 13) fits; an unexpected longer one is cut rather than crowd out WHO.
const MAX_KIND_WIDTH: u16 = 20;

#[derive(Debug)]
pub struct RateLimitPanel<'a> {
    pub ratelimit: &'a RateLimitView,
    pub palette: Palette,
}

impl Widget for RateLimitPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.palette;
        let r = self.ratelimit;
        let block = p.block("Rate limits".to_owned());
        let inner = block.inner(area);
        block.render(area, buf);
        let [summary, list] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);

        let hot = if r.hits_total > 0 && !p.stale {
            Style::new().fg(Color::Yellow)
        } else {
            p.text()
        };
        let mut spans = vec![
            // Gateways report an offender at most once a second per connection,
            // so this counts reports; the header counts every refused frame.
            Span::styled("reported ", p.header()),
            Span::styled(count(r.hits_total), hot),
        ];
        for (kind, n) in &r.by_kind {
            spans.push(Span::styled(format!(" · {kind} {}", count(*n)), p.text()));
        }
        Paragraph::new(Line::from(spans)).render(summary, buf);

        if r.recent.is_empty() {
            Paragraph::new(Span::styled("no rate-limit hits", p.dim())).render(list, buf);
            return;
        }
        // As wide as the longest kind shown, so `connect_rate` is never cut.
        let kind_width = r
            .recent
            .iter()
            .map(|h| h.kind.as_str().chars().count())
            .max()
            .map_or(4, |w| u16::try_from(w).unwrap_or(u16::MAX))
            .clamp(4, MAX_KIND_WIDTH);
        let rows = r.recent.iter().map(|h| {
            Row::new([
                clock(&h.at).to_owned(),
                h.who.clone(),
                h.kind.as_str().to_owned(),
                h.node.clone(),
            ])
            .style(p.text())
        });
        Columns::new(true)
            .add([
                ("AT", Constraint::Length(8)),
                ("WHO", Constraint::Fill(2)),
                ("KIND", Constraint::Length(kind_width)),
                ("NODE", Constraint::Fill(1)),
            ])
            .table(rows, p)
            .render(list, buf);
    }
}
