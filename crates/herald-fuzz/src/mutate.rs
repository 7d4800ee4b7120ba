//! The byte mutator of the stable-toolchain fuzzer: libFuzzer-style edits (bit flips,
//! byte edits, inserts, deletes, splices between inputs) plus a dictionary of the
//! tokens Herald's formats are made of, so random inputs reach past the first `{`.

use rand::Rng;
use rand::seq::IndexedRandom;

/// Tokens worth splicing in: JSON syntax, the protocol's keys and values, numbers at
/// the edges of their types, and JWT fragments.
pub const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1e400",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "0.5",
    "1E-7",
    "\"type\"",
    "\"auth\"",
    "\"subscribe\"",
    "\"unsubscribe\"",
    "\"broadcast\"",
    "\"ping\"",
    "\"token\"",
    "\"channel\"",
    "\"channels\"",
    "\"message\"",
    "\"since\"",
    "\"offset\"",
    "\"epoch\"",
    "\"id\"",
    "\"batch\"",
    "\"content\"",
    "\"user_id\"",
    "\"target_channel\"",
    "\"job_type\"",
    "\"data\"",
    "\"data_processing\"",
    "\"file_operation\"",
    "\"sleep\"",
    "\"operation\"",
    "\"checksum\"",
    "\"word_count\"",
    "\"line_count\"",
    "\"values\"",
    "\"ms\"",
    "\"idempotency_key\"",
    "\"username\"",
    "\"password\"",
    "\"refresh_token\"",
    "\"jti\"",
    "\"news\"",
    "\"chat:*\"",
    "\"user:u1\"",
    "\"system\"",
    "\"a b\"",
    "eyJ",
    ".",
    "eyJhbGciOiJIUzI1NiJ9",
    "eyJhbGciOiJub25lIn0",
    "\u{feff}",
    "\u{2028}",
    " ",
    "\t",
];

/// Mutates `input` in place; `other` is another corpus entry for splicing.
pub fn mutate(rng: &mut impl Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let edits = rng.random_range(1..=4);
    for _ in 0..edits {
        match rng.random_range(0..9) {
            0 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                input[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=input.len());
                input.insert(i, rng.random());
            }
            3 if !input.is_empty() => {
                let start = rng.random_range(0..input.len());
                let len = rng.random_range(1..=(input.len() - start).min(16));
                input.drain(start..start + len);
            }
            4 | 5 => {
                let token = DICTIONARY.choose(rng).copied().unwrap_or("{");
                let i = rng.random_range(0..=input.len());
                input.splice(i..i, token.bytes());
            }
            6 if !other.is_empty() => {
                // Splice: our head, their tail.
                let cut = rng.random_range(0..=input.len());
                let from = rng.random_range(0..other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 if !input.is_empty() => {
                // Duplicate a run (nesting, repeated keys).
                let start = rng.random_range(0..input.len());
                let len = rng.random_range(1..=(input.len() - start).min(64));
                let run: Vec<u8> = input[start..start + len].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, run);
            }
            _ => {
                // Fresh random bytes (also feeds the structured `claims` target).
                let n = rng.random_range(1..=32);
                let at = rng.random_range(0..=input.len());
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    input.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mutations_stay_bounded_and_deterministic() {
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut input = b"{\"type\":\"ping\"}".to_vec();
            for _ in 0..1000 {
                mutate(&mut rng, &mut input, b"{\"a\":1}", 256);
                assert!(input.len() <= 256);
            }
            input
        };
        assert_eq!(run(7), run(7));
    }
}
