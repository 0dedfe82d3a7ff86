//! `kith demo`: the main job, step by step, in a temporary `KITH_HOME` that is removed after.
//!
//! Each step is a real `kith` command, run as a child process against the temporary home
//! and printed as the user would type it: an authority and its project (whose node is also
//! the project node), tickets, two nodes enrolled with them, a credential shown, a relay for
//! db-node created under the name its ticket granted, and a message from web-node to
//! db-node's echo through the relay, over a secure channel between the two members that the
//! project node only forwards. Then a TCP portal over the same relay: the demo serves a small
//! HTML page from a web server of its own (in this process, on 127.0.0.1), db-node gets an
//! outlet to it that admits only component=web, web-node gets an inlet on a free local port
//! whose route goes through the relay, and the demo fetches the page from the inlet as
//! `curl` would, checking that exactly the page served came back. The web server stops when
//! the demo ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::output::Output;
use crate::home::Home;

#[derive(Debug, Serialize)]
struct Step {
    step: usize,
    what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    steps: Vec<Step>,
    project_id: Option<String>,
    authority: Option<String>,
    credential: Option<serde_json::Value>,
    reply: Option<String>,
    round_trip_ms: Option<f64>,
    /// db-node's identifier, as web-node's channel authenticated it.
    peer: Option<String>,
    /// The page fetched through the portal.
    portal: Option<PortalReport>,
}

/// What came back through web-node's inlet.
#[derive(Debug, Serialize)]
struct PortalReport {
    /// Where the demo's web server listened (db-node's outlet connects there).
    server: String,
    /// Where web-node's inlet listened (the demo fetched from there).
    inlet: String,
    /// The HTTP status.
    status: u16,
    /// The page's `<h1>`.
    heading: String,
    /// The page, exactly as it came back.
    body: String,
    /// From connecting to the inlet to the end of the response.
    fetch_ms: f64,
}

impl Report {
    fn say(&mut self, out: &Output, command: Option<String>, what: String) {
        let step = self.steps.len() + 1;
        if !out.is_json() {
            match &command {
                Some(c) => println!("{step}. $ {c}\n   {}", what.replace('\n', "\n   ")),
                None => println!("{step}. {what}"),
            }
        }
        self.steps.push(Step {
            step,
            what,
            command,
        });
    }
}

/// Whom db-node serves.
const WEB_ONLY: &str = r#"component = "web""#;

/// 60 s: the longest one step of the demo may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The one page the demo's web server serves.
const PAGE: &str = "<!doctype html>\n\
<html><head><title>kith demo</title></head>\n\
<body><h1>Hello from beside db-node</h1><p>Carried by a kith TCP portal, through relay db.</p></body></html>\n";

/// 8 KiB: the longest request head the demo's web server reads.
const MAX_HEAD: usize = 8 * 1024;

/// 10 s: how long the demo's web server waits for a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// 64 KiB: the most of a response the demo's fetch reads.
const MAX_RESPONSE: u64 = 64 * 1024;

