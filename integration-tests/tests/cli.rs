//! The `kith` binary end to end: real daemons, real sockets, a private KITH_HOME each.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Kith, ip4_route, log};
use kith_node::testing::until_blocking;

/// The directory a demo's first step says it created.
fn demo_home(first_step: &str) -> String {
    first_step
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn demo_prints_the_echoed_message_and_the_portal_page_and_cleans_up() {
    let k = Kith::new();
    let out = k.ok(&["demo"]);
    assert!(
        out.contains("db-node's echo answered \"hello from web\""),
        "{out}"
    );
    assert!(out.contains("$ kith project enroll"), "{out}");
    assert!(out.contains("$ kith relay create db --at db-node"), "{out}");
    assert!(
        out.contains("forward_to_db/secure/api/service/echo"),
        "{out}"
    );
    // The portal: an outlet on the relayed node for component=web only, an inlet on a free
    // port through the relay, and the page fetched from it.
    assert!(
        out.contains("$ kith tcp-outlet create --at db-node --to 127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains(r#"--allow 'component = "web"'"#), "{out}");
    assert!(
        out.contains(
            "$ kith tcp-inlet create --at web-node --from 127.0.0.1:0 \
             --to /project/demo/service/forward_to_db/secure/api/service/outlet"
        ),
        "{out}"
    );
    assert!(out.contains("$ curl http://127.0.0.1:"), "{out}");
    assert!(out.contains("HTTP/1.1 200 OK, "), "{out}");
    assert!(out.contains("\"Hello from beside db-node\""), "{out}");
    assert!(out.contains("removed the temporary KITH_HOME"), "{out}");
    let dir = demo_home(out.strip_prefix("1. ").unwrap());
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the demo left {dir} behind"
    );

    let v = k.json(&["demo"]);
    assert_eq!(v["reply"], "hello from web");
    assert!(v["round_trip_ms"].as_f64().unwrap() > 0.0);
    // The credential shown is the authority's, with exactly the ticket's attributes.
    assert_eq!(v["credential"]["issuer"], v["authority"]);
    assert_eq!(v["credential"]["attributes"]["component"], "db");
    assert_eq!(v["credential"]["attributes"]["project_id"], v["project_id"]);
    assert_eq!(v["peer"], v["credential"]["subject"]);
    // The page came back through the inlet, whole.
    let portal = &v["portal"];
    assert_eq!(portal["status"], 200, "{portal}");
    assert_eq!(portal["heading"], "Hello from beside db-node", "{portal}");
    let body = portal["body"].as_str().unwrap();
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(
        body.contains("<h1>Hello from beside db-node</h1>"),
        "{body}"
    );
    let inlet: std::net::SocketAddr = portal["inlet"].as_str().unwrap().parse().unwrap();
    let server: std::net::SocketAddr = portal["server"].as_str().unwrap().parse().unwrap();
    assert!(inlet.ip().is_loopback() && inlet.port() != 0, "{portal}");
    assert_ne!(inlet, server, "the fetch must go through the inlet");
    assert!(portal["fetch_ms"].as_f64().unwrap() > 0.0, "{portal}");
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["command"] == format!("curl http://{inlet}/")),
        "{v}"
    );
    let dir = demo_home(steps[0]["what"].as_str().unwrap());
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the demo left {dir} behind"
    );
}

