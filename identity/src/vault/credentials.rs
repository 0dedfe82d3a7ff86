//! Credentials held by the vault's identities.

use sqlx::sqlite::SqliteRow;

use super::{Vault, VaultError};
use crate::sqlite::{self, SqlStore, sql_time};
use crate::{CredentialAndPurposeKey, CredentialError, Identity, VerifiedCredential};

/// A credential held by one of the vault's identities, with the identity of its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The authority that issued it (its verified key history).
    pub issuer: Identity,
    /// The credential and the attestation of the key that signed it.
    pub credential: CredentialAndPurposeKey,
    /// When it was stored, Unix seconds.
    pub stored_at: u64,
}

impl StoredCredential {
    /// Verify the credential against its own issuer at `now`: the signature and the key
    /// attestation hold and it has not expired. Whether that issuer is one to trust is the
    /// caller's decision.
    pub fn verify(&self, now: u64) -> Result<VerifiedCredential, CredentialError> {
        self.credential.verify(
            self.credential.credential.subject(),
            std::slice::from_ref(&self.issuer),
            now,
        )
    }
}

impl Vault {
    /// Store `credential`, issued by `issuer`, for the identity named `holder`, after checking
    /// at `now` that it is about that identity and that `issuer` signed it and it is valid.
    /// It replaces any credential the holder has from the same issuer.
    pub async fn store_credential(
        &self,
        holder: &str,
        issuer: &Identity,
        credential: &CredentialAndPurposeKey,
        now: u64,
    ) -> Result<VerifiedCredential, VaultError> {
        let stored = self.identity(holder).await?;
        let verified = credential
            .verify(stored.identifier(), std::slice::from_ref(issuer), now)
            .map_err(|source| VaultError::InvalidCredential {
                holder: holder.to_owned(),
                source,
            })?;
        let holder_id = stored.identifier().to_string();
        let issuer_id = issuer.identifier().to_string();
        let encoded = credential.encode();
        let changes = issuer.export();
        let expires_at = sql_time(verified.expires_at);
        let (holder_id, issuer_id, encoded, changes) = (&holder_id, &issuer_id, &encoded, &changes);
        sqlite::retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO credentials \
                 (holder, issuer, issuer_changes, credential, expires_at, stored_at) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (holder, issuer) DO UPDATE SET \
                 issuer_changes = excluded.issuer_changes, credential = excluded.credential, \
                 expires_at = excluded.expires_at, stored_at = excluded.stored_at",
            )
            .bind(holder_id)
            .bind(issuer_id)
            .bind(changes.as_slice())
            .bind(encoded.as_slice())
            .bind(expires_at)
            .bind(sql_time(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))
        })
        .await?;
        Ok(verified)
    }

    /// The credentials the identity named `holder` holds, newest expiry first, expired ones
    /// included (callers verify each at their own `now`).
    pub async fn credentials(&self, holder: &str) -> Result<Vec<StoredCredential>, VaultError> {
        let stored = self.identity(holder).await?;
        let holder_id = stored.identifier().to_string();
        let holder_id = holder_id.as_str();
        sqlite::retrying(self, move || async move {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            let rows = sqlx::query(
                "SELECT issuer, issuer_changes, credential, stored_at FROM credentials \
                 WHERE holder = ? ORDER BY expires_at DESC, issuer",
            )
            .bind(holder_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
            rows.iter()
                .map(|row| self.stored_credential(row, holder))
                .collect()
        })
        .await
    }

    /// Delete the credential the identity named `holder` holds from `issuer` (an identifier,
    /// as text). Returns whether there was one.
    pub async fn delete_credential(&self, holder: &str, issuer: &str) -> Result<bool, VaultError> {
        let stored = self.identity(holder).await?;
        let holder_id = stored.identifier().to_string();
        let holder_id = holder_id.as_str();
        sqlite::retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query("DELETE FROM credentials WHERE holder = ? AND issuer = ?")
                .bind(holder_id)
                .bind(issuer)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// Decode a `credentials` row: the issuer's history must verify against its identifier
    /// and the credential must decode and be about `holder`.
    fn stored_credential(
        &self,
        row: &SqliteRow,
        holder: &str,
    ) -> Result<StoredCredential, VaultError> {
        let issuer_text: String = self.column(row, "issuer", || {
            format!("issuer of a credential {holder:?} holds")
        })?;
        let what =
            |part: &str| format!("{part} of the credential {holder:?} holds from {issuer_text}");
        let issuer_id = issuer_text
            .parse()
            .map_err(|e| self.corrupt_by(what("issuer"), e))?;
        let changes: &[u8] = self.column(row, "issuer_changes", || what("issuer key history"))?;
        let issuer = Identity::import(changes, Some(&issuer_id))
            .map_err(|e| self.corrupt_by(what("issuer key history"), e))?;
        let encoded: &[u8] = self.column(row, "credential", || what("encoding"))?;
        let credential = CredentialAndPurposeKey::decode(encoded)
            .map_err(|e| self.corrupt_by(what("encoding"), e))?;
        if credential.purpose_key.subject() != &issuer_id {
            return Err(self.corrupt(what("signing key (attested by another identity)")));
        }
        let stored_at = self.time(row, "stored_at", || what("storage time"))?;
        Ok(StoredCredential {
            issuer,
            credential,
            stored_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const DAY: u64 = 24 * 60 * 60;

    async fn new_vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(&dir.path().join("vault.sqlite")).await.unwrap();
        (dir, vault)
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// `issuer` (a vault identity) signs a credential for `subject`, valid for `days`.
    async fn issue(
        vault: &Vault,
        issuer: &str,
        subject: &crate::Identifier,
        pairs: &[(&str, &str)],
        days: u64,
    ) -> CredentialAndPurposeKey {
        let until = NOW + days * DAY;
        let key = vault
            .credential_signing_key_until(issuer, NOW, until)
            .await
            .unwrap();
        assert!(key.attestation().expires_at() >= until);
        CredentialAndPurposeKey::issue(&key, subject, attrs(pairs), NOW, until).unwrap()
    }

    #[tokio::test]
    async fn a_stored_credential_is_listed_verified_and_replaced_by_a_newer_one() {
        let (_dir, vault) = new_vault().await;
        let authority = vault.create_identity("authority", NOW).await.unwrap();
        let member = vault.create_identity("member", NOW).await.unwrap();
        assert!(vault.credentials("member").await.unwrap().is_empty());

        // 90 days: longer than a purpose key's usual attestation, so the signing key must
        // be attested for at least as long.
        let c = issue(
            &vault,
            "authority",
            member.identifier(),
            &[("role", "db")],
            90,
        )
        .await;
        let v = vault
            .store_credential("member", &authority.identity, &c, NOW)
            .await
            .unwrap();
        assert_eq!(v.issuer, *authority.identifier());
        assert_eq!(v.attributes, attrs(&[("role", "db")]));

        let held = vault.credentials("member").await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].credential, c);
        assert_eq!(held[0].issuer, authority.identity);
        assert_eq!(
            held[0].verify(NOW + 89 * DAY).unwrap().attributes,
            v.attributes
        );
        // The signing key's attestation ends with the credential, so either check refuses.
        assert!(held[0].verify(NOW + 90 * DAY).is_err());

        let newer = issue(
            &vault,
            "authority",
            member.identifier(),
            &[("role", "web")],
            1,
        )
        .await;
        vault
            .store_credential("member", &authority.identity, &newer, NOW)
            .await
            .unwrap();
        let held = vault.credentials("member").await.unwrap();
        assert_eq!(held.len(), 1, "one credential per issuer");
        assert_eq!(held[0].credential, newer);

        let issuer = authority.identifier().to_string();
        assert!(vault.delete_credential("member", &issuer).await.unwrap());
        assert!(!vault.delete_credential("member", &issuer).await.unwrap());
        assert!(vault.credentials("member").await.unwrap().is_empty());
        vault.close().await;
    }

    #[tokio::test]
    async fn a_credential_for_someone_else_or_from_another_issuer_is_not_stored() {
        let (_dir, vault) = new_vault().await;
        let authority = vault.create_identity("authority", NOW).await.unwrap();
        let impostor = vault.create_identity("impostor", NOW).await.unwrap();
        let member = vault.create_identity("member", NOW).await.unwrap();
        let other = vault.create_identity("other", NOW).await.unwrap();

        let for_other = issue(&vault, "authority", other.identifier(), &[], 1).await;
        let e = vault
            .store_credential("member", &authority.identity, &for_other, NOW)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            VaultError::InvalidCredential {
                source: CredentialError::WrongSubject { .. },
                ..
            }
        ));

        // Signed by the impostor but offered as the authority's.
        let forged = issue(&vault, "impostor", member.identifier(), &[], 1).await;
        let e = vault
            .store_credential("member", &authority.identity, &forged, NOW)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            VaultError::InvalidCredential {
                source: CredentialError::UntrustedIssuer(_),
                ..
            }
        ));

        let expired = issue(&vault, "authority", member.identifier(), &[], 1).await;
        let e = vault
            .store_credential("member", &authority.identity, &expired, NOW + 2 * DAY)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            VaultError::InvalidCredential {
                source: CredentialError::Expired { .. },
                ..
            }
        ));
        let _ = impostor;
        assert!(vault.credentials("member").await.unwrap().is_empty());
        vault.close().await;
    }

    #[tokio::test]
    async fn deleting_the_holder_deletes_its_credentials_and_a_tampered_row_is_corrupt() {
        let (_dir, vault) = new_vault().await;
        let authority = vault.create_identity("authority", NOW).await.unwrap();
        let member = vault.create_identity("member", NOW).await.unwrap();
        let c = issue(&vault, "authority", member.identifier(), &[], 1).await;
        vault
            .store_credential("member", &authority.identity, &c, NOW)
            .await
            .unwrap();

        // The stored issuer history is swapped for another identity's.
        let impostor = vault.create_identity("impostor", NOW).await.unwrap();
        sqlx::query("UPDATE credentials SET issuer_changes = ?")
            .bind(impostor.identity.export())
            .execute(&vault.pool)
            .await
            .unwrap();
        assert!(matches!(
            vault.credentials("member").await,
            Err(VaultError::Corrupt { .. })
        ));

        vault.delete_identity("member").await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM credentials")
            .fetch_one(&vault.pool)
            .await
            .unwrap();
        assert_eq!(rows, 0);
        vault.close().await;
    }
}
