//! Everything that can change the dashboard's state, as one closed enum: input
//! from the terminal and answers from the monitor arrive the same way, so
//! `App::update` is the only place state changes.

use crossterm::event::KeyEvent;

use crate::model::{ConnectionsPage, Overview};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A frame is due (fixed FPS); drives the spinner.
    Tick,
    Key(KeyEvent),
    /// The terminal changed size; the next frame lays out again.
    Resize,
    /// A fresh overview from the monitor.
    Snapshot(Box<Overview>),
    /// The overview could not be fetched; the last one stays on screen, marked stale.
    FetchError(String),
    /// A fresh page of live connections.
    Connections(Box<ConnectionsPage>),
    /// The connections could not be fetched.
    ConnectionsError(String),
    /// The monitor's answer to a disconnect request.
    Disconnected {
        conn_id: String,
        result: Result<(), String>,
    },
}
