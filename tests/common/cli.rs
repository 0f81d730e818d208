//! Shared by the tests that drive the binary (included with `#[path]`): the `splicevi` command, the
//! Python used to read its outputs back, and runners that assert success or failure.
//!
//! Python: env `SPLICEVI_PYTHON`, else `.pyvenv/bin/python` under the crate if it exists, else `python3`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test, without HDF5 file locking (a Python child may still hold a file open).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_splicevi"));
    c.env("HDF5_USE_FILE_LOCKING", "FALSE");
    c
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SPLICEVI_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".pyvenv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The conformance fixtures: `$SPLICEVI_FIXTURES`, else `../shared/fixtures` beside the crate.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("SPLICEVI_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

fn output_text(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running splicevi");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `cmd`, asserts it succeeded, returns stdout + stderr.
pub fn ok(cmd: &mut Command) -> String {
    let (success, text) = output_text(cmd);
    assert!(success, "command failed: {cmd:?}\n{text}");
    text
}

/// Runs `cmd`, asserts it failed, returns stdout + stderr.
pub fn fails(cmd: &mut Command) -> String {
    let (success, text) = output_text(cmd);
    assert!(!success, "command should have failed: {cmd:?}\n{text}");
    text
}
