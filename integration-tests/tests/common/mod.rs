//! Runs the real `kith` binary against a private, temporary `KITH_HOME`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// 60 s: no command should come near this; it only stops a hung test from hanging CI.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// The `kith` binary: `KITH_BIN`, or the one cargo built next to this test.
pub fn kith_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KITH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/kith
    let bin = exe.parent().unwrap().parent().unwrap().join("kith");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p kith-cli` or set KITH_BIN",
        bin.display()
    );
    bin
}

/// A private `KITH_HOME`; dropping it stops every node in it.
pub struct Kith {
    pub home: TempDir,
}

/// A finished command.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Kith {
    pub fn new() -> Self {
        Self {
            home: tempfile::Builder::new()
                .prefix("kith-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kith_bin());
        c.args(args)
            .env("KITH_HOME", self.home())
            .env_remove("KITH_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, None)
    }

    /// As [`Kith::run`], with `input` written to the command's standard input (then closed).
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Run {
        let started = Instant::now();
        let mut command = self.command(args);
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            let input = input.to_owned();
            // On a thread, so that a command that stops reading cannot block us.
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
        }
        // Bound the wait without blocking on the pipes: read them on threads.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut out, &mut s).ok();
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut err, &mut s).ok();
            s
        });
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > COMMAND_LIMIT {
                child.kill().ok();
                panic!(
                    "`kith {}` did not finish within {COMMAND_LIMIT:?}",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Run {
            code: status.code(),
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
            elapsed: started.elapsed(),
        }
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code,
            Some(0),
            "`kith {}` failed: {}",
            args.join(" "),
            r.stderr
        );
        r.stdout
    }

    /// Run with `--output json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`kith {}` printed invalid JSON ({e}): {out}",
                args.join(" ")
            )
        })
    }

    /// Run and insist on failure with exactly one `error:` line on stderr; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code,
            Some(1),
            "`kith {}` should fail; stdout: {}",
            args.join(" "),
            r.stdout
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one error line expected, got: {:?}",
            r.stderr
        );
        assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
        lines[0].to_owned()
    }

    /// Create a daemon node listening on a free loopback port; returns its listener.
    pub fn node(&self, name: &str) -> String {
        let v = self.json(&["node", "create", name]);
        v["listener"].as_str().unwrap().to_owned()
    }

    pub fn status(&self, name: &str) -> serde_json::Value {
        self.json(&["node", "show", name])
    }

    /// `kill -9` node `name`'s daemon: no shutdown, no goodbye to its peers.
    pub fn kill_9(&self, name: &str) {
        let pid = self.status(name)["pid"].as_u64().unwrap();
        let killed = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -9 {pid} ({name}) failed");
    }
}

impl Drop for Kith {
    fn drop(&mut self) {
        let _ = self.run(&["node", "delete", "--all", "--include-authorities"]);
    }
}

/// `/ip4/127.0.0.1/tcp/PORT` for a `127.0.0.1:PORT` listener.
pub fn ip4_route(listener: &str, service: &str) -> String {
    let (host, port) = listener.rsplit_once(':').unwrap();
    format!("/ip4/{host}/tcp/{port}/service/{service}")
}

pub fn identifier(k: &Kith, name: &str) -> String {
    k.json(&["identity", "show", name])["identifier"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A home with project `acme` and, for each `(node, ticket attributes)`, an identity of the
/// node's name, a daemon node running as it, and its enrollment with those attributes.
/// `db-node` serves only members with `component=web`.
pub fn project_with(nodes: &[(&str, &[&str])]) -> Kith {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    for (node, attributes) in nodes {
        let mut args = vec!["project", "ticket"];
        for a in *attributes {
            args.extend(["--attribute", a]);
        }
        let ticket = k.ok(&args);
        k.ok(&["identity", "create", node]);
        let mut create = vec!["node", "create", node, "--identity", node];
        if *node == "db-node" {
            create.extend(["--allow", r#"component = "web""#]);
        }
        k.json(&create);
        k.ok(&["project", "enroll", ticket.trim(), "--node", node]);
    }
    k
}

pub fn log(k: &Kith, node: &str) -> String {
    std::fs::read_to_string(k.home().join(format!("nodes/{node}/node.log"))).unwrap_or_default()
}

/// A TCP server on 127.0.0.1 that echoes every connection until end of stream; where it
/// listens.
pub fn echo_server() -> String {
    kith_integration_tests::echo::echo_server().unwrap()
}

/// Insist that this machine has IPv6 loopback (::1): the `kith` commands of a test reach
/// an authority listening on `[::]` over 127.0.0.1 and over ::1, as two source addresses.
pub fn require_ipv6_loopback() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this test needs IPv6 loopback (::1) for a second source address; enable it \
         (sysctl net.ipv6.conf.lo.disable_ipv6=0)"
    );
}

/// Create project `acme`'s authority in `k` listening on `[::]` (with `extra` flags), so
/// that its clients can come from two source addresses: ::1 and 127.0.0.1. Returns what
/// `authority create` printed and the route to the authority over IPv4.
pub fn dual_stack_authority(k: &Kith, extra: &[&str]) -> (serde_json::Value, String) {
    require_ipv6_loopback();
    let mut args = vec![
        "authority",
        "create",
        "--project",
        "acme",
        "--tcp-listener-address",
        "[::]:0",
    ];
    args.extend(extra);
    let created = k.json(&args);
    let route = created["authority_route"].as_str().unwrap().to_owned();
    assert!(route.starts_with("/ip6/::1/tcp/"), "{route}");
    let port = route.rsplit('/').next().unwrap();
    (created, format!("/ip4/127.0.0.1/tcp/{port}"))
}
