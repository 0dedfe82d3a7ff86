//! Every command's help teaches with examples. (This test also makes `cargo test` build the
//! `kith` binary that the integration tests run.)

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kith"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_help_has_examples() {
    for args in [
        &[][..],
        &["node", "create"],
        &["node", "list"],
        &["node", "show"],
        &["node", "stop"],
        &["node", "start"],
        &["node", "delete"],
        &["node", "logs"],
        &["message", "send"],
        &["identity", "create"],
        &["identity", "list"],
        &["identity", "show"],
        &["identity", "default"],
        &["identity", "delete"],
        &["secure-channel", "create"],
        &["secure-channel", "list"],
        &["secure-channel", "delete"],
        &["demo"],
        &["completion"],
    ] {
        let text = help(args);
        assert!(
            text.contains("Examples:"),
            "`kith {} --help` has no examples",
            args.join(" ")
        );
        assert!(
            text.contains("--output"),
            "`kith {} --help` lacks the global options",
            args.join(" ")
        );
    }
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
