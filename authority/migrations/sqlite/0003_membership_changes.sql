-- Membership changes on SQLite (DESIGN §5, "membership changes take effect at once"): the
-- revocation feed that nodes follow, when each member last changed, and the redemptions that
-- make a retried enrollment idempotent.
--
-- Twin of ../postgres/0003_membership_changes.sql: the same tables, columns, constraints and
-- indexes in each database's dialect. Change both together; authority/tests/store.rs checks
-- that their columns agree. Once released, this file must not change (see 0001).
--
-- Conventions as in 0001: times in Unix seconds as 64-bit integers, identifiers `I` + 40
-- lowercase hex digits.

-- When the latest entry of the feed about this member was appended (its `at`), or NULL if
-- there is none. A member added again after a deletion keeps the deletion's time. The
-- credential issuer stamps new credentials strictly after it, so that every credential
-- issued after a change is newer than the change, and nodes can void the older ones.
ALTER TABLE members ADD COLUMN changed_at INTEGER;

-- The membership feed, append-only: every deletion ('revoked') and every change of a
-- member's attributes ('changed'), appended in the transaction that makes the change. Nodes
-- follow it by `seq` ("entries after N"), so `seq` must become visible in increasing order:
-- on SQLite the single writer guarantees it.
--   seq      the entry's position, from 1
--   subject  the member's identifier
--   at       when, Unix seconds
--   kind     'revoked' or 'changed'
--   actor    who made the change (an identifier)
CREATE TABLE membership_feed (
    seq     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    subject TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('revoked', 'changed')),
    actor   TEXT    NOT NULL
) STRICT;

CREATE INDEX membership_feed_subject ON membership_feed (subject, seq);

-- Which identity redeemed which ticket, written in the redeeming transaction: a redemption
-- retried by the same identity (its answer was lost) finds its row and succeeds again without
-- taking another use. Deleting the member deletes its rows, so that after a deletion the
-- same ticket is an ordinary redemption again.
--   code_hash  SHA-256 of the ticket's one-time code, 64 lowercase hex digits
--   member     the redeemer's identifier
--   ticket_id  the ticket's id
--   at         when, Unix seconds
CREATE TABLE redemptions (
    code_hash TEXT    NOT NULL CHECK (length(code_hash) = 64),
    member    TEXT    NOT NULL,
    ticket_id TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (code_hash, member)
) STRICT;

CREATE INDEX redemptions_member ON redemptions (member);
