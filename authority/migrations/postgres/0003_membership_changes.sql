-- Membership changes on PostgreSQL (DESIGN §5): the revocation feed, when each member last
-- changed, and the redemptions that make a retried enrollment idempotent.
--
-- Twin of ../sqlite/0003_membership_changes.sql, which explains every column: the same
-- tables, columns, constraints and indexes in each database's dialect. Change both together;
-- authority/tests/store.rs checks that their columns agree. Once released, this file must
-- not change (see 0001).
--
-- A follower reads "entries after seq N", so seqs must become visible in increasing order.
-- An identity column hands out numbers when rows are inserted, not when they commit: two
-- transactions in two authority processes could commit 6 before 5, and a follower that
-- read 6 would never see 5. Every transaction that changes membership therefore first takes
-- `LOCK TABLE membership_feed IN EXCLUSIVE MODE` (see the store's `Dialect`), which makes
-- such transactions take turns while plain reads of the feed go on.

ALTER TABLE members ADD COLUMN changed_at BIGINT;

CREATE TABLE membership_feed (
    seq     BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject TEXT   NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT   NOT NULL CHECK (kind IN ('revoked', 'changed')),
    actor   TEXT   NOT NULL
);

CREATE INDEX membership_feed_subject ON membership_feed (subject, seq);

CREATE TABLE redemptions (
    code_hash TEXT   NOT NULL CHECK (length(code_hash) = 64),
    member    TEXT   NOT NULL,
    ticket_id TEXT   NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (code_hash, member)
);

CREATE INDEX redemptions_member ON redemptions (member);
