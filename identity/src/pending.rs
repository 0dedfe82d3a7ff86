//! A listener's unfinished handshakes, and the fair shares of them each source and each
//! connection may hold.
//!
//! A first handshake message costs the responder two Diffie-Hellman operations and a slot
//! held until the handshake ends (up to its deadline). Without shares, one connection that
//! sprays first messages fills the node-wide table and every newcomer is refused. So each
//! handshake that arrives over a TCP connection is counted three ways — node-wide, per
//! source (an IPv4 address, an IPv6 /64) and per connection — and a source also has a rate
//! of handshakes it may start per second. The per-source and per-connection shares of
//! unfinished handshakes bind once the node-wide table is a quarter full
//! ([`contended`]): a quiet node lets one host open a burst of channels at once (an
//! inlet taking a burst of connections), a busy one shares. When the node-wide table is
//! full, a newcomer
//! from a source holding at least two fewer than the heaviest source still gets in: the
//! heaviest source's oldest unfinished handshake is abandoned for it.
//!
//! Handshakes that arrive through another secure channel come from an authenticated peer
//! (a relay forwards every client's over one channel) and count node-wide only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kith_node::Address;
use kith_transport::source::Source;
use tokio_util::sync::CancellationToken;

/// 1,024: unfinished handshakes a listener holds at once, node-wide. Each holds a Noise
/// state and a task (a few KiB) until it completes or its 10 s deadline passes.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// 128: unfinished handshakes one source may hold at once. A handshake completes in one
/// round trip, so even a host that opens a burst of channels at once (a client node
/// enrolling fifty identities, an inlet taking fifty connections) stays under it; eight
/// sources are needed to fill the node-wide table, which then sheds the heaviest.
pub const MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 128;

/// 64: unfinished handshakes one TCP connection may hold at once. A node opens its
/// channels to one peer over one connection; a connection spraying first messages holds
/// a quarter of the node-wide table (before the shares bind) at most.
pub const MAX_PENDING_HANDSHAKES_PER_CONNECTION: usize = 64;

/// 500 per second: handshakes one source may start, on average. A responder completes
/// about 2,000 a second per core (release build), so one source takes at most about a
/// quarter of a two-core node; an inlet opens a channel per connection it accepts, so a
/// busy one behind one address still fits.
pub const HANDSHAKE_RATE_PER_SOURCE: u32 = 500;

/// 1,000: handshakes a quiet source may start at once before its rate applies.
pub const HANDSHAKE_BURST_PER_SOURCE: u32 = 1000;

/// 16,384: secure channels a listener's peers hold open at once, node-wide. An idle
/// channel costs about 19 KiB, so the cap bounds them at some 300 MiB; a project node of a
/// few thousand members holds one or two per member.
pub const MAX_CHANNELS: usize = 16_384;

/// 1,024: secure channels the peers at one source hold open at once through the listener.
/// A node keeps a channel or two per peer, so this is room for hundreds of nodes behind
/// one address; a source past it is refused as busy until it closes some.
pub const MAX_CHANNELS_PER_SOURCE: usize = 1024;

/// 4,096: sources whose handshake rate is tracked at once. Past it, the sources that have
/// been quiet longest (whose allowance is full again, so forgetting them changes nothing)
/// are forgotten first; if none is, new sources share one allowance until some are.
pub const MAX_RATE_SOURCES: usize = 4096;

