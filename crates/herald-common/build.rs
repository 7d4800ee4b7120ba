//! Records this build's version for `herald_common::VERSION`: the package version
//! and, when the sources are a git checkout, the short revision of `HEAD`, as in
//! `0.4.0 (abc1234)`. Outside git (a source tarball, a Docker build without `.git`)
//! it is the package version alone, unless `HERALD_GIT_REV` names the revision.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HERALD_GIT_REV");
    let rev = match std::env::var("HERALD_GIT_REV") {
        Ok(rev) if !rev.trim().is_empty() => Some(rev.trim().to_owned()),
        _ => git_revision(),
    };
    match rev {
        Some(rev) => println!("cargo:rustc-env=HERALD_BUILD_VERSION={version} ({rev})"),
        None => println!("cargo:rustc-env=HERALD_BUILD_VERSION={version}"),
    }
}

/// The short revision of `HEAD` of the repository holding this workspace, watching
/// the files that change when `HEAD` moves so that a new commit rebuilds.
fn git_revision() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // This crate sits at `<workspace>/crates/herald-common`: only that workspace's own
    // repository counts, not one the sources happen to be copied into.
    let workspace = manifest_dir.parent()?.parent()?.canonicalize().ok()?;
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != workspace {
        return None;
    }
    let rev = git(&manifest_dir, &["rev-parse", "--short", "HEAD"])?;
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&manifest_dir, &["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            // A missing file would make cargo rerun this script on every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(rev)
}

/// `git <args>` run in `dir`, its trimmed output on success.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
