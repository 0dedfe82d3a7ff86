//! Guessing is seen (DESIGN §5): wrong one-time codes at the ticket acceptor and wrong
//! verification codes at join request approval are counted per identity and per source
//! address, throttled with a growing delay, and audited in aggregate.
//!
//! - **What counts** ([`GuessKind`]): a redemption whose code no ticket has (the refusal
//!   `ticket_unknown`), and an approval whose verification code does not match the
//!   request's. A code of a real ticket that is expired, revoked or used up does not count:
//!   its holder has a code the authority issued, which no guesser of 32 random bytes has,
//!   and a host retrying a stale ticket should not lock out its address. Nor does a
//!   malformed code: it is refused before it is looked up, and matches nothing.
//! - **Whom**: every attempt counts against its caller's identity and against its source,
//!   the IP its channel's handshake came from ([`source_block`]: IPv6 by /64, the block one
//!   host commonly holds). An attempt is refused when either of them is throttled; new
//!   identities are free to make, so the source is the count that holds a guesser back.
//! - **Delay**: [`FREE_FAILURES`] failures are free. Each strike past them — a failure, or
//!   an attempt refused while waiting — makes the guesser wait [`FIRST_DELAY`], doubled per
//!   strike, at most [`MAX_DELAY`]. An attempt during the wait is refused at once with
//!   [`ErrorKind::Throttled`]: "too many failed attempts; retry after Ns". Nothing waits
//!   here, so a guesser holds no task; and since the refused attempt is a strike too,
//!   hammering only lengthens the wait. An identity has at most as many attempts in
//!   flight as it has free failures left (at least one once they are spent), so a burst of
//!   concurrent guesses is no way around its count. An address with no strike yet is not
//!   limited so — many hosts behind one address may enroll at once — but once it has one,
//!   it is: a first burst from a clean address is bounded only by the authority's requests
//!   in flight, and then throttled like the rest.
//! - **Decay**: a guesser with no strike for [`FORGET_AFTER`] (and not waiting) is
//!   forgotten, and starts again from zero. A success clears nothing: one valid code says
//!   nothing about the other codes the same identity or address tried (and a redemption may
//!   be repeated for free), while the count decays anyway.
//! - **Audit**: never a row per attempt. When a guesser becomes throttled, one
//!   [`AuditEvent::GUESS_THROTTLED`] row with the kind and the counts so far; while it goes
//!   on, at most one [`AuditEvent::GUESS_CONTINUED`] row per [`REPORT_EVERY`] with the
//!   counts since the previous row (written by the next attempt, or by the reporter that
//!   runs every [`REPORT_SWEEP`]). Failures that never reach the throttle are in our log
//!   only.
//! - **Bounds**: at most [`MAX_TRACKED_GUESSERS`] identities and as many sources per kind.
//!   A new guesser past that takes the place of a forgotten one, else of the one with the
//!   fewest strikes (the least recent of those), so the tables never grow with the number
//!   of peers, and a flood of fresh identities evicts itself before the persistent guesser.
//!
//! The counts are in memory, per authority process: a restart forgets them all, and
//! authorities sharing a PostgreSQL database each count what reaches them.
//!
//! The counting ([`GuessBook`]) is pure: it takes the time as an argument and does no I/O.
//! The services reach it through [`Authority::admit_guess`], which reads the authority's
//! clock and writes the audit rows.
//!
//! [`ErrorKind::Throttled`]: crate::api::ErrorKind::Throttled
//! [`AuditEvent::GUESS_THROTTLED`]: crate::store::AuditEvent::GUESS_THROTTLED
//! [`AuditEvent::GUESS_CONTINUED`]: crate::store::AuditEvent::GUESS_CONTINUED

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use kith_identity::Identifier;
use kith_node::Node;
use tracing::{debug, warn};

use super::answer::store_failed;
use super::join::every;
use super::state::Authority;
use crate::api::ApiError;
use crate::store::AuditEvent;

/// 5 failures: how many wrong codes a guesser gets before it must wait. Enough for a
/// person who mistypes a verification code a few times; nothing against 32 random bytes
/// or 10^8 verification codes.
pub const FREE_FAILURES: u32 = 5;

/// 1 s: the wait after the first strike past [`FREE_FAILURES`]; it doubles with each
/// further strike.
pub const FIRST_DELAY: u64 = 1;

/// 5 min: the longest wait. A guesser that obeys it tries at most 12 codes an hour; a
/// person who mistyped waits no longer than a coffee.
pub const MAX_DELAY: u64 = 5 * 60;

/// 10 min: a guesser with no strike for this long (and not waiting) is forgotten. Longer
/// than [`MAX_DELAY`], so that a guesser that waits out every delay never decays to free
/// attempts.
pub const FORGET_AFTER: u64 = 10 * 60;

/// 1 min: at most one audit row per guesser and kind per this interval while it goes on.
pub const REPORT_EVERY: u64 = 60;

/// 15 s: how often counts not yet in the audit log are written there (once they are
/// [`REPORT_EVERY`] old), and forgotten guessers dropped.
pub const REPORT_SWEEP: Duration = Duration::from_secs(15);

/// 4,096 guessers: the most identities, and separately the most source addresses, whose
/// counts are kept per kind — about 150 bytes each, so at most 2.5 MB in all. Past the
/// cap a newcomer evicts a forgotten guesser or the least failing one. More than the
/// authority's requests in flight (`MAX_IN_FLIGHT`), so a guesser with an attempt in flight
/// is never evicted.
pub const MAX_TRACKED_GUESSERS: usize = 4096;

/// /64: the IPv6 block counted as one source, the smallest block hosts are given.
const IPV6_SOURCE_PREFIX: u8 = 64;

/// What was guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuessKind {
    /// A ticket's one-time code, at redemption.
    Redeem,
    /// A join request's verification code, at approval.
    Approve,
}

