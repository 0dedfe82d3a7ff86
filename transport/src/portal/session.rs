//! One end of a portal session: a TCP socket on one side, the other end's route on the
//! other. Both ends run the same loop once the session is open.
//!
//! The loop reads the socket only while it holds credit, and writes what the other end sent
//! to the socket in order; it returns credit as it writes, so a client that stops reading
//! stops the sender after one window. Every `Data` costs its length plus [`DATA_OVERHEAD`],
//! which bounds the number of messages in flight as well as the bytes: at most
//! `window / DATA_OVERHEAD` of them, fewer than a mailbox holds, so a session never fills its
//! mailbox and never blocks the connection that feeds it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kith_node::{Mailbox, Message, Node, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::message::{DATA_HEADER_ROOM, PortalMessage, data_header_len, put_data_header};
use super::{CHUNK, PortalOptions, PortalStats};

/// 8 KiB: the credit each `Data` message costs on top of its length.
pub const DATA_OVERHEAD: u64 = 8 * 1024;

/// 64 KiB: the smallest window an end may grant.
pub const MIN_WINDOW: u32 = 64 * 1024;

/// 1 MiB: the largest window an end may grant (at most 128 messages in flight).
pub const MAX_WINDOW: u32 = 1024 * 1024;

/// 16: the most queued messages one write to the socket takes.
const MAX_WRITE_SLICES: usize = 16;

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
    pub mailbox: Mailbox,
    /// Where the other end is.
    pub peer: Route,
    /// The credit the other end granted us.
    pub peer_window: u32,
    pub stream: TcpStream,
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
    RouteEnded(String),
    Received(Option<Message>),
    Wrote(std::io::Result<usize>),
    Read(std::io::Result<usize>),
    Tick,
}