/// The caps on a listener's unfinished handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Node-wide ([`MAX_PENDING_HANDSHAKES`]).
    pub max_pending: usize,
    /// Per source ([`MAX_PENDING_HANDSHAKES_PER_SOURCE`]).
    pub max_pending_per_source: usize,
    /// Per TCP connection ([`MAX_PENDING_HANDSHAKES_PER_CONNECTION`]).
    pub max_pending_per_connection: usize,
    /// Handshakes a source may start per second ([`HANDSHAKE_RATE_PER_SOURCE`]).
    pub rate_per_source: u32,
    /// Handshakes a quiet source may start at once ([`HANDSHAKE_BURST_PER_SOURCE`]).
    pub burst_per_source: u32,
    /// Channels open through the listener, node-wide ([`MAX_CHANNELS`]).
    pub max_channels: usize,
    /// Channels open through the listener from one source ([`MAX_CHANNELS_PER_SOURCE`]).
    pub max_channels_per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_pending: MAX_PENDING_HANDSHAKES,
            max_pending_per_source: MAX_PENDING_HANDSHAKES_PER_SOURCE,
            max_pending_per_connection: MAX_PENDING_HANDSHAKES_PER_CONNECTION,
            rate_per_source: HANDSHAKE_RATE_PER_SOURCE,
            burst_per_source: HANDSHAKE_BURST_PER_SOURCE,
            max_channels: MAX_CHANNELS,
            max_channels_per_source: MAX_CHANNELS_PER_SOURCE,
        }
    }
}

/// Why a handshake was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node-wide table is full and no source holds two more than this one's.
    Full,
    /// This source holds its share.
    Source,
    /// This connection holds its share.
    Connection,
    /// This source started its allowance of handshakes this second.
    Rate,
    /// The node holds as many channels as it takes.
    Channels,
    /// This source holds as many channels as it may.
    SourceChannels,
}

impl Refusal {
    /// What it means, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Full => "too many unfinished handshakes",
            Self::Source => "too many unfinished handshakes from this source",
            Self::Connection => "too many unfinished handshakes on this connection",
            Self::Rate => "too many handshakes started from this source this second",
            Self::Channels => "too many secure channels open",
            Self::SourceChannels => "too many secure channels open from this source",
        }
    }
}

/// Where a handshake came from, as far as the caps are concerned.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// Its source, when it came over a TCP connection.
    pub source: Option<Source>,
    /// The connection it came over.
    pub connection: Option<Address>,
}

/// A listener's unfinished handshakes. Clones share it.
#[derive(Clone, Default)]
pub struct PendingHandshakes(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    total: usize,
    next_id: u64,
    /// Per source, its unfinished handshakes, oldest first.
    by_source: HashMap<Source, VecDeque<Entry>>,
    by_connection: HashMap<Address, usize>,
    rates: HashMap<Source, Allowance>,
    /// Shared by new sources while [`MAX_RATE_SOURCES`] are tracked.
    overflow: Option<Allowance>,
    /// Handshakes abandoned so far for a lighter source.
    shed: u64,
    /// Handshakes that completed, and that ended otherwise (refused, broken, timed out),
    /// so far; a shed one counts in `shed` alone.
    established: u64,
    failed: u64,
    /// Channels open through the listener, node-wide and per source.
    channels: usize,
    channels_by_source: HashMap<Source, usize>,
}

struct Entry {
    id: u64,
    connection: Option<Address>,
    abandon: CancellationToken,
}

