-- Join requests and auto-approval rules on SQLite (DESIGN §5), and a per-member limit on
-- credential lifetimes.
--
-- Twin of ../postgres/0002_join_requests.sql: the same tables, columns, constraints and
-- indexes in each database's dialect. Change both together; authority/tests/store.rs checks
-- that their columns agree. Once released, this file must not change (see 0001).
--
-- Conventions as in 0001: times and lifetimes in (Unix) seconds as 64-bit integers,
-- identifiers `I` + 40 lowercase hex digits, attributes a JSON object of string values with
-- sorted keys.

-- The longest lifetime of the credentials a member gets, seconds, when shorter than the
-- authority's default: set when a join request is approved for less; NULL = the default
-- (admins' additions and ticket redemptions).
ALTER TABLE members ADD COLUMN credential_ttl INTEGER CHECK (credential_ttl >= 0);

-- Join requests: an identity with no ticket asks to become a member; an admin (or an
-- auto-approval rule) approves or denies it, or it expires undecided.
--   id                  short, non-secret handle, chosen by the authority
--   requester           the identifier the request's channel authenticated
--   source              the IP address the request came from, or 'unknown'
--   attributes          what the requester asks for
--   lifetime            the credential lifetime asked for, seconds
--   note                the requester's free text
--   code                the verification code of the channel it was last filed through,
--                       which the admin compares with what the requester sees; filing again
--                       replaces it, and a decision names the code it was made for
--   expires_at          from when it can no longer be decided
--   state               pending, then approved, denied or expired (never back to pending)
--   decided_at          when it was decided or marked expired, or NULL
--   decided_by          who decided it: an identifier, plus ' (auto-approve rule ID)' for a
--                       rule; NULL while pending or once expired
--   reason              why it was denied, or NULL
--   granted_attributes  what the new member got, if approved, or NULL
--   granted_lifetime    the credential lifetime granted, seconds, if approved, or NULL
CREATE TABLE join_requests (
    id                 TEXT    NOT NULL PRIMARY KEY,
    requester          TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    attributes         TEXT    NOT NULL,
    lifetime           INTEGER NOT NULL CHECK (lifetime >= 0),
    note               TEXT    NOT NULL,
    code               TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    state              TEXT    NOT NULL
                       CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    decided_at         INTEGER,
    decided_by         TEXT,
    reason             TEXT,
    granted_attributes TEXT,
    granted_lifetime   INTEGER CHECK (granted_lifetime >= 0)
) STRICT;

-- At most one pending request per requester: filing again updates it instead.
CREATE UNIQUE INDEX join_requests_pending_requester
    ON join_requests (requester) WHERE state = 'pending';

-- Counting the pending, unexpired requests from one source, for the per-source cap.
CREATE INDEX join_requests_pending_source
    ON join_requests (source, expires_at) WHERE state = 'pending';

-- Auto-approval rules: a request from an address in `netblock` that asks for no more than
-- `attributes` is approved without an admin, with credentials of at most
-- `max_credential_lifetime` seconds, until `expires_at`.
--   id          short handle that admins use to list and delete the rule
--   netblock    CIDR text, checked by the authority before it is stored
--   created_by  the identifier of the admin who added it
CREATE TABLE auto_approve_rules (
    id                      TEXT    NOT NULL PRIMARY KEY,
    netblock                TEXT    NOT NULL,
    attributes              TEXT    NOT NULL,
    max_credential_lifetime INTEGER NOT NULL CHECK (max_credential_lifetime >= 0),
    created_at              INTEGER NOT NULL,
    created_by              TEXT    NOT NULL,
    expires_at              INTEGER NOT NULL
) STRICT;
