//! One end of a portal session: a TCP socket on one side, the other end's route on the
//! other. Both ends run the same loop once the session is open.
//!
//! The loop reads the socket only while it holds credit, and writes what the other end sent
//! to the socket in order; it returns credit as it writes, so a client that stops reading
//! stops the sender after one window. Every `Data` costs its length plus [`DATA_OVERHEAD`],
//! which bounds the number of messages in flight as well as the bytes: at most
//! `window / DATA_OVERHEAD` of them, fewer than its inbox holds, so a session never fills its
//! inbox and never blocks the connection that feeds it.
//!
//! Data from the other end usually never reaches the loop: the session's [`Inbox`] writes it
//! to the socket from the task that delivers it, and wakes the loop only to return credit or
//! to finish a write the socket did not take at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kith_node::{Message, Node, Route, SinkHandle};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inbox::{Failure, Inbox};
use super::message::{DATA_HEADER_ROOM, PortalMessage, data_header_len, put_data_header};
use super::{CHUNK, PortalOptions, PortalStats};

/// 8 KiB: the credit each `Data` message costs on top of its length.
pub const DATA_OVERHEAD: u64 = 8 * 1024;

/// 64 KiB: the smallest window an end may grant.
pub const MIN_WINDOW: u32 = 64 * 1024;

/// 1 MiB: the largest window an end may grant (at most 128 messages in flight).
pub const MAX_WINDOW: u32 = 1024 * 1024;

/// 16 KiB: bytes read from the socket below this are copied into a message of their own
/// size, and the read buffer is kept for the next read; a larger read becomes the message,
/// header and all, without a copy. At this size a message holds an allocation at most three
/// times its length ([`CHUNK`] and the header room), which is what the credit window and a
/// connection's pending bytes count.
const COPY_BELOW: usize = 16 * 1024;

/// 1 s: how long a failing end tries to tell the other before it gives up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The credit a `Data` message of `len` bytes costs.
pub(crate) fn cost(len: usize) -> u64 {
    len as u64 + DATA_OVERHEAD
}

/// Whether a window another end grants is acceptable.
pub(crate) fn window_ok(window: u32) -> bool {
    (MIN_WINDOW..=MAX_WINDOW).contains(&window)
}

/// Everything one open end of a session needs.
pub(crate) struct End {
    pub node: Node,
    /// The session's address, registered; taken down when the session ends.
    pub handle: SinkHandle,
    /// What the address delivers to.
    pub inbox: Arc<Inbox>,
    /// Where the other end is.
    pub peer: Route,
    /// The credit the other end granted us.
    pub peer_window: u32,
    pub stream: Arc<TcpStream>,
    pub options: PortalOptions,
    pub stats: Arc<PortalStats>,
    /// Cancelled when the inlet or outlet is deleted.
    pub stop: CancellationToken,
    /// Finishes when the route the session runs over has ended (see `PortalRoute::ended`).
    pub route_ended: Option<super::inlet::RouteEnded>,
    /// Who is at our socket's other end, for the log.
    pub local_peer: Option<SocketAddr>,
    /// "inlet 127.0.0.1:15432" or "outlet db", for the log.
    pub label: String,
}

/// How a session ended.
enum Outcome {
    /// Both directions reached end of stream and everything was written.
    Finished,
    /// It failed here; tell the other end (if `tell`) and abort the socket.
    Failed { reason: String, tell: bool },
    /// An application closed with a reset after the other application had finished
    /// sending: how some servers and clients end a connection (PostgreSQL after a client's
    /// Terminate, say). Passed on like a failure, so nothing can mistake it for a clean end,
    /// but not reported as one.
    Reset { reason: String, tell: bool },
}

enum Event {
    Stopped,
    NodeStopping,
    RouteEnded(String),
    Woken,
    Writable(std::io::Result<()>),
    Readable(std::io::Result<()>),
    Tick,
}

