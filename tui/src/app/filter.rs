//! The connections filter: words typed by the user, matched here by substring
//! while typing, and the exact terms the monitor can apply itself.

use crate::fetch::ConnQuery;
use crate::model::{ConnRow, conn_contains};

/// One word of a filter: `user:`, `channel:` (`ch:`) and `node:` terms look at
/// that field; any other word at every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Term {
    User(String),
    Channel(String),
    Node(String),
    Any(String),
}

impl Term {
    fn parse(word: &str) -> Self {
        match word.split_once(':') {
            Some(("user" | "u", v)) if !v.is_empty() => Term::User(v.to_owned()),
            Some(("channel" | "ch", v)) if !v.is_empty() => Term::Channel(v.to_owned()),
            Some(("node" | "n", v)) if !v.is_empty() => Term::Node(v.to_owned()),
            _ => Term::Any(word.to_lowercase()),
        }
    }

    /// Matching here is by substring, so the list narrows while the user types;
    /// the monitor's exact match (applied on enter) only removes more.
    pub(super) fn matches(&self, c: &ConnRow) -> bool {
        let has = |s: &str, v: &str| s.to_lowercase().contains(&v.to_lowercase());
        match self {
            Term::User(v) => has(&c.info.user, v),
            Term::Channel(v) => c.info.channels.iter().any(|ch| has(ch, v)),
            Term::Node(v) => has(&c.info.node, v),
            Term::Any(v) => conn_contains(c, v),
        }
    }
}

pub(super) fn terms(filter: &str) -> Vec<Term> {
    filter.split_whitespace().map(Term::parse).collect()
}

/// The terms of a filter that the monitor can apply itself (exact values).
pub fn server_query(filter: &str) -> ConnQuery {
    let mut q = ConnQuery::default();
    for term in terms(filter) {
        match term {
            Term::User(v) => q.user = Some(v),
            Term::Channel(v) => q.channel = Some(v),
            Term::Node(v) => q.node = Some(v),
            Term::Any(_) => {}
        }
    }
    q
}
