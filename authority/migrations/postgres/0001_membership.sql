-- The membership store on PostgreSQL: tickets, members and the audit log (DESIGN §5).
--
-- Twin of ../sqlite/0001_membership.sql, which explains every column: the same tables,
-- columns, constraints and indexes, written in each database's dialect (SQLite has no
-- identity columns and PostgreSQL no STRICT tables, so one file cannot serve both). Change
-- both together; authority/tests/store.rs checks that their columns agree.
--
-- Applied once per database by sqlx's embedded migrator, which holds an advisory lock
-- while it runs, so authority processes sharing the database can start at the same time.
-- Once released, this file must not change; later schema changes, such as the join
-- requests table, go in new files in both directories.

CREATE TABLE tickets (
    id          TEXT   NOT NULL PRIMARY KEY,
    code_hash   TEXT   NOT NULL UNIQUE CHECK (length(code_hash) = 64),
    attributes  TEXT   NOT NULL,
    usage_count BIGINT NOT NULL CHECK (usage_count >= 1),
    uses_left   BIGINT NOT NULL CHECK (uses_left >= 0 AND uses_left <= usage_count),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT   NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE members (
    identifier TEXT   NOT NULL PRIMARY KEY,
    attributes TEXT   NOT NULL,
    added_at   BIGINT NOT NULL,
    added_by   TEXT   NOT NULL,
    via        TEXT   NOT NULL
);

CREATE TABLE audit (
    seq     BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    subject TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);
