//! One TCP connection: the preamble, then an outbox that senders write through and a reader
//! that decodes frames and routes what they carry.
//!
//! The outbox is the connection's registered sink. A sender encodes its message into the
//! outbox and, when the socket is not backed up, writes it straight away from its own task,
//! so no task hand-off is paid per message. When the socket pushes back, frames accumulate in
//! the outbox and a flusher writes them in one go (write coalescing) once the socket is
//! writable; past [`MAX_PENDING`] bytes senders wait. The reader stamps every message with the
//! connection as its origin and prepends the connection's return address, so answers come back
//! the same way. Whichever side fails first ends the connection: a bad frame closes it, never
//! resynchronizes.

use std::io::{self, IoSlice};
use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kith_node::{
    Address, AllowAll, DirectOrQueue, DisplayChain, LOG_LIMITER, LocalInfo, MAX_ROUTE_LEN, Message,
    MessageSink, Node, Origin, ReadyFuture, SinkError, SinkHandle, StartError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::codec::encoded_len;
use crate::frame::{self, FrameStatus, KEEPALIVE, LEN_PREFIX};
use crate::segments::{MAX_SLICES, Segments};
use crate::tcp::{Counters, TcpOptions};
use crate::{ConnectionError, PROTOCOL_VERSION, TransportMessage};

/// 1 MiB: encoded bytes that may wait for a slow peer before senders are made to wait. Enough
/// to keep a fast link busy between writes; little enough that a peer that stops reading
/// costs us a bounded amount.
pub(crate) const MAX_PENDING: usize = 1024 * 1024;

/// 16 KiB: the least the reader asks for at a time once the peer has sent a whole valid
/// frame, so one read syscall takes in many small frames, or several large ones. Nothing is
/// allocated for an idle connection.
const READ_CHUNK: usize = 16 * 1024;

/// 1 KiB: the least the reader asks for before the peer has sent a whole valid frame. The
/// buffer then grows only as bytes arrive (at most doubling what is there), so a connection
/// that announces a large frame and trickles it costs about what it has sent.
const FIRST_READ_CHUNK: usize = 1024;

/// The byte a listener sends in place of its version when it refuses a connection as busy.
/// No kith version is 0.
pub const BUSY: u8 = 0;

/// 64 KiB: the most the reader reserves ahead of bytes that have actually arrived.
const MAX_READ_RESERVE: usize = 64 * 1024;

/// 16 KiB: a frame at least this large is read into a buffer of its own, ending where the
/// frame ends, so that whoever takes its payload owns the allocation (a channel opens it in
/// place). Smaller frames share one buffer, many to a read.
const OWN_BUFFER_FRAME: usize = 16 * 1024;

/// 16 KiB: a payload at least this large is written from where it lies, beside its frame's
/// head (a vectored write); a smaller one is copied after the head. A queued payload keeps
/// its whole allocation alive while [`MAX_PENDING`] counts only its length: at this size
/// the allocations a payload can be a slice of (a frame's own buffer, at most
/// `MAX_READ_RESERVE` ahead of it; a portal's read buffer; a sealed message) are at most a
/// few times larger, so a slow peer pins a few MiB at most, not the 1 MiB times the ratio of
/// a reader's buffer to a tiny payload.
const SHARED_PAYLOAD: usize = OWN_BUFFER_FRAME;

/// 1 s: at shutdown, how long queued frames may take to go out before the socket closes.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

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
        } else if theirs == BUSY {
            Err(ConnectionError::Busy)
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

/// A connection whose outbox is registered and ready to [`Connection::run`].
pub(crate) struct Connection {
    handle: SinkHandle,
    outbox: Arc<Outbox>,
    read: OwnedReadHalf,
    peer: SocketAddr,
    return_address: Address,
}

impl Connection {
    /// Register the connection's outbox with `node`. Messages that arrive on it get
    /// `return_address` (default: the outbox's own address) in front of their return route.
    pub(crate) fn establish(
        node: &Node,
        stream: TcpStream,
        peer: SocketAddr,
        options: &TcpOptions,
        counters: &Arc<Counters>,
        return_address: Option<Address>,
    ) -> Result<Self, StartError> {
        let (read, write) = stream.into_split();
        let outbox = Arc::new(Outbox {
            write,
            pending: DirectOrQueue::new(
                MAX_PENDING,
                Written {
                    failed: None,
                    last_write: Instant::now(),
                },
            ),
            max_frame_len: options.max_frame_len,
            counters: counters.clone(),
        });
        let handle = node.register_sink(
            [Address::random_local("tcp")],
            Arc::new(AllowAll),
            outbox.clone(),
        )?;
        let return_address = return_address.unwrap_or_else(|| handle.address().clone());
        Ok(Self {
            handle,
            outbox,
            read,
            peer,
            return_address,
        })
    }

    /// The local address that sends on this connection.
    pub(crate) fn address(&self) -> &Address {
        self.handle.address()
    }

    /// Serve the connection until either direction ends or it is stopped.
    pub(crate) async fn run(
        self,
        options: &TcpOptions,
        counters: &Counters,
    ) -> Result<(), ConnectionError> {
        let Self {
            handle,
            outbox,
            read,
            peer,
            return_address,
        } = self;
        let me = handle.address().clone();
        let node = handle.node().clone();
        let stop = handle.stop_token().clone();
        let result = tokio::select! {
            r = read_frames(read, &node, &return_address, peer, options, counters) => r,
            r = flush_frames(&outbox, options, &stop) => r,
        };
        outbox.close();
        // Unregistering drops the router's reference to the outbox; the write half closes
        // when the last reference goes.
        drop(handle);
        match &result {
            Ok(()) => debug!(%peer, connection = %me, "connection closed"),
            Err(e) => {
                // A flood of bad connections from one host makes a line per interval and
                // kind of failure, with a count.
                if let Some(suppressed) = LOG_LIMITER.admit(e.kind(), peer) {
                    warn!(%peer, connection = %me, error = %DisplayChain(e), suppressed, "connection closed with an error")
                }
            }
        }
        result
    }
}

async fn read_frames(
    mut read: OwnedReadHalf,
    node: &Node,
    return_address: &Address,
    peer: SocketAddr,
    options: &TcpOptions,
    counters: &Counters,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    // The least to ask for at a time: small until the peer has sent a whole valid frame.
    let mut chunk = FIRST_READ_CHUNK;
    // When the frame now arriving must be complete: set by its first byte.
    let mut frame_due: Option<Instant> = None;
    // The length of the last frame that carried a message: a stream of large frames is read
    // a frame at a time, each into a buffer of its own.
    let mut last_frame = 0;
    loop {
        // The most the next read may take: the rest of a large frame, or what fits.
        let mut limit = usize::MAX;
        // What to reserve once bytes arrive at an empty buffer.
        let mut first = chunk;
        loop {
            match frame::check(&buf, options.max_frame_len).inspect_err(|_| {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
            })? {
                FrameStatus::Complete { body_len } => {
                    let total = LEN_PREFIX + body_len;
                    // A frame that is all the buffer holds takes the buffer with it, so its
                    // payload shares the allocation with no one.
                    let mut frame = if total == buf.len() {
                        mem::take(&mut buf)
                    } else {
                        buf.split_to(total)
                    };
                    frame_due = None;
                    if body_len == 0 {
                        continue; // keep-alive
                    }
                    frame.advance(LEN_PREFIX);
                    // The frame is dropped here: only the message's parts hold it now.
                    let m = TransportMessage::decode(&frame.freeze()).inspect_err(|_| {
                        counters.invalid.fetch_add(1, Ordering::Relaxed);
                    })?;
                    chunk = READ_CHUNK;
                    last_frame = total;
                    counters.frames_in.fetch_add(1, Ordering::Relaxed);
                    deliver(node, return_address, peer, m, counters).await;
                }
                FrameStatus::Incomplete { needed } => {
                    if buf.is_empty() {
                        // Between frames: allocate nothing until the next one starts
                        // arriving; then, for a stream of large frames, room for a whole
                        // one (within the reserve bound), read on its own.
                        if last_frame >= OWN_BUFFER_FRAME {
                            limit = last_frame;
                            first = last_frame.min(MAX_READ_RESERVE);
                        }
                        break;
                    }
                    if frame_due.is_none() {
                        frame_due = Some(Instant::now() + options.frame_timeout);
                    }
                    let large = buf.len() >= LEN_PREFIX && buf.len() + needed >= OWN_BUFFER_FRAME;
                    if large {
                        // Read exactly the rest of a large frame, so it ends its buffer.
                        limit = needed;
                    }
                    if large && chunk == READ_CHUNK {
                        // From a peer that has sent a valid frame: reserve the rest at once,
                        // within the bound ahead of what arrived.
                        buf.reserve(needed.min(MAX_READ_RESERVE.max(buf.len())));
                    } else {
                        // Grow as bytes arrive rather than by what the prefix announces, so
                        // four bytes from a peer cannot make us reserve a whole maximum-size
                        // frame: at most what is there again, and `chunk` at least.
                        buf.reserve(buf.len().clamp(chunk, MAX_READ_RESERVE));
                    }
                    break;
                }
            }
        }
        let idle_due = Instant::now() + options.idle_timeout;
        let due = frame_due.map_or(idle_due, |f| f.min(idle_due));
        let read_once = async {
            if buf.capacity() == buf.len() {
                // Nothing reserved (an idle connection holds no buffer): wait for bytes
                // before allocating for them.
                read.readable().await?;
                buf.reserve(first);
            }
            read.read_buf(&mut (&mut buf).limit(limit)).await
        };
        let n = match tokio::time::timeout_at(due, read_once).await {
            Ok(read) => read?,
            Err(_) if frame_due.is_some_and(|f| f <= idle_due) => {
                return Err(ConnectionError::FrameTimeout(options.frame_timeout));
            }
            Err(_) => return Err(ConnectionError::Idle(options.idle_timeout)),
        };
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

async fn deliver(
    node: &Node,
    return_address: &Address,
    peer: SocketAddr,
    m: TransportMessage,
    counters: &Counters,
) {
    if m.return_route.len() >= MAX_ROUTE_LEN {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = LOG_LIMITER.admit("dropped a message at the hop limit", peer) {
            warn!(%peer, connection = %return_address, suppressed, "dropped a message whose return route is already at the hop limit");
        }
        return;
    }
    let mut return_route = m.return_route;
    return_route.prepend(return_address.clone());
    let message = Message {
        onward_route: m.onward_route,
        return_route,
        payload: m.payload,
        kind: m.kind,
        local_info: LocalInfo {
            origin: Origin::Transport {
                connection: return_address.clone(),
                peer: Some(peer),
            },
        },
    };
    // The node logs and counts every drop, and answers the sender with an error message;
    // one undeliverable message does not end the connection.
    let _ = node.route(message).await;
}

/// Wake when senders left bytes behind, or when the connection has been idle for the
/// keep-alive interval; then write until the outbox is empty.
async fn flush_frames(
    outbox: &Outbox,
    options: &TcpOptions,
    stop: &CancellationToken,
) -> Result<(), ConnectionError> {
    loop {
        let keepalive_due = outbox.pending.lock().state().last_write + options.keepalive_interval;
        tokio::select! {
            () = stop.cancelled() => {
                let _ = tokio::time::timeout(FINAL_FLUSH, outbox.drain(FINAL_FLUSH)).await;
                return Ok(());
            }
            () = outbox.pending.queued() => {}
            () = tokio::time::sleep_until(keepalive_due) => outbox.push_keepalive(options.keepalive_interval),
        }
        outbox.drain(options.write_timeout).await?;
    }
}

/// What the outbox keeps about the socket, under the lock of its pending bytes.
struct Written {
    /// A sender's write failed; the flusher reports it.
    failed: Option<io::Error>,
    last_write: Instant,
}

/// The connection's sink: encoded frames on their way to the socket.
struct Outbox {
    write: OwnedWriteHalf,
    /// Encoded frames not yet written, bounded by [`MAX_PENDING`] bytes. Draining means the
    /// socket pushed back: the flusher owns writing until nothing is pending. Closed when
    /// the connection is over; senders then get their message back.
    pending: DirectOrQueue<Segments, Written>,
    max_frame_len: usize,
    counters: Arc<Counters>,
}

impl Outbox {
    fn close(&self) {
        self.pending.close();
    }

    fn push_keepalive(&self, interval: Duration) {
        let mut lane = self.pending.lock();
        if lane.backlog().is_empty() && lane.state().last_write.elapsed() >= interval {
            lane.backlog_mut().tail_mut().extend_from_slice(&KEEPALIVE);
        }
    }

    /// Write until nothing is pending, waiting for the socket as needed.
    async fn drain(&self, timeout: Duration) -> Result<(), ConnectionError> {
        loop {
            {
                let mut lane = self.pending.lock();
                if let Some(e) = lane.state_mut().failed.take() {
                    return Err(e.into());
                }
                if lane.backlog().is_empty() {
                    lane.set_draining(false);
                    drop(lane);
                    self.pending.wake_senders();
                    return Ok(());
                }
                match self.write_some(lane.backlog()) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                    Ok(n) => {
                        let was_full = lane.is_full();
                        lane.backlog_mut().advance(n);
                        lane.state_mut().last_write = Instant::now();
                        if was_full && !lane.is_full() {
                            self.pending.wake_senders();
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => lane.set_draining(true),
                    Err(e) => return Err(e.into()),
                }
            }
            tokio::time::timeout(timeout, self.write.writable())
                .await
                .map_err(|_| ConnectionError::WriteTimeout(timeout))??;
        }
    }

    /// Write what the socket takes of `pending` now, in one vectored write.
    fn write_some(&self, pending: &Segments) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let filled = pending.slices(&mut slices);
        self.write
            .try_write_vectored(slices.get(..filled).unwrap_or_default())
    }

    /// The encoded size of `m` as this connection would frame it, if that is over the frame
    /// cap: a peer would close the connection on such a frame, so it is never written.
    fn too_large(&self, m: &Message) -> Option<usize> {
        // The first hop is this connection's own address; the rest goes on the wire.
        let len = encoded_len(
            m.onward_route.iter().skip(1),
            &m.return_route,
            m.payload.len(),
            m.kind,
        );
        (len > self.max_frame_len || u32::try_from(len).is_err()).then_some(len)
    }

    /// Frame `m` onto `pending`: a large payload as a piece of its own, beside its head,
    /// so it is written without being copied. `m` was checked to fit with
    /// [`Outbox::too_large`].
    fn encode(&self, mut m: Message, pending: &mut Segments) {
        // The first hop is this connection's own address.
        m.onward_route.step();
        if m.onward_route.is_empty() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            warn!("dropped a message with nothing to route after the connection");
            return;
        }
        let t = TransportMessage {
            onward_route: m.onward_route,
            return_route: m.return_route,
            payload: m.payload,
            kind: m.kind,
        };
        let framed = if t.payload.len() >= SHARED_PAYLOAD {
            let head = t.encode_frame_head(pending.tail_mut(), self.max_frame_len);
            if head.is_some() {
                pending.push_shared(t.payload.clone());
            }
            head
        } else {
            None
        };
        match framed.or_else(|| t.encode_frame(pending.tail_mut(), self.max_frame_len)) {
            Some(_) => {
                self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(
                    payload_len = t.payload.len(),
                    max = self.max_frame_len,
                    "dropped a message too large for one frame"
                );
            }
        }
    }
}

impl MessageSink for Outbox {
    /// Refuses, and hands back, a message too large for one frame before it takes anything:
    /// the router tells a local sender and answers a remote one.
    fn try_deliver(&self, message: Message) -> Result<(), SinkError> {
        if let Some(len) = self.too_large(&message) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(SinkError::too_large(message, len, self.max_frame_len));
        }
        let mut lane = self.pending.lock();
        if lane.state().failed.is_some() {
            return Err(SinkError::Closed(message));
        }
        if let Some(refuse) = lane.refusal() {
            return Err(refuse(message));
        }
        self.encode(message, lane.backlog_mut());
        if lane.is_draining() || lane.backlog().is_empty() {
            // The flusher owns the socket until the backlog is gone.
            return Ok(());
        }
        // Not draining, so nothing was pending before this frame: write it now, from the
        // sender's task, under the lock that keeps frames in order.
        match self.write_some(lane.backlog()) {
            Ok(n) => {
                lane.backlog_mut().advance(n);
                lane.state_mut().last_write = Instant::now();
                if !lane.backlog().is_empty() {
                    lane.set_draining(true);
                    self.pending.wake_drainer();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lane.set_draining(true);
                self.pending.wake_drainer();
            }
            Err(e) => {
                lane.state_mut().failed = Some(e);
                self.pending.wake_drainer();
            }
        }
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(self.pending.ready())
    }
}
