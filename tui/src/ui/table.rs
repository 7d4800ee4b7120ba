//! What the table panels share: columns a narrow terminal leaves out, and the
//! note a panel shows instead of an empty table.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table, Widget};

use super::Palette;

/// A table's header and column widths, added left to right.
#[derive(Debug)]
pub(super) struct Columns {
    /// Whether the terminal has room for the [`Columns::wide_only`] ones.
    wide: bool,
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
}

impl Columns {
    pub(super) fn new(wide: bool) -> Self {
        Self {
            wide,
            header: Vec::new(),
            widths: Vec::new(),
        }
    }

    pub(super) fn add<const N: usize>(mut self, columns: [(&'static str, Constraint); N]) -> Self {
        for (name, width) in columns {
            self.header.push(name);
            self.widths.push(width);
        }
        self
    }

    /// Columns shown only on a wide terminal.
    pub(super) fn wide_only<const N: usize>(
        self,
        columns: [(&'static str, Constraint); N],
    ) -> Self {
        if self.wide { self.add(columns) } else { self }
    }

    /// A table of `rows` under these columns, the header styled by `p`.
    pub(super) fn table<'a>(
        self,
        rows: impl IntoIterator<Item = Row<'a>>,
        p: Palette,
    ) -> Table<'a> {
        Table::new(rows, self.widths)
            .header(Row::new(self.header).style(p.header()))
            .column_spacing(1)
    }
}

/// Draws `text`, dimmed, in `block`: what a panel shows when it has no rows.
pub(super) fn render_note(
    block: Block<'_>,
    text: impl Into<String>,
    p: Palette,
    area: Rect,
    buf: &mut Buffer,
) {
    Paragraph::new(Line::from(Span::styled(text.into(), p.dim())))
        .block(block)
        .render(area, buf);
}