/// What one session end keeps while it runs, apart from its sockets.
struct Flow {
    /// Credit the other end granted us and we have not used.
    send_credit: u64,
    peer_window: u64,
    /// We still read the socket (it has not reached end of stream).
    reading: bool,
    /// The other end has ended its stream.
    peer_ended: bool,
}

impl Flow {
    /// Handle one message the inbox left for the session's task; `Some` ends the session.
    fn on_message(&mut self, m: &Message, inbox: &Inbox, label: &str) -> Option<Outcome> {
        if let Some(error) = m.undeliverable() {
            // The other end only finishes once it has all we sent and has sent its end of
            // stream: after that, only a credit or a ping of ours can have missed it, and
            // nothing is lost.
            if self.peer_ended {
                debug!(portal = %label, "a message to the other end arrived after it finished");
                return None;
            }
            let reason = match error {
                Ok(error) => format!("the other end cannot be reached: {error}"),
                Err(e) => format!(
                    "the other end cannot be reached (its error message was malformed: {e})"
                ),
            };
            return Some(Outcome::Failed {
                reason,
                tell: false,
            });
        }
        let message = match PortalMessage::decode(&m.payload) {
            Ok(message) => message,
            Err(e) => return Some(violation(format!("{e}"))),
        };
        match message {
            PortalMessage::Data(data) => {
                if let Err(what) = inbox.accept(data) {
                    return Some(violation(what));
                }
            }
            PortalMessage::Credit(n) => {
                self.send_credit += u64::from(n);
                if self.send_credit > self.peer_window {
                    return Some(violation("more credit returned than was used".into()));
                }
            }
            PortalMessage::End => {
                self.peer_ended = true;
                inbox.end_of_stream();
            }
            PortalMessage::Close { reason } => {
                let reason = format!("the other end failed: {reason}");
                if !self.reading {
                    return Some(Outcome::Reset {
                        reason,
                        tell: false,
                    });
                }
                return Some(Outcome::Failed {
                    reason,
                    tell: false,
                });
            }
            PortalMessage::Ping => {}
            PortalMessage::Open { .. }
            | PortalMessage::Opened { .. }
            | PortalMessage::Refused { .. } => {
                return Some(violation("an opening message in an open session".into()));
            }
        }
        None
    }

    /// How a failed write to the socket ends the session.
    fn write_failed(&self, e: &std::io::Error, local_peer: Option<SocketAddr>) -> Outcome {
        if e.kind() == std::io::ErrorKind::WriteZero {
            return Outcome::Failed {
                reason: "the socket accepts no more bytes".into(),
                tell: true,
            };
        }
        let reason = format!("writing to {} failed: {e}", shown(local_peer));
        if !self.reading && is_reset(e) {
            return Outcome::Reset { reason, tell: true };
        }
        Outcome::Failed { reason, tell: true }
    }
}