/// Run the session until it ends, then release everything it holds.
pub(crate) async fn run(end: End) {
    let End {
        node,
        mut mailbox,
        peer,
        peer_window,
        mut stream,
        options,
        stats,
        stop,
        route_ended,
        local_peer,
        label,
    } = end;
    let mut route_ended = route_ended;
    stats.open.fetch_add(1, Ordering::Relaxed);
    let me = Route::from(mailbox.address().clone());
    let sender = Sender {
        node: &node,
        peer: &peer,
        me: &me,
        limit: options.idle_timeout,
    };
    let window = u64::from(options.window);
    let threshold = window / 4;
    let mut send_credit = u64::from(peer_window);
    let mut outstanding: u64 = 0;
    let mut to_return: u64 = 0;
    let mut outbox: VecDeque<(Bytes, u64)> = VecDeque::new();
    let mut reading = true;
    let mut peer_ended = false;
    let mut write_shut = false;
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut ticks = tokio::time::interval(options.ping_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Room for a `Data` header, then what the socket gives.
    let mut buf = BytesMut::new();

    let outcome = {
        let (mut rd, mut wr) = stream.split();
        loop {
            if peer_ended && outbox.is_empty() && !write_shut {
                // Whatever the other end sent is written: pass its end of stream on.
                if let Err(e) = wr.shutdown().await {
                    debug!(error = %e, "shutting down the socket's write side failed");
                }
                write_shut = true;
            }
            if !reading && write_shut {
                break Outcome::Finished;
            }
            let limit = if reading && send_credit > DATA_OVERHEAD {
                usize::try_from(send_credit - DATA_OVERHEAD)
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
            let event = tokio::select! {
                biased;
                () = stop.cancelled() => Event::Stopped,
                why = async {
                    match route_ended.as_mut() {
                        Some(ended) => ended.await,
                        None => std::future::pending().await,
                    }
                } => Event::RouteEnded(why),
                m = mailbox.recv() => Event::Received(m),
                r = async {
                    // Everything queued, in one write: a burst of messages costs one call.
                    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
                    for (slot, (b, _)) in slices.iter_mut().zip(&outbox) {
                        *slot = IoSlice::new(b);
                    }
                    let filled = outbox.len().min(MAX_WRITE_SLICES);
                    wr.write_vectored(slices.get(..filled).unwrap_or_default()).await
                }, if !outbox.is_empty() => Event::Wrote(r),
                r = async {
                    let mut into = (&mut buf).limit(limit);
                    rd.read_buf(&mut into).await
                }, if limit > 0 => Event::Read(r),
                _ = ticks.tick() => Event::Tick,
            };
            match event {
                Event::Stopped => {
                    break Outcome::Failed {
                        reason: "the portal was deleted".into(),
                        tell: true,
                    };
                }
                Event::RouteEnded(why) => {
                    break Outcome::Failed {
                        reason: format!("its route ended: {why}"),
                        tell: false,
                    };
                }
                Event::Received(None) => {
                    break Outcome::Failed {
                        reason: "the node is stopping".into(),
                        tell: true,
                    };
                }
                Event::Received(Some(m)) => {
                    last_heard = Instant::now();
                    if let Some(error) = m.undeliverable() {
                        // The other end only finishes once it has all we sent and has sent
                        // its end of stream: after that, only a credit or a ping of ours can
                        // have missed it, and nothing is lost.
                        if peer_ended {
                            debug!(portal = %label, "a message to the other end arrived after it finished");
                            continue;
                        }
                        let reason = match error {
                            Ok(error) => format!("the other end cannot be reached: {error}"),
                            Err(e) => format!(
                                "the other end cannot be reached (its error message was malformed: {e})"
                            ),
                        };
                        break Outcome::Failed {
                            reason,
                            tell: false,
                        };
                    }
                    let message = match PortalMessage::decode(&m.payload) {
                        Ok(message) => message,
                        Err(e) => break violation(format!("{e}")),
                    };
                    match message {
                        PortalMessage::Data(data) => {
                            if peer_ended {
                                break violation("data after the end of stream".into());
                            }
                            let c = cost(data.len());
                            outstanding += c;
                            if outstanding > window {
                                break violation(format!(
                                    "{outstanding} bytes of credit used, {window} granted"
                                ));
                            }
                            outbox.push_back((data, c));
                        }
                        PortalMessage::Credit(n) => {
                            send_credit += u64::from(n);
                            if send_credit > u64::from(peer_window) {
                                break violation("more credit returned than was used".into());
                            }
                        }
                        PortalMessage::End => peer_ended = true,
                        PortalMessage::Close { reason } => {
                            let reason = format!("the other end failed: {reason}");
                            if !reading {
                                break Outcome::Reset {
                                    reason,
                                    tell: false,
                                };
                            }
                            break Outcome::Failed {
                                reason,
                                tell: false,
                            };
                        }
                        PortalMessage::Ping => {}
                        PortalMessage::Open { .. }
                        | PortalMessage::Opened { .. }
                        | PortalMessage::Refused { .. } => {
                            break violation("an opening message in an open session".into());
                        }
                    }
                }
                Event::Wrote(Ok(0)) => {
                    break Outcome::Failed {
                        reason: "the socket accepts no more bytes".into(),
                        tell: true,
                    };
                }
                Event::Wrote(Ok(n)) => {
                    stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    let mut written = n;
                    while let Some((b, c)) = outbox.front_mut() {
                        let k = written.min(b.len());
                        b.advance(k);
                        written -= k;
                        if !b.is_empty() {
                            break;
                        }
                        to_return += *c;
                        outbox.pop_front();
                    }
                    if to_return >= threshold {
                        let n = u32::try_from(to_return).unwrap_or(u32::MAX);
                        if let Err(reason) = sender.send(PortalMessage::Credit(n)).await {
                            break Outcome::Failed {
                                reason,
                                tell: false,
                            };
                        }
                        last_sent = Instant::now();
                        outstanding -= u64::from(n);
                        to_return -= u64::from(n);
                    }
                }
                Event::Wrote(Err(e)) => {
                    let reason = format!("writing to {} failed: {e}", shown(local_peer));
                    if !reading && is_reset(&e) {
                        break Outcome::Reset { reason, tell: true };
                    }
                    break Outcome::Failed { reason, tell: true };
                }
                Event::Read(Ok(0)) => {
                    reading = false;
                    if let Err(reason) = sender.send(PortalMessage::End).await {
                        break Outcome::Failed {
                            reason,
                            tell: false,
                        };
                    }
                    last_sent = Instant::now();
                }
                Event::Read(Ok(n)) => {
                    stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    send_credit -= cost(n);
                    let payload = framed(&mut buf, n);
                    if let Err(reason) = sender.send_raw(payload).await {
                        break Outcome::Failed {
                            reason,
                            tell: false,
                        };
                    }
                    last_sent = Instant::now();
                }
                Event::Read(Err(e)) => {
                    let reason = format!("reading from {} failed: {e}", shown(local_peer));
                    if peer_ended && is_reset(&e) {
                        break Outcome::Reset { reason, tell: true };
                    }
                    break Outcome::Failed { reason, tell: true };
                }
                Event::Tick => {
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
        }
    };
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
    drop(mailbox);
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
