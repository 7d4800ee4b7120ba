//! Taking over the terminal and giving it back. Raw mode and the alternate
//! screen are undone by a `Drop` guard (normal exit and `?` errors) and by a
//! panic hook (panics), so the shell is never left without echo or line
//! editing, whichever way the dashboard ends.

use std::io::{self, Stdout, stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::cursor::Show;
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

pub type Tui = Terminal<CrosstermBackend<Stdout>>;

/// Whether the terminal is ours right now. Restoring twice is not harmless:
/// leaving the alternate screen again moves the cursor back to where it was
/// when the dashboard started, over whatever was printed since (a panic message).
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Owns the terminal while the dashboard runs; restores it when dropped.
#[derive(Debug)]
pub struct TerminalGuard {
    pub terminal: Tui,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen. On failure part-way, whatever
    /// was already changed is undone before the error is returned.
    pub fn init() -> io::Result<Self> {
        install_panic_hook();
        enable_raw_mode()?;
        TAKEN.store(true, Ordering::SeqCst);
        // From here on, an early return must still restore.
        let restore_on_error = RestoreOnDrop;
        execute!(stdout(), EnterAlternateScreen)?;
        let mut terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
        terminal.hide_cursor()?;
        terminal.clear()?;
        std::mem::forget(restore_on_error);
        Ok(Self { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores on drop; used while `init` is half done.
struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor, once; later
/// calls do nothing. Errors are ignored: there is nothing better to do with
/// them while exiting.
pub fn restore() {
    if !TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    // Raw mode first: it has the larger side effects if left on.
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, Show);
}

/// Restores the terminal before the default hook prints the panic, so the
/// message lands on the normal screen where it can be read.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
