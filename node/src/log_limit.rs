//! Repeated warnings collapsed into one line per interval with a count (issue 17: a flood of
//! hostile connections wrote 39,000 log lines in two minutes).
//!
//! A warning is keyed by its *kind* (a `&'static str`, by convention the warning's own
//! message) and its *source* ([`LogSource`]: the peer's IP address, or a small key). The
//! first warning of a key logs at once; further ones within [`DEFAULT_LOG_INTERVAL`] are only
//! counted; the first one after the interval logs again, carrying the count suppressed since
//! (`suppressed = 1234`). A burst that stops is still accounted for: [`LogLimiter::sweep`],
//! which a daemon calls every interval, logs one line per key whose interval has passed with
//! a count pending, and [`LogLimiter::flush`] does so for every key at shutdown.
//!
//! The table holds at most [`MAX_LOG_KEYS`] sources; when it is full, new sources share one
//! [`LogSource::OtherSources`] key per kind, so memory does not grow with the number of
//! peers (kinds are fixed strings at call sites, so they are few).
//!
//! A suppressed warning costs a lock and a hash lookup, never the formatting of a line.
//!
//! ```
//! use std::net::SocketAddr;
//! use kith_node::LOG_LIMITER;
//!
//! let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
//! if let Some(suppressed) = LOG_LIMITER.admit("refused a connection", peer) {
//!     tracing::warn!(%peer, suppressed, "refused a connection");
//! }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::Origin;

/// 10 s: a flood costs at most one line per kind and source every ten seconds (six a
/// minute, not thousands), while an operator watching the log still sees within seconds
/// that something is repeating and how often.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// 1,024 sources: far more peers than misbehave at once in practice, and a table of that
/// many small entries is a few tens of KiB. Past it, new sources share one key per kind
/// ([`LogSource::OtherSources`]), so a flood from many addresses costs no more memory.
pub const MAX_LOG_KEYS: usize = 1024;

/// 1 s: the least time between two prunings of a full table, so a flood of new sources costs
/// one pass over the table a second, not one per warning.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a warning comes from, as far as collapsing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// A peer's IP address. Ports are left out: a flood from one host uses many. Made with
    /// `From<IpAddr>`, an IPv6 address stands for its whole /64 (one host gets one from its
    /// router and may use any address in it, as the transport counts its caps) and an
    /// IPv4-mapped IPv6 address for that IPv4 address.
    Ip(IpAddr),
    /// This node itself: a local worker or client.
    Local,
    /// A peer whose address is not known.
    Unknown,
    /// Any other small key the caller derives (a hash of an identifier, say).
    Key(u64),
    /// Every source that found the table full.
    OtherSources,
}

impl From<IpAddr> for LogSource {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ip(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Ip(IpAddr::V4(v4)),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    Self::Ip(IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl From<SocketAddr> for LogSource {
    fn from(peer: SocketAddr) -> Self {
        Self::from(peer.ip())
    }
}

impl From<&SocketAddr> for LogSource {
    fn from(peer: &SocketAddr) -> Self {
        Self::from(peer.ip())
    }
}

impl From<Option<SocketAddr>> for LogSource {
    fn from(peer: Option<SocketAddr>) -> Self {
        peer.map_or(Self::Unknown, Self::from)
    }
}

/// The peer a message came from: its socket address where a transport or channel knows it,
/// else [`LogSource::Local`] for this node's own, else [`LogSource::Unknown`].
impl From<&Origin> for LogSource {
    fn from(origin: &Origin) -> Self {
        match origin {
            Origin::Local => Self::Local,
            Origin::Transport { peer, .. } => Self::from(*peer),
            Origin::SecureChannel(channel) => Self::from(channel.source),
        }
    }
}

impl fmt::Display for LogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Self::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Self::Local => f.write_str("local"),
            Self::Unknown => f.write_str("unknown"),
            Self::Key(k) => write!(f, "key {k:016x}"),
            Self::OtherSources => f.write_str("other sources"),
        }
    }
}

