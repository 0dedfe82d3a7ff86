//! `kith-send-large BYTES message send - --from NODE --to ROUTE [--timeout D]`: exactly what
//! `kith message send` does (the same library code, from the same parsed command line), with
//! the message `-` replaced by BYTES bytes. Linux refuses a single command-line argument
//! longer than 128 KiB (`MAX_ARG_STRLEN`), so `kith` itself cannot be handed a message
//! larger than a frame; the refusal bench sends its oversized message with this instead.

use std::process::ExitCode;

use clap::Parser as _;
use kith_cli::commands::args::{Cli, Command, MessageCommand};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(bytes) = args.next().and_then(|b| b.parse::<usize>().ok()) else {
        eprintln!("error: usage: kith-send-large BYTES message send - --from NODE --to ROUTE");
        return ExitCode::FAILURE;
    };
    let mut cli = match Cli::try_parse_from(std::iter::once("kith".to_owned()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let Command::Message(MessageCommand::Send(send)) = &mut cli.command else {
        eprintln!("error: kith-send-large runs `message send` only");
        return ExitCode::FAILURE;
    };
    send.message = "x".repeat(bytes);
    // As `kith` runs a command that is not a daemon: on one thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kith_cli::commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
