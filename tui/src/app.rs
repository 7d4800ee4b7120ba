//! The dashboard's state and the one function that changes it. `update` does
//! no I/O: it returns an [`Action`] when the outside world must act (change
//! what is polled, send a disconnect), so every transition is testable
//! without a terminal or a monitor. What each key does is in `keys`; the
//! connections filter in `filter`.

use std::collections::VecDeque;

use crate::event::Event;
use crate::fetch::ConnQuery;
use crate::model::{ConnRow, ConnectionsPage, Overview};

mod filter;
mod keys;

pub use filter::server_query;
use filter::terms;

/// How many overviews the sparkline remembers: about a minute at one a second.
pub const HISTORY: usize = 60;
/// How far PageUp/PageDown move a selection.
const PAGE: usize = 10;

/// Which screen is showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Connections,
}

impl View {
    pub const ALL: [View; 2] = [View::Overview, View::Connections];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Connections => "Connections",
        }
    }

    fn next(self) -> Self {
        match self {
            View::Overview => View::Connections,
            View::Connections => View::Overview,
        }
    }
}

/// What the keyboard is doing right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter; `previous` comes back on `esc`.
    Filter {
        previous: String,
    },
    /// Waiting for `y`/`n` before disconnecting.
    Confirm {
        conn_id: String,
        user: String,
    },
    Help,
}

/// Where one data source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadingState {
    Idle,
    Loading,
    Loaded,
    /// The last request failed; whatever data there is, is old.
    Error(String),
}

/// One thing fetched from the monitor: the last good data and how it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Source<T> {
    pub data: Option<T>,
    pub state: LoadingState,
    /// Failed requests in a row, shown while retrying.
    pub failures: u32,
}

impl<T> Source<T> {
    fn new(state: LoadingState) -> Self {
        Self {
            data: None,
            state,
            failures: 0,
        }
    }

    fn loaded(&mut self, data: T) {
        self.data = Some(data);
        self.state = LoadingState::Loaded;
        self.failures = 0;
    }

    fn failed(&mut self, error: String) {
        self.state = LoadingState::Error(error);
        self.failures = self.failures.saturating_add(1);
    }

    /// True when what is on screen may no longer be true.
    pub fn is_stale(&self) -> bool {
        matches!(self.state, LoadingState::Error(_))
    }
}

/// A one-line message in the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

/// What `update` asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Poll connections with this query from now on.
    Query(ConnQuery),
    /// Ask the monitor to close this connection.
    Disconnect { conn_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Shown in the title bar, so it is clear which cluster this is.
    pub monitor_url: String,
    /// Without it the monitor refuses disconnects, so `d` says so up front.
    pub can_disconnect: bool,
    pub view: View,
    pub mode: Mode,
    pub overview: Source<Overview>,
    pub connections: Source<ConnectionsPage>,
    /// Messages delivered per second, one entry per new overview, oldest first.
    pub history: VecDeque<u64>,
    /// First visible row of the nodes table.
    pub node_offset: usize,
    /// Index into [`App::visible_connections`].
    pub selected: usize,
    /// Keeps the same connection selected while the list refreshes around it.
    selected_id: Option<String>,
    /// What the user typed after `/`: `user:`, `channel:` and `node:` terms also
    /// go to the monitor (on enter); every term narrows the list here.
    pub filter: String,
    pub notice: Option<Notice>,
    pub ticks: u64,
    pub should_quit: bool,
    /// The query last handed to the connections poller.
    query: ConnQuery,
}

impl App {
    pub fn new(monitor_url: impl Into<String>, can_disconnect: bool) -> Self {
        Self {
            monitor_url: monitor_url.into(),
            can_disconnect,
            view: View::Overview,
            mode: Mode::Normal,
            overview: Source::new(LoadingState::Loading),
            connections: Source::new(LoadingState::Idle),
            history: VecDeque::with_capacity(HISTORY),
            node_offset: 0,
            selected: 0,
            selected_id: None,
            filter: String::new(),
            notice: None,
            ticks: 0,
            should_quit: false,
            query: ConnQuery::default(),
        }
    }

