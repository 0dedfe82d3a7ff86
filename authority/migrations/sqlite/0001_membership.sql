-- The membership store on SQLite: tickets, members and the audit log (DESIGN §5).
--
-- Twin of ../postgres/0001_membership.sql: the same tables, columns, constraints and
-- indexes, written in each database's dialect (SQLite has no identity columns and
-- PostgreSQL no STRICT tables, so one file cannot serve both). Change both together;
-- authority/tests/store.rs checks that their columns agree.
--
-- Applied once per database by sqlx's embedded migrator; once released, this file must
-- not change (the migrator refuses a database whose applied migrations' checksums differ).
-- Later schema changes, such as the join requests table, go in new files in both
-- directories.
--
-- Conventions, shared with PostgreSQL:
--   times        Unix seconds (64-bit integers)
--   identifiers  `I` + 40 lowercase hex digits
--   attributes   a JSON object of string values with sorted keys, e.g. {"role":"member"}

-- Enrollment tickets. Only SHA-256 of the one-time code is kept, never the code: reading
-- this table does not let anyone redeem a ticket.
--   id           short, non-secret handle that admins use to list and revoke the ticket
--   code_hash    SHA-256 of the one-time code, 64 lowercase hex digits
--   attributes   what a member enrolled with this ticket gets
--   usage_count  how many identities the ticket may enroll
--   uses_left    how many more it may enroll; redemption takes one in one UPDATE
--   created_by   the identifier of the admin or enroller who created it
--   revoked_at   when it was revoked, or NULL
CREATE TABLE tickets (
    id          TEXT    NOT NULL PRIMARY KEY,
    code_hash   TEXT    NOT NULL UNIQUE CHECK (length(code_hash) = 64),
    attributes  TEXT    NOT NULL,
    usage_count INTEGER NOT NULL CHECK (usage_count >= 1),
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0 AND uses_left <= usage_count),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  INTEGER
) STRICT;

-- Project members, one row per identifier.
--   attributes  what credentials issued to the member carry
--   added_by    on whose authority: the admin who added it, or the ticket's creator
--   via         how: 'admin', 'ticket:<id>' (later 'request:<id>')
CREATE TABLE members (
    identifier TEXT    NOT NULL PRIMARY KEY,
    attributes TEXT    NOT NULL,
    added_at   INTEGER NOT NULL,
    added_by   TEXT    NOT NULL,
    via        TEXT    NOT NULL
) STRICT;

-- The audit log, append-only; `seq` orders it. Never holds secrets.
--   actor    who did it (an identifier)
--   action   'ticket.created', 'ticket.redeemed', 'member.added', ...
--   subject  what it was done to: a ticket id or a member identifier
--   detail   the rest, as `key=value` text
CREATE TABLE audit (
    seq     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    detail  TEXT    NOT NULL
) STRICT;
