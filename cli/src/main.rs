//! The `kith` binary: parse the command line, set up logging and a runtime, run, and report
//! a failure as one line on stderr with a non-zero exit code; under `--output json`, as one
//! JSON object on stderr (see [`Failure`]).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use kith_cli::commands::args::{Cli, Command, NodeCommand, OutputFormat, kith_home};
use kith_cli::home::{Home, validate_node_name};
use kith_cli::logfile::{RotatingLog, Rotation};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the C library's allocator: with its background thread it hands
/// pages it no longer uses back to the system within seconds, so a node's memory comes back
/// down after a flood of connections or a churn of clients leaves (glibc's keeps them in
/// its arenas at the peak).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// 1 s: how long a daemon's allocator keeps pages it no longer uses before it hands them
/// back to the system (jemalloc's default is 10 s, and then lazily). A node's memory then
/// comes back down within a second or two of a flood leaving; reusing a page costs a fault.
const FREED_PAGES_KEPT_MS: isize = 1000;

/// Have the allocator hand freed pages back to the system after [`FREED_PAGES_KEPT_MS`],
/// from a background thread of its own, so an idle node gives memory back too.
fn return_freed_memory() -> Result<(), String> {
    use tikv_jemalloc_ctl::{Access as _, AsName as _};
    let set = |key: &'static [u8], ms: isize| {
        key.name().write(ms).map_err(|e| {
            format!(
                "{}: {e}",
                String::from_utf8_lossy(key.split_last().map_or(key, |(_, k)| k))
            )
        })
    };
    // For the arenas to come, and for the one arena there is before the runtime starts its
    // threads. Freed pages go back at once instead of lingering as "muzzy" (freed lazily,
    // still counted).
    set(b"arenas.dirty_decay_ms\0", FREED_PAGES_KEPT_MS)?;
    set(b"arenas.muzzy_decay_ms\0", 0)?;
    set(b"arena.0.dirty_decay_ms\0", FREED_PAGES_KEPT_MS)?;
    set(b"arena.0.muzzy_decay_ms\0", 0)?;
    tikv_jemalloc_ctl::background_thread::write(true).map_err(|e| format!("background_thread: {e}"))
}

/// How a failed command reports itself: the exit code, and the one line that says why.
///
/// Under `--output json` the line is a JSON object on stderr, the same shape for every
/// failure: `{"error": {"kind": "usage" | "interrupted" | "failed", "message": "…",
/// "exit_code": N}}`.
struct Failure {
    kind: &'static str,
    message: String,
    exit_code: u8,
}

impl Failure {
    fn report(self, json: bool) -> ExitCode {
        if json {
            let v = serde_json::json!({ "error": {
                "kind": self.kind,
                "message": self.message,
                "exit_code": self.exit_code,
            }});
            eprintln!("{v}");
        } else {
            eprintln!("error: {}", self.message);
        }
        ExitCode::from(self.exit_code)
    }

    fn failed(e: &anyhow::Error) -> Self {
        let message = format!("{e:#}").replace('\n', " ");
        if e.is::<kith_cli::commands::Interrupted>() {
            // 128 + SIGINT, as shells report a program that Ctrl-C ended.
            return Self {
                kind: "interrupted",
                message,
                exit_code: 130,
            };
        }
        Self {
            kind: "failed",
            message,
            exit_code: 1,
        }
    }
}

/// Whether the raw command line asks for JSON output: for errors found before it is parsed.
fn json_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--output=json")
        || args.windows(2).any(|w| {
            w.first().is_some_and(|a| a == "--output") && w.get(1).is_some_and(|v| v == "json")
        })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if json_asked() && e.use_stderr() => {
            // clap's first line says what is wrong; the rest is usage text for people.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return Failure {
                kind: "usage",
                message: first.trim_start_matches("error: ").to_owned(),
                exit_code: 2,
            }
            .report(true);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.output == OutputFormat::Json;
    let daemon = kith_cli::commands::runs_a_node(&cli);
    if let Err(e) = init_logging(&cli, daemon) {
        return Failure::failed(&e).report(json);
    }
    if daemon && let Err(e) = return_freed_memory() {
        tracing::warn!(error = %e, "cannot tune the allocator; freed memory returns to the system more slowly");
    }
    let runtime = if daemon {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            let e = anyhow::Error::new(e).context("cannot start the async runtime");
            return Failure::failed(&e).report(json);
        }
    };
    match runtime.block_on(kith_cli::commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => Failure::failed(&e).report(json),
    }
}

/// Daemons log at info by default; commands log nothing unless asked with -v. `KITH_LOG`
/// (an env-filter directive such as `kith_transport=debug`) overrides both. A spawned daemon
/// (`kith node run`) writes to its node's log file, rotated by size ([`daemon_log`]); every
/// other command logs to standard error.
fn init_logging(cli: &Cli, daemon: bool) -> Result<()> {
    let default = match (daemon, cli.global.verbose) {
        (true, 0) => "info",
        (false, 0) => "off",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("KITH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = !cli.global.no_color
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match daemon_log(cli)? {
        Some(log) => builder.with_writer(log).with_ansi(false).init(),
        None => builder.with_writer(std::io::stderr).with_ansi(ansi).init(),
    }
    Ok(())
}

/// For `kith node run NAME`, the node's log (`$KITH_HOME/nodes/NAME/node.log`), rotated as
/// `KITH_LOG_MAX_BYTES` and `KITH_LOG_FILES` say, with standard error pointed at it. `None`
/// for every other command, and for a node that does not exist (the command itself then
/// fails, saying why, on standard error).
fn daemon_log(cli: &Cli) -> Result<Option<RotatingLog>> {
    let Command::Node(NodeCommand::Run(node)) = &cli.command else {
        return Ok(None);
    };
    let rotation = Rotation::from_env()?;
    let Some(home) = kith_home().and_then(|root| Home::open(root).ok()) else {
        return Ok(None);
    };
    if validate_node_name(&node.name).is_err() || !home.node_dir(&node.name).is_dir() {
        return Ok(None);
    }
    let path = home.log_path(&node.name);
    let log = RotatingLog::open_as_stderr(&path, rotation)
        .with_context(|| format!("cannot open the node's log {}", path.display()))?;
    Ok(Some(log))
}