#[test]
fn node_lifecycle_create_send_stop_start_delete() {
    let k = Kith::new();
    let n1 = k.node("n1");
    k.node("n2");

    let list = k.json(&["node", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "running")
    );

    // Embedded node → daemon, by node name, by ip4 and by dnsaddr.
    assert_eq!(
        k.ok(&["message", "send", "hi", "--to", "/node/n1/service/echo"]),
        "hi\n"
    );
    assert_eq!(
        k.ok(&["message", "send", "hi", "--to", &ip4_route(&n1, "echo")]),
        "hi\n"
    );
    let port = n1.rsplit_once(':').unwrap().1;
    let dns = format!("/dnsaddr/localhost/tcp/{port}/service/echo");
    assert_eq!(k.ok(&["message", "send", "hi", "--to", &dns]), "hi\n");

    // Daemon → daemon.
    let v = k.json(&[
        "message",
        "send",
        "over tcp",
        "--from",
        "n2",
        "--to",
        "/node/n1/service/echo",
    ]);
    assert_eq!(v["reply"], "over tcp");
    assert!(v["return_route"].as_str().unwrap().starts_with("[0#tcp-"));
    let show = k.status("n2");
    assert_eq!(show["connections"][0]["direction"], "outgoing");
    assert_eq!(show["services"], serde_json::json!(["0#api", "0#echo"]));

    // Stop, then start on the same listener.
    k.ok(&["node", "stop", "n1"]);
    assert_eq!(k.status("n1")["status"], "stopped");
    let e = k.fails(&["message", "send", "hi", "--to", "/node/n1/service/echo"]);
    assert!(e.contains("not running"), "{e}");
    let e = k.fails(&["node", "stop", "n1"]);
    assert!(e.contains("is not running"), "{e}");
    let started = k.json(&["node", "start", "n1"]);
    assert_eq!(started["listener"], n1.as_str());
    let e = k.fails(&["node", "start", "n1"]);
    assert!(e.contains("already running"), "{e}");
    assert_eq!(
        k.ok(&[
            "message",
            "send",
            "back",
            "--from",
            "n2",
            "--to",
            "/node/n1/service/echo"
        ]),
        "back\n"
    );

    k.ok(&["node", "delete", "n1"]);
    assert_eq!(k.json(&["node", "list"]).as_array().unwrap().len(), 1);
    let e = k.fails(&["node", "show", "n1"]);
    assert!(e.contains("no node named"), "{e}");
    k.ok(&["node", "delete", "--all"]);
    assert_eq!(k.json(&["node", "list"]), serde_json::json!([]));
}

#[test]
fn delete_all_keeps_authority_nodes_unless_they_are_included() {
    let k = Kith::new();
    k.node("n1");
    k.json(&["authority", "create", "auth", "--project", "acme"]);

    let kept = k.json(&["node", "delete", "--all"]);
    assert_eq!(kept["deleted"], serde_json::json!(["n1"]), "{kept}");
    assert_eq!(
        kept["kept_authorities"],
        serde_json::json!(["auth"]),
        "{kept}"
    );
    assert_eq!(k.status("auth")["status"], "running");
    let said = k.ok(&["node", "delete", "--all"]);
    assert!(
        said.contains("Kept authority node auth") && said.contains("--include-authorities"),
        "{said}"
    );

    // A usage error (clap's code 2): the flag means nothing without --all.
    let e = k.run(&["node", "delete", "--include-authorities"]);
    assert_eq!(e.code, Some(2), "{}", e.stderr);
    assert!(e.stderr.contains("--all"), "{}", e.stderr);
    let gone = k.json(&["node", "delete", "--all", "--include-authorities"]);
    assert_eq!(gone["deleted"], serde_json::json!(["auth"]), "{gone}");
    assert_eq!(k.json(&["node", "list"]), serde_json::json!([]));
}

#[test]
fn failures_under_output_json_are_one_json_object_on_stderr() {
    let k = Kith::new();
    let error = |args: &[&str], code: i32| {
        let r = k.run(args);
        assert_eq!(r.code, Some(code), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        let v: serde_json::Value = serde_json::from_str(r.stderr.trim()).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stderr is not one JSON object ({e}): {}",
                r.stderr
            )
        });
        assert_eq!(v["error"]["exit_code"], code, "{v}");
        v["error"].clone()
    };
    let missing = error(&["node", "show", "nope", "--output", "json"], 1);
    assert_eq!(missing["kind"], "failed");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("no node named \"nope\""),
        "{missing}"
    );
    let usage = error(&["node", "shw", "--output=json"], 2);
    assert_eq!(usage["kind"], "usage");
    assert!(
        usage["message"].as_str().unwrap().contains("'shw'"),
        "{usage}"
    );
    // Plain output stays one readable line.
    let plain = k.fails(&["node", "show", "nope"]);
    assert!(plain.starts_with("error: no node named"), "{plain}");
}