impl GuessKind {
    /// `redeem` or `approve`, as the audit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            GuessKind::Redeem => "redeem",
            GuessKind::Approve => "approve",
        }
    }
}

/// Whom a count is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guesser {
    /// The identity its secure channel authenticated.
    Identity(Identifier),
    /// The address block its channel's handshake came from ([`source_block`]).
    Source(IpNet),
}

impl fmt::Display for Guesser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guesser::Identity(identifier) => write!(f, "{identifier}"),
            Guesser::Source(IpNet::V4(net)) if net.prefix_len() == 32 => {
                write!(f, "{}", net.addr())
            }
            Guesser::Source(net) => write!(f, "{net}"),
        }
    }
}

/// The source block `ip` is counted under: an IPv4 address on its own, an IPv6 address by
/// its /64; an IPv4 address mapped into IPv6 is the IPv4 address.
pub fn source_block(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => IpNet::from(ip),
        ip @ IpAddr::V6(_) => IpNet::new(ip, IPV6_SOURCE_PREFIX)
            .map(|net| net.trunc())
            .unwrap_or_else(|_| IpNet::from(ip)),
    }
}

/// The wait after a guesser's `strikes`-th strike, seconds: none within
/// [`FREE_FAILURES`], then [`FIRST_DELAY`] doubling per strike up to [`MAX_DELAY`].
pub fn delay_after(strikes: u32) -> u64 {
    let Some(past) = strikes.checked_sub(FREE_FAILURES + 1) else {
        return 0;
    };
    1u64.checked_shl(past.min(63))
        .and_then(|factor| FIRST_DELAY.checked_mul(factor))
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

/// What an audit row about a guesser says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuessReport {
    /// What it guessed.
    pub kind: GuessKind,
    /// Who or where.
    pub guesser: Guesser,
    /// Whether it just became throttled ([`AuditEvent::GUESS_THROTTLED`]); otherwise it
    /// goes on ([`AuditEvent::GUESS_CONTINUED`]).
    ///
    /// [`AuditEvent::GUESS_THROTTLED`]: crate::store::AuditEvent::GUESS_THROTTLED
    /// [`AuditEvent::GUESS_CONTINUED`]: crate::store::AuditEvent::GUESS_CONTINUED
    pub first: bool,
    /// Wrong codes since `since`.
    pub failures: u32,
    /// Attempts refused while it had to wait, since `since`.
    pub refused: u32,
    /// From when the counts run, Unix seconds: its first strike for the first report, the
    /// previous report for the others.
    pub since: u64,
    /// When the report was made, Unix seconds.
    pub at: u64,
    /// Until when it must wait, Unix seconds.
    pub blocked_until: u64,
    /// The identity of its latest attempt.
    pub identity: Identifier,
    /// The source address of its latest attempt, if known.
    pub source: Option<IpAddr>,
}

impl GuessReport {
    /// The audit row: the actor is the identity of the latest attempt, the subject the
    /// guesser (an identifier, or a source address or block).
    pub fn audit_event(&self) -> AuditEvent {
        let counted_by = match self.guesser {
            Guesser::Identity(_) => "identity",
            Guesser::Source(_) => "source",
        };
        let source = self
            .source
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_canonical().to_string());
        AuditEvent {
            at: self.at,
            actor: self.identity.to_string(),
            action: if self.first {
                AuditEvent::GUESS_THROTTLED
            } else {
                AuditEvent::GUESS_CONTINUED
            }
            .to_owned(),
            subject: self.guesser.to_string(),
            detail: format!(
                "kind={} counted_by={counted_by} failures={} refused={} since={} blocked_until={} source={source}",
                self.kind.as_str(),
                self.failures,
                self.refused,
                self.since,
                self.blocked_until,
            ),
        }
    }
}

/// An attempt refused: the guesser must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until it may try again (at least 1).
    pub retry_after: u64,
    /// Audit rows to write.
    pub reports: Vec<GuessReport>,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A wrong code: a strike.
    Failed,
    /// Anything else (a success, a refusal that is no guess, a failure of ours).
    NotCounted,
}

/// One guesser's count in its current episode (from its first strike until it is
/// forgotten).
#[derive(Debug, Clone)]
struct Tally {
    failures: u32,
    refused: u32,
    /// Admitted attempts not finished yet.
    in_flight: u32,
    first_strike: u64,
    last_strike: u64,
    blocked_until: u64,
    /// Whether this episode's first report was made.
    throttled: bool,
    reported_failures: u32,
    reported_refused: u32,
    reported_at: u64,
    identity: Identifier,
    source: Option<IpAddr>,
}

impl Tally {
    fn new(identity: Identifier, source: Option<IpAddr>) -> Self {
        Self {
            failures: 0,
            refused: 0,
            in_flight: 0,
            first_strike: 0,
            last_strike: 0,
            blocked_until: 0,
            throttled: false,
            reported_failures: 0,
            reported_refused: 0,
            reported_at: 0,
            identity,
            source,
        }
    }

    fn strikes(&self) -> u32 {
        self.failures.saturating_add(self.refused)
    }

    /// Nothing to remember: no strike, nothing in flight.
    fn idle(&self) -> bool {
        self.strikes() == 0 && self.in_flight == 0
    }

    /// Forgotten: nothing in flight, no wait left, and no strike for [`FORGET_AFTER`].
    fn stale(&self, now: u64) -> bool {
        self.in_flight == 0
            && now >= self.blocked_until
            && now >= self.last_strike.saturating_add(FORGET_AFTER)
    }

    /// Seconds it must still wait.
    fn wait(&self, now: u64) -> u64 {
        self.blocked_until.saturating_sub(now)
    }

