//! Sinks: registered addresses that take messages synchronously instead of through a mailbox
//! and a task. A transport connection is one: the sender writes straight to the socket when it
//! is not backed up, saving a task hand-off per message.
//!
//! Every sink in kith that passes what it takes on to a next hop (the connection's outbox,
//! a secure channel's encryptor and decryptor, a relay) is built on one [`DirectOrQueue`]:
//! deliver directly, in the sender's task, while nothing waits ahead; otherwise queue for a
//! drainer (the sink's own task, or its owner) that delivers with backpressure; past a named
//! bound refuse with [`SinkError::Full`], and wake [`MessageSink::ready`] waiters when the
//! drainer makes room or the sink closes.

use std::collections::VecDeque;
use std::future::Future;
use std::mem;
use std::pin::{Pin, pin};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::{ErrorClass, Message, MessageTooLarge};

/// Why a sink did not take a message; the message is handed back.
#[derive(Debug)]
pub enum SinkError {
    /// Full for now: wait for [`MessageSink::ready`] and try again.
    Full(Message),
    /// Closed for good.
    Closed(Message),
    /// This message will never be taken (it is too large, say); the sink stays open for
    /// others. The router reports it to a local sender as [`crate::RouteError::Refused`] and
    /// answers a remote one with an error message of `class`.
    Refused {
        /// The message, untouched.
        message: Message,
        /// Why, coarsely: what a remote sender is told.
        class: ErrorClass,
        /// What the sink saw, for the local sender and our log.
        reason: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl SinkError {
    /// Refuse `message` for good: it is `len` bytes where the sink takes at most `max`.
    pub fn too_large(message: Message, len: usize, max: usize) -> Self {
        Self::Refused {
            message,
            class: ErrorClass::TooLarge,
            reason: Some(Box::new(MessageTooLarge { len, max })),
        }
    }
}

/// What [`MessageSink::ready`] returns.
pub type ReadyFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Takes messages without a task of its own.
pub trait MessageSink: Send + Sync + 'static {
    /// Take `message` now, or hand it back. Must not block.
    #[expect(
        clippy::result_large_err,
        reason = "the message is handed back by value so a full sink costs no allocation"
    )]
    fn try_deliver(&self, message: Message) -> Result<(), SinkError>;

    /// Resolves when the sink may have room again, or has closed.
    fn ready(&self) -> ReadyFuture<'_>;
}

/// What a [`DirectOrQueue`] holds for its drainer, measured in the unit of its bound.
pub trait Backlog: Default {
    /// How much is held: items for a queue of messages, bytes for a byte stream.
    fn load(&self) -> usize;
}

impl<T> Backlog for VecDeque<T> {
    fn load(&self) -> usize {
        self.len()
    }
}

impl Backlog for BytesMut {
    fn load(&self) -> usize {
        self.len()
    }
}

/// The bounded "deliver directly or queue, wake when there is room" core of a sink.
///
/// A sender locks the lane ([`DirectOrQueue::lock`]), is refused if it is closed or full
/// ([`Lane::refusal`]), does whatever must happen in queue order under the same lock (seal
/// with the next nonce, open in arrival order, encode into the byte stream; that state is the
/// owner's `S`), and then either delivers directly, outside the lock, when the lane is idle,
/// or queues behind what waits. The drainer takes items off in order with
/// [`DirectOrQueue::pop`], which marks it draining until it comes back for the next, so
/// nothing overtakes the item it holds; every item it takes wakes waiting senders.
///
/// Two ways to deliver directly:
/// - [`Lane::direct_or_push`]: while the lane is idle, the sender delivers and is done; one
///   that cannot (the next hop is full) [`DirectOrQueue::push`]es the item at the back.
/// - [`Lane::claim_direct`]: the sender also holds the lane's turn until
///   [`DirectOrQueue::finish_direct`], which puts a refused item back at the front; until then
///   later items queue and the drainer takes none, so items leave in order even when several
///   tasks send at once.
///
/// The bound is checked when a sender asks, not when an item it was allowed to send is
/// queued, so the backlog can pass it by the few items in flight; it never grows further.
/// Closing refuses every later sender with [`SinkError::Closed`], hands back the backlog and
/// wakes everyone. The lock is never held across an `.await`.
pub struct DirectOrQueue<Q, S = ()> {
    lane: Mutex<LaneState<Q, S>>,
    /// At or past this [`Backlog::load`], senders are refused with [`SinkError::Full`].
    bound: usize,
    /// Tells the drainer something was queued; a wake-up while it is not waiting is kept.
    queued: Notify,
    /// Tells waiting senders there may be room again, or that the lane closed.
    room: Notify,
}

