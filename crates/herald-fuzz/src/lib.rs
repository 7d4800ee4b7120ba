//! Herald's fuzz targets: each takes arbitrary bytes, feeds them to one of the parsers
//! that face the network, and asserts the invariants that parser promises (not merely
//! "no panic"). The same functions back three drivers:
//!
//! - the cargo-fuzz targets in `fuzz/` (libFuzzer, coverage-guided; `just fuzz`),
//! - the stable-toolchain mutation fuzzer in `src/main.rs` (`just fuzz-stable`),
//! - this crate's unit tests, which replay the kept corpus (`fuzz/corpus/<target>/`)
//!   and every crash ever found (`fuzz/regressions/<target>/`) on every `cargo test`.
//!
//! # Layout
//! - [`frame`]: client frames (`herald_proto::client::parse`) and the server frames
//!   built from them.
//! - [`token`]: the auth path: `Verifier::verify` on arbitrary strings, on structurally
//!   valid HS256 tokens with random headers and claims (checked against an oracle), and
//!   auth-svc's refresh-token parser.
//! - [`body`]: HTTP JSON bodies (`parse_body`) into the broadcaster's and auth-svc's
//!   request shapes, and what the handlers do with them next.
//! - [`mutate`]: the byte mutator of the stable fuzzer.

pub mod body;
pub mod frame;
pub mod mutate;
pub mod token;

use std::path::PathBuf;

/// A fuzz target: a name (also its corpus directory) and the function that checks one input.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `just fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "client_frame",
        run: frame::client_frame,
    },
    Target {
        name: "token",
        run: token::token_string,
    },
    Target {
        name: "claims",
        run: token::structured_token,
    },
    Target {
        name: "http_body",
        run: body::http_body,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// The repository's `fuzz/` directory (seed corpus and regressions).
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, sorted, with its contents.
pub fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept seed corpus and every saved crash pass every target's invariants.
    #[test]
    fn corpus_and_regressions_replay_clean() {
        for t in TARGETS {
            let seeds = inputs("corpus", t.name);
            assert!(
                !seeds.is_empty(),
                "fuzz/corpus/{} has no seeds: the corpus must stay in the repo",
                t.name
            );
            for (path, data) in seeds.iter().chain(inputs("regressions", t.name).iter()) {
                let r = std::panic::catch_unwind(|| (t.run)(data));
                assert!(r.is_ok(), "{} fails on {}", t.name, path.display());
            }
        }
    }

    #[test]
    fn targets_are_named_uniquely() {
        for t in TARGETS {
            assert_eq!(target(t.name).map(|x| x.name), Some(t.name));
        }
    }
}
