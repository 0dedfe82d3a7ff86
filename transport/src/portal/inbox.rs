//! A portal session's address: a [`MessageSink`] that writes the other end's `Data` to the
//! session's socket from the task that delivers it (a connection's reader, a channel's
//! decryptor) while nothing waits ahead of it, and hands everything else to the session's
//! task, in order.
//!
//! The session's receive state lives here, under one lock, because both the delivering task
//! and the session's task change it: the credit the other end has used, the data waiting for
//! the socket, and whether the other end has ended its stream. The rules are those of the
//! session (DESIGN §6): a `Data` beyond the credit granted, or after the end of stream, is a
//! protocol violation that ends the session.
//!
//! A `Data` is written directly only when the session runs, nothing waits in its inbox (an
//! `End` or an error message there must be seen first) and nothing waits for the socket;
//! whatever part the socket does not take at once is queued for the session's task, which
//! writes it when the socket is writable. The session's task returns credit: the inbox wakes
//! it once written data has earned a quarter of the window.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, Bytes};
use kith_node::{MAILBOX_CAPACITY, Message, MessageSink, ReadyFuture, SinkError};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::PortalStats;
use super::message::PortalMessage;
use super::session::cost;

/// 16: the most queued messages one write to the socket takes.
const MAX_WRITE_SLICES: usize = 16;

/// Messages for the session's task: as many as a mailbox holds. `Data` that goes to the
/// socket does not count, so only control messages (and data behind them) fill it.
const INBOX_BOUND: usize = MAILBOX_CAPACITY;

/// Why the session must end, found while taking a message or writing one.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The other end broke the protocol.
    Violation(String),
    /// Writing to the socket failed.
    Write(io::Error),
}

/// The session's address. Shared by the router (which delivers) and the session's task.
pub(crate) struct Inbox {
    shared: Mutex<Shared>,
    stream: Arc<TcpStream>,
    /// The credit we granted the other end.
    window: u64,
    /// Written data returns its credit once this much has gathered.
    threshold: u64,
    stats: Arc<PortalStats>,
    /// Wakes the session's task; a wake-up while it is busy is kept for its next wait.
    wake: Notify,
    /// Wakes senders waiting for room in the inbox, or for it to close.
    room: Notify,
}

#[derive(Default)]
struct Shared {
    /// Messages for the session's task, in arrival order.
    inbox: VecDeque<Message>,
    /// Data waiting for the socket, each with the credit it cost.
    outbox: VecDeque<(Bytes, u64)>,
    /// Credit the other end has used and we have not returned.
    outstanding: u64,
    /// Credit of data written to the socket and not yet returned.
    to_return: u64,
    /// Messages taken, so the session can tell the other end is alive.
    taken: u64,
    /// The session runs: `Data` may be written directly.
    running: bool,
    /// Someone writes to the socket now; nothing else may until they are done.
    writing: bool,
    /// The session's task handles messages it took: nothing may overtake them until it is
    /// done ([`Inbox::handled`]).
    handling: bool,
    /// The other end has ended its stream (the session saw its `End`).
    peer_ended: bool,
    closed: bool,
    failure: Option<Failure>,
}

/// What the session's task takes from the inbox each time it wakes.
pub(crate) struct Work {
    /// Messages to handle, in order.
    pub messages: VecDeque<Message>,
    /// The session must end.
    pub failure: Option<Failure>,
    /// Credit to return to the other end now.
    pub credit: Option<u32>,
    /// Messages taken so far (directly or for the session).
    pub taken: u64,
}