    /// The only way state changes.
    pub fn update(&mut self, event: Event) -> Option<Action> {
        match event {
            Event::Tick => {
                self.ticks = self.ticks.wrapping_add(1);
                None
            }
            Event::Resize => None,
            Event::Key(key) => self.on_key(key),
            Event::Snapshot(o) => {
                self.on_overview(*o);
                None
            }
            Event::FetchError(e) => {
                self.overview.failed(e);
                None
            }
            Event::Connections(mut page) => {
                // Oldest first, so rows keep their places from one poll to the next.
                page.connections.sort_by(|a, b| {
                    (a.info.connected_ms, &a.info.conn_id)
                        .cmp(&(b.info.connected_ms, &b.info.conn_id))
                });
                self.connections.loaded(*page);
                self.reselect();
                None
            }
            Event::ConnectionsError(e) => {
                self.connections.failed(e);
                None
            }
            Event::Disconnected { conn_id, result } => {
                self.notice = Some(match result {
                    Ok(()) => Notice {
                        text: format!("disconnect of {conn_id} sent; its gateway closes it"),
                        error: false,
                    },
                    Err(e) => Notice {
                        text: format!("disconnect of {conn_id} failed: {e}"),
                        error: true,
                    },
                });
                None
            }
        }
    }

    fn on_overview(&mut self, o: Overview) {
        // The monitor samples once a second and we may poll faster: only a new
        // sample is a new point on the sparkline.
        let is_new =
            self.overview.data.as_ref().is_none_or(|prev| {
                prev.generated_at != o.generated_at || o.generated_at.is_empty()
            });
        if is_new {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history
                .push_back(o.totals.messages_out_per_sec.max(0.0).round() as u64);
        }
        let rows = o.nodes.len();
        self.overview.loaded(o);
        self.node_offset = self.node_offset.min(rows.saturating_sub(1));
    }

    fn switch_to(&mut self, view: View) -> Option<Action> {
        self.view = view;
        if view == View::Connections && self.connections.data.is_none() {
            self.connections.state = LoadingState::Loading;
        }
        self.requery()
    }

    /// The query the poller should run now, if it differs from the last one.
    fn requery(&mut self) -> Option<Action> {
        let mut q = server_query(&self.filter);
        q.active = self.view == View::Connections;
        if q == self.query {
            return None;
        }
        self.query = q.clone();
        Some(Action::Query(q))
    }

    fn ask_disconnect(&mut self) {
        if self.view != View::Connections {
            self.notice = Some(Notice {
                text: "switch to Connections (tab) and select one to disconnect".to_owned(),
                error: true,
            });
            return;
        }
        if !self.can_disconnect {
            self.notice = Some(Notice {
                text: "disconnect needs the admin key: --admin-key or HERALD_ADMIN_KEY".to_owned(),
                error: true,
            });
            return;
        }
        let Some(c) = self.selected_connection() else {
            self.notice = Some(Notice {
                text: "no connection selected".to_owned(),
                error: true,
            });
            return;
        };
        self.mode = Mode::Confirm {
            conn_id: c.info.conn_id.clone(),
            user: c.info.user.clone(),
        };
    }

    fn scroll(&mut self, by: isize) {
        match self.view {
            View::Overview => {
                let rows = self.overview.data.as_ref().map_or(0, |o| o.nodes.len());
                self.node_offset = step(self.node_offset, by, rows);
            }
            View::Connections => {
                let rows = self.visible_connections().len();
                self.selected = step(self.selected, by, rows);
                self.selected_id = self.selected_connection().map(|c| c.info.conn_id.clone());
            }
        }
    }

    /// After the list or the filter changed: the same connection if it is
    /// still listed, otherwise the same position.
    fn reselect(&mut self) {
        let found = self.selected_id.as_ref().and_then(|id| {
            self.visible_connections()
                .iter()
                .position(|c| &c.info.conn_id == id)
        });
        let rows = self.visible_connections().len();
        self.selected = found.unwrap_or(self.selected).min(rows.saturating_sub(1));
        self.selected_id = self.selected_connection().map(|c| c.info.conn_id.clone());
    }

    // === Views of the state ===

    /// The connections that pass the local part of the filter.
    pub fn visible_connections(&self) -> Vec<&ConnRow> {
        let terms = terms(&self.filter);
        self.connections
            .data
            .as_ref()
            .map(|p| {
                p.connections
                    .iter()
                    .filter(|c| terms.iter().all(|t| t.matches(c)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn selected_connection(&self) -> Option<&ConnRow> {
        self.visible_connections().get(self.selected).copied()
    }

    /// True when the monitor did not answer the last poll.
    pub fn unreachable(&self) -> bool {
        self.overview.is_stale()
    }
}

/// Moves `at` by `by` within `0..rows`, saturating at both ends.
fn step(at: usize, by: isize, rows: usize) -> usize {
    let max = rows.saturating_sub(1);
    at.saturating_add_signed(by).min(max)
}

#[cfg(test)]
mod tests;
