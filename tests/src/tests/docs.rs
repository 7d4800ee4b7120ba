//! `docs/protocol.md` against the code it describes: every `HERALD_*` variable a
//! binary accepts is a row of its configuration table naming that binary, no row
//! names a variable nothing reads, and every frame type, error code, disconnect code,
//! close code and HTTP error code the services can send is documented.
//!
//! Nothing here is a hand-written list: variables come from each binary's `--help`
//! (clap's `[env: HERALD_…]`), everything else from the source files that define it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::run_bin;

const DOC: &str = "docs/protocol.md";
/// The binaries whose settings the configuration table covers.
const BINARIES: [&str; 6] = [
    "herald",
    "auth-svc",
    "ws-gateway",
    "broadcaster",
    "monitor",
    "herald-tui",
];
/// The crates whose sources say what goes on the wire.
const SERVICE_CRATES: [&str; 5] = [
    "crates/auth-svc",
    "crates/ws-gateway",
    "crates/broadcaster",
    "crates/monitor",
    "crates/herald-common",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.rs` file under `dir` (relative to the repository), with its text.
fn rust_files(dir: &str) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let rel = path.strip_prefix(root).unwrap_or(&path);
                out.push((rel.display().to_string(), text));
            }
        }
    }
    let root = repo();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out.sort();
    out
}

/// The part of a source file before its unit tests.
fn non_test(src: &str) -> &str {
    src.find("#[cfg(test)]").map_or(src, |i| &src[..i])
}

/// The string literal at the start of `s` (after whitespace), if there is one.
fn literal(s: &str) -> Option<&str> {
    let s = s.trim_start().strip_prefix('"')?;
    let end = s.find('"')?;
    Some(&s[..end])
}

/// The comma-separated arguments of the call whose `(` ends just before `s`,
/// up to its matching `)`; nested brackets and string literals are skipped over.
fn call_args(s: &str) -> Vec<&str> {
    let mut args = Vec::new();
    let (mut depth, mut start, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth > 0 => depth -= 1,
            ')' | ']' | '}' => {
                let last = s[start..i].trim();
                if !last.is_empty() {
                    args.push(last);
                }
                return args;
            }
            ',' if depth == 0 => {
                args.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args
}

/// Each call of `callee(` in `src`, as its arguments.
fn calls<'a>(src: &'a str, callee: &str) -> Vec<Vec<&'a str>> {
    src.match_indices(callee)
        .map(|(i, _)| call_args(&src[i + callee.len()..]))
        .collect()
}

/// Every `HERALD_*` name in clap's `[env: NAME=…]` (or `[env: NAME]`) annotations.
fn env_names(help: &str) -> BTreeSet<String> {
    help.match_indices("[env: ")
        .map(|(i, m)| {
            help[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| n.starts_with("HERALD_"))
        .collect()
}

/// The subcommands a `--help` text lists under `Commands:` (`help` left out).
fn subcommands(help: &str) -> Vec<String> {
    let Some(start) = help.find("Commands:\n") else {
        return Vec::new();
    };
    help[start + "Commands:\n".len()..]
        .lines()
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Runs `<bin> <path> --help` and every subcommand's `--help` below it; returns
/// each variable with the command lines that print it.
async fn help_vars(bin: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (code, stdout, stderr) = run_bin(bin, &args, &[]).await;
        let shown = format!("{bin} {}", args.join(" "));
        assert_eq!(code, 0, "`{shown}` failed:\n{stdout}{stderr}");
        for name in env_names(&stdout) {
            out.entry(name).or_default().insert(shown.clone());
        }
        for sub in subcommands(&stdout) {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
    }
    out
}

/// The configuration table: variable → its "read by" cell.
fn config_table(doc: &str) -> BTreeMap<String, String> {
    let start = doc
        .lines()
        .position(|l| l.starts_with("## ") && l.contains("Configuration"))
        .unwrap_or_else(|| panic!("{DOC} has no `## … Configuration` section"));
    let mut rows = BTreeMap::new();
    for line in doc.lines().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| variable | default | read by | meaning |` splits into six cells.
        if cells.len() < 5 || !cells[1].starts_with("`HERALD_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let previous = rows.insert(name.clone(), cells[3].to_owned());
        assert!(previous.is_none(), "{DOC}: `{name}` has two rows");
    }
    assert!(
        !rows.is_empty(),
        "{DOC}: no `| `HERALD_…` | default | read by | meaning |` rows in the configuration section"
    );
    rows
}