    /// Whether admitting one more attempt by `guesser` could let a guess past
    /// [`FREE_FAILURES`] without its wait: the attempts in flight may all fail. An address
    /// with no strike is never crowded: many hosts behind one address may enroll at once.
    fn crowded(&self, guesser: &Guesser) -> bool {
        let proven = match guesser {
            Guesser::Identity(_) => true,
            Guesser::Source(_) => self.strikes() > 0,
        };
        proven
            && self.in_flight > 0
            && self.strikes().saturating_add(self.in_flight) >= FREE_FAILURES
    }

    /// Count a strike (already added to `failures` or `refused`) at `now`, by `identity`
    /// from `source`, and make it wait.
    fn struck(&mut self, identity: Identifier, source: Option<IpAddr>, now: u64) {
        if self.strikes() == 1 {
            self.first_strike = now;
        }
        self.last_strike = now;
        self.identity = identity;
        if source.is_some() {
            self.source = source;
        }
        let delay = delay_after(self.strikes());
        if delay > 0 {
            self.blocked_until = self.blocked_until.max(now.saturating_add(delay));
        }
    }

    /// The report due after a strike at `now`, if any: the first once it is throttled, then
    /// one per [`REPORT_EVERY`].
    fn report_due(&mut self, kind: GuessKind, guesser: Guesser, now: u64) -> Option<GuessReport> {
        if self.strikes() <= FREE_FAILURES {
            return None;
        }
        if !self.throttled {
            self.throttled = true;
            return Some(self.report(kind, guesser, true, now));
        }
        (now >= self.reported_at.saturating_add(REPORT_EVERY) && self.unreported())
            .then(|| self.report(kind, guesser, false, now))
    }

    fn unreported(&self) -> bool {
        self.failures > self.reported_failures || self.refused > self.reported_refused
    }

    /// A report of the counts since the previous one, marked as made.
    fn report(&mut self, kind: GuessKind, guesser: Guesser, first: bool, now: u64) -> GuessReport {
        let since = if first {
            self.first_strike
        } else {
            self.reported_at
        };
        let report = GuessReport {
            kind,
            guesser,
            first,
            failures: self.failures.saturating_sub(self.reported_failures),
            refused: self.refused.saturating_sub(self.reported_refused),
            since,
            at: now,
            blocked_until: self.blocked_until,
            identity: self.identity,
            source: self.source,
        };
        self.reported_failures = self.failures;
        self.reported_refused = self.refused;
        self.reported_at = now;
        report
    }

    /// The last report before it is forgotten, if it has counts not yet reported.
    fn closing_report(
        &mut self,
        kind: GuessKind,
        guesser: Guesser,
        now: u64,
    ) -> Option<GuessReport> {
        (self.throttled && self.unreported()).then(|| self.report(kind, guesser, false, now))
    }
}

/// The counts of one kind of guesser (identities, or sources) for one kind of guess, at
/// most `cap` of them.
#[derive(Debug, Clone)]
struct Table {
    tallies: HashMap<Guesser, Tally>,
    cap: usize,
}

impl Table {
    fn new(cap: usize) -> Self {
        Self {
            tallies: HashMap::new(),
            cap,
        }
    }

    /// The tally of `guesser`, made if it has none (a forgotten one starts again); `None`
    /// only if the table is full of guessers with attempts in flight.
    fn tally(
        &mut self,
        kind: GuessKind,
        guesser: Guesser,
        identity: Identifier,
        source: Option<IpAddr>,
        now: u64,
        reports: &mut Vec<GuessReport>,
    ) -> Option<&mut Tally> {
        if let Some(tally) = self.tallies.get_mut(&guesser)
            && tally.stale(now)
        {
            reports.extend(tally.closing_report(kind, guesser, now));
            *tally = Tally::new(identity, source);
        }
        if !self.tallies.contains_key(&guesser) && self.tallies.len() >= self.cap {
            let victim = self
                .tallies
                .iter()
                .filter(|(_, t)| t.in_flight == 0)
                .min_by_key(|(_, t)| (!t.stale(now), t.strikes(), t.last_strike))
                .map(|(g, _)| *g)?;
            if let Some(mut evicted) = self.tallies.remove(&victim) {
                reports.extend(evicted.closing_report(kind, victim, now));
            }
        }
        Some(
            self.tallies
                .entry(guesser)
                .or_insert_with(|| Tally::new(identity, source)),
        )
    }

    /// Drop `guesser`'s tally if there is nothing to remember.
    fn tidy(&mut self, guesser: &Guesser) {
        if self.tallies.get(guesser).is_some_and(Tally::idle) {
            self.tallies.remove(guesser);
        }
    }
}

/// The counts for one kind of guess.
#[derive(Debug, Clone)]
struct Board {
    identities: Table,
    sources: Table,
}

impl Board {
    fn table(&mut self, guesser: &Guesser) -> &mut Table {
        match guesser {
            Guesser::Identity(_) => &mut self.identities,
            Guesser::Source(_) => &mut self.sources,
        }
    }
}

/// Every guesser's count: the pure rules of this module, with the time passed in.
#[derive(Debug, Clone)]
pub struct GuessBook {
    redeem: Board,
    approve: Board,
}

impl Default for GuessBook {
    fn default() -> Self {
        Self::with_cap(MAX_TRACKED_GUESSERS)
    }
}

/// The guessers an attempt counts against: its identity, and its source if known.
fn guessers(identity: Identifier, source: Option<IpAddr>) -> impl Iterator<Item = Guesser> {
    [
        Some(Guesser::Identity(identity)),
        source.map(|ip| Guesser::Source(source_block(ip))),
    ]
    .into_iter()
    .flatten()
}

impl GuessBook {
    /// A book keeping at most `cap` identities and `cap` sources per kind.
    pub fn with_cap(cap: usize) -> Self {
        let board = || Board {
            identities: Table::new(cap),
            sources: Table::new(cap),
        };
        Self {
            redeem: board(),
            approve: board(),
        }
    }