/// Run the session until it ends, then release everything it holds.
pub(crate) async fn run(end: End) {
    let End {
        node,
        handle,
        inbox,
        peer,
        peer_window,
        stream,
        options,
        stats,
        stop,
        route_ended,
        local_peer,
        label,
    } = end;
    let mut route_ended = route_ended;
    stats.open.fetch_add(1, Ordering::Relaxed);
    let me = Route::from(handle.address().clone());
    let node_stopping = handle.stop_token().clone();
    let sender = Sender {
        node: &node,
        peer: &peer,
        me: &me,
        limit: options.idle_timeout,
    };
    let mut flow = Flow {
        send_credit: u64::from(peer_window),
        peer_window: u64::from(peer_window),
        reading: true,
        peer_ended: false,
    };
    let mut write_shut = false;
    let mut taken = 0;
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut ticks = tokio::time::interval(options.ping_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Room for a `Data` header, then what the socket gives.
    let mut buf = BytesMut::new();
    inbox.start();

    let outcome = 'session: loop {
        let work = inbox.take();
        if work.taken != taken {
            taken = work.taken;
            last_heard = Instant::now();
        }
        for m in &work.messages {
            if let Some(outcome) = flow.on_message(m, &inbox, &label) {
                break 'session outcome;
            }
        }
        if !work.messages.is_empty() {
            inbox.handled();
        }
        match work.failure {
            Some(Failure::Violation(what)) => break violation(what),
            Some(Failure::Write(e)) => break flow.write_failed(&e, local_peer),
            None => {}
        }
        if let Some(n) = work.credit {
            if let Err(reason) = sender.send(PortalMessage::Credit(n)).await {
                break Outcome::Failed {
                    reason,
                    tell: false,
                };
            }
            last_sent = Instant::now();
        }
        if flow.peer_ended && !write_shut && inbox.is_written() {
            // Whatever the other end sent is written: pass its end of stream on.
            if let Err(e) = SockRef::from(&*stream).shutdown(std::net::Shutdown::Write) {
                debug!(error = %e, "shutting down the socket's write side failed");
            }
            write_shut = true;
        }
        if !flow.reading && write_shut {
            break Outcome::Finished;
        }
        let limit = if flow.reading && flow.send_credit > DATA_OVERHEAD {
            usize::try_from(flow.send_credit - DATA_OVERHEAD)
                .unwrap_or(CHUNK)
                .min(CHUNK)
        } else {
            0
        };
        if limit > 0 && buf.capacity() < DATA_HEADER_ROOM + limit {
            buf.clear();
            buf.reserve(DATA_HEADER_ROOM + CHUNK);
            buf.put_bytes(0, DATA_HEADER_ROOM);
        }
        let must_write = inbox.needs_writing();
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => Event::Stopped,
            () = node_stopping.cancelled() => Event::NodeStopping,
            why = async {
                match route_ended.as_mut() {
                    Some(ended) => ended.await,
                    None => std::future::pending().await,
                }
            } => Event::RouteEnded(why),
            () = inbox.woken() => Event::Woken,
            r = stream.writable(), if must_write => Event::Writable(r),
            r = stream.readable(), if limit > 0 => Event::Readable(r),
            _ = ticks.tick() => Event::Tick,
        };
        match event {
            Event::Stopped => {
                break Outcome::Failed {
                    reason: "the portal was deleted".into(),
                    tell: true,
                };
            }
            Event::NodeStopping => {
                break Outcome::Failed {
                    reason: "the node is stopping".into(),
                    tell: true,
                };
            }
            Event::RouteEnded(why) => {
                break Outcome::Failed {
                    reason: format!("its route ended: {why}"),
                    tell: false,
                };
            }
            Event::Woken => {}
            Event::Writable(Err(e)) | Event::Readable(Err(e)) => {
                break Outcome::Failed {
                    reason: format!("the socket to {} failed: {e}", shown(local_peer)),
                    tell: true,
                };
            }
            Event::Writable(Ok(())) => match inbox.write_queued() {
                None | Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Some(Err(e)) => break flow.write_failed(&e, local_peer),
            },
            Event::Readable(Ok(())) => {
                let read = stream.try_read_buf(&mut (&mut buf).limit(limit));
                match read {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(0) => {
                        flow.reading = false;
                        if let Err(reason) = sender.send(PortalMessage::End).await {
                            break Outcome::Failed {
                                reason,
                                tell: false,
                            };
                        }
                        last_sent = Instant::now();
                    }
                    Ok(n) => {
                        stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        flow.send_credit -= cost(n);
                        let payload = framed(&mut buf, n);
                        if let Err(reason) = sender.send_raw(payload).await {
                            break Outcome::Failed {
                                reason,
                                tell: false,
                            };
                        }
                        last_sent = Instant::now();
                    }
                    Err(e) => {
                        let reason = format!("reading from {} failed: {e}", shown(local_peer));
                        if flow.peer_ended && is_reset(&e) {
                            break Outcome::Reset { reason, tell: true };
                        }
                        break Outcome::Failed { reason, tell: true };
                    }
                }
            }
            Event::Tick => {
                // Data written straight to the socket never woke us: count it as heard.
                let now_taken = inbox.taken();
                if now_taken != taken {
                    taken = now_taken;
                    last_heard = Instant::now();
                }
                if last_heard.elapsed() >= options.idle_timeout {
                    break Outcome::Failed {
                        reason: format!(
                            "nothing from the other end for {:?}; it is gone or unreachable",
                            options.idle_timeout
                        ),
                        tell: true,
                    };
                }
                if last_sent.elapsed() >= options.ping_interval {
                    if let Err(reason) = sender.send(PortalMessage::Ping).await {
                        break Outcome::Failed {
                            reason,
                            tell: false,
                        };
                    }
                    last_sent = Instant::now();
                }
            }
        }
    };
    inbox.close();
    stats.open.fetch_sub(1, Ordering::Relaxed);
    let quiet = matches!(outcome, Outcome::Reset { .. });
    match outcome {
        Outcome::Finished => {
            stats.finished.fetch_add(1, Ordering::Relaxed);
            debug!(portal = %label, peer = %shown(local_peer), "portal session finished");
        }
        Outcome::Failed { reason, tell } | Outcome::Reset { reason, tell } => {
            if quiet {
                stats.finished.fetch_add(1, Ordering::Relaxed);
                debug!(portal = %label, peer = %shown(local_peer), %reason, "portal session ended with a reset after its end of stream");
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(portal = %label, peer = %shown(local_peer), %reason, "portal session closed with an error");
            }
            if tell {
                let close = PortalMessage::Close {
                    reason: reason.clone(),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.send(close)).await;
            }
            abort(&stream);
        }
    }
    drop(handle);
    info!(portal = %label, "portal session ended");
}

