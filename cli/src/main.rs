//! The `kith` binary: parse the command line, set up logging and a runtime, run, and report
//! a failure as one line on stderr with a non-zero exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kith_cli::commands::args::Cli;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = kith_cli::commands::runs_a_node(&cli);
    init_logging(&cli, daemon);
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

/// Daemons log at info by default; commands log nothing unless asked with -v. `KITH_LOG`
/// (an env-filter directive such as `kith_transport=debug`) overrides both.
fn init_logging(cli: &Cli, daemon: bool) {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