    fn board(&mut self, kind: GuessKind) -> &mut Board {
        match kind {
            GuessKind::Redeem => &mut self.redeem,
            GuessKind::Approve => &mut self.approve,
        }
    }

    /// Admit an attempt of `kind` by `identity` from `source` at `now`, or refuse it (a
    /// strike) if either must wait. An admitted attempt must be [`GuessBook::finish`]ed.
    /// `Ok` carries audit rows too (of guessers evicted or forgotten meanwhile).
    pub fn admit(
        &mut self,
        kind: GuessKind,
        identity: Identifier,
        source: Option<IpAddr>,
        now: u64,
    ) -> Result<Vec<GuessReport>, Throttled> {
        let board = self.board(kind);
        let mut reports = Vec::new();
        let mut refuse = false;
        for guesser in guessers(identity, source) {
            if let Some(t) =
                board
                    .table(&guesser)
                    .tally(kind, guesser, identity, source, now, &mut reports)
            {
                refuse |= t.wait(now) > 0 || t.crowded(&guesser);
            }
        }
        if !refuse {
            for guesser in guessers(identity, source) {
                if let Some(t) = board.table(&guesser).tallies.get_mut(&guesser) {
                    t.in_flight = t.in_flight.saturating_add(1);
                }
            }
            return Ok(reports);
        }
        let mut retry_after = FIRST_DELAY;
        for guesser in guessers(identity, source) {
            if let Some(t) = board.table(&guesser).tallies.get_mut(&guesser) {
                t.refused = t.refused.saturating_add(1);
                t.struck(identity, source, now);
                retry_after = retry_after.max(t.wait(now));
                reports.extend(t.report_due(kind, guesser, now));
            }
        }
        Err(Throttled {
            retry_after,
            reports,
        })
    }

    /// An attempt [`GuessBook::admit`] admitted ended at `now` with `outcome`; the audit
    /// rows due.
    pub fn finish(
        &mut self,
        kind: GuessKind,
        identity: Identifier,
        source: Option<IpAddr>,
        outcome: Outcome,
        now: u64,
    ) -> Vec<GuessReport> {
        let board = self.board(kind);
        let mut reports = Vec::new();
        for guesser in guessers(identity, source) {
            let table = board.table(&guesser);
            if let Some(t) = table.tallies.get_mut(&guesser) {
                t.in_flight = t.in_flight.saturating_sub(1);
            }
            if outcome == Outcome::Failed
                && let Some(t) = table.tally(kind, guesser, identity, source, now, &mut reports)
            {
                t.failures = t.failures.saturating_add(1);
                t.struck(identity, source, now);
                reports.extend(t.report_due(kind, guesser, now));
            }
            table.tidy(&guesser);
        }
        reports
    }

    /// The audit rows due at `now` for guessers that went on since their last row (at most
    /// one per [`REPORT_EVERY`]) or are forgotten now; forgotten guessers are dropped.
    pub fn sweep(&mut self, now: u64) -> Vec<GuessReport> {
        let mut reports = Vec::new();
        for (kind, board) in [
            (GuessKind::Redeem, &mut self.redeem),
            (GuessKind::Approve, &mut self.approve),
        ] {
            for table in [&mut board.identities, &mut board.sources] {
                table.tallies.retain(|guesser, t| {
                    let stale = t.stale(now);
                    let due = t.throttled
                        && t.unreported()
                        && (stale || now >= t.reported_at.saturating_add(REPORT_EVERY));
                    if due {
                        reports.push(t.report(kind, *guesser, false, now));
                    }
                    !stale
                });
            }
        }
        reports
    }

    /// How many identities and sources are counted for `kind`.
    pub fn tracked(&self, kind: GuessKind) -> (usize, usize) {
        let board = match kind {
            GuessKind::Redeem => &self.redeem,
            GuessKind::Approve => &self.approve,
        };
        (board.identities.tallies.len(), board.sources.tallies.len())
    }
}

/// The counts of one authority process, shared by its services.
#[derive(Debug, Default)]
pub(crate) struct Guesses {
    book: Mutex<GuessBook>,
}

impl Guesses {
    /// The book; held only while counting, never across an `.await`.
    fn book(&self) -> MutexGuard<'_, GuessBook> {
        // The book is consistent after every call that can panic in it (none can).
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An attempt admitted: finish it with [`GuessAttempt::failed`] on a wrong code. Dropped
/// otherwise (a success, any other refusal, a task aborted), it counts nothing.
pub(crate) struct GuessAttempt<'a> {
    authority: &'a Authority,
    kind: GuessKind,
    identity: Identifier,
    source: Option<IpAddr>,
    open: bool,
}

impl GuessAttempt<'_> {
    /// The code was wrong: count it, and audit it if the guesser became throttled or goes
    /// on being so.
    pub(crate) async fn failed(mut self) {
        self.open = false;
        let now = self.authority.now();
        let reports = self.authority.shared.guesses.book().finish(
            self.kind,
            self.identity,
            self.source,
            Outcome::Failed,
            now,
        );
        self.authority.audit_guesses(reports).await;
    }
}

impl Drop for GuessAttempt<'_> {
    fn drop(&mut self) {
        if self.open {
            let now = self.authority.now();
            // Rows due only at a strike; none come of an attempt that counts nothing.
            let _ = self.authority.shared.guesses.book().finish(
                self.kind,
                self.identity,
                self.source,
                Outcome::NotCounted,
                now,
            );
        }
    }
}

/// The refusal of an attempt while its guesser must wait.
pub(crate) fn throttled(retry_after: u64) -> ApiError {
    ApiError::throttled(
        format!("too many failed attempts; retry after {retry_after}s"),
        retry_after,
    )
}