struct LaneState<Q, S> {
    state: S,
    backlog: Q,
    /// The drainer holds an item it took and has not finished with it (or, for a byte
    /// stream, owns writing until the backlog is empty): new items queue behind.
    draining: bool,
    /// A sender holds the turn ([`Lane::claim_direct`]): new items queue, the drainer waits.
    direct: bool,
    closed: bool,
}

/// A locked [`DirectOrQueue`]: its backlog, its owner's state, and the decisions made on them.
/// Unlocks when dropped or consumed.
pub struct Lane<'a, Q, S> {
    queue: &'a DirectOrQueue<Q, S>,
    guard: MutexGuard<'a, LaneState<Q, S>>,
}

impl<Q: Backlog, S> DirectOrQueue<Q, S> {
    /// An open, empty lane refusing senders at `bound` (in the unit of [`Backlog::load`]),
    /// with `state` kept under its lock.
    pub fn new(bound: usize, state: S) -> Self {
        Self {
            lane: Mutex::new(LaneState {
                state,
                backlog: Q::default(),
                draining: false,
                direct: false,
                closed: false,
            }),
            bound,
            queued: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Lock the lane. Do not hold it across an `.await`.
    pub fn lock(&self) -> Lane<'_, Q, S> {
        Lane {
            queue: self,
            guard: self.state(),
        }
    }

    fn state(&self) -> MutexGuard<'_, LaneState<Q, S>> {
        self.lane.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Close: from now on every sender is refused with [`SinkError::Closed`] and
    /// [`DirectOrQueue::ready`] resolves at once. Returns what was queued, for the owner to
    /// send on or drop; wakes waiting senders and the drainer.
    pub fn close(&self) -> Q {
        self.close_with(|_| ()).0
    }

    /// [`DirectOrQueue::close`], running `end` on the owner's state under the same lock, so
    /// no sender or drainer sees the lane closed with the state still open, or the reverse.
    pub fn close_with<R>(&self, end: impl FnOnce(&mut S) -> R) -> (Q, R) {
        let closed = {
            let mut lane = self.state();
            lane.closed = true;
            let ended = end(&mut lane.state);
            (mem::take(&mut lane.backlog), ended)
        };
        self.wake_senders();
        self.wake_drainer();
        closed
    }

    /// Resolves when the lane has room again, or has closed: what a sink's
    /// [`MessageSink::ready`] waits for.
    pub async fn ready(&self) {
        loop {
            let mut room = pin!(self.room.notified());
            // Registered before looking, so a wake-up between the look and the wait is kept.
            room.as_mut().enable();
            if self.lock().has_room_or_closed() {
                return;
            }
            room.await;
        }
    }

    /// Resolves when a sender has queued something or handed writing over
    /// ([`DirectOrQueue::wake_drainer`]); a wake-up that came while no one waited resolves the
    /// next call at once. For a drainer that does not [`DirectOrQueue::pop`].
    pub fn queued(&self) -> Notified<'_> {
        self.queued.notified()
    }

    /// Wake the drainer (or keep the wake-up for its next wait). May be called under the lock.
    pub fn wake_drainer(&self) {
        self.queued.notify_one();
    }

    /// Wake every sender waiting for room. May be called under the lock.
    pub fn wake_senders(&self) {
        self.room.notify_waiters();
    }
}

impl<T, S> DirectOrQueue<VecDeque<T>, S> {
    /// Queue `item` at the back, past the bound if need be (the sender was admitted before
    /// its next hop refused it), and wake the drainer.
    pub fn push(&self, item: T) {
        self.lock().push(item);
    }

