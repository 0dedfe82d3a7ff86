-- The project stamp on PostgreSQL (DESIGN §5: "a store is stamped with its project at
-- creation; an authority refuses an empty or foreign store").
--
-- Twin of ../sqlite/0004_project_stamp.sql, which explains every column: the same table,
-- columns and constraints in each database's dialect. Change both together;
-- authority/tests/store.rs checks that their columns agree. Once released, this file must
-- not change (see 0001).
--
-- Several authority processes sharing the database may stamp it at once (adopting a store
-- of an earlier kith): each inserts with `ON CONFLICT (id) DO NOTHING` and then reads the
-- one row that won, so the stamp is written once and every process judges the same row.

CREATE TABLE project_stamp (
    id         BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    project_id TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    authority  TEXT,
    origin     TEXT   NOT NULL CHECK (origin IN ('created', 'adopted'))
);
