-- Credentials the vault's identities hold: what authorities have issued to them (DESIGN §4).
--
-- One row per (holder, issuer): a fresh credential from the same authority replaces the old.
-- The issuer's key history is kept beside the credential so that it can be verified (and
-- shown) without reaching the authority. Deleting the holder cascades.
--   holder          identifier of the identity the credential is about (its subject)
--   issuer          identifier of the authority that signed it
--   issuer_changes  Identity::export() of the issuer, verified against `issuer` on load
--   credential      CredentialAndPurposeKey::encode(): the signed credential and the
--                   attestation of the key that signed it
--   expires_at      copy of the credential's expiry (Unix seconds), for lookup
--   stored_at       when it was stored, Unix seconds
CREATE TABLE credentials (
    holder         TEXT    NOT NULL REFERENCES identities (identifier) ON DELETE CASCADE,
    issuer         TEXT    NOT NULL,
    issuer_changes BLOB    NOT NULL,
    credential     BLOB    NOT NULL,
    expires_at     INTEGER NOT NULL,
    stored_at      INTEGER NOT NULL,
    PRIMARY KEY (holder, issuer)
) STRICT;
