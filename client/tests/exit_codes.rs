//! The real `ambishare-client` binary's exit codes, for what a script checks
//! without any node running: its help, a bad command line, a pull that stops.
//! (A pull that runs to its end without keys, exit 3, is in tests/tests/e2e.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn client(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambishare-client"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("AMBISHARE_CLIENT_REGISTRY")
        .env_remove("AMBISHARE_CLIENT_OWNER")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ambishare-client")
}

#[test]
fn pull_help_lists_the_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let out = client(home.path(), &["pull", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{help}");
    for line in ["0  every entry", "1  the pull stopped", "2  the command line", "3  it ran to its end", "4  it ran"] {
        assert!(help.contains(line), "{line:?} not in:\n{help}");
    }
}

#[test]
fn a_bad_command_line_exits_2() {
    let home = tempfile::tempdir().unwrap();
    // --out is required.
    let out = client(home.path(), &["pull", "--registry", "http://127.0.0.1:1", "--owner", "https://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_pull_that_cannot_start_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let dest = home.path().join("out");
    // Not enrolled: no party key to read, so nothing is asked of any node.
    let out = client(
        home.path(),
        &[
            "pull",
            "--registry",
            "http://127.0.0.1:1",
            "--owner",
            "https://127.0.0.1:1",
            "--out",
            dest.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
}
