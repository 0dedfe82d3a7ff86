//! A private `KITH_HOME` for benches that run nodes as users deploy them: each node a
//! `kith` daemon of its own, driven through the `kith` command line.
//!
//! [`KithHome`] owns a temporary directory and the daemons started in it: dropping it runs
//! `kith node delete --all --include-authorities`, which stops every daemon of the home, so a bench that fails
//! half-way leaves no process behind. Every command it runs is bounded by a limit and killed
//! past it ([`timed`]); none waits on a daemon without one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// 60 s: bounds each `kith` command of a set-up. A command answers in well under a second
/// on loopback, a debug build's first start in a few; only a stuck daemon takes this long.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A temporary `KITH_HOME` and the `kith` binary that runs in it; its daemons are stopped
/// when it is dropped.
pub struct KithHome {
    kith: PathBuf,
    home: TempDir,
}

impl KithHome {
    /// A fresh, empty home in the temporary directory, named after `bench` so that a
    /// leftover one says whose it was.
    pub fn new(kith: &Path, bench: &str) -> anyhow::Result<Self> {
        Ok(Self {
            kith: kith.to_owned(),
            home: tempfile::Builder::new()
                .prefix(&format!("kith-{bench}-bench-"))
                .tempdir()
                .context("creating a temporary KITH_HOME")?,
        })
    }

    /// The home's directory.
    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// The `kith` binary.
    pub fn kith(&self) -> &Path {
        &self.kith
    }

    /// `kith ARGS` in this home, with no log filter from our environment, no stdin, and
    /// its output captured.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kith);
        c.args(args)
            .env("KITH_HOME", self.home.path())
            .env_remove("KITH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run `kith ARGS`, insisting on success within [`COMMAND_LIMIT`]; its stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let shown = format!("kith {}", args.join(" "));
        let run =
            timed(self.command(args), None, COMMAND_LIMIT).with_context(|| format!("`{shown}`"))?;
        if !run.output.status.success() {
            bail!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&run.output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&run.output.stdout).into_owned())
    }

    /// Run `kith ARGS --output json`, insisting on success; what it printed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.ok(&a)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`kith {}` printed something other than JSON", a.join(" ")))
    }

    /// An identity and a daemon both named `node` (with `node_args` for `kith node
    /// create`), enrolled in the default project with a ticket made with `ticket_args`
    /// (`--attribute k=v`, `--relay NAME`). What `kith node create` printed.
    pub fn enrolled_node(
        &self,
        node: &str,
        ticket_args: &[&str],
        node_args: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut ticket = vec!["project", "ticket"];
        ticket.extend(ticket_args);
        let ticket = self.ok(&ticket)?;
        self.ok(&["identity", "create", node])?;
        let mut create = vec!["node", "create", node, "--identity", node];
        create.extend(node_args);
        let created = self.json(&create)?;
        self.ok(&["project", "enroll", ticket.trim(), "--node", node])?;
        Ok(created)
    }

    /// What `kith node show NODE` says.
    pub fn show(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        self.json(&["node", "show", node])
    }

    /// The process id of `node`'s daemon.
    pub fn pid(&self, node: &str) -> anyhow::Result<u32> {
        let shown = self.show(node)?;
        shown["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| anyhow!("no pid in {shown}"))
    }
}

impl Drop for KithHome {
    fn drop(&mut self) {
        // Bounded inside `kith node delete` (each stop waits a few seconds at most).
        let _ = Command::new(&self.kith)
            .args(["node", "delete", "--all", "--include-authorities"])
            .env("KITH_HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A string field of a command's JSON.
pub fn field(v: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {key} in {v}"))
}

/// A finished process and how long it ran, from spawn to exit.
pub struct Timed {
    /// Its exit status and what it printed.
    pub output: Output,
    /// From spawn to exit.
    pub took: Duration,
}

/// Run `command` to its end and time it, with `input` on its stdin if given; SIGKILL it
/// past `limit`. Its pipes are drained on a thread of their own, so a command that prints
/// more than a pipe holds cannot stall the wait, the wait has a bound, and the time is the
/// exit's, not a poll's.
pub fn timed(
    mut command: Command,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> anyhow::Result<Timed> {
    let started = Instant::now();
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().context("cannot start it")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // On a thread, so that a command that stops reading cannot block the bench.
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    }
    let pid = child.id();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = tx.send(output.map(|output| Timed {
            output,
            took: started.elapsed(),
        }));
    });
    match done.recv_timeout(limit) {
        Ok(timed) => Ok(timed?),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            bail!("it did not finish within {limit:?}; killed")
        }
    }
}

/// Look every `poll` until `look` finds what it waits for (`Ok(Ok(found))`); `Ok(Err(seen))`
/// means not yet, and says what it saw. Past `limit`, an error with the last thing seen. For
/// the daemons' state, which a bench can only look at again (`kith … show`).
pub fn poll_until<T>(
    limit: Duration,
    poll: Duration,
    mut look: impl FnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match look()? {
            Ok(found) => return Ok(found),
            Err(seen) if started.elapsed() >= limit => bail!("{seen} after {limit:?}"),
            Err(_) => std::thread::sleep(poll),
        }
    }
}