/// Guessing.
impl Authority {
    /// Admit an attempt of `kind` by `caller` through a channel from `source`, or refuse it
    /// at once with [`ErrorKind::Throttled`](crate::api::ErrorKind::Throttled) while the
    /// caller's identity or address must wait.
    pub(crate) async fn admit_guess(
        &self,
        kind: GuessKind,
        caller: &Identifier,
        source: Option<SocketAddr>,
    ) -> Result<GuessAttempt<'_>, ApiError> {
        let source = source.map(|s| s.ip().to_canonical());
        let now = self.now();
        let admitted = self.shared.guesses.book().admit(kind, *caller, source, now);
        match admitted {
            Ok(reports) => {
                self.audit_guesses(reports).await;
                Ok(GuessAttempt {
                    authority: self,
                    kind,
                    identity: *caller,
                    source,
                    open: true,
                })
            }
            Err(Throttled {
                retry_after,
                reports,
            }) => {
                // The dispatcher logs every refusal at info already; a flood of them should
                // not cost two lines each.
                debug!(
                    kind = kind.as_str(),
                    source = ?source,
                    retry_after,
                    "refused an attempt: too many failed attempts"
                );
                self.audit_guesses(reports).await;
                Err(throttled(retry_after))
            }
        }
    }

    /// Write `reports` to the audit log. A store failure is logged: the throttle holds
    /// whether or not its rows are written.
    async fn audit_guesses(&self, reports: Vec<GuessReport>) {
        for report in reports {
            if report.first {
                warn!(
                    kind = report.kind.as_str(),
                    guesser = %report.guesser,
                    failures = report.failures,
                    refused = report.refused,
                    "too many failed attempts: throttled"
                );
            }
            if let Err(e) = self.store().append_audit(&report.audit_event()).await {
                store_failed("auditing failed attempts", &e);
            }
        }
    }

    /// Write the audit rows of guessers that went on, and forget stale ones, every
    /// [`REPORT_SWEEP`] while `node` runs.
    pub(crate) fn start_guess_reporter(&self, node: &Node) {
        let authority = self.clone();
        node.spawn(every(REPORT_SWEEP, move || {
            let authority = authority.clone();
            async move {
                let now = authority.now();
                let reports = authority.shared.guesses.book().sweep(now);
                authority.audit_guesses(reports).await;
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000;

    fn identity(n: u32) -> Identifier {
        format!("I{n:040x}").parse().unwrap()
    }

    fn v4(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    /// Admit one attempt and fail it; the refusal, if it was refused.
    fn guess(
        book: &mut GuessBook,
        kind: GuessKind,
        who: Identifier,
        from: Option<IpAddr>,
        now: u64,
    ) -> Result<Vec<GuessReport>, Throttled> {
        let mut reports = book.admit(kind, who, from, now)?;
        reports.extend(book.finish(kind, who, from, Outcome::Failed, now));
        Ok(reports)
    }

    #[test]
    fn the_wait_doubles_from_one_second_past_five_failures_up_to_five_minutes() {
        let waits: Vec<u64> = (0..=16).map(delay_after).collect();
        assert_eq!(
            waits,
            [0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        );
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn the_tenth_wrong_code_in_a_minute_from_one_identity_is_throttled() {
        // As fast as a client sends them: the seventh to tenth are refused at once.
        let mut book = GuessBook::default();
        let who = identity(1);
        let answers: Vec<bool> = (0..10)
            .map(|_| guess(&mut book, GuessKind::Redeem, who, v4(1), NOW).is_ok())
            .collect();
        assert_eq!(
            answers,
            [
                true, true, true, true, true, true, false, false, false, false
            ]
        );

        // A guesser that waits out every delay has its tenth code checked no sooner than
        // 1 + 2 + 4 + 8 s after the sixth, and trying before the wait ends is refused.
        let clock = ManualClock::new(NOW);
        let mut book = GuessBook::default();
        for _ in 0..6 {
            guess(&mut book, GuessKind::Redeem, who, v4(1), clock.now()).unwrap();
        }
        for wait in [1, 2, 4, 8] {
            clock.advance(Duration::from_secs(wait - 1));
            let mut early = book.clone();
            assert!(guess(&mut early, GuessKind::Redeem, who, v4(1), clock.now()).is_err());
            clock.advance(Duration::from_secs(1));
            guess(&mut book, GuessKind::Redeem, who, v4(1), clock.now()).unwrap();
        }
        assert_eq!(clock.now(), NOW + 15);
    }

    #[test]
    fn five_failures_are_free_and_the_sixth_makes_the_guesser_wait() {
        let mut book = GuessBook::default();
        let who = identity(1);
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                guess(&mut book, GuessKind::Redeem, who, v4(1), NOW),
                Ok(vec![])
            );
        }
        let reports = guess(&mut book, GuessKind::Redeem, who, v4(1), NOW).unwrap();
        // Both the identity and its address became throttled: one row each.
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(
            reports
                .iter()
                .all(|r| r.first && r.failures == 6 && r.refused == 0)
        );
        assert!(reports.iter().any(|r| r.guesser == Guesser::Identity(who)));
        let source = Guesser::Source(source_block(v4(1).unwrap()));
        assert!(reports.iter().any(|r| r.guesser == source));
        // The seventh is refused at once, says how long to wait, and writes no row.
        let refused = book.admit(GuessKind::Redeem, who, v4(1), NOW).unwrap_err();
        assert_eq!(refused.retry_after, 2);
        assert!(
            refused.reports.is_empty(),
            "one row per interval: {refused:?}"
        );
        // Trying again before the wait ends is refused too, and lengthens it.
        assert_eq!(
            book.admit(GuessKind::Redeem, who, v4(1), NOW + 1)
                .unwrap_err()
                .retry_after,
            4
        );
        assert!(book.admit(GuessKind::Redeem, who, v4(1), NOW + 5).is_ok());
    }

    #[test]
    fn waiting_out_the_delay_admits_the_next_attempt_and_a_success_clears_nothing() {
        let mut book = GuessBook::default();
        let who = identity(1);
        for _ in 0..=FREE_FAILURES {
            guess(&mut book, GuessKind::Approve, who, v4(1), NOW).unwrap();
        }
        assert_eq!(
            book.admit(GuessKind::Approve, who, v4(1), NOW)
                .unwrap_err()
                .retry_after,
            2
        );
        book.admit(GuessKind::Approve, who, v4(1), NOW + 2).unwrap();
        let reports = book.finish(GuessKind::Approve, who, v4(1), Outcome::NotCounted, NOW + 2);
        assert!(reports.is_empty());
        // The next failure is the eighth strike: a 4 s wait.
        guess(&mut book, GuessKind::Approve, who, v4(1), NOW + 2).unwrap();
        assert_eq!(
            book.admit(GuessKind::Approve, who, v4(1), NOW + 2)
                .unwrap_err()
                .retry_after,
            8
        );
    }

    #[test]
    fn a_throttled_address_does_not_stop_another_identity_elsewhere_or_another_kind() {
        let mut book = GuessBook::default();
        for n in 0..=FREE_FAILURES {
            // Six identities, one guess each, from one address.
            guess(&mut book, GuessKind::Redeem, identity(n), v4(1), NOW).unwrap();
        }
        // A seventh identity at that address waits…
        let newcomer = identity(100);
        assert!(book.admit(GuessKind::Redeem, newcomer, v4(1), NOW).is_err());
        // …another identity at another address does not, nor does an approval.
        assert!(
            book.admit(GuessKind::Redeem, identity(200), v4(2), NOW)
                .is_ok()
        );
        assert!(book.admit(GuessKind::Approve, newcomer, v4(1), NOW).is_ok());
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_block(a), source_block(b));
        assert_ne!(source_block(a), source_block(c));
        assert_eq!(
            Guesser::Source(source_block(a)).to_string(),
            "2001:db8:1:2::/64"
        );
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(source_block(mapped), source_block(v4(1).unwrap()));
        assert_eq!(
            Guesser::Source(source_block(mapped)).to_string(),
            "192.0.2.1"
        );

        let mut book = GuessBook::default();
        for n in 0..=FREE_FAILURES {
            guess(&mut book, GuessKind::Redeem, identity(n), Some(a), NOW).unwrap();
        }
        assert!(
            book.admit(GuessKind::Redeem, identity(50), Some(b), NOW)
                .is_err()
        );
        assert!(
            book.admit(GuessKind::Redeem, identity(51), Some(c), NOW)
                .is_ok()
        );
    }

    #[test]
    fn a_burst_of_concurrent_guesses_by_one_identity_gets_only_the_free_ones() {
        let mut book = GuessBook::default();
        let who = identity(1);
        let admitted = (0..100)
            .filter(|_| book.admit(GuessKind::Redeem, who, v4(1), NOW).is_ok())
            .count();
        assert_eq!(admitted, FREE_FAILURES as usize);
    }

    #[test]
    fn many_hosts_behind_one_address_may_enroll_at_once() {
        let mut book = GuessBook::default();
        for n in 0..200 {
            book.admit(GuessKind::Redeem, identity(n), v4(1), NOW)
                .unwrap();
        }
        for n in 0..200 {
            book.finish(
                GuessKind::Redeem,
                identity(n),
                v4(1),
                Outcome::NotCounted,
                NOW,
            );
        }
        assert_eq!(book.tracked(GuessKind::Redeem), (0, 0));
    }

    #[test]
    fn counts_decay_after_ten_quiet_minutes() {
        let clock = ManualClock::new(NOW);
        let mut book = GuessBook::default();
        let who = identity(1);
        for _ in 0..=FREE_FAILURES {
            guess(&mut book, GuessKind::Redeem, who, v4(1), clock.now()).unwrap();
        }
        clock.advance(Duration::from_secs(FORGET_AFTER - 1));
        // Waited out, but not forgotten: the next failure waits longer still.
        guess(&mut book, GuessKind::Redeem, who, v4(1), clock.now()).unwrap();
        assert_eq!(
            book.admit(GuessKind::Redeem, who, v4(1), clock.now())
                .unwrap_err()
                .retry_after,
            4
        );
        clock.advance(Duration::from_secs(FORGET_AFTER));
        // The refusal, not yet in the log, is reported as the two are forgotten.
        let closing = book.sweep(clock.now());
        assert_eq!(closing.len(), 2, "{closing:?}");
        assert!(
            closing
                .iter()
                .all(|r| !r.first && r.refused == 1 && r.failures == 0)
        );
        assert_eq!(book.tracked(GuessKind::Redeem), (0, 0));
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                guess(&mut book, GuessKind::Redeem, who, v4(1), clock.now()),
                Ok(vec![])
            );
        }
    }

    #[test]
    fn the_audit_gets_one_row_when_throttled_then_one_a_minute_with_the_counts_since() {
        let mut book = GuessBook::default();
        let who = identity(1);
        let mut rows = Vec::new();
        // 1,100 wrong codes, ten a second.
        for i in 0..1100 {
            match guess(&mut book, GuessKind::Redeem, who, None, NOW + i / 10) {
                Ok(r) => rows.extend(r),
                Err(t) => rows.extend(t.reports),
            }
        }
        rows.extend(book.sweep(NOW + 110 + REPORT_EVERY));
        // The first row, one a minute later, and the rest by the sweep.
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert!(rows[0].first && rows[0].failures == 6 && rows[0].refused == 0);
        assert!(rows[1..].iter().all(|r| !r.first));
        assert_eq!(rows[1].since, NOW);
        assert_eq!(rows[1].at, NOW + 60);
        let failures: u32 = rows.iter().map(|r| r.failures).sum();
        let refused: u32 = rows.iter().map(|r| r.refused).sum();
        assert_eq!((failures, failures + refused), (6, 1100));
        let event = rows[0].audit_event();
        assert_eq!(event.action, AuditEvent::GUESS_THROTTLED);
        assert_eq!(event.actor, who.to_string());
        assert_eq!(event.subject, who.to_string());
        assert_eq!(
            event.detail,
            format!(
                "kind=redeem counted_by=identity failures=6 refused=0 since={NOW} blocked_until={} source=unknown",
                NOW + 1
            )
        );
        assert_eq!(rows[1].audit_event().action, AuditEvent::GUESS_CONTINUED);
    }

    #[test]
    fn the_tables_never_hold_more_than_their_cap_and_keep_the_worst_guesser() {
        let mut book = GuessBook::with_cap(8);
        let persistent = identity(7777);
        for _ in 0..=FREE_FAILURES {
            guess(&mut book, GuessKind::Redeem, persistent, None, NOW).unwrap();
        }
        for n in 0..1000 {
            let from = Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000_u32 + n)));
            guess(&mut book, GuessKind::Redeem, identity(n), from, NOW).unwrap();
            let (identities, sources) = book.tracked(GuessKind::Redeem);
            assert!(identities <= 8 && sources <= 8);
        }
        assert!(
            book.admit(GuessKind::Redeem, persistent, None, NOW)
                .is_err()
        );
    }

    #[test]
    fn an_attempt_that_counts_nothing_leaves_nothing_behind() {
        let mut book = GuessBook::default();
        for n in 0..100 {
            book.admit(GuessKind::Redeem, identity(n), v4(1), NOW)
                .unwrap();
            book.finish(
                GuessKind::Redeem,
                identity(n),
                v4(1),
                Outcome::NotCounted,
                NOW,
            );
        }
        assert_eq!(book.tracked(GuessKind::Redeem), (0, 0));
    }

    /// The service level: the acceptor and approval, on a real SQLite store and vault, at
    /// the times a manual clock shows.
    mod authority {
        use std::collections::{BTreeMap, BTreeSet};
        use std::net::SocketAddr;
        use std::path::Path;
        use std::sync::Arc;

        use kith_identity::hex;
        use kith_identity::vault::Vault;

        use super::*;
        use crate::api::{ErrorKind, JoinCall};
        use crate::service::answer::Answer;
        use crate::service::join::ChannelSeen;
        use crate::service::{AuthorityConfig, JoinSettings};
        use crate::store::{JoinLimits, MembershipStore, NewJoinRequest, NewTicket};
        use crate::ticket::OneTimeCode;

        struct Setup {
            authority: Authority,
            clock: Arc<ManualClock>,
            admin: Identifier,
            _dir: tempfile::TempDir,
        }

        async fn setup() -> Setup {
            let dir = tempfile::TempDir::new().unwrap();
            let clock = Arc::new(ManualClock::new(NOW));
            let path: &Path = dir.path();
            let owner = crate::store::StoreOwner {
                project_id: "p".into(),
                authority: None,
            };
            let store = MembershipStore::create_sqlite(&path.join("store.sqlite"), &owner, NOW)
                .await
                .unwrap();
            let vault = Vault::open(&path.join("vault.sqlite")).await.unwrap();
            vault.create_identity("authority", NOW).await.unwrap();
            let admin = identity(0xad);
            let authority = Authority::new(
                store,
                vault,
                "authority".into(),
                AuthorityConfig {
                    project_id: "p".into(),
                    admins: BTreeSet::from([admin]),
                    credential_ttl: Duration::from_secs(3600),
                    join: JoinSettings::default(),
                    clock: clock.clone(),
                },
            );
            Setup {
                authority,
                clock,
                admin,
                _dir: dir,
            }
        }

        fn channel(from: &str) -> ChannelSeen {
            ChannelSeen {
                handshake_hash: [7; 32],
                source: Some(from.parse::<SocketAddr>().unwrap()),
            }
        }

        async fn ticket(s: &Setup) -> String {
            let code = OneTimeCode::random();
            let ticket = NewTicket {
                id: "t1".into(),
                code_hash: code.hash(),
                attributes: BTreeMap::new(),
                usage_count: 1,
                expires_at: NOW + 3600,
                created_by: s.admin,
            };
            s.authority
                .store()
                .create_ticket(&ticket, NOW)
                .await
                .unwrap();
            hex::encode(code.as_bytes())
        }

        async fn guess_rows(s: &Setup) -> Vec<AuditEvent> {
            let log = s.authority.store().audit_log(1000).await.unwrap();
            log.into_iter()
                .filter(|e| e.action.starts_with("guess."))
                .collect()
        }

        #[tokio::test]
        async fn ten_wrong_codes_are_throttled_and_audited_once_and_another_host_enrolls() {
            let s = setup().await;
            let right = ticket(&s).await;
            let guesser = identity(0x6e);
            let from = channel("192.0.2.1:40000");
            let mut kinds = Vec::new();
            for _ in 0..10 {
                let wrong = hex::encode(OneTimeCode::random().as_bytes());
                let refusal = s
                    .authority
                    .redeem(&guesser, &from, &wrong, false)
                    .await
                    .unwrap_err();
                if refusal.kind == ErrorKind::Throttled {
                    assert!(
                        refusal
                            .message
                            .starts_with("too many failed attempts; retry after "),
                        "{refusal:?}"
                    );
                    assert!(refusal.retry_after.is_some_and(|r| r >= 1));
                }
                kinds.push(refusal.kind);
            }
            let mut expected = vec![ErrorKind::TicketUnknown; 6];
            expected.extend([ErrorKind::Throttled; 4]);
            assert_eq!(kinds, expected);
            // The right code from the same identity waits too: the count is the caller's.
            let refusal = s
                .authority
                .redeem(&guesser, &from, &right, false)
                .await
                .unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::Throttled);

            // Another identity at another address enrolls at once.
            let host = identity(0x40);
            let enrolled = s
                .authority
                .redeem(&host, &channel("198.51.100.7:1234"), &right, false)
                .await
                .unwrap();
            assert!(!enrolled.retried);

            // Two rows, not eleven: the identity and its address became throttled.
            let rows = guess_rows(&s).await;
            assert_eq!(rows.len(), 2, "{rows:#?}");
            for row in &rows {
                assert_eq!(row.action, AuditEvent::GUESS_THROTTLED);
                assert_eq!(row.actor, guesser.to_string());
                assert!(row.detail.contains("kind=redeem"), "{}", row.detail);
                assert!(
                    row.detail.contains("failures=6 refused=0"),
                    "{}",
                    row.detail
                );
                assert!(row.detail.contains("source=192.0.2.1"), "{}", row.detail);
            }
            let subjects: BTreeSet<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
            assert_eq!(
                subjects,
                BTreeSet::from([guesser.to_string().as_str(), "192.0.2.1"])
            );

            // A minute on, the sweep writes what came since: the five refusals.
            s.clock.advance(Duration::from_secs(REPORT_EVERY));
            let now = s.authority.now();
            let reports = s.authority.shared.guesses.book().sweep(now);
            s.authority.audit_guesses(reports).await;
            let rows = guess_rows(&s).await;
            assert_eq!(rows.len(), 4, "{rows:#?}");
            assert!(
                rows[2..]
                    .iter()
                    .all(|r| r.action == AuditEvent::GUESS_CONTINUED
                        && r.detail.contains("failures=0 refused=5")),
                "{rows:#?}"
            );

            // Once the wait is over, a code is looked up again.
            s.clock.advance(Duration::from_secs(MAX_DELAY));
            let wrong = hex::encode(OneTimeCode::random().as_bytes());
            let refusal = s
                .authority
                .redeem(&guesser, &from, &wrong, false)
                .await
                .unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::TicketUnknown);
            s.authority.store().close().await;
            s.authority.shared.vault.close().await;
        }

        #[tokio::test]
        async fn expired_and_used_up_tickets_are_not_guesses() {
            let s = setup().await;
            let code = ticket(&s).await;
            s.authority
                .redeem(&identity(1), &channel("192.0.2.1:1"), &code, false)
                .await
                .unwrap();
            for n in 2..20 {
                let refusal = s
                    .authority
                    .redeem(&identity(n), &channel("192.0.2.1:1"), &code, false)
                    .await
                    .unwrap_err();
                assert_eq!(refusal.kind, ErrorKind::TicketUsedUp);
            }
            assert!(guess_rows(&s).await.is_empty());
            s.authority.store().close().await;
            s.authority.shared.vault.close().await;
        }

        #[tokio::test]
        async fn wrong_verification_codes_at_approval_are_throttled_too() {
            let s = setup().await;
            let requester = identity(0x77);
            let request = NewJoinRequest {
                id: "AAAA-0001".into(),
                requester,
                source: "192.0.2.9".into(),
                attributes: BTreeMap::new(),
                lifetime: 60,
                note: String::new(),
                expires_at: NOW + 3600,
            };
            let limits = JoinLimits {
                per_source: 5,
                total: 10,
            };
            s.authority
                .store()
                .file_join_request(&request, &|_| "1234-5678".to_owned(), limits, NOW)
                .await
                .unwrap();
            let approve = |code: &str| JoinCall::Approve {
                id: "AAAA-0001".into(),
                code: code.to_owned(),
                attributes: None,
                lifetime: None,
            };
            let from = channel("[2001:db8:1:2::5]:4000");
            let call = |code: &str| {
                let permit = s
                    .authority
                    .shared
                    .in_flight
                    .clone()
                    .try_acquire_owned()
                    .unwrap();
                s.authority
                    .join_call(&s.admin, &from, approve(code), permit)
            };
            let mut kinds = Vec::new();
            for _ in 0..7 {
                kinds.push(call("0000-0000").await.err().map(|e| e.kind));
            }
            let mut expected = vec![Some(ErrorKind::WrongCode); 6];
            expected.push(Some(ErrorKind::Throttled));
            assert_eq!(kinds, expected);
            // Even the right code waits until the wait is over.
            let early = call("1234-5678").await.err().unwrap();
            assert_eq!(early.kind, ErrorKind::Throttled);
            s.clock
                .advance(Duration::from_secs(early.retry_after.unwrap()));
            let Ok(Answer::JoinRequest(approved)) = call("1234-5678").await else {
                panic!("the right code after the wait approves");
            };
            assert_eq!(approved.state, crate::api::JoinState::Approved);
            let rows = guess_rows(&s).await;
            assert_eq!(rows.len(), 2, "{rows:#?}");
            assert!(rows.iter().all(|r| r.detail.contains("kind=approve")));
            assert!(rows.iter().any(|r| r.subject == "2001:db8:1:2::/64"));
            s.authority.store().close().await;
            s.authority.shared.vault.close().await;
        }
    }

    proptest! {
        /// Whatever the attempts, outcomes and times: every refusal says to wait 1 s to
        /// 5 min, and the tables stay within their caps.
        #[test]
        fn any_sequence_of_attempts_stays_bounded(
            steps in proptest::collection::vec((0u32..6, 0u8..4, any::<bool>(), 0u64..90), 1..300)
        ) {
            let mut book = GuessBook::with_cap(4);
            let mut now = NOW;
            for (who, from, fails, pause) in steps {
                now += pause;
                let from = v4(from);
                match book.admit(GuessKind::Approve, identity(who), from, now) {
                    Ok(_) => {
                        let outcome = if fails { Outcome::Failed } else { Outcome::NotCounted };
                        book.finish(GuessKind::Approve, identity(who), from, outcome, now);
                    }
                    Err(t) => prop_assert!((1..=MAX_DELAY).contains(&t.retry_after)),
                }
                let (identities, sources) = book.tracked(GuessKind::Approve);
                prop_assert!(identities <= 4 && sources <= 4);
            }
        }
    }
}
