-- The project stamp on SQLite (DESIGN §5: "a store is stamped with its project at creation;
-- an authority refuses an empty or foreign store").
--
-- Twin of ../postgres/0004_project_stamp.sql: the same table, columns and constraints in
-- each database's dialect. Change both together; authority/tests/store.rs checks that their
-- columns agree. Once released, this file must not change (see 0001).
--
-- Conventions as in 0001: times in Unix seconds as 64-bit integers, identifiers `I` + 40
-- lowercase hex digits.

-- The project this store belongs to: one row, written when `kith authority create` creates
-- the store (origin 'created'), or, for a store an earlier kith wrote without a stamp, when
-- an authority first opens it and finds members, tickets, join requests or audit entries
-- there (origin 'adopted'). An authority started for another project refuses the store, and
-- one started on a store with no stamp and no data refuses it as empty, instead of silently
-- beginning a new project there. Nothing ever updates or deletes the row.
--   id          always 1: the table holds at most one row
--   project_id  the project's id (32 hex digits)
--   created_at  when the stamp was written
--   authority   the identifier of the authority that wrote it, or NULL if it was not known
--   origin      'created' with the store, or 'adopted' from an earlier kith
CREATE TABLE project_stamp (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    project_id TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    authority  TEXT,
    origin     TEXT    NOT NULL CHECK (origin IN ('created', 'adopted'))
) STRICT;
