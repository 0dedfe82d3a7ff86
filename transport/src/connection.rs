//! One TCP connection: the preamble, then a writer that coalesces queued messages into one
//! write and a reader that decodes frames and routes what they carry.
//!
//! The writer drains the connection's mailbox; the reader stamps every message with the
//! connection as its origin and prepends the connection's address to the return route, so
//! answers come back the same way. Whichever side ends first ends the connection: a bad frame
//! closes it, never resynchronizes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use kith_node::{Address, DisplayChain, LocalInfo, MAX_ROUTE_LEN, Mailbox, Message, Node, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::frame::{self, FrameStatus, KEEPALIVE, LEN_PREFIX};
use crate::tcp::{Counters, TcpOptions};
use crate::{ConnectionError, PROTOCOL_VERSION, TransportMessage};

/// 64 KiB: how many bytes of queued frames the writer gathers into one write. Large enough to
/// batch many small messages into one syscall, small enough to keep latency low.
const COALESCE_LIMIT: usize = 64 * 1024;

/// 16 KiB: the least the reader asks for at a time once data flows, so one read syscall takes
/// in many small frames, or several large ones. Nothing is allocated for an idle connection.
const READ_CHUNK: usize = 16 * 1024;

/// 64 KiB: the most the reader reserves ahead of bytes that have actually arrived.
const MAX_READ_RESERVE: usize = 64 * 1024;

/// Exchange protocol version bytes: each side writes its own, then reads the peer's.
pub(crate) async fn preamble(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(), ConnectionError> {
    let exchange = async {
        stream.write_all(&[PROTOCOL_VERSION]).await?;
        let mut theirs = [0u8; 1];
        stream.read_exact(&mut theirs).await?;
        let [theirs] = theirs;
        if theirs == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(ConnectionError::Version {
                theirs,
                ours: PROTOCOL_VERSION,
            })
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ConnectionError::PreambleTimeout(timeout))?
}

/// Drive a connection until either direction ends. `mailbox` is the connection's sender; it
/// survives the connection, so a persistent connection reuses it for the next one.
pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    mailbox: &mut Mailbox,
    options: &TcpOptions,
    counters: &Arc<Counters>,
) -> Result<(), ConnectionError> {
    let (read, write) = stream.into_split();
    let node = mailbox.node().clone();
    let me = mailbox.address().clone();
    let reader = read_frames(read, &node, &me, options, counters);
    let writer = write_frames(write, mailbox, options, counters);
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
    };
    match &result {
        Ok(()) => debug!(%peer, connection = %me, "connection closed"),
        Err(e) => {
            warn!(%peer, connection = %me, error = %DisplayChain(e), "connection closed with an error")
        }
    }
    result
}

async fn read_frames(
    mut read: OwnedReadHalf,
    node: &Node,
    me: &Address,
    options: &TcpOptions,
    counters: &Counters,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    loop {
        loop {
            match frame::check(&buf, options.max_frame_len).inspect_err(|_| {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
            })? {
                FrameStatus::Complete { body_len } => {
                    let frame = buf.split_to(LEN_PREFIX + body_len).freeze();
                    if body_len == 0 {
                        continue; // keep-alive
                    }
                    let body = frame.slice(LEN_PREFIX..);
                    let m = TransportMessage::decode(&body).inspect_err(|_| {
                        counters.invalid.fetch_add(1, Ordering::Relaxed);
                    })?;
                    counters.frames_in.fetch_add(1, Ordering::Relaxed);
                    deliver(node, me, m, counters).await;
                }
                FrameStatus::Incomplete { needed } => {
                    if buf.is_empty() && buf.capacity() == 0 {
                        // Idle: wait for the first byte before allocating anything.
                        break;
                    }
                    // Grow as bytes arrive rather than by what the prefix announces, so four
                    // bytes from a peer cannot make us reserve a whole maximum-size frame.
                    buf.reserve(needed.clamp(READ_CHUNK, MAX_READ_RESERVE));
                    break;
                }
            }
        }
        let n = tokio::time::timeout(options.idle_timeout, read.read_buf(&mut buf))
            .await
            .map_err(|_| ConnectionError::Idle(options.idle_timeout))??;
        if n == 0 {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(ConnectionError::ClosedMidFrame {
                    buffered: buf.len(),
                })
            };
        }
    }
}

async fn deliver(node: &Node, me: &Address, m: TransportMessage, counters: &Counters) {
    if m.return_route.len() >= MAX_ROUTE_LEN {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        warn!(connection = %me, "dropped a message whose return route is already at the hop limit");
        return;
    }
    let mut return_route = m.return_route;
    return_route.prepend(me.clone());
    let message = Message {
        onward_route: m.onward_route,
        return_route,
        payload: m.payload,
        local_info: LocalInfo {
            origin: Origin::Transport {
                connection: me.clone(),
            },
        },
    };
    // The node logs and counts every drop; one undeliverable message does not end the
    // connection.
    let _ = node.route(message).await;
}

async fn write_frames(
    mut write: OwnedWriteHalf,
    mailbox: &mut Mailbox,
    options: &TcpOptions,
    counters: &Counters,
) -> Result<(), ConnectionError> {
    // Allocated on the first write and reused after, so idle connections hold no buffer.
    let mut buf = BytesMut::new();
    let mut last_write = Instant::now();
    loop {
        let next = tokio::select! {
            m = mailbox.recv() => m,
            () = tokio::time::sleep_until(last_write + options.keepalive_interval) => {
                buf.extend_from_slice(&KEEPALIVE);
                flush(&mut write, &mut buf, options).await?;
                last_write = Instant::now();
                continue;
            }
        };
        let Some(first) = next else {
            let _ = write.shutdown().await;
            return Ok(());
        };
        encode(first, &mut buf, options, counters);
        while buf.len() < COALESCE_LIMIT {
            match mailbox.try_recv() {
                Some(m) => encode(m, &mut buf, options, counters),
                None => break,
            }
        }
        if !buf.is_empty() {
            flush(&mut write, &mut buf, options).await?;
            last_write = Instant::now();
        }
    }
}

fn encode(mut m: Message, buf: &mut BytesMut, options: &TcpOptions, counters: &Counters) {
    // The first hop is this connection's own address.
    m.onward_route.step();
    if m.onward_route.is_empty() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        warn!("dropped a message with nothing to route after the connection");
        return;
    }
    let t = TransportMessage {
        onward_route: m.onward_route,
        return_route: m.return_route,
        payload: m.payload,
    };
    match t.encode_frame(buf, options.max_frame_len) {
        Some(_) => {
            counters.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                payload_len = t.payload.len(),
                max = options.max_frame_len,
                "dropped a message too large for one frame"
            );
        }
    }
}

async fn flush(
    write: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    options: &TcpOptions,
) -> Result<(), ConnectionError> {
    tokio::time::timeout(options.write_timeout, write.write_all(buf))
        .await
        .map_err(|_| ConnectionError::WriteTimeout(options.write_timeout))??;
    buf.clear();
    Ok(())
}
