//! TCP portals: carry a TCP connection's bytes between an inlet and an outlet over routes
//! (DESIGN §3).
//!
//! An [`Outlet`] is a service on a node next to a TCP server: for each `Open` its policy
//! admits, it connects to its target and becomes one end of a portal session. An [`Inlet`]
//! listens on a local port next to the clients: for each connection it accepts, it asks its
//! [`Connector`] for a route to the outlet (usually through fresh secure channels), sends
//! `Open`, and becomes the other end. From then on both ends run the same loop
//! ([`session`]): bytes in order, half-close passed on, credit-based flow control so no node
//! buffers more than a window per session, heartbeats so a vanished end is noticed, and a
//! failure at either end resets both sockets so no application mistakes a cut transfer for a
//! complete one.

mod inbox;
mod inlet;
mod message;
mod outlet;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kith_node::{IncomingAccessControl, Origin};

pub use inlet::{ConnectFuture, Connector, Inlet, PortalRoute, Refusal, RouteEnded};
pub use message::{CHUNK, MAX_CHUNK, MAX_REASON_LEN, PortalDecodeError, PortalMessage};
pub use outlet::Outlet;
pub use session::{DATA_OVERHEAD, MAX_WINDOW, MIN_WINDOW};

/// How portal sessions behave. The defaults suit loopback and the Internet alike.
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// 1 MiB: the credit this end grants the other, so the most it ever buffers for one
    /// session.
    pub window: u32,
    /// 3 s: an end that has sent nothing this long sends a heartbeat.
    pub ping_interval: Duration,
    /// 15 s: an end that has heard nothing this long from the other gives the session up.
    pub idle_timeout: Duration,
    /// 15 s: how long an inlet may take to reach the outlet and have it open a session,
    /// channels included; the client's connection waits that long at most.
    pub open_timeout: Duration,
    /// 5 s: how long an outlet may take to connect to its target.
    pub connect_timeout: Duration,
    /// 1,024: sessions an inlet or an outlet carries at once. An inlet accepts no more
    /// connections until one ends; an outlet refuses more `Open`s.
    pub max_sessions: usize,
    /// 256: sessions one peer (an identity, or an unauthenticated host) may hold at an
    /// outlet at once, a quarter of `max_sessions`, so one member cannot take them all.
    pub max_sessions_per_peer: usize,
}

impl Default for PortalOptions {
    fn default() -> Self {
        Self {
            window: 1024 * 1024,
            ping_interval: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(15),
            open_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_sessions: 1024,
            max_sessions_per_peer: 256,
        }
    }
}

/// What an inlet or outlet has done.
#[derive(Debug, Default)]
pub struct PortalStats {
    /// Sessions open now.
    pub open: AtomicU64,
    /// Sessions that ended cleanly.
    pub finished: AtomicU64,
    /// Sessions that ended with an error.
    pub failed: AtomicU64,
    /// Sessions that never opened: refused by the outlet, unreachable, or denied.
    pub refused: AtomicU64,
    /// Bytes read from local sockets and sent on.
    pub bytes_in: AtomicU64,
    /// Bytes received and written to local sockets.
    pub bytes_out: AtomicU64,
    /// Why sessions never opened, by class, and the last time.
    refusals: Mutex<RefusalsView>,
}

impl PortalStats {
    /// Count a session that never opened, for `refusal`.
    pub fn refuse(&self, refusal: &Refusal, at: u64) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        *refusals
            .by_class
            .entry(refusal.class.to_owned())
            .or_default() += 1;
        refusals.last = Some(LastRefusal {
            class: refusal.class.to_owned(),
            reason: refusal.reason.clone(),
            at,
        });
    }

    /// Why sessions never opened.
    pub fn refusals(&self) -> RefusalsView {
        self.refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A snapshot.
    pub fn view(&self) -> StatsView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsView {
            open: get(&self.open),
            finished: get(&self.finished),
            failed: get(&self.failed),
            refused: get(&self.refused),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
        }
    }
}

/// Sessions that never opened, counted by class (`denied`, `no-trusted-credential`,
/// `unknown-address`, `outlet-refused`, `timeout`, …), and the last one, as
/// `kith tcp-inlet show` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusalsView {
    /// How many, by class. A handful of classes exist, so this stays small.
    pub by_class: BTreeMap<String, u64>,
    /// The most recent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastRefusal>,
}

/// The most recent session that never opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastRefusal {
    /// Its class.
    pub class: String,
    /// Why, in full.
    pub reason: String,
    /// When (Unix seconds).
    pub at: u64,
}

/// A snapshot of [`PortalStats`], as `kith tcp-inlet|tcp-outlet list` print it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsView {
    /// Sessions open now.
    pub open: u64,
    /// Sessions that ended cleanly.
    pub finished: u64,
    /// Sessions that ended with an error.
    pub failed: u64,
    /// Sessions that never opened.
    pub refused: u64,
    /// Bytes read from local sockets and sent on.
    pub bytes_in: u64,
    /// Bytes received and written to local sockets.
    pub bytes_out: u64,
}

/// Admits only messages from where a session's `Open` came from: the same secure channel
/// (same handshake), the same connection, or this node. Session addresses are random, but
/// this makes them useless to anyone who learns one.
pub(crate) struct SameOrigin(pub Origin);

impl IncomingAccessControl for SameOrigin {
    fn is_authorized(&self, origin: &Origin) -> bool {
        match (&self.0, origin) {
            (Origin::Local, Origin::Local) => true,
            (Origin::Transport { connection: a, .. }, Origin::Transport { connection: b, .. }) => {
                a == b
            }
            (Origin::SecureChannel(a), Origin::SecureChannel(b)) => {
                a.identifier == b.identifier && a.handshake_hash == b.handshake_hash
            }
            _ => false,
        }
    }
}