fn violation(what: String) -> Outcome {
    Outcome::Failed {
        reason: format!("protocol violation by the other end: {what}"),
        tell: true,
    }
}

/// Turn the `n` bytes read into `buf` after its header room into a `Data` payload: the
/// header goes into the room, and a large read leaves with the buffer, uncopied; a small one
/// is copied out and the buffer kept, emptied to its header room.
fn framed(buf: &mut BytesMut, n: usize) -> Bytes {
    let header = data_header_len(n);
    let start = DATA_HEADER_ROOM - header;
    let mut head = BytesMut::with_capacity(header);
    put_data_header(&mut head, n);
    if let Some(room) = buf.get_mut(start..DATA_HEADER_ROOM) {
        room.copy_from_slice(&head);
    }
    if n < COPY_BELOW {
        let payload =
            Bytes::copy_from_slice(buf.get(start..DATA_HEADER_ROOM + n).unwrap_or_default());
        buf.truncate(DATA_HEADER_ROOM);
        return payload;
    }
    let mut payload = std::mem::take(buf);
    payload.truncate(DATA_HEADER_ROOM + n);
    payload.advance(start);
    payload.freeze()
}

/// Make the socket's close a reset, so the application at its other end sees an error
/// rather than a clean end of stream that would pass a truncated transfer off as complete.
pub(crate) fn abort(stream: &TcpStream) {
    #[expect(
        deprecated,
        reason = "a zero linger never blocks; it is what turns close into a reset"
    )]
    if let Err(e) = stream.set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "cannot set the socket to reset on close");
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

pub(crate) fn shown(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "the socket".to_owned(), |a| a.to_string())
}

/// Sends to the other end, with this end as the return route.
struct Sender<'a> {
    node: &'a Node,
    peer: &'a Route,
    me: &'a Route,
    /// A send that cannot go within this long means the way to the other end is wedged.
    limit: Duration,
}

impl Sender<'_> {
    async fn send(&self, message: PortalMessage) -> Result<(), String> {
        self.send_raw(message.encode()).await
    }

    async fn send_raw(&self, payload: Bytes) -> Result<(), String> {
        let message = Message::new(self.peer.clone(), self.me.clone(), payload);
        match tokio::time::timeout(self.limit, self.node.route(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot reach the other end: {e}")),
            Err(_) => Err(format!(
                "nothing could be sent to the other end for {:?}",
                self.limit
            )),
        }
    }
}