#[test]
fn at_chooses_the_node_everywhere_and_the_old_spellings_still_work_unadvertised() {
    let k = Kith::new();
    k.node("n1");
    k.node("n2");
    for flag in ["--at", "--from"] {
        assert_eq!(
            k.ok(&[
                "message",
                "send",
                "hi",
                flag,
                "n2",
                "--to",
                "/node/n1/service/echo"
            ]),
            "hi\n",
            "{flag}"
        );
    }
    for flag in ["--at", "--node"] {
        let e = k.fails(&["credential", "show", flag, "n1"]);
        assert!(e.contains("holds no credential"), "{flag}: {e}");
    }
    for command in [
        &["message", "send", "--help"][..],
        &["secure-channel", "create", "--help"],
        &["credential", "show", "--help"],
        &["project", "enroll", "--help"],
        &["project", "request", "--help"],
    ] {
        let help = k.ok(command);
        assert!(help.contains("--at <NODE>"), "{command:?}: {help}");
        assert!(
            !help.contains("--from <NODE>") && !help.contains("--node <NODE>"),
            "{command:?} advertises an old spelling: {help}"
        );
    }
}

#[test]
fn status_shows_nodes_relays_outlets_projects_and_credential_expiry_in_one_screen() {
    let k = Kith::new();
    let empty = k.json(&["status"]);
    assert_eq!(empty["nodes"], serde_json::json!([]), "{empty}");

    drop(k);
    let k = common::project_with(&[("db-node", &["ockam-relay=db"])]);
    k.json(&["relay", "create", "db", "--at", "db-node"]);
    k.json(&[
        "tcp-outlet",
        "create",
        "--at",
        "db-node",
        "--to",
        "127.0.0.1:5432",
    ]);

    let v = k.json(&["status"]);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{v}");
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == "authority" && n["authority"] == true),
        "{v}"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == "db-node" && n["status"] == "running"),
        "{v}"
    );
    assert_eq!(v["relays"][0]["node"], "db-node", "{v}");
    assert_eq!(v["outlets"][0]["to"], "127.0.0.1:5432", "{v}");
    assert_eq!(
        v["projects"],
        serde_json::json!([{ "name": "acme", "default": true }])
    );
    assert_eq!(v["credentials"][0]["identity"], "db-node", "{v}");
    assert_eq!(
        v["credentials"][0]["attributes"]["ockam-relay"], "db",
        "{v}"
    );

    let screen = k.ok(&["status"]);
    for part in [
        "db-node",
        "(authority)",
        "up since",
        "to 127.0.0.1:5432",
        "acme (default)",
        "expires in 30d",
    ] {
        assert!(screen.contains(part), "no {part:?} in:\n{screen}");
    }
}

