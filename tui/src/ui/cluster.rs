//! The cluster header: node counts by status, totals, the Redis Cluster's shards
//! (on one), webhook delivery (when the cluster has webhooks), and a sparkline of
//! the messages delivered per second over the last minute.

use std::collections::VecDeque;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline, Widget};

use super::{Palette, count, rate};
use crate::model::{Overview, REDIS_CLUSTER_SLOTS, RedisClusterView, Status};

/// The width the three lines of numbers need before the sparkline gets any.
const TEXT_MIN: u16 = 54;

#[derive(Debug)]
pub struct ClusterPanel<'a> {
    pub overview: &'a Overview,
    /// Delivered messages per second, oldest first.
    pub history: &'a VecDeque<u64>,
    pub palette: Palette,
}

impl Widget for ClusterPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.palette;
        let block = p.block("Cluster".to_owned());
        let inner = block.inner(area);
        block.render(area, buf);

        let t = &self.overview.totals;
        let label = |s: &'static str| Span::styled(s, p.header());
        let value = |s: String| Span::styled(s, p.text());
        let lines = vec![
            Line::from(vec![
                label("Nodes        "),
                Span::styled(format!("{} up", t.nodes_up), p.status(Status::Up)),
                value("  ".to_owned()),
                Span::styled(
                    format!("{} stale", t.nodes_stale),
                    stale_or_text(p, t.nodes_stale, Status::Stale),
                ),
                value("  ".to_owned()),
                Span::styled(
                    format!("{} down", t.nodes_down),
                    stale_or_text(p, t.nodes_down, Status::Down),
                ),
            ]),
            Line::from(vec![
                label("Connections  "),
                value(count(t.connections)),
                value(format!(
                    " · channels {} · subs {}",
                    count(t.channels),
                    count(t.subscriptions)
                )),
            ]),
            Line::from(vec![
                label("Messages/s   "),
                value(format!(
                    "in {} · out {}",
                    rate(t.messages_in_per_sec),
                    rate(t.messages_out_per_sec)
                )),
                label("  Rate-limited "),
                value(count(
                    self.overview.ratelimit.hits_total.max(t.ratelimit_hits),
                )),
            ]),
        ];
        // The Redis and webhook lines, when there are, take the whole width under the rest.
        let [top, redis, hooks] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Length(u16::from(self.overview.redis_cluster.is_some())),
            Constraint::Length(u16::from(self.overview.webhooks.is_some())),
        ])
        .areas(inner);
        if let Some(r) = &self.overview.redis_cluster {
            Paragraph::new(redis_cluster_line(p, r)).render(redis, buf);
        }
        if let Some(w) = &self.overview.webhooks {
            let mut line = vec![
                label("Webhooks     "),
                value(format!(
                    "queued {} · delivered {} · failed ",
                    count(w.queued),
                    count(w.delivered)
                )),
                Span::styled(count(w.failed), stale_or_text(p, w.failed, Status::Down)),
            ];
            if w.failing {
                line.push(value("  ".to_owned()));
                line.push(Span::styled("failing", p.status(Status::Down)));
            }
            Paragraph::new(Line::from(line)).render(hooks, buf);
        }
        // The numbers need about 54 columns; the sparkline gets the rest.
        let text_width = (top.width * 55 / 100).max(TEXT_MIN).min(top.width);
        let [text, spark] =
            Layout::horizontal([Constraint::Length(text_width), Constraint::Fill(1)]).areas(top);
        Paragraph::new(lines).render(text, buf);

        if spark.width < 8 {
            return;
        }
        let [spark_title, spark_bars] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(spark);
        // The newest points only: a sparkline draws from its first value.
        let skip = self.history.len().saturating_sub(usize::from(spark.width));
        let points: Vec<u64> = self.history.iter().skip(skip).copied().collect();
        let peak = points.iter().copied().max().unwrap_or(0);
        Paragraph::new(Line::from(Span::styled(
            format!(
                "delivered/s · {} s · peak {}",
                self.history.len(),
                count(peak)
            ),
            p.dim(),
        )))
        .render(spark_title, buf);
        let style = if p.stale {
            p.dim()
        } else {
            Style::new().fg(Color::Cyan)
        };
        Sparkline::default()
            .data(&points)
            // Without traffic the bars stay empty rather than all full.
            .max(peak.max(1))
            .style(style)
            .render(spark_bars, buf);
    }
}

/// `Redis        3 shards · 3/3 primaries up · 3/3 replicas up · 16384/16384 slots`,
/// then the addresses of the primaries that are down. Only what is short of whole
/// gets a colour: a primary down or a slot unserved (the cluster refuses commands)
/// in red, a replica down (its shard cannot fail over) in yellow.
fn redis_cluster_line(p: Palette, r: &RedisClusterView) -> Line<'static> {
    let shards = r.shards.len();
    let primaries_up = r.shards.iter().filter(|s| s.primary_up).count();
    let replicas: u32 = r.shards.iter().map(|s| s.replicas).sum();
    let replicas_up: u32 = r.shards.iter().map(|s| s.replicas_up).sum();
    let short = |whole: bool, s: Status| if whole { p.text() } else { p.status(s) };
    let mut line = vec![
        Span::styled("Redis        ", p.header()),
        Span::styled(
            format!("{shards} shard{} · ", if shards == 1 { "" } else { "s" }),
            p.text(),
        ),
        Span::styled(
            format!("{primaries_up}/{shards} primaries up"),
            short(primaries_up == shards, Status::Down),
        ),
        Span::styled(" · ", p.text()),
        Span::styled(
            format!("{replicas_up}/{replicas} replicas up"),
            short(replicas_up == replicas, Status::Stale),
        ),
        Span::styled(" · ", p.text()),
        Span::styled(
            format!("{}/{REDIS_CLUSTER_SLOTS} slots", r.slots_covered),
            short(r.slots_covered == REDIS_CLUSTER_SLOTS, Status::Down),
        ),
    ];
    let down: Vec<&str> = r
        .shards
        .iter()
        .filter(|s| !s.primary_up)
        .map(|s| s.primary.as_str())
        .collect();
    if !down.is_empty() {
        line.push(Span::styled("  ", p.text()));
        line.push(Span::styled(
            format!("down {}", down.join(", ")),
            p.status(Status::Down),
        ));
    }
    Line::from(line)
}

/// Zero stale or down nodes is not news; only a non-zero count gets a colour.
fn stale_or_text(p: Palette, n: u64, s: Status) -> Style {
    if n == 0 { p.text() } else { p.status(s) }
}
