//! [`ConfigErrors`], what every service's `Config::validate` returns instead of its
//! settings, and [`load`], the start of every binary's `main`.

use clap::Parser;

use super::EXIT_CONFIG;

/// Every problem a configuration has, one line each naming the setting: what
/// each service's `Config::validate` returns instead of its settings. Checks push
/// into one of these, so that every problem is reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(Vec<String>);

impl ConfigErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order they were found.
    pub fn lines(&self) -> &[String] {
        &self.0
    }

    /// `value` when no problem was found, these problems otherwise.
    pub fn or<T>(self, value: impl FnOnce() -> T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }

    /// Prints one line per problem and exits with [`EXIT_CONFIG`], before anything
    /// is bound.
    pub fn exit(&self, service: &str) -> ! {
        for p in &self.0 {
            eprintln!("{service}: configuration error: {p}");
        }
        std::process::exit(EXIT_CONFIG);
    }
}

impl From<Vec<String>> for ConfigErrors {
    fn from(problems: Vec<String>) -> Self {
        Self(problems)
    }
}

impl Extend<String> for ConfigErrors {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl IntoIterator for ConfigErrors {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses flags and environment into `C` and validates it: with any problem (a
/// variable that does not parse, or one `validate` finds), prints every one and
/// exits with [`EXIT_CONFIG`]. What every binary's `main` starts with.
pub fn load<C: Parser, S>(
    service: &str,
    validate: impl FnOnce(&C) -> Result<S, ConfigErrors>,
) -> (C, S) {
    load_from(service, std::env::args_os().collect(), validate)
}

/// [`load`] with these command-line arguments instead of the process's.
pub fn load_from<C: Parser, S>(
    service: &str,
    args: Vec<std::ffi::OsString>,
    validate: impl FnOnce(&C) -> Result<S, ConfigErrors>,
) -> (C, S) {
    let (config, unparsed) = super::parse_args_or_exit::<C>(args);
    let mut errors = ConfigErrors::from(unparsed);
    match validate(&config) {
        Ok(settings) if errors.is_empty() => return (config, settings),
        Ok(_) => {}
        Err(e) => errors.extend(e),
    }
    errors.exit(service)
}