/// Whether a "read by" cell names `bin` (as a whole word: `monitor` is not `herald-monitor`).
fn names_binary(cell: &str, bin: &str) -> bool {
    cell.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_configuration_table_lists_every_variable_the_binaries_accept() {
    let doc = read(DOC);
    let table = config_table(&doc);
    // variable → binary → the command lines whose help shows it
    let mut accepted: BTreeMap<String, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    for bin in BINARIES {
        let vars = help_vars(bin).await;
        assert!(
            !vars.is_empty(),
            "`{bin} --help` shows no `[env: HERALD_…]`: has its help format changed?"
        );
        for (name, shown_by) in vars {
            accepted.entry(name).or_default().insert(bin, shown_by);
        }
    }
    let mut problems = Vec::new();
    for (name, bins) in &accepted {
        let shown_by = bins
            .values()
            .flatten()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match table.get(name) {
            None => problems.push(format!(
                "`{name}` (shown by {shown_by}) has no row in the configuration table"
            )),
            Some(cell) => {
                let unnamed: Vec<&str> = bins
                    .keys()
                    .copied()
                    .filter(|b| !names_binary(cell, b))
                    .collect();
                if !unnamed.is_empty() {
                    problems.push(format!(
                        "`{name}` is read by {} (shown by {shown_by}), but its row's \"read by\" cell is {cell:?}",
                        unnamed.join(", ")
                    ));
                }
            }
        }
    }
    // A row for a variable no `--help` shows must at least be read in the code
    // (e.g. `HERALD_LOG_FORMAT`, read from the environment directly).
    let sources: String = SERVICE_CRATES
        .iter()
        .copied()
        .chain(["tui/src"])
        .flat_map(rust_files)
        .map(|(_, text)| text)
        .collect();
    for name in table.keys() {
        if !accepted.contains_key(name) && !sources.contains(&format!("\"{name}\"")) {
            problems.push(format!(
                "`{name}` has a row but no binary accepts it and no source reads it"
            ));
        }
    }
    eprintln!("variables accepted by the binaries:");
    for (name, bins) in &accepted {
        let bins: Vec<&str> = bins.keys().copied().collect();
        eprintln!("  {name}: {}", bins.join(", "));
    }
    assert!(
        problems.is_empty(),
        "{DOC}'s configuration table is out of date:\n  - {}",
        problems.join("\n  - ")
    );
}

/// Frame `type`s the gateway can send, from the builders in herald-proto.
fn frame_types() -> BTreeMap<String, &'static str> {
    const SERVER: &str = "crates/herald-proto/src/server.rs";
    const ENVELOPE: &str = "crates/herald-proto/src/envelope.rs";
    let mut out = BTreeMap::new();
    let server = read(SERVER);
    let server = non_test(&server);
    // `ServerMsg`'s variants are the frame types (serde's snake_case of each name);
    // hand-built frames start with `{"type":"<type>"`.
    let body = server
        .split_once("pub enum ServerMsg")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .map(|(body, _)| body)
        .expect("the ServerMsg enum");
    for line in body.lines() {
        let Some(name) = line
            .strip_prefix("    ")
            .and_then(|l| l.strip_suffix(" {"))
            .filter(|n| n.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        else {
            continue;
        };
        let mut snake = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        out.insert(snake, SERVER);
    }
    for (i, m) in server.match_indices(r#"{"type":""#) {
        let rest = &server[i + m.len() - 1..];
        let t = literal(rest).expect("a string literal");
        out.insert(t.to_owned(), SERVER);
    }
    let found_in_server = out.len();
    // Channel frames are templates: `FrameTemplate::new("<type>", …)`.
    let envelope = read(ENVELOPE);
    for args in calls(non_test(&envelope), "FrameTemplate::new(") {
        if let Some(t) = args.first().and_then(|a| literal(a)) {
            out.insert(t.to_owned(), ENVELOPE);
        }
    }
    assert!(
        found_in_server >= 5 && out.len() > found_in_server,
        "found only {out:?} in {SERVER} and {ENVELOPE}: has the way frames are built changed? \
         Update `frame_types` in tests/src/tests/docs.rs"
    );
    out
}

/// The wire string of every `ErrorCode` variant.
fn error_codes() -> Vec<String> {
    const CLIENT: &str = "crates/herald-proto/src/client.rs";
    let src = read(CLIENT);
    let src = non_test(&src);
    // The text between the `{` after `marker` and its `}` (no nested braces inside).
    let block = |marker: &str| {
        let start = src
            .find(marker)
            .unwrap_or_else(|| panic!("{CLIENT}: no `{marker}`"));
        let open = start + src[start..].find('{').expect("a block");
        (
            open,
            &src[open + 1..open + src[open..].find('}').expect("a closing brace")],
        )
    };
    let (_, body) = block("pub enum ErrorCode");
    let variants: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let (impl_start, _) = block("impl ErrorCode");
    let imp = &src[impl_start..];
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    for v in &variants {
        let arm = format!("Self::{v} => ");
        match imp.find(&arm).and_then(|i| literal(&imp[i + arm.len()..])) {
            Some(s) => out.push(s.to_owned()),
            None => unmapped.push(*v),
        }
    }
    assert!(
        unmapped.is_empty() && out.len() >= 5,
        "{CLIENT}: no `Self::<variant> => \"…\"` wire string found for {unmapped:?} \
         (variants {variants:?}): update `error_codes` in tests/src/tests/docs.rs"
    );
    out
}

/// What the gateway closes connections with: `disconnect` codes and close codes with
/// their reasons, from `Kick::new(code, reason, close, reconnect)`,
/// `close(socket, close, reason)` and `Some((close, reason))`.
fn gateway_closes() -> (BTreeSet<String>, BTreeSet<(u16, String)>) {
    // The gateway ends connections only through `Disconnect`, which owns each close
    // code, reason and `disconnect` code.
    let mut kicks = BTreeSet::new();
    let mut closes = BTreeSet::new();
    for d in herald_proto::disconnect::Disconnect::FIXED {
        if let Some(code) = d.code() {
            kicks.insert(code.as_str().to_owned());
        }
        closes.insert((d.close_code(), d.reason().to_owned()));
    }
    (kicks, closes)
}

/// Every HTTP error `code`: the literal after a `StatusCode::…` argument.
fn http_error_codes() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for dir in SERVICE_CRATES {
        for (file, text) in rust_files(&format!("{dir}/src")) {
            let src = non_test(&text);
            for (i, m) in src.match_indices("StatusCode::") {
                let rest = &src[i + m.len()..];
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
                if let Some(code) = rest
                    .trim_start()
                    .strip_prefix(',')
                    .and_then(literal)
                    .filter(|c| {
                        !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
                {
                    out.entry(code.to_owned()).or_insert_with(|| file.clone());
                }
            }
        }
    }
    assert!(
        out.len() >= 8,
        "found only {out:?}: has `ApiError::new(StatusCode::…, \"code\", …)` changed? \
         Update `http_error_codes` in tests/src/tests/docs.rs"
    );
    out
}

#[test]
fn docs_describe_every_frame_type_error_code_and_close() {
    let doc = read(DOC);
    let quoted = |s: &str| doc.contains(&format!("`{s}`"));
    let mut missing = Vec::new();

    let types = frame_types();
    for (t, file) in &types {
        if !quoted(t) {
            missing.push(format!("server frame type `{t}` ({file})"));
        }
    }
    let codes = error_codes();
    for c in &codes {
        if !quoted(c) {
            missing.push(format!("error code `{c}` (ErrorCode in herald-proto)"));
        }
    }
    let (kicks, closes) = gateway_closes();
    for k in &kicks {
        if !quoted(k) {
            missing.push(format!("disconnect code `{k}` (ws-gateway)"));
        }
    }
    for (close, reason) in &closes {
        if !doc.contains(&format!("| {close} |")) {
            missing.push(format!("close code {close} in a table row (ws-gateway)"));
        }
        if !quoted(reason) {
            missing.push(format!(
                "close reason `{reason}` (close code {close}, ws-gateway)"
            ));
        }
    }
    let http = http_error_codes();
    for (c, file) in &http {
        if !quoted(c) {
            missing.push(format!("HTTP error code `{c}` ({file})"));
        }
    }

    eprintln!("frame types: {:?}", types.keys().collect::<Vec<_>>());
    eprintln!("error codes: {codes:?}");
    eprintln!("disconnect codes: {kicks:?}");
    eprintln!("close codes: {closes:?}");
    eprintln!("HTTP error codes: {:?}", http.keys().collect::<Vec<_>>());
    assert!(
        missing.is_empty(),
        "{DOC} does not document:\n  - {}",
        missing.join("\n  - ")
    );
}

#[test]
fn docs_nothing_in_the_repository_points_outside_it() {
    // The planning files live next to the repository, not in it. (Built at run time
    // so that this file does not match itself.)
    let needle = ["..", "/shared/"].concat();
    let mut offenders = Vec::new();
    let mut stack = vec![repo()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let hidden = name.starts_with('.') && name != ".ci" && name != ".config";
            if path.is_dir() {
                if !hidden && name != "target" {
                    stack.push(path);
                }
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                if line.contains(&needle) {
                    let rel = path.strip_prefix(repo()).unwrap_or(&path);
                    offenders.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these lines point outside the repository:\n  {}",
        offenders.join("\n  ")
    );
}