/// Warnings of one kind from one source that were counted and not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// The warning's kind, as given to [`LogLimiter::admit`].
    pub kind: &'static str,
    /// Where they came from.
    pub source: LogSource,
    /// How many were not logged.
    pub count: u64,
}

/// One key's current interval.
struct Window {
    /// When the last line for this key was logged.
    since: Instant,
    /// Warnings counted and not logged since.
    suppressed: u64,
}

impl Window {
    fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if now.saturating_duration_since(self.since) < interval {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.since = now;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[derive(Default)]
struct Table {
    windows: HashMap<(&'static str, LogSource), Window>,
    last_prune: Option<Instant>,
}

impl Table {
    /// Forget the keys whose interval passed with nothing suppressed (a new warning of theirs
    /// would log at once anyway), at most once per [`PRUNE_INTERVAL`]. Keys with a count
    /// pending stay until a sweep reports it.
    fn prune(&mut self, now: Instant, interval: Duration) {
        if self
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_INTERVAL)
        {
            return;
        }
        self.last_prune = Some(now);
        self.windows
            .retain(|_, w| w.suppressed > 0 || now.saturating_duration_since(w.since) < interval);
    }
}

/// Collapses repeated warnings of one kind from one source into one line per interval with
/// a count (see the module documentation). Thread-safe; [`LOG_LIMITER`] is the process-wide
/// one.
pub struct LogLimiter {
    interval: Duration,
    capacity: usize,
    table: Mutex<Table>,
}

impl Default for LogLimiter {
    /// [`DEFAULT_LOG_INTERVAL`] and [`MAX_LOG_KEYS`].
    fn default() -> Self {
        Self::new(DEFAULT_LOG_INTERVAL, MAX_LOG_KEYS)
    }
}

impl fmt::Debug for LogLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimiter")
            .field("interval", &self.interval)
            .field("capacity", &self.capacity)
            .field("keys", &self.lock().windows.len())
            .finish()
    }
}

