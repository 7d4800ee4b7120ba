//! The busiest channels by subscribers, with their message rates.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, Widget};

use super::{Palette, count, rate};
use crate::model::ChannelRow;

#[derive(Debug)]
pub struct ChannelsPanel<'a> {
    pub channels: &'a [ChannelRow],
    /// Every channel with subscribers, not only the top ones listed.
    pub total: u64,
    pub palette: Palette,
}

impl Widget for ChannelsPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.palette;
        let block = p.block(format!(
            "Top channels ({} of {})",
            self.channels.len(),
            count(self.total)
        ));
        if self.channels.is_empty() {
            Paragraph::new(Line::from(Span::styled(
                "no channels with subscribers",
                p.dim(),
            )))
            .block(block)
            .render(area, buf);
            return;
        }
        let rows = self.channels.iter().map(|c| {
            Row::new([
                c.channel.clone(),
                count(c.subscribers),
                rate(c.messages_per_sec),
            ])
            .style(p.text())
        });
        Table::new(
            rows,
            [
                Constraint::Min(10),
                Constraint::Length(7),
                Constraint::Length(8),
            ],
        )
        .header(Row::new(["CHANNEL", "SUBS", "MSG/s"]).style(p.header()))
        .block(block)
        .render(area, buf);
    }
}
