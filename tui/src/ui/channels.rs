//! The busiest channels by subscribers, with their members (distinct users in
//! presence) and message rates.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Row, Widget};

use super::table::{Columns, render_note};
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
            render_note(block, "no channels with subscribers", p, area, buf);
            return;
        }
        let rows = self.channels.iter().map(|c| {
            Row::new([
                c.channel.clone(),
                count(c.subscribers),
                c.members.map_or_else(|| "–".to_owned(), count),
                rate(c.messages_per_sec),
            ])
            .style(p.text())
        });
        Columns::new(true)
            .add([
                ("CHANNEL", Constraint::Min(10)),
                ("SUBS", Constraint::Length(7)),
                ("MEMBERS", Constraint::Length(7)),
                ("MSG/s", Constraint::Length(8)),
            ])
            .table(rows, p)
            .block(block)
            .render(area, buf);
    }
}
