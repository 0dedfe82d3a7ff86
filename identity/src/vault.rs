//! The vault: the identities a node holds and their secret keys, in one SQLite file that only
//! its owner can read (DESIGN §4).
//!
//! What it keeps: for each identity, a local name, the identifier, the signed key history
//! ([`Identity::export`]) and the current secret key; and the purpose keys the identity has
//! attested, with their attestations; and the credentials authorities have issued to the
//! identities, with each issuer's key history. What it promises:
//!
//! - The file is created with mode 0600 before SQLite touches it, and an existing file with
//!   looser permissions is tightened to 0600 when opened.
//! - Every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers (tasks or
//!   processes) queue on SQLite's write lock instead of failing half-way; a lock that stays
//!   busy is retried with a bounded backoff and then reported as [`VaultError::Busy`], never a
//!   hang (DESIGN §7).
//! - Every load verifies what it reads: the key history against the stored identifier, the
//!   secret against the current public key, a purpose key's attestation against the identity
//!   and the key it attests. A corrupt or tampered row is [`VaultError::Corrupt`], never a
//!   silently wrong key.
//! - Secrets are read into [`Zeroizing`] buffers and never reach `Debug`, `Display` or logs.
//!
//! What it does not do: encrypt the file (the file mode is the protection), or choose the
//! time. Every operation that depends on time takes `now` in Unix seconds, so callers and
//! tests control the clock.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use zeroize::Zeroizing;

use crate::sqlite::{self, Cause, SqlStore, sql_time};
use crate::{
    CredentialSigningKey, Identifier, Identity, IdentitySecret, MAX_CHANGES, Purpose,
    PurposeKeyAttestation, SecureChannelKey,
};

/// 10 s: how long an operation waits for a free pool connection. Operations hold one for
/// milliseconds, so running out means something is stuck; report it rather than hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// 30 days, in seconds: how long a new purpose key is attested for. Long enough that a node
/// makes a new key about monthly (peers see a new key each time), short enough that a leaked
/// purpose key stops being accepted within a month; the same span as the default credential
/// lifetime (DESIGN §5).
pub const PURPOSE_KEY_TTL: u64 = 30 * 24 * 60 * 60;

/// 1 day, in seconds: a stored purpose key is handed out only if its attestation stays valid
/// at least this much longer; otherwise the vault makes a new one. A key handed out may be
/// used for hours (a long secure channel, credentials signed with it) and peers' clocks
/// differ, so a key is retired a day before its attestation expires, not at the last second.
pub const PURPOSE_KEY_REFRESH: u64 = 24 * 60 * 60;

/// 64: the longest identity name, in characters. Names appear in commands and output, and
/// the bound keeps them there readable.
pub const MAX_NAME_LEN: usize = 64;

/// The length of every secret key the vault stores.
const SECRET_LEN: usize = 32;

/// Credentials the vault's identities hold.
mod credentials;
pub use credentials::StoredCredential;

/// The vault's schema, embedded at build time from `identity/migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The columns of `identities` that [`Vault::stored_identity`] reads, in one place.
const IDENTITY_COLUMNS: &str = "name, identifier, changes, secret, is_default, created_at";

/// Why a vault operation failed. Messages never contain secret key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No identity by that name or identifier.
    #[error(
        "there is no identity {identity} in this vault; `kith identity list` shows the ones there are"
    )]
    NotFound {
        /// The name (quoted) or identifier asked for.
        identity: String,
    },
    /// An identity by that name exists already.
    #[error(
        "an identity named {name:?} already exists; choose another name, or delete that one first with `kith identity delete {name}`"
    )]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The name is not a valid identity name.
    #[error(
        "invalid identity name {name:?}: {reason}; use 1 to {MAX_NAME_LEN} ASCII letters, digits, '-' or '_', starting with a letter or digit"
    )]
    InvalidName {
        /// The name given (at most 80 characters of it).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A credential offered for storage does not verify.
    #[error("cannot store the credential for identity {holder:?}")]
    InvalidCredential {
        /// The holder's name.
        holder: String,
        /// Why it does not verify.
        #[source]
        source: crate::CredentialError,
    },
    /// The identity's key history has reached its longest allowed length.
    #[error(
        "identity {name:?} has rotated its key the most times an identity may ({MAX_CHANGES} keys); create a new identity instead"
    )]
    RotationLimit {
        /// The identity's name.
        name: String,
    },
    /// A stored row does not decode or verify: the file was damaged or tampered with.
    #[error(
        "the vault at {path} holds a corrupt {what}; restore the vault from a backup, or delete and recreate that identity"
    )]
    Corrupt {
        /// The vault file.
        path: PathBuf,
        /// What is corrupt and how.
        what: String,
        /// The decoding or verification error, where there is one.
        #[source]
        source: Option<Cause>,
    },
    /// SQLite stayed busy or locked for longer than the vault retries
    /// ([`sqlite::BUSY_RETRY_BUDGET`]).
    #[error(
        "the vault at {path} stayed locked for {waited:?}; another kith process is probably writing to it, so try again when it finishes"
    )]
    Busy {
        /// The vault file.
        path: PathBuf,
        /// How long the operation waited and retried.
        waited: Duration,
        /// The last busy or locked error.
        #[source]
        source: sqlx::Error,
    },
    /// Any other database error.
    #[error("the vault database at {path} failed")]
    Database {
        /// The vault file.
        path: PathBuf,
        /// What SQLite or sqlx reported.
        #[source]
        source: sqlx::Error,
    },
    /// The vault's tables could not be created or brought up to date.
    #[error(
        "cannot prepare the tables of the vault at {path}; if a newer kith wrote it, use that version"
    )]
    Migrate {
        /// The vault file.
        path: PathBuf,
        /// What the migrator reported.
        #[source]
        source: MigrateError,
    },
    /// Creating the vault file or restricting its permissions failed.
    #[error(
        "cannot create the vault file {path} or make it readable by its owner only; check that its directory exists and belongs to you"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// An identity held in the vault, with its current secret key.
pub struct StoredIdentity {
    /// The local name.
    pub name: String,
    /// The identity (verified key history).
    pub identity: Identity,
    /// Whether this is the vault's default identity.
    pub is_default: bool,
    /// When it was created, Unix seconds.
    pub created_at: u64,
    secret: IdentitySecret,
}

impl StoredIdentity {
    /// The identity's current secret key.
    pub fn secret(&self) -> &IdentitySecret {
        &self.secret
    }

    /// The identifier.
    pub fn identifier(&self) -> &Identifier {
        self.identity.identifier()
    }
}

impl fmt::Debug for StoredIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredIdentity")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("is_default", &self.is_default)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What `kith identity list` shows about an identity: no secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySummary {
    /// The local name.
    pub name: String,
    /// The identifier.
    pub identifier: Identifier,
    /// Whether this is the vault's default identity.
    pub is_default: bool,
    /// When it was created, Unix seconds.
    pub created_at: u64,
}

