//! The keyboard: what each key does in each mode.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{Action, App, Mode, Notice, PAGE, View};

impl App {
    pub(super) fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        // Terminals that report releases would otherwise act twice per key.
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.should_quit = true;
            return None;
        }
        match self.mode.clone() {
            Mode::Normal => self.on_normal_key(key),
            Mode::Help => {
                match key.code {
                    KeyCode::Char('q') => self.should_quit = true,
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Enter => self.mode = Mode::Normal,
                    _ => {}
                }
                None
            }
            Mode::Confirm { conn_id, .. } => match key.code {
                KeyCode::Char('y' | 'Y') => {
                    self.mode = Mode::Normal;
                    self.notice = Some(Notice {
                        text: format!("disconnecting {conn_id}…"),
                        error: false,
                    });
                    Some(Action::Disconnect { conn_id })
                }
                KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    self.notice = Some(Notice {
                        text: "disconnect cancelled".to_owned(),
                        error: false,
                    });
                    None
                }
                _ => None,
            },
            Mode::Filter { previous } => self.on_filter_key(key, previous),
        }
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Option<Action> {
        match key.code {
            KeyCode::Char('q') => {
                self.should_quit = true;
                None
            }
            KeyCode::Char('?') => {
                self.mode = Mode::Help;
                None
            }
            KeyCode::Tab | KeyCode::BackTab => self.switch_to(self.view.next()),
            KeyCode::Char('1') => self.switch_to(View::Overview),
            KeyCode::Char('2') => self.switch_to(View::Connections),
            KeyCode::Down | KeyCode::Char('j') => {
                self.scroll(1);
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.scroll(-1);
                None
            }
            KeyCode::PageDown => {
                self.scroll(PAGE as isize);
                None
            }
            KeyCode::PageUp => {
                self.scroll(-(PAGE as isize));
                None
            }
            KeyCode::Home | KeyCode::Char('g') => {
                self.scroll(isize::MIN);
                None
            }
            KeyCode::End | KeyCode::Char('G') => {
                self.scroll(isize::MAX);
                None
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Filter {
                    previous: self.filter.clone(),
                };
                // The filter is over connections, so show them.
                self.switch_to(View::Connections)
            }
            KeyCode::Char('d') => {
                self.ask_disconnect();
                None
            }
            KeyCode::Esc => {
                if self.notice.take().is_none() && !self.filter.is_empty() {
                    self.filter.clear();
                    self.selected = 0;
                    return self.requery();
                }
                None
            }
            _ => None,
        }
    }

    fn on_filter_key(&mut self, key: KeyEvent, previous: String) -> Option<Action> {
        match key.code {
            KeyCode::Enter => {
                self.mode = Mode::Normal;
                self.requery()
            }
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.filter = previous;
                self.reselect();
                self.requery()
            }
            KeyCode::Backspace => {
                self.filter.pop();
                self.reselect();
                None
            }
            // Ctrl/Alt chords are commands elsewhere, not text.
            KeyCode::Char(c)
                if !key
                    .modifiers
                    .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
            {
                self.filter.push(c);
                self.reselect();
                None
            }
            _ => None,
        }
    }
}