/// `kith demo`
pub async fn run(out: &Output) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kith-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let home = Home::open(dir.path())?;
    let mut report = Report::default();
    report.say(
        out,
        None,
        format!("Created a temporary KITH_HOME at {}", dir.path().display()),
    );
    let started = Instant::now();
    let result = tokio::select! {
        r = steps(dir.path(), out, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(super::Interrupted("interrupted".to_owned()).into()),
    };
    // Whatever happened, stop the daemons before the directory goes.
    let _ = kith(
        dir.path(),
        &["node", "delete", "--all", "--include-authorities"],
    )
    .await;
    drop(home);
    result?;
    report.say(
        out,
        None,
        format!(
            "Stopped the web server and every node and removed the temporary KITH_HOME ({:.0} ms in all)",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    if out.is_json() {
        out.result(String::new, &report);
    }
    Ok(())
}

/// Run `kith ARGS --output json` against `home`; its JSON answer, or its error line.
async fn kith(home: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the kith executable")?;
    let run = tokio::process::Command::new(exe)
        .args(args)
        .args(["--output", "json"])
        .env("KITH_HOME", home)
        .env_remove("KITH_ENROLLMENT_TICKET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // Every step has its own shorter timeouts; this bounds a step that hangs regardless
    // (the child is killed when the wait is dropped).
    let output = tokio::time::timeout(STEP_TIMEOUT, run)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "`kith {}` did not finish within {STEP_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .context("cannot run kith")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .last()
            .unwrap_or("failed")
            .trim_start_matches("error: ");
        bail!("`kith {}` failed: {line}", args.join(" "));
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`kith {}` printed no JSON", args.join(" ")))
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

async fn steps(home: &Path, out: &Output, report: &mut Report) -> Result<()> {
    let args = ["authority", "create", "--project", "demo"];
    let v = kith(home, &args).await?;
    report.project_id = Some(text(&v, "project_id"));
    report.authority = Some(text(&v, "authority_identifier"));
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "Project demo (id {}) has an authority node at {}, identity {}; you ({}) are its admin",
            text(&v, "project_id"),
            text(&v, "authority_route"),
            text(&v, "authority_identifier"),
            v["admins"][0].as_str().unwrap_or_default()
        ),
    );

    for (node, attrs) in [
        (
            "db-node",
            ["component=db", "location=sf", "--relay", "db"].as_slice(),
        ),
        ("web-node", ["component=web", "location=sf"].as_slice()),
    ] {
        let mut args = vec!["project", "ticket", "-a", attrs[0], "-a", attrs[1]];
        args.extend(&attrs[2..]);
        let v = kith(home, &args).await?;
        let ticket = text(&v, "ticket");
        let file = home.join(format!("{node}.ticket"));
        crate::home::write_private_atomic(&file, ticket.as_bytes())?;
        report.say(
            out,
            Some(format!("kith {} > {node}.ticket", args.join(" "))),
            format!(
                "A one-time ticket ({}…, {} characters), valid 10 minutes; the authority keeps only its hash",
                ticket.chars().take(16).collect::<String>(),
                ticket.len()
            ),
        );

        let identity = node.trim_end_matches("-node");
        kith(home, &["identity", "create", identity]).await?;
        // db-node admits only peers with a credential from a trusted authority, and serves
        // only members with component=web.
        let mut args = vec!["node", "create", node, "--identity", identity];
        if node == "db-node" {
            args.extend(["--require-credential", "--allow", WEB_ONLY]);
        }
        let v = kith(home, &args).await?;
        report.say(
            out,
            Some(format!(
                "kith identity create {identity} && kith {}",
                args.join(" ").replace(WEB_ONLY, &format!("'{WEB_ONLY}'"))
            )),
            format!(
                "Node {node} runs as identity {identity} ({}), listening on {}",
                text(&v, "identifier"),
                text(&v, "listener")
            ),
        );

        let file = home.join(format!("{node}.ticket"));
        let file = file.to_string_lossy();
        let args = ["project", "enroll", "--ticket-file", &file, "--at", node];
        let v = kith(home, &args).await?;
        report.say(
            out,
            Some(format!("kith project enroll --ticket-file {node}.ticket --at {node}")),
            format!(
                "{identity} redeemed the ticket over a secure channel to the authority and is a member with {}",
                v["attributes"]
            ),
        );
    }

    let args = ["credential", "show", "--at", "db-node"];
    let v = kith(home, &args).await?;
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "db-node's credential: issuer {} (the authority), attributes {}, {}",
            text(&v, "issuer"),
            v["attributes"],
            text(&v, "status")
        ),
    );
    report.credential = Some(v);

    let args = ["relay", "create", "db", "--at", "db-node"];
    let v = kith(home, &args).await?;
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "db-node keeps a secure channel open to the project node, which now forwards {} to it: its credential carries ockam-relay=db; db-node needs no inbound connection",
            text(&v, "route")
        ),
    );

    let message = "hello from web";
    let to = "/project/demo/service/forward_to_db/secure/api/service/echo";
    let args = ["message", "send", message, "--at", "web-node", "--to", to];
    let v = kith(home, &args).await?;
    let reply = text(&v, "reply");
    report.say(
        out,
        Some(format!("kith message send {message:?} --at web-node --to {to}")),
        format!(
            "db-node's echo answered {reply:?} in {:.2} ms, through the relay, end to end encrypted with {} (db, proven by its key history and attested key): the project node forwarded ciphertext only; each side checked the other's credential and db-node's policy admitted component=web; verification code {}",
            v["round_trip_ms"].as_f64().unwrap_or_default(),
            text(&v, "peer"),
            text(&v, "verification_code"),
        ),
    );
    report.reply = Some(reply);
    report.round_trip_ms = v["round_trip_ms"].as_f64();
    report.peer = v["peer"].as_str().map(str::to_owned);

    // Lives until the demo's steps end (or are interrupted); dropping it stops it.
    let server = PageServer::start().await?;
    report.say(
        out,
        None,
        format!(
            "Started a small web server in this process at {}, standing in for a service next to db-node: one HTML page ({} bytes) for any GET",
            server.address,
            PAGE.len()
        ),
    );

    let target = server.address.to_string();
    let args = [
        "tcp-outlet",
        "create",
        "--at",
        "db-node",
        "--to",
        &target,
        "--allow",
        WEB_ONLY,
    ];
    let v = kith(home, &args).await?;
    let outlet = text(&v, "name");
    report.say(
        out,
        Some(format!(
            "kith {}",
            args.join(" ").replace(WEB_ONLY, &format!("'{WEB_ONLY}'"))
        )),
        format!(
            "db-node's outlet {outlet:?} turns each portal session into a connection to {}, for peers that satisfy {}: web-node does, its credential says component=web",
            text(&v, "to"),
            text(&v, "policy")
        ),
    );

    let to = format!("/project/demo/service/forward_to_db/secure/api/service/{outlet}");
    let args = [
        "tcp-inlet",
        "create",
        "--at",
        "web-node",
        "--from",
        "127.0.0.1:0",
        "--to",
        &to,
    ];
    let v = kith(home, &args).await?;
    let inlet = text(&v, "from");
    if inlet.parse::<SocketAddr>().is_err() {
        bail!("`kith tcp-inlet create` answered no address it listens on: {v}");
    }
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "web-node listens on {inlet} (port 0 picked a free one); each connection it accepts opens fresh secure channels to the project node and, through relay db, to db-node, which must satisfy {}",
            text(&v, "policy")
        ),
    );

    let started = Instant::now();
    let fetched = tokio::time::timeout(STEP_TIMEOUT, fetch(&inlet))
        .await
        .map_err(|_| anyhow!("fetching http://{inlet}/ did not finish within {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("cannot fetch http://{inlet}/ through the portal"))?;
    let fetch_ms = started.elapsed().as_secs_f64() * 1000.0;
    if fetched.status != 200 {
        bail!(
            "fetching http://{inlet}/ through the portal answered {} {}, not 200 OK",
            fetched.status,
            fetched.reason
        );
    }
    if fetched.body != PAGE {
        bail!(
            "the page that came back through the portal ({} bytes) is not the one the web server served ({} bytes): {:?}",
            fetched.body.len(),
            PAGE.len(),
            fetched.body
        );
    }
    let heading = heading(&fetched.body);
    report.say(
        out,
        Some(format!("curl http://{inlet}/")),
        format!(
            "HTTP/1.1 {} {}, {} bytes of {} in {fetch_ms:.2} ms: {heading:?}, exactly the page served; it went from web-node's inlet through relay db to db-node's outlet and on to the web server, end to end encrypted between the two members",
            fetched.status,
            fetched.reason,
            fetched.body.len(),
            fetched.content_type.split(';').next().unwrap_or_default()
        ),
    );
    report.portal = Some(PortalReport {
        server: target,
        inlet,
        status: fetched.status,
        heading,
        body: fetched.body,
        fetch_ms,
    });
    drop(server);
    Ok(())
}

/// The demo's web server: one page for any GET, on 127.0.0.1. Dropping it stops it, and
/// every connection it has open.
struct PageServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot start the demo's web server")?;
        let address = listener
            .local_addr()
            .context("cannot start the demo's web server")?;
        let task = tokio::spawn(async move {
            // Dropped, aborting every connection, when the task is.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(serve(stream));
                        }
                        // Out of descriptors, say: do not spin.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Ok(Self { address, task })
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request head, as far as the web server read it.
enum Head {
    /// Up to and including the blank line.
    Complete(Vec<u8>),
    /// No blank line within [`MAX_HEAD`] bytes.
    TooLong,
    /// The connection ended (or failed) first.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> Head {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let room = (MAX_HEAD - head.len()).min(buf.len());
        if room == 0 {
            return Head::TooLong;
        }
        let n = match stream.read(&mut buf[..room]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        // The blank line may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&head[from..], b"\r\n\r\n") {
            head.truncate(from + at + 4);
            return Head::Complete(head);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Answer one connection: the page for a GET, an error otherwise; then close.
async fn serve(mut stream: TcpStream) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Head::Complete(head)) => head,
        Ok(Head::TooLong) => {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                TEXT,
                "",
                "request head too long\n",
            )
            .await;
            return;
        }
        Ok(Head::Closed) | Err(_) => return,
    };
    let method = head
        .split(|&b| b == b' ')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let _ = if method == b"GET" {
        respond(&mut stream, "200 OK", "text/html; charset=utf-8", "", PAGE).await
    } else {
        respond(
            &mut stream,
            "405 Method Not Allowed",
            TEXT,
            "Allow: GET\r\n",
            "only GET\n",
        )
        .await
    };
}

