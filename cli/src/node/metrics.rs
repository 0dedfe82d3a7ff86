//! `--metrics-address`: the node's counters in the Prometheus text format (0.0.4, which
//! Prometheus scrapes and `promtool check metrics` lints), at `GET /metrics`.
//!
//! Everything is read at scrape time from what the node counts anyway (its router, its
//! transport, its secure-channel listener, its portals and relays, its credentials, and on
//! an authority its store), so metrics cost nothing between scrapes. The HTTP side is
//! untrusted input: a request head is read under a size cap and a deadline and parsed by
//! `httparse`, at most [`MAX_SCRAPES`] connections are served at once and
//! [`MAX_SCRAPES_PER_SOURCE`] of them from one source, the answer is written under a
//! deadline too, and every connection carries one request and is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::keeper::RelayState;
use kith_authority::store::{MembershipStore, StoreCounts};
use kith_identity::unix_now;
use kith_transport::source::Source;
use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::running::RunningNode;

/// 8 KiB: a scraper's request head is a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// 5 s: how long a connection may take to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// 10 s: how long a connection may take to read its answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// 16: scrapes served at once; more wait for the listener's backlog.
pub const MAX_SCRAPES: usize = 16;

/// 4: scrapes served at once for one source (an IPv4 address, an IPv6 /64); a connection
/// beyond them is closed at once, so one source cannot hold every place.
pub const MAX_SCRAPES_PER_SOURCE: usize = 4;

/// 5 s: how old an authority's store counts may be when served. They are counted by
/// scanning the store, so scrapes however many and however often cost at most one count
/// per this interval, and scrapes at once share one.
pub const STORE_COUNTS_MAX_AGE: Duration = Duration::from_secs(5);

/// 10 s: how long counting the store may take before the scrape is answered 503.
const STORE_COUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// 32: headers a request may carry.
const MAX_HEADERS: usize = 32;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// `GET /metrics` (or `HEAD`): the metrics.
    Metrics {
        /// Whether only the head is wanted.
        head_only: bool,
    },
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    MethodNotAllowed,
    /// Not an HTTP/1 request head: 400.
    BadRequest,
    /// The head is not complete yet.
    Partial,
    /// The head grew past [`MAX_REQUEST_HEAD`] unfinished: 431.
    TooLarge,
}

/// Read what the request head in `bytes` asks for.
pub fn parse_request(bytes: &[u8]) -> Asked {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => Asked::Partial,
        Err(_) => Asked::BadRequest,
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default();
            match request.method.unwrap_or_default() {
                "GET" | "HEAD" if path == "/metrics" => Asked::Metrics {
                    head_only: request.method == Some("HEAD"),
                },
                "GET" | "HEAD" => Asked::NotFound,
                _ => Asked::MethodNotAllowed,
            }
        }
    }
}

/// Serve metrics on `listener` until the node shuts down.
pub(crate) async fn serve(
    listener: TcpListener,
    running: Arc<RunningNode>,
    store: Option<MembershipStore>,
) {
    let store = store.map(|s| Arc::new(Counted::new(s)));
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    let sources = Arc::new(Mutex::new(HashMap::new()));
    let stop = running.node.shutdown_token().clone();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, from)) => {
                let Some(place) = SourcePlace::take(&sources, Source::of(from.ip())) else {
                    debug!(%from, "metrics connection refused: its source holds its share");
                    continue; // dropped: closed at once, and the permit is free again
                };
                let running = running.clone();
                let store = store.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &running, store.as_deref()).await {
                        debug!(%from, error = %e, "metrics request failed");
                    }
                    drop((place, permit));
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(kith_transport::ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// An authority's store with its counts as last counted: at most one count per
/// [`STORE_COUNTS_MAX_AGE`], and scrapes that ask meanwhile wait for it and share it.
struct Counted {
    store: MembershipStore,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, StoreCounts)>>,
}

