//! `herald-fuzz`: a coverage-free mutation fuzzer for the stable toolchain. It runs
//! each target on mutations of its kept corpus for a bounded time, and on the first
//! failed invariant saves the input under `target/fuzz/crashes/<target>/` and exits 1.
//! cargo-fuzz (`just fuzz`) is the coverage-guided driver of the same targets.
//!
//! Usage: `herald-fuzz [--secs N] [--seed S] [--max-len N] [TARGET...]`
//! (all targets when none is named; `HERALD_FUZZ_SECS` sets the default time).

use std::panic;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::{Rng, SeedableRng};

use herald_fuzz::{TARGETS, Target, inputs, mutate::mutate, target};

struct Args {
    secs: u64,
    seed: u64,
    max_len: usize,
    targets: Vec<Target>,
}

fn args() -> anyhow::Result<Args> {
    let mut secs = std::env::var("HERALD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut seed = rand::random();
    let mut max_len = 4096;
    let mut targets = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> anyhow::Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--secs" => secs = num("--secs")?,
            "--seed" => seed = num("--seed")?,
            "--max-len" => max_len = usize::try_from(num("--max-len")?)?,
            "-h" | "--help" => {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                println!(
                    "herald-fuzz [--secs N] [--seed S] [--max-len N] [TARGET...]\ntargets: {}",
                    names.join(", ")
                );
                std::process::exit(0);
            }
            name => match target(name) {
                Some(t) => targets.push(t),
                None => bail!("unknown target {name:?}"),
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    Ok(Args {
        secs,
        seed,
        max_len,
        targets,
    })
}

fn crash_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fuzz/crashes")
        .join(target)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    // Panics are the findings: report them ourselves, once, with the input.
    panic::set_hook(Box::new(|_| {}));
    for t in &args.targets {
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let mut corpus: Vec<Vec<u8>> = inputs("corpus", t.name)
            .into_iter()
            .chain(inputs("regressions", t.name))
            .map(|(_, b)| b)
            .collect();
        if corpus.is_empty() {
            corpus.push(b"{}".to_vec());
        }
        let deadline = Instant::now() + Duration::from_secs(args.secs);
        let mut execs: u64 = 0;
        while Instant::now() < deadline {
            for _ in 0..256 {
                let mut input = corpus[rng.random_range(0..corpus.len())].clone();
                let other = &corpus[rng.random_range(0..corpus.len())];
                mutate(&mut rng, &mut input, other, args.max_len);
                execs += 1;
                if let Err(cause) = panic::catch_unwind(|| (t.run)(&input)) {
                    let msg = cause
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| cause.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    let dir = crash_dir(t.name);
                    std::fs::create_dir_all(&dir)?;
                    let path = dir.join(format!("crash-{:016x}", fxhash(&input)));
                    std::fs::write(&path, &input)?;
                    eprintln!("{}: invariant failed after {execs} runs: {msg}", t.name);
                    eprintln!("{}: input saved to {}", t.name, path.display());
                    eprintln!(
                        "{}: replay with `cargo test -p herald-fuzz` after copying it to fuzz/regressions/{}/",
                        t.name, t.name
                    );
                    std::process::exit(1);
                }
                // Keep a few mutants as new seeds so edits compound.
                if corpus.len() < 4096 && rng.random_ratio(1, 64) {
                    corpus.push(input);
                }
            }
        }
        println!(
            "{}: {execs} runs in {}s, no invariant failed (seed {})",
            t.name, args.secs, args.seed
        );
    }
    Ok(())
}

/// A small stable hash for crash file names.
fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