#[test]
fn node_state_is_private_to_its_owner() {
    let k = Kith::new();
    k.node("n1");
    let dir = k.home().join("nodes/n1");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(dir.join("control.sock").exists());
    assert_eq!(
        std::fs::metadata(dir.join("config.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn bad_node_commands_fail_with_one_clear_line_and_leave_no_state() {
    let k = Kith::new();
    let n1 = k.node("n1");

    let e = k.fails(&["node", "create", "n1"]);
    assert!(e.contains("already exists"), "{e}");

    let e = k.fails(&["node", "create", "n2", "--tcp-listener-address", &n1]);
    assert!(e.contains("Address already in use"), "{e}");
    assert!(
        !k.home().join("nodes/n2").exists(),
        "a failed create left state behind"
    );

    for (addr, what) in [
        ("nonsense", "HOST:PORT"),
        ("127.0.0.1:99999", "port from 0 to 65535"),
    ] {
        let e = k.fails(&["node", "create", "n3", "--tcp-listener-address", addr]);
        assert!(e.contains(what), "{e}");
    }
    let e = k.fails(&["node", "create", "../evil"]);
    assert!(e.contains("invalid node name"), "{e}");
    let e = k.fails(&["node", "stop", "ghost"]);
    assert!(e.contains("no node named"), "{e}");
    let e = k.fails(&[
        "message",
        "send",
        "hi",
        "--from",
        "ghost",
        "--to",
        "/node/n1/service/echo",
    ]);
    assert!(e.contains("no node named"), "{e}");
    assert_eq!(k.json(&["node", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn bad_routes_fail_with_the_reason() {
    let k = Kith::new();
    k.node("n1");
    for (route, why) in [
        ("", "empty route"),
        ("node/n1", "must start with '/'"),
        ("/ip5/1.2.3.4/tcp/1", "unknown protocol"),
        ("/ip4/1.2.3/tcp/1/service/echo", "invalid ip4 value"),
        ("/ip4/127.0.0.1/service/echo", "needs a /tcp/PORT"),
        ("/ip4/127.0.0.1/tcp/0/service/echo", "port 0"),
        ("/node/ghost/service/echo", "no node named"),
        ("/service/a b", "letters, digits"),
    ] {
        let e = k.fails(&["message", "send", "hi", "--to", route]);
        assert!(e.contains(why), "{route:?}: {e}");
    }
}

#[test]
fn unreachable_peer_fails_fast_with_the_reason() {
    let k = Kith::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let r = k.run(&["message", "send", "hi", "--to", &ip4_route(&free, "echo")]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);

    // The same from a daemon.
    k.node("n1");
    let e = k.fails(&[
        "message",
        "send",
        "hi",
        "--from",
        "n1",
        "--to",
        &ip4_route(&free, "echo"),
    ]);
    assert!(e.contains("Connection refused"), "{e}");
}

#[test]
fn a_silent_peer_is_reported_as_not_answering_and_a_missing_listener_at_once() {
    let k = Kith::new();
    k.node("n1");
    k.node("n2");
    // Accepts connections (in its backlog) and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = ip4_route(&listener.local_addr().unwrap().to_string(), "echo");
    // No secure-channel listener at the end: n2 answers at once that it has no such
    // service, long before the 11 s timeout (or the channel's own 10 s deadline).
    let no_listener = [
        vec![
            "secure-channel",
            "create",
            "--from",
            "n1",
            "--to",
            "/node/n2/service/nothing",
            "--timeout",
            "11s",
        ],
        vec![
            "message",
            "send",
            "hi",
            "--from",
            "n1",
            "--to",
            "/node/n2/secure/nothing/service/echo",
            "--timeout",
            "11s",
        ],
    ];
    let k = &k;
    std::thread::scope(|s| {
        let waits: Vec<_> = no_listener
            .iter()
            .map(|args| s.spawn(move || (args, k.fails(args))))
            .collect();
        // 12 s: past the version exchange's own 10 s deadline, which must be what speaks.
        let e = k.fails(&["message", "send", "hi", "--to", &silent, "--timeout", "12s"]);
        assert!(
            e.contains("did not answer the kith version exchange within 10s"),
            "{e}"
        );
        assert!(!e.contains("not a kith node"), "{e}");
        for wait in waits {
            let (args, e) = wait.join().unwrap();
            assert!(e.contains("n2 has no service nothing"), "{args:?}: {e}");
            assert!(!e.contains("unexpected handshake message"), "{args:?}: {e}");
        }
    });
    drop(listener);
}

#[test]
fn unknown_service_is_refused_at_once_naming_the_node_and_the_service() {
    let k = Kith::new();
    k.node("n1");
    // The node answers with an error message; the timeout is only a bound on failure.
    let e = k.fails(&[
        "message",
        "send",
        "hi",
        "--to",
        "/node/n1/service/nobody",
        "--timeout",
        "30s",
    ]);
    assert!(e.contains("n1 has no service nobody"), "{e}");
}

#[test]
fn a_killed_node_reads_as_stopped_and_starts_again_on_its_port() {
    let k = Kith::new();
    let listener = k.node("n1");
    k.kill_9("n1");
    // The process is gone once its control socket stops answering.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while k.status("n1")["status"] == "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "node still reads as running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        k.status("n1")["status"],
        "stopped (did not shut down cleanly)"
    );
    let v = k.json(&["node", "start", "n1"]);
    assert_eq!(v["listener"], listener.as_str());
    assert_eq!(
        k.ok(&["message", "send", "alive", "--to", "/node/n1/service/echo"]),
        "alive\n"
    );
}

#[test]
fn sigterm_shuts_a_daemon_down_cleanly() {
    let k = Kith::new();
    k.node("n1");
    let pid = k.status("n1")["pid"].as_u64().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while k.home().join("nodes/n1/node.pid").exists() {
        assert!(std::time::Instant::now() < deadline, "pid file still there");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(k.status("n1")["status"], "stopped");
    let log = k.ok(&["node", "logs", "n1"]);
    assert!(log.contains("node stopped"), "{log}");
}

#[test]
fn garbage_from_a_raw_client_does_not_hurt_the_daemon() {
    let k = Kith::new();
    let listener = k.node("n1");
    let mut hostile = Vec::new();
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[1, 0xff, 0xff, 0xff, 0xff][..],
        &[1, 0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef][..],
        &[1, 0, 0, 0, 200, 1, 2][..], // closes mid-frame
    ] {
        let mut s = TcpStream::connect(&listener).unwrap();
        // The daemon may close on the first bad byte, before we finish: that is the point.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        hostile.push(sink);
    }
    assert_eq!(
        k.ok(&["message", "send", "fine", "--to", "/node/n1/service/echo"]),
        "fine\n"
    );
    let stats = &k.status("n1")["stats"];
    assert_eq!(stats["connections_refused"], 1, "{stats}");
    assert_eq!(stats["connections_closed_invalid"], 2, "{stats}");
    let log = k.ok(&["node", "logs", "n1"]);
    assert!(log.contains("exceeds the maximum"), "{log}");
    assert!(log.contains("in the middle of a frame"), "{log}");
    assert!(log.contains("protocol version 71"), "{log}");
}

#[test]
fn a_foreground_node_stops_cleanly_exiting_0_on_sigterm_and_130_on_ctrl_c() {
    let k = Kith::new();
    for (node, signal, code) in [("fg", "TERM", 0), ("fg2", "INT", 130)] {
        let mut child = k
            .command(&["node", "create", node, "--foreground", "--output", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.contains("\"listener\""), "{line}");
        assert_eq!(
            k.ok(&[
                "message",
                "send",
                node,
                "--to",
                &format!("/node/{node}/service/echo")
            ]),
            format!("{node}\n")
        );
        assert!(
            std::process::Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert_eq!(k.status(node)["status"], "stopped", "SIG{signal}");
    }
}

#[test]
fn completions_are_generated() {
    let k = Kith::new();
    let out = k.ok(&["completion", "bash"]);
    assert!(out.contains("kith"));
    assert!(out.contains("message"));
}

#[test]
fn completion_into_a_closed_pipe_exits_cleanly_without_a_panic() {
    let k = Kith::new();
    let mut child = k
        .command(&["completion", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes before a byte is read, as `| head -3` goes after three lines.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn identities_are_created_listed_made_default_and_protected_while_in_use() {
    let k = Kith::new();
    assert_eq!(k.json(&["identity", "list"]), serde_json::json!([]));
    let alice = k.json(&["identity", "create", "alice"]);
    assert_eq!(alice["default"], true, "the first identity is the default");
    let id = alice["identifier"].as_str().unwrap().to_owned();
    assert!(id.starts_with('I') && id.len() == 41, "{id}");
    let bob = k.json(&["identity", "create", "bob"]);
    assert_eq!(bob["default"], false);
    let e = k.fails(&["identity", "create", "alice"]);
    assert!(e.contains("already"), "{e}");
    let e = k.fails(&["identity", "create", "no/slashes"]);
    assert!(e.contains("name"), "{e}");

    k.ok(&["identity", "default", "bob"]);
    assert_eq!(k.ok(&["identity", "default"]), "bob\n");
    let full = k.json(&["identity", "show", "alice", "--full"]);
    assert_eq!(full["identifier"], id.as_str());
    assert!(full["changes_hex"].as_str().unwrap().len() > 100);
    // Secrets never appear in any output.
    let list = k.ok(&["identity", "list", "--output", "json"]);
    assert!(!list.contains("secret"), "{list}");

    // A node runs as an identity, which then cannot be deleted under it.
    k.json(&["node", "create", "n1", "--identity", "alice"]);
    assert_eq!(k.status("n1")["identifier"], id.as_str());
    let e = k.fails(&["identity", "delete", "alice"]);
    assert!(e.contains("used by node(s) n1"), "{e}");
    let e = k.fails(&["node", "create", "n2", "--identity", "ghost"]);
    assert!(e.contains("no identity \"ghost\""), "{e}");
    assert!(
        !k.home().join("nodes/n2").exists(),
        "a failed create left state behind"
    );
    k.ok(&["node", "delete", "n1"]);
    k.ok(&["identity", "delete", "alice"]);
    assert_eq!(k.json(&["identity", "list"]).as_array().unwrap().len(), 1);

    // The vault is private to its owner.
    let mode = std::fs::metadata(k.home().join("vault.sqlite"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn messages_through_a_secure_channel_name_the_peer_and_survive_restarts_with_the_same_identity() {
    let k = Kith::new();
    k.node("n1");
    k.ok(&["identity", "create", "other"]);
    k.json(&["node", "create", "n2", "--identity", "other"]);
    let n2_id = k.status("n2")["identifier"].as_str().unwrap().to_owned();
    assert_ne!(n2_id, k.status("n1")["identifier"].as_str().unwrap());

    let v = k.json(&[
        "message",
        "send",
        "secret",
        "--from",
        "n1",
        "--to",
        "/node/n2/secure/api/service/echo",
    ]);
    assert_eq!(v["reply"], "secret");
    assert_eq!(v["peer"], n2_id.as_str());
    assert!(
        v["return_route"]
            .as_str()
            .unwrap()
            .starts_with("[0#sc-enc-"),
        "{v}"
    );
    assert!(v["verification_code"].as_str().unwrap().len() == 9);

    // From an embedded node (the default identity), and over an explicit ip4 route.
    let listener = k.status("n2")["listener"].as_str().unwrap().to_owned();
    let (host, port) = listener.rsplit_once(':').unwrap();
    let to = format!("/ip4/{host}/tcp/{port}/secure/api/service/echo");
    let v = k.json(&["message", "send", "hi", "--to", &to]);
    assert_eq!(v["peer"], n2_id.as_str());

    // A restarted node keeps its identity.
    k.ok(&["node", "stop", "n2"]);
    k.ok(&["node", "start", "n2"]);
    assert_eq!(k.status("n2")["identifier"], n2_id.as_str());
    let v = k.json(&[
        "message",
        "send",
        "again",
        "--from",
        "n1",
        "--to",
        "/node/n2/secure/api/service/echo",
    ]);
    assert_eq!(v["peer"], n2_id.as_str());

    // No secure listener at the end of the route: a clear failure, not a hang.
    let e = k.fails(&[
        "message",
        "send",
        "x",
        "--from",
        "n1",
        "--to",
        "/node/n2/secure/echo/service/echo",
        "--timeout",
        "2s",
    ]);
    assert!(e.contains("secure channel"), "{e}");
}

#[test]
fn kept_secure_channels_are_created_used_listed_and_deleted() {
    let k = Kith::new();
    k.node("n1");
    k.node("n2");
    let n2_id = k.status("n2")["identifier"].as_str().unwrap().to_owned();
    let c = k.json(&[
        "secure-channel",
        "create",
        "--from",
        "n1",
        "--to",
        "/node/n2/service/api",
    ]);
    assert_eq!(c["peer"], n2_id.as_str());
    let address = format!("/service/{}", c["address"].as_str().unwrap());
    let plain = k.ok(&[
        "secure-channel",
        "create",
        "--from",
        "n1",
        "--to",
        "/node/n2/service/api",
    ]);
    assert!(plain.starts_with("/service/sc-enc-"), "{plain}");

    let route = format!("{address}/service/echo");
    assert_eq!(
        k.ok(&["message", "send", "inside", "--from", "n1", "--to", &route]),
        "inside\n"
    );
    let list = k.json(&["secure-channel", "list", "--from", "n1"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    k.ok(&["secure-channel", "delete", &address, "--from", "n1"]);
    assert_eq!(
        k.json(&["secure-channel", "list", "--from", "n1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let e = k.fails(&[
        "message",
        "send",
        "x",
        "--from",
        "n1",
        "--to",
        &route,
        "--timeout",
        "1s",
    ]);
    assert!(e.contains("no worker at"), "{e}");
    let e = k.fails(&["secure-channel", "delete", &address, "--from", "n1"]);
    assert!(e.contains("no secure channel"), "{e}");
    // A channel's address is only usable on the node that keeps it.
    let e = k.fails(&[
        "message",
        "send",
        "x",
        "--from",
        "n2",
        "--to",
        &route,
        "--timeout",
        "1s",
    ]);
    assert!(e.contains("no worker at"), "{e}");
    let e = k.fails(&[
        "secure-channel",
        "create",
        "--from",
        "n1",
        "--to",
        "/node/n2/service/echo",
        "--timeout",
        "1s",
    ]);
    assert!(e.contains("cannot open a secure channel"), "{e}");
}

#[test]
fn a_daemon_out_of_file_descriptors_pauses_between_failed_accepts_and_serves_again() {
    let k = Kith::new();
    // The daemon inherits a limit of 48 open files; it starts with a dozen or so.
    let created = Command::new("sh")
        .args(["-c", r#"ulimit -n 48 && exec "$0" "$@""#])
        .arg(common::kith_bin())
        .args(["node", "create", "n1"])
        .env("KITH_HOME", k.home())
        .env_remove("KITH_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    // Control connections that never send a request, until the daemon has no descriptor
    // left to accept the next one: the ones beyond wait in the socket's backlog.
    let socket = k.home().join("nodes/n1/control.sock");
    let held: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let failures = || {
        log(&k, "n1")
            .matches("control socket accept failed")
            .count()
    };
    until_blocking("a first failed accept", || failures() >= 1);
    let first = Instant::now();
    until_blocking("ten more failed accepts", || failures() >= 11);
    // 100 ms apart, ten take a second; retried at once, they take microseconds.
    assert!(
        first.elapsed() >= Duration::from_millis(500),
        "ten failed accepts within {:?}: the daemon retries without a pause",
        first.elapsed()
    );
    drop(held);
    assert_eq!(k.status("n1")["name"], "n1");
}

#[test]
fn every_hint_names_a_flag_of_the_command_it_answers() {
    let k = Kith::new();
    // Two member nodes, so commands that need one must be told which; two projects and no
    // default, so commands that need one must be told which.
    k.node("n1");
    k.node("n2");
    k.json(&["authority", "create", "auth-a", "--project", "a"]);
    k.json(&["authority", "create", "auth-b", "--project", "b"]);
    std::fs::remove_file(k.home().join("projects/default")).unwrap();
    let inlet_to = "/node/n1/secure/api/service/outlet";
    let cases: &[(&[&str], &str)] = &[
        (&["relay", "create", "db"], "choose one with --at NODE"),
        (
            &["tcp-outlet", "create", "--to", "127.0.0.1:5432"],
            "choose one with --at NODE",
        ),
        (
            &[
                "tcp-inlet",
                "create",
                "--from",
                "127.0.0.1:0",
                "--to",
                inlet_to,
            ],
            "choose one with --at NODE",
        ),
        (
            &["relay", "create", "db", "--at", "n1"],
            "choose one with --project NAME",
        ),
        (&["project", "show"], "several projects"),
        (&["project", "export"], "several projects"),
        (&["project", "ticket"], "choose one with --project NAME"),
        (&["project", "request"], "--project-file FILE"),
        (&["project", "member", "list"], "several projects"),
        (&["project", "requests", "list"], "several projects"),
        (&["project", "enroll"], "--ticket-file FILE"),
        (&["project", "enroll", "nonsense"], "--legacy"),
        (
            &["tcp-outlet", "create", "--at", "n1", "--to", "nonsense"],
            "--to takes HOST:PORT",
        ),
        (
            &[
                "tcp-inlet",
                "create",
                "--at",
                "n1",
                "--from",
                "x",
                "--to",
                inlet_to,
            ],
            "--from takes",
        ),
        (
            &[
                "secure-channel",
                "create",
                "--from",
                "n1",
                "--to",
                "/node/n2/secure/api",
            ],
            "--to is the route to a listener",
        ),
        (&["credential", "issue", "--for", "nonsense"], "--for"),
        (
            &["node", "create", "x", "--allow-identity", "nope"],
            "--allow-identity",
        ),
        (
            &["project", "ticket", "--project", "a", "--relay", "a/b"],
            "--relay",
        ),
        (
            &[
                "authority",
                "create",
                "c",
                "--project",
                "c",
                "--credential-ttl",
                "0s",
            ],
            "--credential-ttl",
        ),
    ];
    let mut problems = Vec::new();
    for (args, says) in cases {
        let e = k.fails(args);
        assert!(e.contains(says), "`kith {}`: {e}", args.join(" "));
        for problem in kith_cli::commands::flags::unknown_flags_in_reply(args, &e) {
            problems.push(format!(
                "`kith {}` answered {e:?}: {problem}",
                args.join(" ")
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
