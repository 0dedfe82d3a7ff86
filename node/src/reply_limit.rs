//! How many error messages one sender can draw from a node (DESIGN §2: error messages are
//! rate-limited per connection): a token bucket per sender, in a table with a named cap so
//! that many senders cannot grow it without bound either.
//!
//! Pure bookkeeping over a clock the caller reads, so it is tested without waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Address, Message, Origin};

/// How fast a node answers one sender's undeliverable messages with error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReplyRate {
    /// Error messages per second, sustained.
    pub per_second: u32,
    /// Error messages at once, after a quiet spell. 0 sends none at all.
    pub burst: u32,
}

/// 200 per second, in bursts of 200, per connection: one connection often carries many
/// clients (every channel a node opens to a peer, every session of a portal), and each of
/// them should learn at once that its message was refused, so the bound sits well above
/// what honest traffic meets (a refusal bench that fires requests back to back stays
/// under it). A peer that sends nothing but undeliverable messages still gets back at
/// most that many small error messages, fewer than it sent as soon as it sends faster: an
/// error is never larger than what it answers, so nothing is amplified.
pub const DEFAULT_ERROR_REPLY_RATE: ErrorReplyRate = ErrorReplyRate {
    per_second: 200,
    burst: 200,
};

/// 4,096 senders: as many as a node's default connection limit. Past it, the table is swept
/// of senders whose bucket has refilled (they are no different from new ones); a sender that
/// still finds no room gets no error message.
pub const MAX_ERROR_REPLY_SENDERS: usize = 4096;

/// 1 s: the least time between two sweeps of a full table, so a flood of new senders costs
/// one pass over the table a second, not one per message.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Whom an error message goes back to, as far as rate limiting goes: the socket address the
/// message came from (through any secure channels), else the first hop of its return route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Sender {
    /// A peer's socket address.
    Socket(SocketAddr),
    /// The first hop of the return route.
    Hop(Address),
}

impl Sender {
    /// The sender of `message`; `None` if it has neither a known socket address nor a return
    /// route (then there is no one to answer).
    pub(crate) fn of(message: &Message) -> Option<Self> {
        let socket = match message.origin() {
            Origin::Transport { peer, .. } => *peer,
            Origin::SecureChannel(channel) => channel.source,
            Origin::Local => None,
        };
        socket
            .map(Self::Socket)
            .or_else(|| message.return_route.next().cloned().map(Self::Hop))
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every sender that drew an error message recently.
pub(crate) struct ReplyLimiter {
    rate: ErrorReplyRate,
    capacity: usize,
    buckets: HashMap<Sender, Bucket>,
    last_sweep: Option<Instant>,
}

impl ReplyLimiter {
    /// No sender has drawn anything yet.
    pub(crate) fn new(rate: ErrorReplyRate, capacity: usize) -> Self {
        Self {
            rate,
            capacity,
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// The rate in force.
    pub(crate) fn rate(&self) -> ErrorReplyRate {
        self.rate
    }

    /// Whether `sender` may have one more error message at `now`; if so, it is taken from
    /// its bucket.
    pub(crate) fn allow(&mut self, sender: Sender, now: Instant) -> bool {
        let rate = self.rate;
        if rate.burst == 0 {
            return false;
        }
        if let Some(bucket) = self.buckets.get_mut(&sender) {
            let tokens = refilled(bucket, rate, now);
            bucket.at = now;
            if tokens >= 1.0 {
                bucket.tokens = tokens - 1.0;
                return true;
            }
            bucket.tokens = tokens;
            return false;
        }
        if self.buckets.len() >= self.capacity {
            self.sweep(now);
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        self.buckets.insert(
            sender,
            Bucket {
                tokens: f64::from(rate.burst) - 1.0,
                at: now,
            },
        );
        true
    }

    /// Forget the senders whose bucket has refilled, at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let rate = self.rate;
        let full = f64::from(rate.burst);
        self.buckets.retain(|_, b| refilled(b, rate, now) < full);
    }

    /// How many senders are tracked.
    #[cfg(test)]
    fn senders(&self) -> usize {
        self.buckets.len()
    }
}

/// The tokens in `bucket` at `now`: what it held, plus what the rate added since, up to the
/// burst.
fn refilled(bucket: &Bucket, rate: ErrorReplyRate, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ChannelPeer;

    fn peer(n: u16) -> Sender {
        Sender::Socket(SocketAddr::from(([127, 0, 0, 1], n)))
    }

    fn allowed(limiter: &mut ReplyLimiter, sender: &Sender, now: Instant, tries: usize) -> usize {
        (0..tries)
            .filter(|_| limiter.allow(sender.clone(), now))
            .count()
    }

    #[test]
    fn a_sender_gets_its_burst_at_once_and_then_the_rate() {
        let rate = ErrorReplyRate {
            per_second: 10,
            burst: 5,
        };
        let mut limiter = ReplyLimiter::new(rate, 16);
        let t0 = Instant::now();
        assert_eq!(allowed(&mut limiter, &peer(1), t0, 20), 5);
        // Another sender has a bucket of its own.
        assert_eq!(allowed(&mut limiter, &peer(2), t0, 20), 5);
        // 10 per second: three more after 300 ms, never more than the burst after long.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(allowed(&mut limiter, &peer(1), t1, 20), 3);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(allowed(&mut limiter, &peer(1), t2, 20), 5);
    }

    #[test]
    fn a_zero_burst_sends_no_error_messages() {
        let mut limiter = ReplyLimiter::new(
            ErrorReplyRate {
                per_second: 100,
                burst: 0,
            },
            16,
        );
        assert_eq!(allowed(&mut limiter, &peer(1), Instant::now(), 3), 0);
        assert_eq!(limiter.senders(), 0);
    }

    #[test]
    fn a_full_table_refuses_new_senders_until_a_sweep_finds_refilled_ones() {
        let rate = ErrorReplyRate {
            per_second: 10,
            burst: 2,
        };
        let mut limiter = ReplyLimiter::new(rate, 3);
        let t0 = Instant::now();
        for n in 1..=3 {
            assert!(limiter.allow(peer(n), t0));
        }
        assert!(!limiter.allow(peer(4), t0), "no room, nothing refilled");
        assert_eq!(limiter.senders(), 3);
        // Every bucket has refilled by now, but the table was swept less than a second ago:
        // a flood of new senders costs one sweep a second, not one each.
        let t1 = t0 + Duration::from_millis(500);
        assert!(!limiter.allow(peer(4), t1));
        let t2 = t0 + SWEEP_INTERVAL;
        assert!(limiter.allow(peer(4), t2));
        assert_eq!(limiter.senders(), 1);
    }

    #[test]
    fn the_sender_is_the_socket_address_else_the_first_return_hop() {
        let socket = SocketAddr::from(([10, 0, 0, 1], 4000));
        let mut m = Message::new(crate::Route::from("x"), crate::Route::from("tcp-1"), "p");
        assert_eq!(Sender::of(&m), Some(Sender::Hop(Address::local("tcp-1"))));
        m.local_info.origin = Origin::Transport {
            connection: Address::local("tcp-1"),
            peer: Some(socket),
        };
        assert_eq!(Sender::of(&m), Some(Sender::Socket(socket)));
        m.local_info.origin = Origin::SecureChannel(Arc::new(ChannelPeer {
            identifier: "I00".into(),
            attributes: Default::default(),
            handshake_hash: [0; 32],
            source: None,
        }));
        assert_eq!(Sender::of(&m), Some(Sender::Hop(Address::local("tcp-1"))));
        m.return_route = crate::Route::new();
        assert_eq!(Sender::of(&m), None);
    }
}
