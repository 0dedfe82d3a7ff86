-- The vault: this node's identities and their secret keys (DESIGN §4).
--
-- Applied once per vault file by sqlx's embedded migrator; once released, this file must
-- not change (the migrator refuses a vault whose applied migrations' checksums differ).
-- Later schema changes go in new files.

-- One row per identity the node holds.
--   name        local, human-chosen handle (validated by the vault: 1-64 of [A-Za-z0-9_-])
--   identifier  `I` + 40 hex digits; fixed by the first key change, so it survives rotation
--   changes     Identity::export(): the signed key history, verified on every load
--   secret      the 32 secret bytes of the current identity key
--   is_default  1 for the identity commands use when none is named; at most one row
--   created_at  Unix seconds
CREATE TABLE identities (
    name       TEXT    NOT NULL PRIMARY KEY,
    identifier TEXT    NOT NULL UNIQUE,
    changes    BLOB    NOT NULL,
    secret     BLOB    NOT NULL CHECK (length(secret) = 32),
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at INTEGER NOT NULL
) STRICT;

-- At most one default identity: a partial unique index over the rows that are the default.
CREATE UNIQUE INDEX identities_single_default ON identities (is_default) WHERE is_default = 1;

-- Purpose keys an identity has attested (secure channel X25519 keys, credential signing
-- Ed25519 keys). Several may exist per identity and purpose while one is being replaced;
-- the vault hands out the newest that stays valid long enough. Rotating the identity key
-- deletes them (their attestations no longer verify); deleting the identity cascades.
--   purpose     1 = secure channel, 2 = credentials
--   secret      the purpose key's 32 secret bytes
--   attestation PurposeKeyAttestation::encode(); verified against the identity on load
--   created_at, expires_at  copies of the attestation's period (Unix seconds), for lookup
CREATE TABLE purpose_keys (
    identifier  TEXT    NOT NULL REFERENCES identities (identifier) ON DELETE CASCADE,
    purpose     INTEGER NOT NULL CHECK (purpose IN (1, 2)),
    secret      BLOB    NOT NULL CHECK (length(secret) = 32),
    attestation BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (identifier, purpose, created_at)
) STRICT;
