//! herald.js's own checks, run from the suite so that `just test` covers them: its
//! unit tests on Node (`node --test`, a WebSocket stub in place of the network) and its
//! hand-written TypeScript declarations against a usage file (`tsc --noEmit`).

use std::path::PathBuf;

use crate::within;

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

async fn run(what: &str, program: &str, args: &[&str]) {
    let out = within(
        what,
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(client_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot run {program} ({e}): `just test` lists what to install"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn herald_js_unit_tests_pass() {
    // The test files by name: given a directory, Node 20 would also run the stub module.
    let mut files: Vec<String> = std::fs::read_dir(client_dir().join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no clients/js/test/*.test.mjs");
    let mut args = vec!["--test"];
    args.extend(files.iter().map(String::as_str));
    run("node --test", "node", &args).await;
}

#[tokio::test]
async fn herald_d_ts_describes_the_api() {
    run(
        "tsc --noEmit",
        "tsc",
        &[
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            // `node`: Debian's TypeScript (4.8) predates `bundler`.
            "node",
            "test/types-check.ts",
        ],
    )
    .await;
}