impl Counted {
    fn new(store: MembershipStore) -> Self {
        Self {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The counts as of `now` (the clock is the caller's, so that tests can move it).
    async fn counts(&self, now: tokio::time::Instant) -> Result<StoreCounts> {
        let mut last = self.last.lock().await;
        if let Some((at, counts)) = last.as_ref()
            && now.saturating_duration_since(*at) < STORE_COUNTS_MAX_AGE
        {
            return Ok(counts.clone());
        }
        let counts = tokio::time::timeout(STORE_COUNT_TIMEOUT, self.store.counts())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the store was not counted within {STORE_COUNT_TIMEOUT:?}")
            })?
            .context("cannot count the store")?;
        *last = Some((now, counts.clone()));
        Ok(counts)
    }
}

/// One of a source's [`MAX_SCRAPES_PER_SOURCE`] places, given back when dropped.
struct SourcePlace {
    sources: Arc<Mutex<HashMap<Source, usize>>>,
    source: Source,
}

impl SourcePlace {
    fn take(sources: &Arc<Mutex<HashMap<Source, usize>>>, source: Source) -> Option<Self> {
        let mut held = sources.lock().unwrap_or_else(|e| e.into_inner());
        let theirs = held.entry(source).or_default();
        if *theirs >= MAX_SCRAPES_PER_SOURCE {
            return None;
        }
        *theirs += 1;
        Some(Self {
            sources: sources.clone(),
            source,
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut held = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// Read one request head (bounded in size and time), answer it (bounded in time), close.
async fn answer(
    mut stream: TcpStream,
    running: &RunningNode,
    store: Option<&Counted>,
) -> Result<()> {
    let mut head = Vec::with_capacity(1024);
    let asked = tokio::time::timeout(REQUEST_DEADLINE, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(None);
            }
            head.extend_from_slice(&buf[..n]);
            match parse_request(&head) {
                Asked::Partial if head.len() >= MAX_REQUEST_HEAD => {
                    return Ok(Some(Asked::TooLarge));
                }
                Asked::Partial => {}
                other => return Ok(Some(other)),
            }
        }
    })
    .await;
    let asked = match asked {
        Err(_) => return Ok(()), // too slow: dropped without a word
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(a))) => a,
    };
    let (status, reason, content_type, body, head_only) = match asked {
        Asked::TooLarge => (
            431,
            "Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".to_owned(),
            false,
        ),
        Asked::Metrics { head_only } => {
            let counts = match store {
                Some(s) => s.counts(tokio::time::Instant::now()).await.map(Some),
                None => Ok(None),
            };
            match counts {
                Ok(counts) => (
                    200,
                    "OK",
                    CONTENT_TYPE,
                    render(running, counts.as_ref()),
                    head_only,
                ),
                // Said, not served half: a scrape without the authority's numbers would
                // look like a store that emptied.
                Err(e) => (
                    503,
                    "Service Unavailable",
                    "text/plain",
                    format!("{e:#}\n"),
                    head_only,
                ),
            }
        }
        Asked::NotFound => (
            404,
            "Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
            false,
        ),
        Asked::MethodNotAllowed => (
            405,
            "Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_owned(),
            false,
        ),
        Asked::BadRequest | Asked::Partial => (
            400,
            "Bad Request",
            "text/plain",
            "not an HTTP request\n".to_owned(),
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    // A reader that does not take its answer is cut off like a slow request.
    tokio::time::timeout(ANSWER_DEADLINE, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .context("the answer was not read in time")??;
    Ok(())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A registry filled with the node's numbers now. A metric that cannot be made (a bug: the
/// names and labels here are fixed) is left out and its error kept, to be shown.
struct Metrics {
    registry: Registry,
    errors: Vec<String>,
}

impl Metrics {
    fn register(&mut self, made: prometheus::Result<Box<dyn Collector>>) {
        if let Err(e) = made.and_then(|c| self.registry.register(c)) {
            self.errors.push(e.to_string());
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let made = IntCounter::new(name, help).map(|c| {
            c.inc_by(value);
            Box::new(c) as Box<dyn Collector>
        });
        self.register(made);
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let made = IntGauge::new(name, help).map(|g| {
            g.set(value);
            Box::new(g) as Box<dyn Collector>
        });
        self.register(made);
    }

    fn counters(&mut self, name: &str, help: &str, values: &[(Labels, u64)]) {
        let Some((first, _)) = values.first() else {
            return;
        };
        let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        let made = IntCounterVec::new(Opts::new(name, help), &names).and_then(|family| {
            for (l, v) in values {
                let label_values: Vec<&str> = l.iter().map(|(_, v)| v.as_str()).collect();
                family
                    .get_metric_with_label_values(&label_values)?
                    .inc_by(*v);
            }
            Ok(Box::new(family) as Box<dyn Collector>)
        });
        self.register(made);
    }

    fn gauges(&mut self, name: &str, help: &str, values: &[(Labels, i64)]) {
        let Some((first, _)) = values.first() else {
            return;
        };
        let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        let made = IntGaugeVec::new(Opts::new(name, help), &names).and_then(|family| {
            for (l, v) in values {
                let label_values: Vec<&str> = l.iter().map(|(_, v)| v.as_str()).collect();
                family.get_metric_with_label_values(&label_values)?.set(*v);
            }
            Ok(Box::new(family) as Box<dyn Collector>)
        });
        self.register(made);
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics text.
pub(crate) fn render(running: &RunningNode, counts: Option<&StoreCounts>) -> String {
    let mut m = Metrics {
        registry: Registry::new_custom(Some("kith".to_owned()), None).unwrap_or_default(),
        errors: Vec::new(),
    };
    let status = running.status();
    let stat = |key: &str| status.stats[key].as_u64().unwrap_or(0);

    m.gauge(
        "node_start_time_seconds",
        "When the node started, Unix seconds.",
        signed(status.started_at),
    );
    m.counter(
        "messages_delivered_total",
        "Messages delivered to workers.",
        stat("delivered"),
    );
    m.counters(
        "messages_dropped_total",
        "Messages dropped, by reason.",
        &[
            (
                labels(&[("reason", "unknown_address")]),
                stat("dropped_unknown_address"),
            ),
            (labels(&[("reason", "denied")]), stat("dropped_denied")),
            (
                labels(&[("reason", "unreachable")]),
                stat("dropped_unreachable"),
            ),
        ],
    );
    m.counter(
        "worker_errors_total",
        "Errors workers returned.",
        stat("worker_errors"),
    );
    m.gauge(
        "connections",
        "TCP connections open now.",
        signed(status.connections.len() as u64),
    );
    m.counters(
        "connections_opened_total",
        "TCP connections opened, by direction.",
        &[
            (
                labels(&[("direction", "incoming")]),
                stat("connections_accepted"),
            ),
            (
                labels(&[("direction", "outgoing")]),
                stat("connections_dialed"),
            ),
        ],
    );
    m.counters(
        "connections_refused_total",
        "Incoming TCP connections refused or closed, by reason: preamble (wrong version, silence), busy (its source or the node at its cap), invalid (a bad frame), shed (room made for a lighter source).",
        &[
            (labels(&[("reason", "preamble")]), stat("connections_refused")),
            (labels(&[("reason", "busy")]), stat("connections_refused_busy")),
            (labels(&[("reason", "invalid")]), stat("connections_closed_invalid")),
            (labels(&[("reason", "shed")]), stat("connections_shed")),
        ],
    );
    m.counters(
        "frames_total",
        "Frames carrying a message, by direction.",
        &[
            (labels(&[("direction", "in")]), stat("frames_in")),
            (labels(&[("direction", "out")]), stat("frames_out")),
        ],
    );
    m.gauge(
        "secure_channels",
        "Secure channels at the node now (including handshakes under way).",
        signed(stat("channels")),
    );
    m.counters(
        "handshakes_total",
        "Secure-channel handshakes the listener saw, by outcome: started, then established, failed (refused, broken or timed out) or shed; or refused at once as refused_busy or refused_invalid.",
        &[
            (labels(&[("outcome", "started")]), stat("handshakes_started")),
            (labels(&[("outcome", "refused_busy")]), stat("handshakes_refused_busy")),
            (labels(&[("outcome", "refused_invalid")]), stat("handshakes_refused_invalid")),
            (labels(&[("outcome", "shed")]), stat("handshakes_shed")),
            (labels(&[("outcome", "established")]), stat("handshakes_established")),
            (labels(&[("outcome", "failed")]), stat("handshakes_failed")),
        ],
    );
    m.gauge(
        "handshakes_pending",
        "Handshakes under way now.",
        signed(stat("handshakes_pending")),
    );

    let mut open = Vec::new();
    let mut ended = Vec::new();
    let mut bytes = Vec::new();
    let outlets = running.portals.outlet_list();
    let inlets = running.portals.inlet_list();
    let portals = outlets
        .iter()
        .map(|o| ("outlet", o.name.as_str(), &o.sessions))
        .chain(
            inlets
                .iter()
                .map(|i| ("inlet", i.alias.as_str(), &i.sessions)),
        );
    for (kind, name, s) in portals {
        let l = |extra: &[(&str, &str)]| {
            let mut all = vec![("kind", kind), ("portal", name)];
            all.extend_from_slice(extra);
            labels(&all)
        };
        open.push((l(&[]), signed(s.open)));
        ended.push((l(&[("outcome", "finished")]), s.finished));
        ended.push((l(&[("outcome", "failed")]), s.failed));
        ended.push((l(&[("outcome", "refused")]), s.refused));
        bytes.push((l(&[("direction", "in")]), s.bytes_in));
        bytes.push((l(&[("direction", "out")]), s.bytes_out));
    }
    m.gauges(
        "portal_sessions_open",
        "Portal sessions open now, by portal.",
        &open,
    );
    m.counters(
        "portal_sessions_total",
        "Portal sessions that ended, by portal and outcome (refused: never opened).",
        &ended,
    );
    m.counters(
        "portal_bytes_total",
        "Bytes a portal carried: in, read from its local sockets; out, written to them.",
        &bytes,
    );

    let relays = running.relays.list();
    let mut up = Vec::new();
    let mut attempts = Vec::new();
    for r in &relays {
        let l = labels(&[("relay", &r.status.name), ("at", &r.at)]);
        match &r.status.state {
            RelayState::Up { .. } => {
                up.push((l.clone(), 1));
                attempts.push((l, 0));
            }
            RelayState::Reconnecting { attempts: n, .. } => {
                up.push((l.clone(), 0));
                attempts.push((l, signed(u64::from(*n))));
            }
        }
    }
    m.gauges(
        "relay_up",
        "Whether each relay the node keeps is up (1) or reconnecting (0).",
        &up,
    );
    m.gauges(
        "relay_reconnect_attempts",
        "Attempts since a relay went down (0 while it is up).",
        &attempts,
    );

    let now = signed(unix_now());
    let expiry: Vec<(Labels, i64)> = running
        .settings()
        .map(|s| {
            s.local
                .credentials
                .iter()
                .map(|c| {
                    // The purpose key that signed it is attested by the issuer.
                    let issuer = c.purpose_key.subject().to_string();
                    (
                        labels(&[("issuer", &issuer)]),
                        signed(c.credential.expires_at()) - now,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    m.gauges(
        "credential_expiry_seconds",
        "Seconds until each credential the node presents expires (negative once it has), by issuer.",
        &expiry,
    );

    if let Some(c) = counts {
        m.gauge(
            "authority_members",
            "The project's members.",
            signed(c.members),
        );
        let by = |pairs: &[(String, u64)], key: &str| -> Vec<(Labels, i64)> {
            pairs
                .iter()
                .map(|(k, n)| (labels(&[(key, k)]), signed(*n)))
                .collect()
        };
        m.gauges(
            "authority_join_requests",
            "Join requests in the store, by state.",
            &by(&c.join_requests, "state"),
        );
        let audit: Vec<(Labels, u64)> = c
            .audit_events
            .iter()
            .map(|(a, n)| (labels(&[("action", a)]), *n))
            .collect();
        m.counters(
            "authority_audit_events_total",
            "Events in the audit log, by action.",
            &audit,
        );
        let count = |action: &str| {
            c.audit_events
                .iter()
                .find(|(a, _)| a == action)
                .map_or(0, |(_, n)| *n)
        };
        m.counters(
            "authority_enrollments_total",
            "Members enrolled, by how: a redeemed ticket, or an approved join request.",
            &[
                (labels(&[("via", "ticket")]), count("ticket.redeemed")),
                (labels(&[("via", "request")]), count("request.approved")),
            ],
        );
    }

    let mut text = TextEncoder::new()
        .encode_to_string(&m.registry.gather())
        .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"));
    for e in &m.errors {
        text.push_str(&format!(
            "# a metric was left out: {}\n",
            e.replace('\n', " ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_counts_are_counted_at_most_once_per_max_age() {
        use kith_authority::store::{Member, StoreOwner};
        let dir = tempfile::tempdir().unwrap();
        let owner = StoreOwner {
            project_id: "p".into(),
            authority: None,
        };
        let store = MembershipStore::create_sqlite(&dir.path().join("s.sqlite"), &owner, 1)
            .await
            .unwrap();
        let id = |b: &str| format!("I{}", b.repeat(40)).parse().unwrap();
        let member = Member {
            identifier: id("1"),
            attributes: Default::default(),
            added_at: 1,
            added_by: id("2"),
            via: Member::VIA_ADMIN.into(),
            credential_ttl: None,
            changed_at: None,
        };
        let counted = Counted::new(store.clone());
        let t0 = tokio::time::Instant::now();
        assert_eq!(counted.counts(t0).await.unwrap().members, 0);
        store.add_member(&member, &id("2"), 2).await.unwrap();
        // Within the age the last count is served, without asking the store again...
        let soon = t0 + STORE_COUNTS_MAX_AGE - Duration::from_millis(1);
        assert_eq!(counted.counts(soon).await.unwrap().members, 0);
        // ...and once it is older, the store is counted again.
        let later = t0 + STORE_COUNTS_MAX_AGE;
        assert_eq!(counted.counts(later).await.unwrap().members, 1);
    }

    #[test]
    fn only_get_or_head_of_the_metrics_path_is_served() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { head_only: false }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics { head_only: true }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::MethodNotAllowed
        );
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\n"), Asked::Partial);
        assert_eq!(parse_request(b"\x16\x03\x01 hello"), Asked::BadRequest);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn a_request_head_split_anywhere_is_partial_until_it_is_whole(split in 0usize..40) {
            let whole = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
            let at = split.min(whole.len() - 1);
            proptest::prop_assert_eq!(parse_request(&whole[..at]), Asked::Partial);
            proptest::prop_assert_eq!(parse_request(whole), Asked::Metrics { head_only: false });
        }
    }
}
