//! Every command's help teaches with examples. (This test also makes `cargo test` build the
//! `kith` binary that the integration tests run.)

use std::process::Command;

use clap::CommandFactory;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kith"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every command path (`["relay", "create"]`, …), from the command tree itself, so that a
/// new command cannot be missed.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            path.push(sub.get_name().to_owned());
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(
        &kith_cli::commands::args::Cli::command(),
        &mut Vec::new(),
        &mut out,
    );
    out
}

#[test]
fn every_command_help_has_examples() {
    let paths = command_paths();
    assert!(paths.iter().any(|p| p == &["relay", "create"]), "{paths:?}");
    let mut missing = Vec::new();
    for path in &paths {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        if !text.contains("Examples:") {
            missing.push(format!("kith {}", args.join(" ")));
        }
        assert!(
            text.contains("--output"),
            "`kith {} --help` lacks the global options",
            args.join(" ")
        );
    }
    assert!(
        missing.is_empty(),
        "no examples in the help of: {missing:?}"
    );
}

#[test]
fn usage_errors_exit_with_2_and_say_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_kith"))
        .args([
            "message",
            "send",
            "hi",
            "--to",
            "/node/x",
            "--timeout",
            "10q",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}