/// The persistent store of a node's identities and their secret keys. Cloning is cheap and
/// shares the connection pool.
#[derive(Clone)]
pub struct Vault {
    pool: SqlitePool,
    path: Arc<Path>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).finish()
    }
}

impl Vault {
    /// Open the vault at `path`, creating the file (mode 0600) if it is missing and tightening
    /// an existing file's permissions to 0600; then bring its tables up to date. The
    /// directory must exist.
    pub async fn open(path: &Path) -> Result<Self, VaultError> {
        // Overwrite deleted rows (old keys after a rotation, deleted identities) with zeros
        // instead of leaving them in free pages of the file.
        let pool = sqlite::open_pool(path, ACQUIRE_TIMEOUT, |options| {
            options.pragma("secure_delete", "ON")
        })
        .map_err(|(path, source)| VaultError::Io { path, source })?;
        let vault = Self {
            pool,
            path: Arc::from(path),
        };
        sqlite::migrate(&vault, &MIGRATOR, &vault.pool).await?;
        Ok(vault)
    }

    /// Fold the write-ahead log into the file and close every connection, waiting (at most
    /// a second) for connections still in use. Operations on this vault (or its clones)
    /// after `close` fail with [`VaultError::Database`].
    pub async fn close(&self) {
        sqlite::close(self, &self.pool).await;
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create an identity named `name` with a fresh key, created at `now` (Unix seconds).
    /// If the vault has no default identity (it is the first one), it becomes the default.
    pub async fn create_identity(
        &self,
        name: &str,
        now: u64,
    ) -> Result<StoredIdentity, VaultError> {
        check_name(name)?;
        let (identity, secret) = Identity::create(now);
        let (id, key) = (&identity, &secret);
        let is_default =
            sqlite::retrying(self, move || self.try_create_identity(name, id, key, now)).await?;
        Ok(StoredIdentity {
            name: name.to_owned(),
            identity,
            is_default,
            created_at: now,
            secret,
        })
    }

    /// The identity named `name`.
    pub async fn identity(&self, name: &str) -> Result<StoredIdentity, VaultError> {
        sqlite::retrying(self, move || async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            self.load_by_name(&mut conn, name).await
        })
        .await
    }

    /// The identity with this identifier.
    pub async fn identity_by_identifier(
        &self,
        identifier: &Identifier,
    ) -> Result<StoredIdentity, VaultError> {
        let text = identifier.to_string();
        let text = text.as_str();
        sqlite::retrying(self, move || async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            let sql = format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE identifier = ?");
            let row = sqlx::query(&sql)
                .bind(text)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.db(e))?;
            match row {
                Some(row) => self.stored_identity(&row),
                None => Err(VaultError::NotFound {
                    identity: text.to_owned(),
                }),
            }
        })
        .await
    }

    /// The default identity, if the vault has any identity.
    pub async fn default_identity(&self) -> Result<Option<StoredIdentity>, VaultError> {
        sqlite::retrying(self, move || async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            let sql = format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE is_default = 1");
            let row = sqlx::query(&sql)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.db(e))?;
            row.map(|row| self.stored_identity(&row)).transpose()
        })
        .await
    }

    /// Make the identity named `name` the default, in place of the current one.
    pub async fn set_default(&self, name: &str) -> Result<(), VaultError> {
        sqlite::retrying(self, move || self.try_set_default(name)).await
    }

    /// Every identity, oldest first, without secrets.
    pub async fn list(&self) -> Result<Vec<IdentitySummary>, VaultError> {
        sqlite::retrying(self, move || async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            let rows = sqlx::query(
                "SELECT name, identifier, is_default, created_at FROM identities \
                 ORDER BY created_at, name",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.summary(row)).collect()
        })
        .await
    }

    /// Delete the identity named `name` and its purpose keys. If it was the default and
    /// others remain, the oldest remaining identity becomes the default; that identity is
    /// returned.
    pub async fn delete_identity(&self, name: &str) -> Result<Option<IdentitySummary>, VaultError> {
        sqlite::retrying(self, move || self.try_delete_identity(name)).await
    }

    /// Replace the current key of the identity named `name` with a fresh one, at `now`. The
    /// identifier stays. The identity's purpose keys were attested by the old key and no
    /// longer verify, so they are deleted in the same transaction; the next
    /// [`Vault::secure_channel_key`] or [`Vault::credential_signing_key`] makes new ones.
    pub async fn rotate_identity_key(
        &self,
        name: &str,
        now: u64,
    ) -> Result<StoredIdentity, VaultError> {
        sqlite::retrying(self, move || self.try_rotate_identity_key(name, now)).await
    }

    /// The secure channel key of the identity named `name`: the newest stored one whose
    /// attestation stays valid for at least [`PURPOSE_KEY_REFRESH`] after `now`, or else a
    /// new one attested for [`PURPOSE_KEY_TTL`] from `now`, stored before it is returned.
    pub async fn secure_channel_key(
        &self,
        name: &str,
        now: u64,
    ) -> Result<SecureChannelKey, VaultError> {
        self.purpose_key(name, now, now.saturating_add(PURPOSE_KEY_REFRESH))
            .await
    }

    /// The credential signing key of the identity named `name`, chosen or made as for
    /// [`Vault::secure_channel_key`].
    ///
    /// A credential is accepted only while the attestation of the key that signed it is
    /// valid, so a credential signed now lasts at most until this key's `expires_at`.
    pub async fn credential_signing_key(
        &self,
        name: &str,
        now: u64,
    ) -> Result<CredentialSigningKey, VaultError> {
        self.credential_signing_key_until(name, now, now).await
    }

    /// The credential signing key of the identity named `name` whose attestation lasts at
    /// least until `until` (Unix seconds): what an issuer needs to sign a credential valid
    /// until then. A new key is attested for [`PURPOSE_KEY_TTL`] or until `until`, whichever
    /// is later.
    pub async fn credential_signing_key_until(
        &self,
        name: &str,
        now: u64,
        until: u64,
    ) -> Result<CredentialSigningKey, VaultError> {
        let until = until.max(now.saturating_add(PURPOSE_KEY_REFRESH));
        self.purpose_key(name, now, until).await
    }
}

/// The parts of the vault's transactions, each run (and rerun while busy) by a public method.
impl Vault {
    async fn try_create_identity(
        &self,
        name: &str,
        identity: &Identity,
        secret: &IdentitySecret,
        now: u64,
    ) -> Result<bool, VaultError> {
        let mut tx = self.begin_write().await?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM identities WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        if taken.is_some() {
            return Err(VaultError::AlreadyExists {
                name: name.to_owned(),
            });
        }
        let has_default: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identities WHERE is_default = 1)")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        let is_default = !has_default;
        let secret_bytes = secret.to_bytes();
        sqlx::query(
            "INSERT INTO identities (name, identifier, changes, secret, is_default, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(identity.identifier().to_string())
        .bind(identity.export())
        .bind(secret_bytes.as_slice())
        .bind(is_default)
        .bind(sql_time(now))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(is_default)
    }