impl Inbox {
    /// The inbox of a session writing to `stream`, granting the other end `window` bytes.
    pub(crate) fn new(stream: Arc<TcpStream>, window: u32, stats: Arc<PortalStats>) -> Self {
        let window = u64::from(window);
        Self {
            shared: Mutex::new(Shared::default()),
            stream,
            window,
            threshold: window / 4,
            stats,
            wake: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic cannot leave the state half-updated in a way that matters more than the
        // panic itself: the session ends either way.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next message, for the opening exchange (before [`Inbox::start`]); `None` once
    /// closed.
    pub(crate) async fn recv(&self) -> Option<Message> {
        loop {
            {
                let mut s = self.lock();
                if let Some(m) = s.inbox.pop_front() {
                    drop(s);
                    self.room.notify_waiters();
                    return Some(m);
                }
                if s.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// The session runs: from now on `Data` may go straight to the socket.
    pub(crate) fn start(&self) {
        self.lock().running = true;
    }

    /// Resolves when the session's task has something to do (or may have).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Everything waiting for the session's task.
    pub(crate) fn take(&self) -> Work {
        let mut s = self.lock();
        let messages = std::mem::take(&mut s.inbox);
        s.handling = !messages.is_empty();
        let credit = (s.to_return >= self.threshold).then(|| {
            let n = u32::try_from(s.to_return).unwrap_or(u32::MAX);
            s.to_return -= u64::from(n);
            s.outstanding -= u64::from(n);
            n
        });
        let work = Work {
            messages,
            failure: s.failure.take(),
            credit,
            taken: s.taken,
        };
        drop(s);
        if !work.messages.is_empty() {
            self.room.notify_waiters();
        }
        work
    }

    /// The session's task has handled what it took: `Data` may be written directly again.
    pub(crate) fn handled(&self) {
        self.lock().handling = false;
    }

    /// Messages taken so far, directly or for the session's task.
    pub(crate) fn taken(&self) -> u64 {
        self.lock().taken
    }

    /// Whether queued data waits for the session's task to write it (nobody writes now).
    pub(crate) fn needs_writing(&self) -> bool {
        let s = self.lock();
        !s.outbox.is_empty() && !s.writing
    }

    /// Whether everything the other end sent has been written.
    pub(crate) fn is_written(&self) -> bool {
        let s = self.lock();
        s.outbox.is_empty() && !s.writing
    }

    /// Queue `data` the session's task took from its inbox, after the checks a direct write
    /// makes.
    pub(crate) fn accept(&self, data: Bytes) -> Result<(), String> {
        let mut s = self.lock();
        let c = self.admit(&mut s, data.len())?;
        s.outbox.push_back((data, c));
        Ok(())
    }

    /// The other end has ended its stream: any later `Data` is a violation.
    pub(crate) fn end_of_stream(&self) {
        self.lock().peer_ended = true;
    }

    /// Charge `len` bytes of `Data` to the other end's credit.
    fn admit(&self, s: &mut Shared, len: usize) -> Result<u64, String> {
        if s.peer_ended {
            return Err("data after the end of stream".into());
        }
        let c = cost(len);
        let used = s.outstanding + c;
        if used > self.window {
            return Err(format!(
                "{used} bytes of credit used, {} granted",
                self.window
            ));
        }
        s.outstanding = used;
        Ok(c)
    }

    /// Write what is queued, in one vectored write, if the socket takes it now. `None` if
    /// there was nothing to write or someone else writes; `Ok(0)` if the socket takes no
    /// more; `WouldBlock` if it is not writable after all.
    pub(crate) fn write_queued(&self) -> Option<io::Result<usize>> {
        let pieces: Vec<Bytes> = {
            let mut s = self.lock();
            if s.writing || s.outbox.is_empty() {
                return None;
            }
            s.writing = true;
            s.outbox
                .iter()
                .take(MAX_WRITE_SLICES)
                .map(|(b, _)| b.clone())
                .collect()
        };
        let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
        for (slot, b) in slices.iter_mut().zip(&pieces) {
            *slot = IoSlice::new(b);
        }
        let filled = pieces.len();
        let written = self
            .stream
            .try_write_vectored(slices.get(..filled).unwrap_or_default());
        let mut s = self.lock();
        s.writing = false;
        if let Ok(n) = written {
            self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            let mut left = n;
            while let Some((b, c)) = s.outbox.front_mut() {
                let k = left.min(b.len());
                b.advance(k);
                left -= k;
                if !b.is_empty() {
                    break;
                }
                s.to_return += *c;
                s.outbox.pop_front();
            }
        }
        Some(written)
    }

    /// Close: every later message is refused, and what waits is dropped.
    pub(crate) fn close(&self) {
        {
            let mut s = self.lock();
            s.closed = true;
            s.inbox.clear();
            s.outbox.clear();
        }
        self.room.notify_waiters();
        self.wake.notify_one();
    }

    /// Write `data` (which cost `c`) to the socket now, as far as it takes it; queue the rest
    /// for the session's task. Called with the writing turn held and the lock released.
    fn write_now(&self, data: Bytes, c: u64) {
        let mut done = 0;
        let result = loop {
            match self.stream.try_write(data.get(done..).unwrap_or_default()) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    if done == data.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.stats
            .bytes_out
            .fetch_add(done as u64, Ordering::Relaxed);
        let mut s = self.lock();
        s.writing = false;
        let mut wake = !s.outbox.is_empty();
        match result {
            Err(e) => {
                s.failure.get_or_insert(Failure::Write(e));
                wake = true;
            }
            Ok(()) if done < data.len() => {
                s.outbox.push_front((data.slice(done..), c));
                wake = true;
            }
            Ok(()) => {
                s.to_return += c;
                // The session passes the end of stream on once everything is written.
                wake |= s.to_return >= self.threshold || s.peer_ended;
            }
        }
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }
}

impl MessageSink for Inbox {
    fn try_deliver(&self, message: Message) -> Result<(), SinkError> {
        let mut s = self.lock();
        if s.closed {
            return Err(SinkError::Closed(message));
        }
        let direct = s.running
            && s.inbox.is_empty()
            && !s.handling
            && s.failure.is_none()
            && message.undeliverable().is_none();
        let data = match direct.then(|| PortalMessage::decode(&message.payload)) {
            Some(Ok(PortalMessage::Data(data))) => data,
            _ => {
                if s.inbox.len() >= INBOX_BOUND {
                    return Err(SinkError::Full(message));
                }
                s.inbox.push_back(message);
                s.taken += 1;
                drop(s);
                self.wake.notify_one();
                return Ok(());
            }
        };
        s.taken += 1;
        let c = match self.admit(&mut s, data.len()) {
            Ok(c) => c,
            Err(what) => {
                s.failure.get_or_insert(Failure::Violation(what));
                drop(s);
                self.wake.notify_one();
                return Ok(());
            }
        };
        if s.writing || !s.outbox.is_empty() {
            s.outbox.push_back((data, c));
            drop(s);
            self.wake.notify_one();
            return Ok(());
        }
        s.writing = true;
        drop(s);
        self.write_now(data, c);
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(async move {
            loop {
                let room = self.room.notified();
                let mut room = std::pin::pin!(room);
                room.as_mut().enable();
                {
                    let s = self.lock();
                    if s.closed || s.inbox.len() < INBOX_BOUND {
                        return;
                    }
                }
                room.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kith_node::Route;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::portal::MIN_WINDOW;

    /// An inbox writing to one end of a loopback connection, and the other end.
    async fn inbox(window: u32) -> (Inbox, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        let stats = Arc::new(PortalStats::default());
        (Inbox::new(Arc::new(near), window, stats), far)
    }

    fn data(bytes: &[u8]) -> Message {
        let payload = PortalMessage::Data(Bytes::copy_from_slice(bytes)).encode();
        Message::new(Route::default(), Route::default(), payload)
    }

    /// As the session's task does: handle what waits (only `Data` here), then write.
    fn handle_and_write(inbox: &Inbox) {
        handle_taken_and_write(inbox, inbox.take());
    }

    /// As the session's task does with `work` it took: handle it, then write.
    fn handle_taken_and_write(inbox: &Inbox, work: Work) {
        for m in work.messages {
            let Ok(PortalMessage::Data(d)) = PortalMessage::decode(&m.payload) else {
                panic!("only data was sent");
            };
            inbox.accept(d).unwrap();
        }
        inbox.handled();
        while inbox.needs_writing() {
            inbox.write_queued().unwrap().unwrap();
        }
    }

    async fn read_exactly(far: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), far.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_running_session_s_data_goes_to_the_socket_without_its_task() {
        let (inbox, mut far) = inbox(MIN_WINDOW).await;
        inbox.start();
        inbox.try_deliver(data(b"direct")).unwrap();
        // Nothing was left for the session's task: the delivering call wrote it.
        assert!(inbox.take().messages.is_empty());
        assert!(!inbox.needs_writing());
        assert_eq!(read_exactly(&mut far, 6).await, b"direct");
    }

    #[tokio::test]
    async fn data_the_session_took_is_not_overtaken_by_data_delivered_meanwhile() {
        let (inbox, mut far) = inbox(MIN_WINDOW).await;
        // Before the session runs, everything waits for its task.
        inbox.try_deliver(data(b"first ")).unwrap();
        inbox.start();
        let work = inbox.take();
        assert_eq!(work.messages.len(), 1);
        // Delivered while the task still handles "first ": it must wait its turn.
        inbox.try_deliver(data(b"second")).unwrap();
        handle_taken_and_write(&inbox, work);
        handle_and_write(&inbox);
        assert_eq!(read_exactly(&mut far, 12).await, b"first second");
    }

    #[tokio::test]
    async fn data_beyond_the_granted_window_ends_the_session_as_a_violation() {
        let (inbox, _far) = inbox(MIN_WINDOW).await;
        inbox.start();
        // Each costs its length plus 8 KiB: two of 24 KiB fit in 64 KiB, a third does not.
        let chunk = vec![7u8; 24 * 1024];
        // (Credit comes back only when the session's task takes it and sends it.)
        inbox.try_deliver(data(&chunk)).unwrap();
        inbox.try_deliver(data(&chunk)).unwrap();
        inbox.try_deliver(data(&chunk)).unwrap();
        let failure = inbox.take().failure;
        assert!(
            matches!(&failure, Some(Failure::Violation(what)) if what.contains("granted")),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn data_after_the_end_of_stream_ends_the_session_as_a_violation() {
        let (inbox, _far) = inbox(MIN_WINDOW).await;
        inbox.start();
        inbox.end_of_stream();
        inbox.try_deliver(data(b"late")).unwrap();
        let failure = inbox.take().failure;
        assert!(
            matches!(&failure, Some(Failure::Violation(what)) if what.contains("end of stream")),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn written_data_asks_for_its_credit_back_once_a_quarter_window_is_due() {
        let (inbox, mut far) = inbox(MIN_WINDOW).await;
        inbox.start();
        // A quarter of 64 KiB is 16 KiB: one byte costs 8 KiB + 1, two cost more.
        inbox.try_deliver(data(b"a")).unwrap();
        assert_eq!(inbox.take().credit, None);
        inbox.try_deliver(data(b"b")).unwrap();
        read_exactly(&mut far, 2).await;
        assert_eq!(inbox.take().credit, Some(2 * (8 * 1024 + 1)));
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_and_a_full_one_pushes_back() {
        let (inbox, _far) = inbox(MIN_WINDOW).await;
        // Before the session runs nothing is written, so pings fill the inbox.
        let ping = || {
            Message::new(
                Route::default(),
                Route::default(),
                PortalMessage::Ping.encode(),
            )
        };
        for _ in 0..INBOX_BOUND {
            inbox.try_deliver(ping()).unwrap();
        }
        assert!(matches!(inbox.try_deliver(ping()), Err(SinkError::Full(_))));
        let ready = inbox.ready();
        assert_eq!(inbox.take().messages.len(), INBOX_BOUND);
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .unwrap();
        inbox.close();
        assert!(matches!(
            inbox.try_deliver(ping()),
            Err(SinkError::Closed(_))
        ));
    }
}