/// A token bucket: `tokens` at `at`, refilled at the source rate up to the burst.
#[derive(Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn full(limits: &HandshakeLimits, now: Instant) -> Self {
        Self {
            tokens: f64::from(limits.burst_per_source),
            at: now,
        }
    }

    fn refill(&mut self, limits: &HandshakeLimits, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limits.rate_per_source))
            .min(f64::from(limits.burst_per_source));
        self.at = now;
    }

    fn is_full(&self, limits: &HandshakeLimits, now: Instant) -> bool {
        let mut a = *self;
        a.refill(limits, now);
        a.tokens >= f64::from(limits.burst_per_source)
    }

    fn take(&mut self, limits: &HandshakeLimits, now: Instant) -> bool {
        self.refill(limits, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl PendingHandshakes {
    /// Unfinished handshakes now.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unfinished handshakes abandoned so far to make room for a lighter source.
    pub fn shed(&self) -> u64 {
        self.lock().shed
    }

    /// Handshakes completed so far.
    pub fn established(&self) -> u64 {
        self.lock().established
    }

    /// Handshakes that ended without a channel so far (refused, broken or timed out), other
    /// than those shed.
    pub fn failed(&self) -> u64 {
        self.lock().failed
    }

    /// Channels open through the listener now.
    pub fn channels(&self) -> usize {
        self.lock().channels
    }

    /// Unfinished handshakes from `source` now.
    pub fn from_source(&self, source: Source) -> usize {
        self.lock().by_source.get(&source).map_or(0, VecDeque::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a place for a handshake that arrived as `arrival`, at `now`, or say why not.
    pub fn take(
        &self,
        limits: &HandshakeLimits,
        arrival: &Arrival,
        now: Instant,
    ) -> Result<PendingSlot, Refusal> {
        let mut t = self.lock();
        let theirs = arrival
            .source
            .and_then(|s| t.by_source.get(&s))
            .map_or(0, VecDeque::len);
        if t.channels >= limits.max_channels {
            return Err(Refusal::Channels);
        }
        if let Some(source) = arrival.source {
            if t.channels_by_source.get(&source).copied().unwrap_or(0)
                >= limits.max_channels_per_source
            {
                return Err(Refusal::SourceChannels);
            }
            let shares_bind = contended(limits, t.total);
            if shares_bind && theirs >= limits.max_pending_per_source {
                return Err(Refusal::Source);
            }
            if shares_bind
                && let Some(c) = &arrival.connection
                && t.by_connection.get(c).copied().unwrap_or(0) >= limits.max_pending_per_connection
            {
                return Err(Refusal::Connection);
            }
            if !t.allow_rate(limits, source, now) {
                return Err(Refusal::Rate);
            }
        }
        if t.total >= limits.max_pending && !t.shed_for(theirs) {
            return Err(Refusal::Full);
        }
        t.next_id += 1;
        let id = t.next_id;
        let abandon = CancellationToken::new();
        t.total += 1;
        // Without a source it is counted node-wide only, in `total`.
        if let Some(source) = arrival.source {
            if let Some(c) = &arrival.connection {
                *t.by_connection.entry(c.clone()).or_default() += 1;
            }
            t.by_source.entry(source).or_default().push_back(Entry {
                id,
                connection: arrival.connection.clone(),
                abandon: abandon.clone(),
            });
        }
        Ok(PendingSlot {
            table: self.clone(),
            source: arrival.source,
            id,
            abandon,
            completed: false,
        })
    }
}

impl Table {
    /// Whether `source` may start a handshake now; takes from its allowance if so.
    fn allow_rate(&mut self, limits: &HandshakeLimits, source: Source, now: Instant) -> bool {
        if let Some(a) = self.rates.get_mut(&source) {
            return a.take(limits, now);
        }
        if self.rates.len() >= MAX_RATE_SOURCES {
            // Forget the sources whose allowance is full again: they are as if new.
            self.rates.retain(|_, a| !a.is_full(limits, now));
        }
        if self.rates.len() >= MAX_RATE_SOURCES {
            return self
                .overflow
                .get_or_insert_with(|| Allowance::full(limits, now))
                .take(limits, now);
        }
        let mut a = Allowance::full(limits, now);
        let allowed = a.take(limits, now);
        self.rates.insert(source, a);
        allowed
    }

    /// Abandon the oldest unfinished handshake of the heaviest source, if it holds at least
    /// two more than `theirs`. Whether one was.
    fn shed_for(&mut self, theirs: usize) -> bool {
        let Some((heaviest, held)) = self
            .by_source
            .iter()
            .max_by_key(|(_, q)| q.len())
            .map(|(s, q)| (*s, q.len()))
        else {
            return false;
        };
        if held < theirs + 2 {
            return false;
        }
        let Some(entry) = self
            .by_source
            .get_mut(&heaviest)
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        self.forget(heaviest, &entry);
        entry.abandon.cancel();
        self.shed += 1;
        true
    }

    /// Uncount `entry` of `source`, which has left its queue.
    fn forget(&mut self, source: Source, entry: &Entry) {
        self.total = self.total.saturating_sub(1);
        if self.by_source.get(&source).is_some_and(VecDeque::is_empty) {
            self.by_source.remove(&source);
        }
        if let Some(c) = &entry.connection
            && let Some(n) = self.by_connection.get_mut(c)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_connection.remove(c);
            }
        }
    }
}

/// One unfinished handshake counted in a [`PendingHandshakes`]; uncounted when dropped
/// (unless it was abandoned for a newcomer, which uncounted it then).
pub struct PendingSlot {
    table: PendingHandshakes,
    source: Option<Source>,
    id: u64,
    abandon: CancellationToken,
    /// Set by [`established`](Self::established) and [`refused`](Self::refused), so that
    /// dropping it counts no failure.
    completed: bool,
}

impl PendingSlot {
    /// Fires when the handshake is abandoned to make room for a lighter source.
    pub fn abandoned(&self) -> &CancellationToken {
        &self.abandon
    }

    /// The handshake completed: it no longer counts as unfinished, and its channel counts
    /// against the channel caps until the returned place is dropped.
    pub fn established(mut self) -> ChannelSlot {
        self.completed = true;
        let mut t = self.table.lock();
        t.established += 1;
        t.channels += 1;
        if let Some(source) = self.source {
            *t.channels_by_source.entry(source).or_default() += 1;
        }
        drop(t);
        ChannelSlot {
            table: self.table.clone(),
            source: self.source,
        }
    }

    /// The handshake's first message was refused, and counted as such by the listener: it
    /// no longer counts as unfinished, nor as a failure.
    pub fn refused(mut self) {
        self.completed = true;
    }

    fn release(&self) {
        let mut t = self.table.lock();
        if !self.completed && !self.abandon.is_cancelled() {
            t.failed += 1;
        }
        match self.source {
            None => t.total = t.total.saturating_sub(1),
            Some(source) => {
                let Some(queue) = t.by_source.get_mut(&source) else {
                    return;
                };
                let Some(at) = queue.iter().position(|e| e.id == self.id) else {
                    return; // abandoned: uncounted then
                };
                let Some(entry) = queue.remove(at) else {
                    return;
                };
                t.forget(source, &entry);
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// One channel open through a listener, counted against its channel caps until dropped.
pub struct ChannelSlot {
    table: PendingHandshakes,
    source: Option<Source>,
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.channels = t.channels.saturating_sub(1);
        if let Some(source) = self.source
            && let Some(n) = t.channels_by_source.get_mut(&source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.channels_by_source.remove(&source);
            }
        }
    }
}

/// Whether a table holding `pending` unfinished handshakes is contended: a quarter full or
/// more. From there on each source and each connection holds at most its share.
pub fn contended(limits: &HandshakeLimits, pending: usize) -> bool {
    pending >= limits.max_pending / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(last: u8) -> Option<Source> {
        Some(Source::of(std::net::IpAddr::from([127, 0, 0, last])))
    }

    fn arrival(last: u8, connection: &str) -> Arrival {
        Arrival {
            source: source(last),
            connection: Some(Address::local(connection)),
        }
    }

    fn small() -> HandshakeLimits {
        HandshakeLimits {
            max_pending: 8,
            max_pending_per_source: 4,
            max_pending_per_connection: 2,
            rate_per_source: 10,
            burst_per_source: 20,
            max_channels: 100,
            max_channels_per_source: 100,
        }
    }

    #[test]
    fn a_connection_holds_at_most_its_share_and_gets_it_back() {
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let a = table.take(&small(), &arrival(2, "c1"), now).unwrap();
        let _b = table.take(&small(), &arrival(2, "c1"), now).unwrap();
        assert_eq!(
            table.take(&small(), &arrival(2, "c1"), now).err(),
            Some(Refusal::Connection)
        );
        // Another connection from the same source still may, up to the source's share.
        let _c = table.take(&small(), &arrival(2, "c2"), now).unwrap();
        drop(a);
        let _d = table.take(&small(), &arrival(2, "c1"), now).unwrap();
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_quiet_table_lets_one_connection_burst_past_its_share() {
        let limits = HandshakeLimits {
            max_pending: 100,
            burst_per_source: 100,
            ..small()
        };
        let table = PendingHandshakes::default();
        let now = Instant::now();
        // Shares bind from 25 unfinished handshakes on: until then one connection may
        // hold more than its 2.
        let burst: Vec<_> = (0..25)
            .map(|_| table.take(&limits, &arrival(2, "c1"), now).unwrap())
            .collect();
        assert!(contended(&limits, table.len()));
        assert_eq!(
            table.take(&limits, &arrival(2, "c1"), now).err(),
            Some(Refusal::Source)
        );
        assert!(table.take(&limits, &arrival(3, "d1"), now).is_ok());
        drop(burst);
    }

    #[test]
    fn a_source_holds_at_most_its_share_over_many_connections() {
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let held: Vec<_> = (0..4)
            .map(|i| {
                table
                    .take(&small(), &arrival(2, &format!("c{i}")), now)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            table.take(&small(), &arrival(2, "c9"), now).err(),
            Some(Refusal::Source)
        );
        assert!(table.take(&small(), &arrival(3, "d1"), now).is_ok());
        drop(held);
        assert_eq!(table.from_source(source(2).unwrap()), 0);
    }

    /// Room for four unfinished handshakes, which one source on one connection may fill.
    fn four_for_anyone() -> HandshakeLimits {
        HandshakeLimits {
            max_pending: 4,
            max_pending_per_source: 4,
            max_pending_per_connection: 4,
            ..small()
        }
    }

    #[test]
    fn a_full_table_sheds_the_heaviest_sources_oldest_for_a_quiet_newcomer() {
        let limits = four_for_anyone();
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let heavy: Vec<_> = (0..4)
            .map(|_| table.take(&limits, &arrival(2, "c1"), now).unwrap())
            .collect();
        assert_eq!(table.len(), 4);
        let newcomer = table.take(&limits, &arrival(3, "d1"), now).unwrap();
        assert!(
            heavy[0].abandoned().is_cancelled(),
            "the oldest is shed first"
        );
        assert!(!heavy[1].abandoned().is_cancelled());
        assert_eq!(table.len(), 4);
        // Dropping the shed one does not uncount anything twice.
        drop(heavy);
        assert_eq!(table.len(), 1);
        drop(newcomer);
        assert!(table.is_empty());
    }

    #[test]
    fn each_handshake_ends_counted_once_as_established_failed_or_shed() {
        let limits = four_for_anyone();
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let counts = |t: &PendingHandshakes| (t.established(), t.failed(), t.shed());

        let place = table
            .take(&limits, &arrival(2, "c1"), now)
            .unwrap()
            .established();
        assert_eq!(counts(&table), (1, 0, 0));
        drop(place);
        assert_eq!(
            counts(&table),
            (1, 0, 0),
            "a channel that ends is no failed handshake"
        );

        drop(table.take(&limits, &arrival(2, "c1"), now).unwrap());
        assert_eq!(counts(&table), (1, 1, 0), "dropped unfinished: failed");

        table
            .take(&limits, &arrival(2, "c1"), now)
            .unwrap()
            .refused();
        assert_eq!(
            counts(&table),
            (1, 1, 0),
            "refused at once: the listener counts it"
        );

        let heavy: Vec<_> = (0..4)
            .map(|_| table.take(&limits, &arrival(2, "c1"), now).unwrap())
            .collect();
        let newcomer = table.take(&limits, &arrival(3, "d1"), now).unwrap();
        drop(heavy);
        // One shed, three others ended unfinished.
        assert_eq!(counts(&table), (1, 4, 1));
        drop(newcomer.established());
        assert_eq!(counts(&table), (2, 4, 1));
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_refuses_a_source_as_heavy_as_the_heaviest() {
        let limits = HandshakeLimits {
            max_pending: 4,
            ..small()
        };
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let _held: Vec<_> = [(2, "a"), (2, "b"), (3, "c"), (3, "d")]
            .iter()
            .map(|(s, c)| table.take(&limits, &arrival(*s, c), now).unwrap())
            .collect();
        // 127.0.0.3 holds 2, as many as the heaviest: shedding would not be fairer.
        assert_eq!(
            table.take(&limits, &arrival(3, "e"), now).err(),
            Some(Refusal::Full)
        );
        // A source holding none gets in.
        assert!(table.take(&limits, &arrival(4, "f"), now).is_ok());
    }

    #[test]
    fn a_source_starts_its_burst_then_its_rate() {
        let limits = HandshakeLimits {
            max_pending: 1000,
            max_pending_per_source: 1000,
            max_pending_per_connection: 1000,
            rate_per_source: 10,
            burst_per_source: 20,
            ..small()
        };
        let table = PendingHandshakes::default();
        let now = Instant::now();
        for _ in 0..20 {
            drop(table.take(&limits, &arrival(2, "c"), now).unwrap());
        }
        assert_eq!(
            table.take(&limits, &arrival(2, "c"), now).err(),
            Some(Refusal::Rate)
        );
        // Another source is not held back.
        assert!(table.take(&limits, &arrival(3, "c"), now).is_ok());
        // A tenth of a second later, one more.
        let later = now + std::time::Duration::from_millis(100);
        assert!(table.take(&limits, &arrival(2, "c"), later).is_ok());
        assert_eq!(
            table.take(&limits, &arrival(2, "c"), later).err(),
            Some(Refusal::Rate)
        );
    }

    #[test]
    fn handshakes_without_a_source_count_node_wide_only() {
        let limits = HandshakeLimits {
            max_pending: 3,
            ..small()
        };
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let nested = Arrival {
            source: None,
            connection: Some(Address::local("sc-outer")),
        };
        let held: Vec<_> = (0..3)
            .map(|_| table.take(&limits, &nested, now).unwrap())
            .collect();
        assert_eq!(table.take(&limits, &nested, now).err(), Some(Refusal::Full));
        drop(held);
        assert!(table.is_empty());
    }

    #[test]
    fn established_channels_count_against_the_channel_caps_until_they_end() {
        let limits = HandshakeLimits {
            max_channels: 3,
            max_channels_per_source: 2,
            ..small()
        };
        let table = PendingHandshakes::default();
        let now = Instant::now();
        let open: Vec<_> = (0..2)
            .map(|i| {
                table
                    .take(&limits, &arrival(2, &format!("c{i}")), now)
                    .unwrap()
                    .established()
            })
            .collect();
        assert!(
            table.is_empty(),
            "an established channel is no longer unfinished"
        );
        assert_eq!(table.channels(), 2);
        assert_eq!(
            table.take(&limits, &arrival(2, "c9"), now).err(),
            Some(Refusal::SourceChannels)
        );
        let third = table
            .take(&limits, &arrival(3, "d"), now)
            .unwrap()
            .established();
        assert_eq!(
            table.take(&limits, &arrival(4, "e"), now).err(),
            Some(Refusal::Channels)
        );
        drop(open);
        drop(third);
        assert_eq!(table.channels(), 0);
        assert!(table.take(&limits, &arrival(2, "c9"), now).is_ok());
    }

    #[test]
    fn the_rate_table_is_capped_and_forgets_quiet_sources() {
        let limits = small();
        let table = PendingHandshakes::default();
        let now = Instant::now();
        for i in 0..MAX_RATE_SOURCES + 10 {
            let ip = std::net::IpAddr::from(u32::try_from(i).unwrap().to_be_bytes());
            let a = Arrival {
                source: Some(Source::of(ip)),
                connection: None,
            };
            drop(table.take(&limits, &a, now).unwrap());
        }
        assert!(table.lock().rates.len() <= MAX_RATE_SOURCES);
    }
}