    /// End the turn a sender took with [`Lane::claim_direct`]: `handed_back`, the item its
    /// next hop refused, goes to the front, ahead of what was queued after it; the drainer is
    /// woken if anything waits.
    pub fn finish_direct(&self, handed_back: Option<T>) {
        let mut lane = self.state();
        lane.direct = false;
        if let Some(item) = handed_back {
            lane.backlog.push_front(item);
        }
        let waiting = !lane.backlog.is_empty();
        drop(lane);
        if waiting {
            self.wake_drainer();
        }
    }

    /// The drainer's next item, in order, waiting for one; `None` once the lane is closed and
    /// nothing is left. The lane counts as draining until the drainer comes back, so nothing
    /// is delivered directly while it still holds this item.
    pub async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut lane = self.state();
                // While a sender holds the turn, it wakes us when it is done.
                if !lane.direct
                    && let Some(item) = lane.backlog.pop_front()
                {
                    lane.draining = true;
                    drop(lane);
                    self.wake_senders();
                    return Some(item);
                }
                lane.draining = false;
                if lane.closed && lane.backlog.is_empty() {
                    return None;
                }
            }
            self.queued.notified().await;
        }
    }
}

impl<Q: Backlog, S> Lane<'_, Q, S> {
    /// The owner's state, kept under the lane's lock.
    pub fn state(&self) -> &S {
        &self.guard.state
    }

    /// The owner's state, kept under the lane's lock.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.guard.state
    }

    /// What waits for the drainer.
    pub fn backlog(&self) -> &Q {
        &self.guard.backlog
    }

    /// What waits for the drainer, for an owner that fills and empties it itself (a byte
    /// stream).
    pub fn backlog_mut(&mut self) -> &mut Q {
        &mut self.guard.backlog
    }

    /// Whether the lane has closed.
    pub fn is_closed(&self) -> bool {
        self.guard.closed
    }

    /// Whether the backlog is at or past the bound.
    pub fn is_full(&self) -> bool {
        self.guard.backlog.load() >= self.queue.bound
    }

    /// Whether the drainer has taken delivery over (see [`Lane::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.guard.draining
    }

    /// Whether a sender may deliver directly without overtaking anything: nothing is queued,
    /// the drainer holds nothing, and no sender holds the turn.
    pub fn is_idle(&self) -> bool {
        self.guard.backlog.load() == 0 && !self.guard.draining && !self.guard.direct
    }

    /// How a sender is refused now, if it is: [`SinkError::Closed`] once closed (whether or
    /// not full), else [`SinkError::Full`] at the bound.
    pub fn refusal(&self) -> Option<fn(Message) -> SinkError> {
        if self.guard.closed {
            Some(SinkError::Closed)
        } else if self.is_full() {
            Some(SinkError::Full)
        } else {
            None
        }
    }

    /// Mark that the drainer has taken delivery over, or given it back; for an owner that
    /// drains without [`DirectOrQueue::pop`] (a byte stream whose socket pushed back).
    pub fn set_draining(&mut self, draining: bool) {
        self.guard.draining = draining;
    }

    /// Refuse every later sender, without taking the backlog or waking anyone yet: for an
    /// owner that closes in steps, finishing with [`DirectOrQueue::close`].
    pub fn mark_closed(&mut self) {
        self.guard.closed = true;
    }

    fn has_room_or_closed(&self) -> bool {
        self.guard.closed || !self.is_full()
    }
}