/// Write a whole response, then close the connection.
async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A response, as the demo's fetch read it.
#[derive(Debug, PartialEq, Eq)]
struct Fetched {
    status: u16,
    reason: String,
    content_type: String,
    body: String,
}

/// `GET http://ADDRESS/`, as `curl` does it, reading the response to its end.
async fn fetch(address: &str) -> Result<Fetched> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {address}\r\nUser-Agent: kith-demo\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the request")?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .context(
            "cannot read the response (the inlet resets a connection whose portal session \
             could not open: the outlet refused it or could not reach its target)",
        )?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<Fetched> {
    let end = find(response, b"\r\n\r\n").ok_or_else(|| {
        anyhow!(
            "the response ended before its head did ({} bytes: {:?})",
            response.len(),
            String::from_utf8_lossy(response)
        )
    })?;
    let (head, body) = response.split_at(end);
    let body = body.get(4..).unwrap_or_default();
    let head = std::str::from_utf8(head).context("the response head is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| {
            anyhow!("the response starts {status_line:?}, not an HTTP/1.x status line")
        })?;
    let mut content_type = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("the response has a malformed header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| anyhow!("the response's Content-Length {value:?} is not a number"))?;
            if length != body.len() {
                bail!(
                    "the response's Content-Length is {length}, but {} bytes came",
                    body.len()
                );
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            value.clone_into(&mut content_type);
        }
    }
    Ok(Fetched {
        status,
        reason: reason.to_owned(),
        content_type,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// The text of a page's first `<h1>`, or the empty string.
fn heading(page: &str) -> String {
    page.split_once("<h1>")
        .and_then(|(_, rest)| rest.split_once("</h1>"))
        .map(|(h, _)| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_server_answers_a_get_and_refuses_the_rest() {
        let server = PageServer::start().await.unwrap();
        let address = server.address.to_string();
        let fetched = fetch(&address).await.unwrap();
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.reason, "OK");
        assert_eq!(fetched.content_type, "text/html; charset=utf-8");
        assert_eq!(fetched.body, PAGE);
        assert_eq!(heading(&fetched.body), "Hello from beside db-node");

        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        assert_eq!(parse_response(&response).unwrap().status, 405);

        // Exactly MAX_HEAD bytes and no blank line (none left unread, so no reset).
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let start = "GET / HTTP/1.1\r\nX: ";
        let long = format!("{start}{}", "a".repeat(MAX_HEAD - start.len()));
        stream.write_all(long.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        assert_eq!(parse_response(&response).unwrap().status, 431);

        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(&address).await.is_err());
    }

    #[test]
    fn responses_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(parse_response(ok).unwrap().body, "hi");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
    }
}