impl LogLimiter {
    /// One line per `interval` for each kind and source, for at most `capacity` sources.
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity,
            table: Mutex::new(Table::default()),
        }
    }

    /// The interval in force: how often a daemon should call [`LogLimiter::sweep`].
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether to log a warning of `kind` from `source` now: `Some(n)` if so, where `n` is how
    /// many of the same were suppressed since the last line (put it in the line as
    /// `suppressed`); `None` if it is only counted.
    pub fn admit(&self, kind: &'static str, source: impl Into<LogSource>) -> Option<u64> {
        self.admit_at(kind, source.into(), Instant::now())
    }

    /// [`LogLimiter::admit`] at `now`.
    pub fn admit_at(&self, kind: &'static str, source: LogSource, now: Instant) -> Option<u64> {
        let interval = self.interval;
        let mut table = self.lock();
        if let Some(window) = table.windows.get_mut(&(kind, source)) {
            return window.admit(now, interval);
        }
        if table.windows.len() >= self.capacity {
            table.prune(now, interval);
        }
        let key = if table.windows.len() < self.capacity {
            (kind, source)
        } else {
            (kind, LogSource::OtherSources)
        };
        match table.windows.entry(key) {
            Entry::Occupied(mut window) => window.get_mut().admit(now, interval),
            Entry::Vacant(slot) => {
                slot.insert(Window {
                    since: now,
                    suppressed: 0,
                });
                Some(0)
            }
        }
    }

    /// The counts due at `now`: for every key whose interval has passed with warnings
    /// suppressed, their count, and the key starts a new interval (the report is its line).
    /// Keys whose interval passed with nothing suppressed are forgotten.
    pub fn sweep_at(&self, now: Instant) -> Vec<Suppressed> {
        let interval = self.interval;
        let mut due = Vec::new();
        self.lock().windows.retain(|&(kind, source), w| {
            if now.saturating_duration_since(w.since) < interval {
                return true;
            }
            if w.suppressed == 0 {
                return false;
            }
            due.push(Suppressed {
                kind,
                source,
                count: std::mem::take(&mut w.suppressed),
            });
            w.since = now;
            true
        });
        due
    }

    /// Every count pending, whether its interval has passed or not; the table is emptied.
    pub fn drain(&self) -> Vec<Suppressed> {
        self.lock()
            .windows
            .drain()
            .filter_map(|((kind, source), w)| {
                (w.suppressed > 0).then_some(Suppressed {
                    kind,
                    source,
                    count: w.suppressed,
                })
            })
            .collect()
    }

    /// Log the counts due now (see [`LogLimiter::sweep_at`]): call it every
    /// [`LogLimiter::interval`], so a burst that stops is reported within two intervals.
    pub fn sweep(&self) {
        for s in self.sweep_at(Instant::now()) {
            report(s);
        }
    }

    /// Log every count pending (see [`LogLimiter::drain`]): at shutdown, so no burst goes
    /// unreported.
    pub fn flush(&self) {
        for s in self.drain() {
            report(s);
        }
    }

    /// How many keys are tracked.
    pub fn keys(&self) -> usize {
        self.lock().windows.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while the table was held leaves it consistent (every update is one step).
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The line for a count that no later warning carried.
fn report(s: Suppressed) {
    warn!(
        warning = s.kind,
        source = %s.source,
        suppressed = s.count,
        "repeated warnings suppressed"
    );
}

/// The process-wide limiter, with [`DEFAULT_LOG_INTERVAL`] and [`MAX_LOG_KEYS`]: one table for
/// every node in the process, since they share one log.
pub static LOG_LIMITER: LazyLock<LogLimiter> = LazyLock::new(LogLimiter::default);

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &str = "refused a connection";

    fn ip(n: u8) -> LogSource {
        LogSource::Ip(IpAddr::from([192, 0, 2, n]))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_thousand_warnings_in_a_second_log_one_line_then_one_with_the_count() {
        let limiter = LogLimiter::new(secs(10), 16);
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            if let Some(n) = limiter.admit_at(KIND, ip(1), now) {
                lines.push(n);
            }
        }
        assert_eq!(lines, [0], "only the first logs within the interval");
        // The next one after the interval carries the count.
        assert_eq!(limiter.admit_at(KIND, ip(1), t0 + secs(10)), Some(999));
        // And starts a new interval.
        assert_eq!(limiter.admit_at(KIND, ip(1), t0 + secs(11)), None);
        assert_eq!(limiter.admit_at(KIND, ip(1), t0 + secs(20)), Some(1));
    }

    #[test]
    fn kinds_and_sources_are_counted_apart() {
        let limiter = LogLimiter::new(secs(10), 16);
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at(KIND, ip(1), t0), Some(0));
        assert_eq!(limiter.admit_at(KIND, ip(2), t0), Some(0));
        assert_eq!(limiter.admit_at("other", ip(1), t0), Some(0));
        assert_eq!(limiter.admit_at(KIND, ip(1), t0), None);
        assert_eq!(limiter.admit_at(KIND, ip(2), t0), None);
        assert_eq!(limiter.keys(), 3);
    }

    #[test]
    fn a_burst_that_stops_is_reported_by_the_sweep_after_its_interval() {
        let limiter = LogLimiter::new(secs(10), 16);
        let t0 = Instant::now();
        for _ in 0..50 {
            limiter.admit_at(KIND, ip(1), t0);
        }
        limiter.admit_at(KIND, ip(2), t0);
        assert_eq!(limiter.sweep_at(t0 + secs(9)), [], "not yet due");
        let due = limiter.sweep_at(t0 + secs(10));
        assert_eq!(
            due,
            [Suppressed {
                kind: KIND,
                source: ip(1),
                count: 49
            }]
        );
        // ip(2) had nothing suppressed: forgotten. ip(1)'s report was its line: a warning
        // right after it is counted, not logged.
        assert_eq!(limiter.keys(), 1);
        assert_eq!(limiter.admit_at(KIND, ip(1), t0 + secs(11)), None);
        assert_eq!(limiter.sweep_at(t0 + secs(20)).len(), 1);
        // Quiet for an interval: forgotten, and the next warning logs at once.
        assert_eq!(limiter.sweep_at(t0 + secs(30)), []);
        assert_eq!(limiter.keys(), 0);
        assert_eq!(limiter.admit_at(KIND, ip(1), t0 + secs(31)), Some(0));
    }

    #[test]
    fn drain_reports_every_pending_count_at_once() {
        let limiter = LogLimiter::new(secs(10), 16);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.admit_at(KIND, ip(1), t0);
            limiter.admit_at("other", ip(2), t0);
        }
        limiter.admit_at(KIND, ip(3), t0);
        let mut drained = limiter.drain();
        drained.sort_by_key(|s| s.kind);
        assert_eq!(
            drained,
            [
                Suppressed {
                    kind: "other",
                    source: ip(2),
                    count: 2
                },
                Suppressed {
                    kind: KIND,
                    source: ip(1),
                    count: 2
                },
            ]
        );
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn a_full_table_puts_new_sources_under_one_shared_key() {
        let limiter = LogLimiter::new(secs(10), 4);
        let t0 = Instant::now();
        for n in 1..=4 {
            assert_eq!(limiter.admit_at(KIND, ip(n), t0), Some(0));
        }
        // A thousand more sources: the first logs (as "other sources"), the rest are counted
        // there, and the table does not grow past the cap and one shared key.
        let mut lines = 0;
        for n in 0..1000u32 {
            let source = LogSource::Key(u64::from(n));
            if limiter.admit_at(KIND, source, t0).is_some() {
                lines += 1;
            }
        }
        assert_eq!(lines, 1);
        assert_eq!(limiter.keys(), 5);
        let due = limiter.sweep_at(t0 + secs(10));
        assert_eq!(
            due,
            [Suppressed {
                kind: KIND,
                source: LogSource::OtherSources,
                count: 999
            }]
        );
    }

    #[test]
    fn a_full_table_makes_room_for_new_sources_once_old_ones_went_quiet() {
        let limiter = LogLimiter::new(secs(10), 2);
        let t0 = Instant::now();
        limiter.admit_at(KIND, ip(1), t0);
        limiter.admit_at(KIND, ip(2), t0);
        limiter.admit_at(KIND, ip(2), t0);
        // ip(1) went quiet with nothing pending; ip(2) has a count a sweep must report.
        let later = t0 + secs(10);
        assert_eq!(limiter.admit_at(KIND, ip(3), later), Some(0));
        assert_eq!(limiter.keys(), 2);
        assert_eq!(limiter.sweep_at(later)[0].source, ip(2));
    }

    #[test]
    fn a_message_origin_is_keyed_by_its_peer_ip_without_the_port() {
        let a: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let origin = |peer| Origin::Transport {
            connection: crate::Address::local("tcp-1"),
            peer,
        };
        assert_eq!(LogSource::from(&origin(Some(a))), LogSource::from(b));
        assert_eq!(LogSource::from(&origin(None)), LogSource::Unknown);
        assert_eq!(LogSource::from(&Origin::Local), LogSource::Local);
        assert_eq!(LogSource::from(a).to_string(), "198.51.100.1");
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64_and_a_mapped_ipv4_address_is_that_address() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_in_64: IpAddr = "2001:db8:1:2:ffff:0:0:7".parse().unwrap();
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(LogSource::from(one), LogSource::from(other_in_64));
        assert_ne!(LogSource::from(one), LogSource::from(next_64));
        assert_eq!(LogSource::from(one).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(LogSource::from(mapped), LogSource::from(v4));
    }

    #[test]
    fn the_limiter_is_shared_safely_between_threads() {
        let limiter = std::sync::Arc::new(LogLimiter::new(secs(3600), 16));
        let t0 = Instant::now();
        let logged: usize = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..250)
                        .filter(|_| limiter.admit_at(KIND, ip(1), t0).is_some())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(logged, 1);
        assert_eq!(limiter.drain()[0].count, 999);
    }
}