impl<T, S> Lane<'_, VecDeque<T>, S> {
    /// Queue `item` at the back, unlock, and wake the drainer.
    pub fn push(self, item: T) {
        let Self { queue, mut guard } = self;
        guard.backlog.push_back(item);
        drop(guard);
        queue.wake_drainer();
    }

    /// Hand `item` back to deliver directly if the lane is idle; otherwise queue it (as
    /// [`Lane::push`]) and return `None`. A sender whose direct delivery is refused
    /// [`DirectOrQueue::push`]es the item.
    pub fn direct_or_push(self, item: T) -> Option<T> {
        if self.is_idle() {
            return Some(item);
        }
        self.push(item);
        None
    }

    /// As [`Lane::direct_or_push`], but a sender handed its item back also holds the lane's
    /// turn, and must end it with [`DirectOrQueue::finish_direct`].
    pub fn claim_direct(mut self, item: T) -> Option<T> {
        if self.is_idle() {
            self.guard.direct = true;
            return Some(item);
        }
        self.push(item);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::*;
    use crate::Route;

    type Items = DirectOrQueue<VecDeque<u32>>;

    fn message() -> Message {
        Message::new(Route::default(), Route::default(), "m")
    }

    /// A drainer's next [`DirectOrQueue::pop`], running on its own task.
    fn drainer(q: &Arc<Items>) -> JoinHandle<Option<u32>> {
        let q = q.clone();
        tokio::spawn(async move { q.pop().await })
    }

    /// A sender waiting for [`DirectOrQueue::ready`] on its own task, seen to be waiting.
    async fn waiting_sender(q: &Arc<Items>) -> JoinHandle<()> {
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.ready().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        waiting
    }

    async fn resolves(task: JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn an_idle_lane_delivers_directly_and_a_busy_one_queues_in_order() {
        let q = Items::new(4, ());
        assert_eq!(q.lock().direct_or_push(1), Some(1));
        assert_eq!(q.lock().claim_direct(2), Some(2));
        // The turn is held: later items queue, even though nothing is queued yet.
        assert_eq!(q.lock().direct_or_push(3), None);
        assert_eq!(q.lock().claim_direct(4), None);
        // The holder's refused item goes ahead of those queued after it.
        q.finish_direct(Some(2));
        assert_eq!(*q.lock().backlog(), [2, 3, 4]);
        assert!(!q.lock().is_idle());
    }

    #[tokio::test]
    async fn the_drainer_holds_the_lane_until_it_comes_back() {
        let q = Items::new(4, ());
        q.push(1);
        assert_eq!(q.pop().await, Some(1));
        assert!(q.lock().is_draining());
        assert_eq!(q.lock().direct_or_push(2), None);
        assert_eq!(q.pop().await, Some(2));
        q.lock().set_draining(false);
        assert!(q.lock().is_idle());
    }

    #[tokio::test]
    async fn the_drainer_waits_while_a_sender_holds_the_turn() {
        let q = Arc::new(Items::new(4, ()));
        assert_eq!(q.lock().claim_direct(1), Some(1));
        q.push(2);
        let drainer = drainer(&q);
        tokio::task::yield_now().await;
        assert!(!drainer.is_finished());
        q.finish_direct(Some(1));
        assert_eq!(drainer.await.unwrap(), Some(1));
        assert_eq!(q.pop().await, Some(2));
    }

    #[test]
    fn senders_are_refused_at_the_bound_and_closed_wins() {
        let q = Items::new(2, ());
        assert!(q.lock().refusal().is_none());
        q.push(1);
        q.push(2);
        assert!(matches!(
            q.lock().refusal().map(|r| r(message())),
            Some(SinkError::Full(_))
        ));
        assert_eq!(q.close(), [1, 2]);
        q.push(3);
        q.push(4);
        assert!(matches!(
            q.lock().refusal().map(|r| r(message())),
            Some(SinkError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn a_closed_lane_ends_the_drainer_once_it_is_empty() {
        let q = Arc::new(Items::new(4, ()));
        let drainer = drainer(&q);
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(drainer.await.unwrap(), None);
    }

    #[tokio::test]
    async fn ready_resolves_when_the_drainer_makes_room_or_the_lane_closes() {
        let q = Arc::new(Items::new(1, ()));
        q.push(1);
        let waiting = waiting_sender(&q).await;
        assert_eq!(q.pop().await, Some(1));
        resolves(waiting).await;

        q.push(2);
        let waiting = waiting_sender(&q).await;
        let (backlog, phase) = q.close_with(|()| "ended");
        assert_eq!((backlog, phase), (VecDeque::from([2]), "ended"));
        resolves(waiting).await;
    }

    #[test]
    fn a_byte_stream_is_bounded_by_its_length() {
        let q: DirectOrQueue<BytesMut, u8> = DirectOrQueue::new(4, 0);
        let mut lane = q.lock();
        lane.backlog_mut().extend_from_slice(b"abc");
        assert!(!lane.is_full());
        lane.backlog_mut().extend_from_slice(b"d");
        assert!(lane.is_full());
        *lane.state_mut() = 7;
        assert_eq!(*lane.state(), 7);
    }
}