    async fn try_set_default(&self, name: &str) -> Result<(), VaultError> {
        let mut tx = self.begin_write().await?;
        // Clear the old default first: the partial unique index allows one at a time.
        sqlx::query("UPDATE identities SET is_default = 0 WHERE is_default = 1 AND name <> ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        let updated = sqlx::query("UPDATE identities SET is_default = 1 WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        if updated.rows_affected() == 0 {
            // Dropping the transaction rolls back the cleared default.
            return Err(not_found(name));
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    async fn try_delete_identity(&self, name: &str) -> Result<Option<IdentitySummary>, VaultError> {
        let mut tx = self.begin_write().await?;
        let was_default: Option<bool> =
            sqlx::query_scalar("DELETE FROM identities WHERE name = ? RETURNING is_default")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        let Some(was_default) = was_default else {
            return Err(not_found(name));
        };
        let mut new_default = None;
        if was_default {
            let row = sqlx::query(
                "UPDATE identities SET is_default = 1 WHERE rowid = \
                 (SELECT rowid FROM identities ORDER BY created_at, name LIMIT 1) \
                 RETURNING name, identifier, is_default, created_at",
            )
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            new_default = row.map(|row| self.summary(&row)).transpose()?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(new_default)
    }

    async fn try_rotate_identity_key(
        &self,
        name: &str,
        now: u64,
    ) -> Result<StoredIdentity, VaultError> {
        let mut tx = self.begin_write().await?;
        let stored = self.load_by_name(&mut tx, name).await?;
        // One more change would make a history that `Identity::import` refuses, and the
        // identity could never be loaded again.
        if stored.identity.change_count() >= MAX_CHANGES {
            return Err(VaultError::RotationLimit {
                name: name.to_owned(),
            });
        }
        let mut identity = stored.identity.clone();
        let secret = identity
            .rotate(stored.secret(), now)
            .map_err(|e| self.corrupt_by(format!("key of identity {name:?}"), e))?;
        let secret_bytes = secret.to_bytes();
        sqlx::query("UPDATE identities SET changes = ?, secret = ? WHERE name = ?")
            .bind(identity.export())
            .bind(secret_bytes.as_slice())
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        sqlx::query("DELETE FROM purpose_keys WHERE identifier = ?")
            .bind(identity.identifier().to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(StoredIdentity {
            name: stored.name,
            identity,
            is_default: stored.is_default,
            created_at: stored.created_at,
            secret,
        })
    }

    /// Look for a usable key in a read transaction (the common case, which takes no write
    /// lock); only if there is none, take the write lock, look again (another task may have
    /// made one meanwhile) and make one.
    async fn purpose_key<K: VaultPurposeKey>(
        &self,
        name: &str,
        now: u64,
        valid_until: u64,
    ) -> Result<K, VaultError> {
        if let Some(key) = sqlite::retrying(self, move || {
            self.try_purpose_key::<K>(name, now, valid_until, false)
        })
        .await?
        {
            return Ok(key);
        }
        sqlite::retrying(self, move || {
            self.try_purpose_key::<K>(name, now, valid_until, true)
        })
        .await?
        .ok_or_else(|| not_found(name))
    }

    async fn try_purpose_key<K: VaultPurposeKey>(
        &self,
        name: &str,
        now: u64,
        valid_until: u64,
        make: bool,
    ) -> Result<Option<K>, VaultError> {
        // Both reads in one transaction, so they see one snapshot: a rotation committed in
        // between would otherwise pair the old identity key with a new attestation.
        let mut tx = if make {
            self.begin_write().await?
        } else {
            self.pool.begin().await.map_err(|e| self.db(e))?
        };
        let stored = self.load_by_name(&mut tx, name).await?;
        let identifier = stored.identifier().to_string();
        let row = sqlx::query(
            "SELECT secret, attestation, created_at, expires_at FROM purpose_keys \
             WHERE identifier = ? AND purpose = ? AND created_at <= ? AND expires_at >= ? \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(&identifier)
        .bind(purpose_code(K::PURPOSE))
        .bind(sql_time(now))
        .bind(sql_time(valid_until))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.db(e))?;
        if let Some(row) = row {
            let key = self.stored_purpose_key::<K>(&row, &stored, now)?;
            tx.commit().await.map_err(|e| self.db(e))?;
            return Ok(Some(key));
        }
        if !make {
            return Ok(None);
        }

        let expires_at = now.saturating_add(PURPOSE_KEY_TTL).max(valid_until);
        let key = K::generate(&stored.identity, stored.secret(), now, expires_at);
        // Expired keys are of no further use; dropping them keeps the table small.
        sqlx::query(
            "DELETE FROM purpose_keys WHERE identifier = ? AND purpose = ? AND expires_at <= ?",
        )
        .bind(&identifier)
        .bind(purpose_code(K::PURPOSE))
        .bind(sql_time(now))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db(e))?;
        let secret_bytes = key.secret_bytes();
        sqlx::query(
            "INSERT INTO purpose_keys \
             (identifier, purpose, secret, attestation, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&identifier)
        .bind(purpose_code(K::PURPOSE))
        .bind(secret_bytes.as_slice())
        .bind(key.attestation().encode())
        .bind(sql_time(now))
        .bind(sql_time(expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(Some(key))
    }
}

/// Loading rows, and the plumbing every operation shares.
impl Vault {
    /// A transaction that holds SQLite's write lock from the start ([`sqlite::BEGIN_WRITE`]),
    /// so that concurrent writers wait their turn instead of failing half-way.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, VaultError> {
        self.pool
            .begin_with(sqlite::BEGIN_WRITE)
            .await
            .map_err(|e| self.db(e))
    }

    async fn load_by_name(
        &self,
        conn: &mut SqliteConnection,
        name: &str,
    ) -> Result<StoredIdentity, VaultError> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(conn)
            .await
            .map_err(|e| self.db(e))?;
        match row {
            Some(row) => self.stored_identity(&row),
            None => Err(not_found(name)),
        }
    }

    /// Decode and verify an `identities` row read with [`IDENTITY_COLUMNS`].
    fn stored_identity(&self, row: &SqliteRow) -> Result<StoredIdentity, VaultError> {
        let name: String = self.column(row, "name", || "identity name".to_owned())?;
        let what = |part: &str| format!("{part} of identity {name:?}");
        let identifier = self.identifier(row, "identifier", || what("identifier"))?;
        let changes: &[u8] = self.column(row, "changes", || what("key history"))?;
        let identity = Identity::import(changes, Some(&identifier))
            .map_err(|e| self.corrupt_by(what("key history"), e))?;
        let secret_bytes: &[u8] = self.column(row, "secret", || what("secret key"))?;
        let secret_key = self.secret_key(secret_bytes, || what("secret key"))?;
        let secret = IdentitySecret::from_bytes(&secret_key);
        if secret.public_key() != identity.public_key() {
            return Err(self.corrupt(what(
                "secret key (it does not match the current public key)",
            )));
        }
        let is_default: bool = self.column(row, "is_default", || what("default flag"))?;
        let created_at = self.time(row, "created_at", || what("creation time"))?;
        Ok(StoredIdentity {
            name,
            identity,
            is_default,
            created_at,
            secret,
        })
    }

    /// Decode a row of `name, identifier, is_default, created_at`.
    fn summary(&self, row: &SqliteRow) -> Result<IdentitySummary, VaultError> {
        let name: String = self.column(row, "name", || "identity name".to_owned())?;
        let what = |part: &str| format!("{part} of identity {name:?}");
        let identifier = self.identifier(row, "identifier", || what("identifier"))?;
        let is_default: bool = self.column(row, "is_default", || what("default flag"))?;
        let created_at = self.time(row, "created_at", || what("creation time"))?;
        Ok(IdentitySummary {
            name,
            identifier,
            is_default,
            created_at,
        })
    }

    /// Decode and verify a `purpose_keys` row of `stored`, valid at `now`.
    fn stored_purpose_key<K: VaultPurposeKey>(
        &self,
        row: &SqliteRow,
        stored: &StoredIdentity,
        now: u64,
    ) -> Result<K, VaultError> {
        let what = |part: &str| format!("{} {part} of identity {:?}", K::LABEL, stored.name);
        let encoded: &[u8] = self.column(row, "attestation", || what("key attestation"))?;
        let attestation = PurposeKeyAttestation::decode(encoded)
            .map_err(|e| self.corrupt_by(what("key attestation"), e))?;
        attestation
            .verify(&stored.identity, K::PURPOSE, now, 0)
            .map_err(|e| self.corrupt_by(what("key attestation"), e))?;
        let created_at: i64 = self.column(row, "created_at", || what("key creation time"))?;
        let expires_at: i64 = self.column(row, "expires_at", || what("key expiry"))?;
        if created_at != sql_time(attestation.created_at())
            || expires_at != sql_time(attestation.expires_at())
        {
            return Err(self.corrupt(what(
                "key (its stored period differs from its attestation's)",
            )));
        }
        let secret_bytes: &[u8] = self.column(row, "secret", || what("secret key"))?;
        let secret = self.secret_key(secret_bytes, || what("secret key"))?;
        K::from_stored(&secret, attestation)
            .ok_or_else(|| self.corrupt(what("secret key (it does not match its attestation)")))
    }

    /// Copy a stored secret into a zeroizing buffer, checking its length.
    fn secret_key(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Zeroizing<[u8; SECRET_LEN]>, VaultError> {
        if bytes.len() != SECRET_LEN {
            return Err(self.corrupt(format!(
                "{} ({} bytes, not {SECRET_LEN})",
                what(),
                bytes.len()
            )));
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        for (to, from) in secret.iter_mut().zip(bytes) {
            *to = *from;
        }
        Ok(secret)
    }
}

/// The vault's words for what the shared SQLite plumbing reports: every error names the
/// vault file.
impl SqlStore for Vault {
    type Error = VaultError;

    fn describe(&self) -> Cow<'_, str> {
        self.path.to_string_lossy()
    }

    fn is_transient(source: &sqlx::Error) -> bool {
        sqlite::is_busy(source)
    }

    fn db(&self, source: sqlx::Error) -> VaultError {
        VaultError::Database {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn db_source(error: VaultError) -> Result<sqlx::Error, VaultError> {
        match error {
            VaultError::Database { source, .. } => Ok(source),
            other => Err(other),
        }
    }

    fn busy(&self, waited: Duration, source: sqlx::Error) -> VaultError {
        VaultError::Busy {
            path: self.path.to_path_buf(),
            waited,
            source,
        }
    }

    fn migrate_failed(&self, source: MigrateError) -> VaultError {
        VaultError::Migrate {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn corrupt_row(&self, what: String, cause: Option<Cause>) -> VaultError {
        VaultError::Corrupt {
            path: self.path.to_path_buf(),
            what,
            source: cause,
        }
    }
}

/// What the vault needs of a purpose key type to store and load it.
trait VaultPurposeKey: Sized {
    const PURPOSE: Purpose;
    /// How errors name it.
    const LABEL: &'static str;
    fn generate(
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self;
    fn from_stored(secret: &[u8; SECRET_LEN], attestation: PurposeKeyAttestation) -> Option<Self>;
    fn attestation(&self) -> &PurposeKeyAttestation;
    fn secret_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]>;
}

impl VaultPurposeKey for SecureChannelKey {
    const PURPOSE: Purpose = Purpose::SecureChannel;
    const LABEL: &'static str = "secure channel";
    fn generate(
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        SecureChannelKey::generate(identity, secret, created_at, expires_at)
    }
    fn from_stored(secret: &[u8; SECRET_LEN], attestation: PurposeKeyAttestation) -> Option<Self> {
        SecureChannelKey::from_stored(secret, attestation)
    }
    fn attestation(&self) -> &PurposeKeyAttestation {
        SecureChannelKey::attestation(self)
    }
    fn secret_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        SecureChannelKey::secret_bytes(self)
    }
}

impl VaultPurposeKey for CredentialSigningKey {
    const PURPOSE: Purpose = Purpose::Credentials;
    const LABEL: &'static str = "credential signing";
    fn generate(
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        CredentialSigningKey::generate(identity, secret, created_at, expires_at)
    }
    fn from_stored(secret: &[u8; SECRET_LEN], attestation: PurposeKeyAttestation) -> Option<Self> {
        CredentialSigningKey::from_stored(secret, attestation)
    }
    fn attestation(&self) -> &PurposeKeyAttestation {
        CredentialSigningKey::attestation(self)
    }
    fn secret_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        CredentialSigningKey::secret_bytes(self)
    }
}

/// The `purpose` column's code for each purpose (the schema's CHECK lists them).
fn purpose_code(purpose: Purpose) -> i64 {
    match purpose {
        Purpose::SecureChannel => 1,
        Purpose::Credentials => 2,
    }
}

fn not_found(name: &str) -> VaultError {
    VaultError::NotFound {
        identity: format!("{name:?}"),
    }
}

/// Check an identity name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` or `_`,
/// starting with a letter or digit (so it can never be taken for a command-line option).
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Some("it may contain only letters, digits, '-' and '_'")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is too long")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(VaultError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::to_hex;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;
    use tokio::task::JoinSet;

    const NOW: u64 = 1_700_000_000;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn new_vault() -> (tempfile::TempDir, PathBuf, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.sqlite");
        let vault = Vault::open(&path).await.unwrap();
        (dir, path, vault)
    }

    /// Run raw SQL against the file, as someone editing it behind the vault's back would.
    async fn tamper(vault: &Vault, sql: &str, value: Vec<u8>) {
        let mut conn = vault.pool.acquire().await.unwrap();
        // Also lets a wrong-length secret past the schema's CHECK, to test the vault's own.
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut *conn)
            .await
            .unwrap();
        let done = sqlx::query(sql)
            .bind(value)
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "{sql}");
        sqlx::query("PRAGMA ignore_check_constraints = OFF")
            .execute(&mut *conn)
            .await
            .unwrap();
    }

    fn assert_corrupt<T: fmt::Debug>(result: Result<T, VaultError>, context: &str) {
        match result {
            Err(VaultError::Corrupt { .. }) => {}
            other => panic!("{context}: expected Corrupt, got {other:?}"),
        }
    }

    async fn purpose_key_rows(vault: &Vault) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM purpose_keys")
            .fetch_one(&vault.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_first_identity_becomes_the_default_and_list_shows_all_oldest_first() {
        let (_dir, _path, vault) = new_vault().await;
        assert!(vault.default_identity().await.unwrap().is_none());
        assert!(vault.list().await.unwrap().is_empty());

        let alice = vault.create_identity("alice", NOW).await.unwrap();
        let bob = vault.create_identity("bob", NOW + 1).await.unwrap();
        assert!(alice.is_default);
        assert!(!bob.is_default);
        assert_eq!(alice.secret().public_key(), alice.identity.public_key());

        let list = vault.list().await.unwrap();
        assert_eq!(
            list,
            vec![
                IdentitySummary {
                    name: "alice".into(),
                    identifier: *alice.identifier(),
                    is_default: true,
                    created_at: NOW,
                },
                IdentitySummary {
                    name: "bob".into(),
                    identifier: *bob.identifier(),
                    is_default: false,
                    created_at: NOW + 1,
                },
            ]
        );
        let default = vault.default_identity().await.unwrap().unwrap();
        assert_eq!(default.identifier(), alice.identifier());
        let by_id = vault
            .identity_by_identifier(bob.identifier())
            .await
            .unwrap();
        assert_eq!(by_id.name, "bob");
        assert_eq!(by_id.identity, bob.identity);
    }

    #[tokio::test]
    async fn set_default_moves_the_default_and_an_unknown_name_changes_nothing() {
        let (_dir, _path, vault) = new_vault().await;
        vault.create_identity("alice", NOW).await.unwrap();
        vault.create_identity("bob", NOW).await.unwrap();

        vault.set_default("bob").await.unwrap();
        assert_eq!(vault.default_identity().await.unwrap().unwrap().name, "bob");
        assert!(!vault.identity("alice").await.unwrap().is_default);
        // Setting the current default again is fine.
        vault.set_default("bob").await.unwrap();

        assert!(matches!(
            vault.set_default("carol").await,
            Err(VaultError::NotFound { .. })
        ));
        // The failed call rolled back: bob is still the one default.
        let defaults: Vec<_> = vault
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.is_default)
            .map(|s| s.name)
            .collect();
        assert_eq!(defaults, ["bob"]);
    }

    #[tokio::test]
    async fn deleting_the_default_makes_the_oldest_remaining_identity_the_default() {
        let (_dir, _path, vault) = new_vault().await;
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        vault.create_identity("carol", NOW + 2).await.unwrap();
        vault.create_identity("bob", NOW + 1).await.unwrap();
        vault.secure_channel_key("alice", NOW).await.unwrap();
        vault.credential_signing_key("alice", NOW).await.unwrap();
        vault.secure_channel_key("bob", NOW).await.unwrap();

        // Deleting one that is not the default changes no default.
        assert_eq!(vault.delete_identity("carol").await.unwrap(), None);
        let new_default = vault.delete_identity("alice").await.unwrap().unwrap();
        assert_eq!(new_default.name, "bob");
        assert!(new_default.is_default);
        assert_eq!(vault.default_identity().await.unwrap().unwrap().name, "bob");
        // alice's purpose keys went with her.
        assert_eq!(purpose_key_rows(&vault).await, 1);
        assert!(matches!(
            vault.identity("alice").await,
            Err(VaultError::NotFound { .. })
        ));
        assert!(matches!(
            vault.identity_by_identifier(alice.identifier()).await,
            Err(VaultError::NotFound { .. })
        ));
        assert!(matches!(
            vault.delete_identity("alice").await,
            Err(VaultError::NotFound { .. })
        ));

        assert_eq!(vault.delete_identity("bob").await.unwrap(), None);
        assert!(vault.default_identity().await.unwrap().is_none());
        // The next identity becomes the default again.
        assert!(vault.create_identity("dave", NOW).await.unwrap().is_default);
    }

    #[tokio::test]
    async fn a_duplicate_name_is_refused_and_the_first_identity_is_kept() {
        let (_dir, _path, vault) = new_vault().await;
        let first = vault.create_identity("alice", NOW).await.unwrap();
        let err = vault.create_identity("alice", NOW + 5).await.unwrap_err();
        assert!(matches!(&err, VaultError::AlreadyExists { name } if name == "alice"));
        assert!(
            err.to_string().contains("kith identity delete alice"),
            "{err}"
        );
        let kept = vault.identity("alice").await.unwrap();
        assert_eq!(kept.identity, first.identity);
        assert_eq!(vault.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn invalid_names_are_refused_with_the_reason() {
        let (_dir, _path, vault) = new_vault().await;
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for (name, reason) in [
            ("", "empty"),
            ("-alice", "start with a letter or digit"),
            ("_alice", "start with a letter or digit"),
            ("al ice", "only letters"),
            ("al/ice", "only letters"),
            ("al.ice", "only letters"),
            ("ålice", "start with a letter or digit"),
            ("alicé", "only letters"),
            ("alice\n", "only letters"),
            (too_long.as_str(), "too long"),
        ] {
            let err = vault.create_identity(name, NOW).await.unwrap_err();
            assert!(
                matches!(err, VaultError::InvalidName { .. }),
                "{name:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(reason), "{name:?}: {message}");
            assert!(message.contains("1 to 64"), "{message}");
        }
        assert!(vault.list().await.unwrap().is_empty());
        let longest = "a".repeat(MAX_NAME_LEN);
        for name in ["a", "9", "A-1_b", "node-7_prod", longest.as_str()] {
            vault.create_identity(name, NOW).await.unwrap();
        }
    }

    #[tokio::test]
    async fn not_found_names_the_identity_and_points_to_kith_identity_list() {
        let (_dir, _path, vault) = new_vault().await;
        let err = vault.identity("nobody").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"nobody\""), "{message}");
        assert!(message.contains("kith identity list"), "{message}");
        assert!(matches!(
            vault.secure_channel_key("nobody", NOW).await,
            Err(VaultError::NotFound { .. })
        ));
        assert!(matches!(
            vault.rotate_identity_key("nobody", NOW).await,
            Err(VaultError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn identities_and_keys_survive_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.sqlite");
        let vault = Vault::open(&path).await.unwrap();
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        let bob = vault.create_identity("bob", NOW + 1).await.unwrap();
        vault.set_default("bob").await.unwrap();
        let channel_key = vault.secure_channel_key("alice", NOW).await.unwrap();
        let alice_secret = alice.secret().to_bytes();
        vault.close().await;
        // A closed vault answers with an error, not a hang.
        assert!(matches!(
            vault.identity("alice").await,
            Err(VaultError::Database { .. })
        ));

        let vault = Vault::open(&path).await.unwrap();
        let loaded = vault.identity("alice").await.unwrap();
        assert_eq!(loaded.identifier(), alice.identifier());
        assert_eq!(loaded.identity, alice.identity);
        assert_eq!(loaded.created_at, NOW);
        assert!(!loaded.is_default);
        assert_eq!(*loaded.secret().to_bytes(), *alice_secret);
        // The loaded secret is the identity's key: the identity it would create has the
        // same public key (and, created at the same time, the same identifier).
        assert_eq!(loaded.secret().public_key(), loaded.identity.public_key());
        assert_eq!(
            Identity::from_secret(loaded.secret(), NOW).identifier(),
            alice.identifier()
        );
        assert_eq!(vault.default_identity().await.unwrap().unwrap().name, "bob");
        assert_eq!(
            vault.identity("bob").await.unwrap().identifier(),
            bob.identifier()
        );
        let again = vault.secure_channel_key("alice", NOW + 60).await.unwrap();
        assert_eq!(*again.secret_bytes(), *channel_key.secret_bytes());
        assert_eq!(again.attestation(), channel_key.attestation());
        vault.close().await;
    }

    #[tokio::test]
    async fn a_new_vault_file_and_its_wal_are_owner_only() {
        let (_dir, path, vault) = new_vault().await;
        assert_eq!(mode(&path), 0o600);
        vault.create_identity("alice", NOW).await.unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        assert!(
            wal.exists(),
            "WAL mode is on, so an open vault has a -wal file"
        );
        assert_eq!(mode(&wal), 0o600);
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&vault.pool)
            .await
            .unwrap();
        assert_eq!(journal_mode, "wal");
        let foreign_keys: bool = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&vault.pool)
            .await
            .unwrap();
        assert!(foreign_keys);
        vault.close().await;
    }

    #[tokio::test]
    async fn an_existing_world_readable_vault_is_tightened_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.sqlite");
        let vault = Vault::open(&path).await.unwrap();
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        vault.close().await;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        // Closing folded the WAL, and the secrets written through it, into the file.
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "close checkpoints and truncates the WAL"
        );
        // An empty one left lying around (even a loose one) is harmless.
        std::fs::write(&wal, b"").unwrap();
        for file in [&path, &wal] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(mode(file), 0o644);
        }

        let vault = Vault::open(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(
            vault.identity("alice").await.unwrap().identifier(),
            alice.identifier()
        );
        vault.close().await;

        // An empty pre-existing file (say, made by `touch`) is tightened and becomes a vault.
        let touched = dir.path().join("touched.sqlite");
        std::fs::write(&touched, b"").unwrap();
        std::fs::set_permissions(&touched, std::fs::Permissions::from_mode(0o666)).unwrap();
        let vault = Vault::open(&touched).await.unwrap();
        assert_eq!(mode(&touched), 0o600);
        vault.create_identity("alice", NOW).await.unwrap();
        vault.close().await;
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_io_error_that_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("vault.sqlite");
        let err = Vault::open(&path).await.unwrap_err();
        assert!(matches!(err, VaultError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_vault_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Vault::open(&path).await.unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::Database { .. } | VaultError::Migrate { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    #[tokio::test]
    async fn secure_channel_key_is_reused_until_its_refresh_window_then_replaced() {
        let (_dir, _path, vault) = new_vault().await;
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        let first = vault.secure_channel_key("alice", NOW).await.unwrap();
        let attestation = first.attestation();
        assert_eq!(attestation.created_at(), NOW);
        assert_eq!(attestation.expires_at(), NOW + PURPOSE_KEY_TTL);
        attestation
            .verify(&alice.identity, Purpose::SecureChannel, NOW, 0)
            .unwrap();

        let last_use = NOW + PURPOSE_KEY_TTL - PURPOSE_KEY_REFRESH;
        for now in [NOW, NOW + 1, NOW + PURPOSE_KEY_TTL / 2, last_use] {
            let again = vault.secure_channel_key("alice", now).await.unwrap();
            assert_eq!(*again.secret_bytes(), *first.secret_bytes(), "at {now}");
            assert_eq!(again.attestation(), first.attestation(), "at {now}");
        }
        assert_eq!(purpose_key_rows(&vault).await, 1);

        // Within a day of expiry: a new key, attested from now.
        let renewed = vault
            .secure_channel_key("alice", last_use + 1)
            .await
            .unwrap();
        assert_ne!(*renewed.secret_bytes(), *first.secret_bytes());
        assert_ne!(
            renewed.attestation().public_key(),
            first.attestation().public_key()
        );
        assert_eq!(renewed.attestation().created_at(), last_use + 1);
        renewed
            .attestation()
            .verify(&alice.identity, Purpose::SecureChannel, last_use + 1, 0)
            .unwrap();
        // And that one is handed out from then on.
        let again = vault
            .secure_channel_key("alice", last_use + 2)
            .await
            .unwrap();
        assert_eq!(*again.secret_bytes(), *renewed.secret_bytes());
        // The old key is still valid, so it is kept until it expires; then it is dropped
        // when the next key is made.
        assert_eq!(purpose_key_rows(&vault).await, 2);
        let much_later = NOW + 3 * PURPOSE_KEY_TTL;
        vault.secure_channel_key("alice", much_later).await.unwrap();
        assert_eq!(purpose_key_rows(&vault).await, 1);
    }

    #[tokio::test]
    async fn credential_signing_keys_are_kept_apart_from_secure_channel_keys() {
        let (_dir, _path, vault) = new_vault().await;
        let authority = vault.create_identity("authority", NOW).await.unwrap();
        let channel = vault.secure_channel_key("authority", NOW).await.unwrap();
        let signing = vault
            .credential_signing_key("authority", NOW)
            .await
            .unwrap();
        signing
            .attestation()
            .verify(&authority.identity, Purpose::Credentials, NOW, 0)
            .unwrap();
        assert_eq!(signing.attestation().expires_at(), NOW + PURPOSE_KEY_TTL);
        assert_ne!(*signing.secret_bytes(), *channel.secret_bytes());
        let again = vault
            .credential_signing_key("authority", NOW + 10)
            .await
            .unwrap();
        assert_eq!(*again.secret_bytes(), *signing.secret_bytes());
        let channel_again = vault
            .secure_channel_key("authority", NOW + 10)
            .await
            .unwrap();
        assert_eq!(*channel_again.secret_bytes(), *channel.secret_bytes());
        assert_eq!(purpose_key_rows(&vault).await, 2);
    }

    #[tokio::test]
    async fn rotation_keeps_the_identifier_changes_the_key_and_replaces_purpose_keys() {
        let (_dir, path, vault) = new_vault().await;
        let before = vault.create_identity("alice", NOW).await.unwrap();
        let old_channel = vault.secure_channel_key("alice", NOW).await.unwrap();
        vault.credential_signing_key("alice", NOW).await.unwrap();

        let rotated = vault.rotate_identity_key("alice", NOW + 100).await.unwrap();
        assert_eq!(rotated.identifier(), before.identifier());
        assert_ne!(rotated.identity.public_key(), before.identity.public_key());
        assert_eq!(rotated.secret().public_key(), rotated.identity.public_key());
        assert_eq!(rotated.identity.change_count(), 2);
        assert!(rotated.is_default);
        // Old attestations no longer verify, and the vault no longer holds them.
        assert!(
            old_channel
                .attestation()
                .verify(&rotated.identity, Purpose::SecureChannel, NOW + 100, 0)
                .is_err()
        );
        assert_eq!(purpose_key_rows(&vault).await, 0);

        let new_channel = vault.secure_channel_key("alice", NOW + 100).await.unwrap();
        assert_ne!(*new_channel.secret_bytes(), *old_channel.secret_bytes());
        new_channel
            .attestation()
            .verify(&rotated.identity, Purpose::SecureChannel, NOW + 100, 0)
            .unwrap();

        // The rotation is what a reopened vault holds.
        vault.close().await;
        let vault = Vault::open(&path).await.unwrap();
        let loaded = vault.identity("alice").await.unwrap();
        assert_eq!(loaded.identity, rotated.identity);
        assert_eq!(*loaded.secret().to_bytes(), *rotated.secret().to_bytes());
        let loaded_channel = vault.secure_channel_key("alice", NOW + 200).await.unwrap();
        assert_eq!(*loaded_channel.secret_bytes(), *new_channel.secret_bytes());
        vault.close().await;
    }

    #[tokio::test]
    async fn rotation_stops_at_the_longest_key_history_that_still_loads() {
        let (_dir, _path, vault) = new_vault().await;
        vault.create_identity("alice", NOW).await.unwrap();
        for i in 1..MAX_CHANGES as u64 {
            vault.rotate_identity_key("alice", NOW + i).await.unwrap();
        }
        let full = vault.identity("alice").await.unwrap();
        assert_eq!(full.identity.change_count(), MAX_CHANGES);
        let err = vault
            .rotate_identity_key("alice", NOW + 1_000)
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::RotationLimit { .. }), "{err:?}");
        assert!(err.to_string().contains("create a new identity"), "{err}");
        // Still loadable, still the same key.
        let loaded = vault.identity("alice").await.unwrap();
        assert_eq!(loaded.identity, full.identity);
    }

    #[tokio::test]
    async fn a_tampered_identity_row_is_corrupt_not_a_wrong_key() {
        let (_dir, _path, vault) = new_vault().await;
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        let bob = vault.create_identity("bob", NOW).await.unwrap();
        let alice_changes = alice.identity.export();
        let alice_secret = alice.secret().to_bytes().to_vec();

        // Another identity's secret key.
        tamper(
            &vault,
            "UPDATE identities SET secret = ? WHERE name = 'alice'",
            bob.secret().to_bytes().to_vec(),
        )
        .await;
        assert_corrupt(vault.identity("alice").await, "swapped secret");
        assert_corrupt(vault.default_identity().await, "swapped secret, default");
        assert_corrupt(
            vault.secure_channel_key("alice", NOW).await,
            "swapped secret, purpose key",
        );
        assert_corrupt(
            vault.rotate_identity_key("alice", NOW).await,
            "swapped secret, rotation",
        );
        // A secret of the wrong length (past the schema's CHECK).
        tamper(
            &vault,
            "UPDATE identities SET secret = ? WHERE name = 'alice'",
            vec![7; 31],
        )
        .await;
        let err = vault.identity("alice").await.unwrap_err();
        assert!(err.to_string().contains("31 bytes"), "{err}");
        assert_corrupt(Err::<(), _>(err), "short secret");
        tamper(
            &vault,
            "UPDATE identities SET secret = ? WHERE name = 'alice'",
            alice_secret,
        )
        .await;
        vault.identity("alice").await.unwrap();

        // Garbage key history; then another identity's (valid, but for another identifier).
        tamper(
            &vault,
            "UPDATE identities SET changes = ? WHERE name = 'alice'",
            b"garbage".to_vec(),
        )
        .await;
        assert_corrupt(vault.identity("alice").await, "garbage changes");
        tamper(
            &vault,
            "UPDATE identities SET changes = ? WHERE name = 'alice'",
            bob.identity.export(),
        )
        .await;
        assert_corrupt(vault.identity("alice").await, "another identity's changes");
        assert_corrupt(
            vault.identity_by_identifier(alice.identifier()).await,
            "another identity's changes, by identifier",
        );
        tamper(
            &vault,
            "UPDATE identities SET changes = ? WHERE name = 'alice'",
            alice_changes,
        )
        .await;
        assert_eq!(
            vault.identity("alice").await.unwrap().identity,
            alice.identity
        );
        // bob was never affected.
        vault.identity("bob").await.unwrap();
    }

    #[tokio::test]
    async fn a_tampered_purpose_key_row_is_corrupt_not_a_wrong_key() {
        let (_dir, _path, vault) = new_vault().await;
        vault.create_identity("alice", NOW).await.unwrap();
        let bob = vault.create_identity("bob", NOW).await.unwrap();
        let good = vault.secure_channel_key("alice", NOW).await.unwrap();
        let good_attestation = good.attestation().encode();
        let good_secret = good.secret_bytes().to_vec();
        let restore = || async {
            tamper(
                &vault,
                "UPDATE purpose_keys SET attestation = ?",
                good_attestation.clone(),
            )
            .await;
            tamper(
                &vault,
                "UPDATE purpose_keys SET secret = ?",
                good_secret.clone(),
            )
            .await;
            let key = vault.secure_channel_key("alice", NOW).await.unwrap();
            assert_eq!(*key.secret_bytes(), *good.secret_bytes());
        };

        tamper(
            &vault,
            "UPDATE purpose_keys SET attestation = ?",
            b"garbage".to_vec(),
        )
        .await;
        assert_corrupt(vault.secure_channel_key("alice", NOW).await, "garbage");
        restore().await;

        // One flipped bit in the signed data.
        let mut flipped = good_attestation.clone();
        if let Some(byte) = flipped.get_mut(10) {
            *byte ^= 1;
        }
        tamper(&vault, "UPDATE purpose_keys SET attestation = ?", flipped).await;
        assert_corrupt(vault.secure_channel_key("alice", NOW).await, "flipped bit");
        restore().await;

        // A valid attestation by another identity.
        let bobs = SecureChannelKey::generate(&bob.identity, bob.secret(), NOW, NOW + 1_000_000);
        tamper(
            &vault,
            "UPDATE purpose_keys SET attestation = ?",
            bobs.attestation().encode(),
        )
        .await;
        assert_corrupt(
            vault.secure_channel_key("alice", NOW).await,
            "bob's attestation",
        );
        restore().await;

        // Another secret key under the right attestation.
        tamper(&vault, "UPDATE purpose_keys SET secret = ?", vec![9; 32]).await;
        assert_corrupt(
            vault.secure_channel_key("alice", NOW).await,
            "swapped secret",
        );
        tamper(&vault, "UPDATE purpose_keys SET secret = ?", vec![9; 33]).await;
        assert_corrupt(vault.secure_channel_key("alice", NOW).await, "long secret");
        restore().await;

        // The stored period moved away from the attested one.
        let mut conn = vault.pool.acquire().await.unwrap();
        sqlx::query("UPDATE purpose_keys SET expires_at = expires_at + 1")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        assert_corrupt(vault.secure_channel_key("alice", NOW).await, "moved period");

        // A credential key request is not fooled by a secure channel row either.
        let mut conn = vault.pool.acquire().await.unwrap();
        sqlx::query("UPDATE purpose_keys SET expires_at = expires_at - 1, purpose = 2")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        assert_corrupt(
            vault.credential_signing_key("alice", NOW).await,
            "secure channel row marked as a credential key",
        );
    }

    #[tokio::test]
    async fn debug_and_errors_never_show_secret_bytes() {
        let (_dir, _path, vault) = new_vault().await;
        let alice = vault.create_identity("alice", NOW).await.unwrap();
        let key = vault.secure_channel_key("alice", NOW).await.unwrap();
        let secret_hex = to_hex(alice.secret().to_bytes().as_ref());
        let key_hex = to_hex(key.secret_bytes().as_ref());
        let shown = format!("{alice:?} {vault:?}");
        assert!(!shown.contains(&secret_hex), "{shown}");
        assert!(shown.contains("alice"), "{shown}");

        tamper(&vault, "UPDATE purpose_keys SET secret = ?", vec![9; 32]).await;
        let err = vault.secure_channel_key("alice", NOW).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&key_hex), "{shown}");
        assert!(!shown.contains(&to_hex(&[9; 32])), "{shown}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_of_twenty_names_all_succeed() {
        let (_dir, _path, vault) = new_vault().await;
        let mut tasks = JoinSet::new();
        for i in 0..20u64 {
            let vault = vault.clone();
            tasks.spawn(async move { vault.create_identity(&format!("node-{i}"), NOW + i).await });
        }
        let mut defaults = 0;
        while let Some(result) = tasks.join_next().await {
            let created = result.unwrap().unwrap();
            defaults += usize::from(created.is_default);
        }
        assert_eq!(defaults, 1, "exactly one create saw an empty vault");
        let list = vault.list().await.unwrap();
        assert_eq!(list.len(), 20);
        assert_eq!(list.iter().filter(|s| s.is_default).count(), 1);
        vault.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_of_one_name_yield_exactly_one_success() {
        let (_dir, _path, vault) = new_vault().await;
        let mut tasks = JoinSet::new();
        for i in 0..20u64 {
            let vault = vault.clone();
            tasks.spawn(async move { vault.create_identity("alice", NOW + i).await });
        }
        let (mut created, mut refused) = (Vec::new(), 0);
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(identity) => created.push(identity),
                Err(VaultError::AlreadyExists { .. }) => refused += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((created.len(), refused), (1, 19));
        let stored = vault.identity("alice").await.unwrap();
        assert_eq!(stored.identity, created[0].identity);
        vault.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_for_a_purpose_key_share_one_new_key() {
        let (_dir, _path, vault) = new_vault().await;
        vault.create_identity("alice", NOW).await.unwrap();
        let mut tasks = JoinSet::new();
        for _ in 0..10 {
            let vault = vault.clone();
            tasks.spawn(async move { vault.secure_channel_key("alice", NOW).await });
        }
        let mut keys = Vec::new();
        while let Some(result) = tasks.join_next().await {
            keys.push(result.unwrap().unwrap().secret_bytes().to_vec());
        }
        keys.dedup();
        assert_eq!(keys.len(), 1);
        assert_eq!(purpose_key_rows(&vault).await, 1);
        vault.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_opening_a_new_vault_at_once_all_work() {
        // Separate pools on one file behave like separate processes: their own connections,
        // one lock. Without the retries in `Vault::open` (busy while the first connection
        // switches the file to WAL; the migrator's second run), some of these rounds fail
        // with "database is locked" or "table identities already exists".
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("race-{round}.sqlite"));
            let mut opens = JoinSet::new();
            for _ in 0..8 {
                let path = path.clone();
                opens.spawn(async move { Vault::open(&path).await });
            }
            while let Some(opened) = opens.join_next().await {
                let vault = opened.unwrap().unwrap();
                vault.close().await;
                assert_eq!(vault.pool.size(), 0, "close leaves no connection open");
            }
        }

        let path = dir.path().join("vault.sqlite");
        let (a, b) = tokio::join!(Vault::open(&path), Vault::open(&path));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut tasks = JoinSet::new();
        for i in 0..20u64 {
            let vault = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move { vault.create_identity(&format!("node-{i}"), NOW).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        assert_eq!(a.list().await.unwrap().len(), 20);
        assert_eq!(b.list().await.unwrap().len(), 20);
        a.close().await;
        b.close().await;
    }

    /// A connection that reports busy at once instead of waiting, as SQLite does where its
    /// busy handler cannot help.
    async fn impatient_pool(path: &Path) -> SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::ZERO);
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_for_another_process_to_release_its_lock() {
        let (_dir, path, vault) = new_vault().await;
        let other = Vault::open(&path).await.unwrap();
        let holder = other.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.rollback().await.unwrap();
        });
        let started = Instant::now();
        vault.create_identity("alice", NOW).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        release.await.unwrap();
        other.close().await;
        vault.close().await;
    }

    /// One write transaction on `pool` (an [`impatient_pool`] on the vault's file), failing
    /// as the vault's operations do.
    async fn impatient_write(vault: &Vault, pool: &SqlitePool) -> Result<(), VaultError> {
        let tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| vault.db(e))?;
        tx.rollback().await.map_err(|e| vault.db(e))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_is_retried_until_the_lock_is_released() {
        let (_dir, path, vault) = new_vault().await;
        let impatient = impatient_pool(&path).await;
        let holder = vault.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            holder.rollback().await.unwrap();
        });
        let attempts = std::sync::atomic::AtomicU32::new(0);
        sqlite::retrying_within(&vault, Duration::from_secs(5), || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            impatient_write(&vault, &impatient)
        })
        .await
        .unwrap();
        assert!(attempts.into_inner() > 1, "the first attempts met the lock");
        release.await.unwrap();
        impatient.close().await;
        vault.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_held_past_the_retry_budget_is_reported_as_busy_not_waited_out() {
        let (_dir, path, vault) = new_vault().await;
        let impatient = impatient_pool(&path).await;
        let holder = vault.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let started = Instant::now();
        let err = sqlite::retrying_within(&vault, Duration::from_millis(300), || {
            impatient_write(&vault, &impatient)
        })
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "gave up after {took:?}");
        match &err {
            VaultError::Busy { waited, .. } => {
                assert!(*waited >= Duration::from_millis(100), "{waited:?}")
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("vault.sqlite"), "{message}");
        assert!(message.contains("try again"), "{message}");
        holder.rollback().await.unwrap();
        impatient.close().await;
        vault.close().await;
    }
}
