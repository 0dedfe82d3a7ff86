-- Join requests and auto-approval rules on PostgreSQL (DESIGN §5), and a per-member limit
-- on credential lifetimes.
--
-- Twin of ../sqlite/0002_join_requests.sql, which explains every column: the same tables,
-- columns, constraints and indexes in each database's dialect. Change both together;
-- authority/tests/store.rs checks that their columns agree. Once released, this file must
-- not change (see 0001).
--
-- Filing a request counts the pending ones and then inserts; the store takes
-- `LOCK TABLE join_requests IN SHARE ROW EXCLUSIVE MODE` first, so that processes sharing
-- the database file one at a time and the caps hold (READ COMMITTED alone would let two
-- filings both see room for one more).

ALTER TABLE members ADD COLUMN credential_ttl BIGINT CHECK (credential_ttl >= 0);

CREATE TABLE join_requests (
    id                 TEXT   NOT NULL PRIMARY KEY,
    requester          TEXT   NOT NULL,
    source             TEXT   NOT NULL,
    attributes         TEXT   NOT NULL,
    lifetime           BIGINT NOT NULL CHECK (lifetime >= 0),
    note               TEXT   NOT NULL,
    code               TEXT   NOT NULL,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    state              TEXT   NOT NULL
                       CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    decided_at         BIGINT,
    decided_by         TEXT,
    reason             TEXT,
    granted_attributes TEXT,
    granted_lifetime   BIGINT CHECK (granted_lifetime >= 0)
);

CREATE UNIQUE INDEX join_requests_pending_requester
    ON join_requests (requester) WHERE state = 'pending';

CREATE INDEX join_requests_pending_source
    ON join_requests (source, expires_at) WHERE state = 'pending';

CREATE TABLE auto_approve_rules (
    id                      TEXT   NOT NULL PRIMARY KEY,
    netblock                TEXT   NOT NULL,
    attributes              TEXT   NOT NULL,
    max_credential_lifetime BIGINT NOT NULL CHECK (max_credential_lifetime >= 0),
    created_at              BIGINT NOT NULL,
    created_by              TEXT   NOT NULL,
    expires_at              BIGINT NOT NULL
);
