//! The vault in the state directory: opening it, and finding the identity a node or command
//! runs as.

use anyhow::{Context as _, Result, bail};
use kith_identity::vault::{StoredIdentity, Vault};
use kith_identity::{Identity, unix_now};

use super::Home;

/// The name given to the identity made on first use.
pub const DEFAULT_IDENTITY: &str = "default";

/// Open the vault of `home`.
pub async fn open_vault(home: &Home) -> Result<Vault> {
    let path = home.vault_path();
    Vault::open(&path)
        .await
        .with_context(|| format!("cannot open the vault {}", path.display()))
}

/// The identity called `name`, or the default one; with no identities at all, a new
/// `default` identity (so a first node or secure channel needs no setup).
pub async fn resolve_identity(vault: &Vault, name: Option<&str>) -> Result<StoredIdentity> {
    if let Some(name) = name {
        return Ok(vault.identity(name).await?);
    }
    if let Some(found) = vault.default_identity().await? {
        return Ok(found);
    }
    Ok(vault.create_identity(DEFAULT_IDENTITY, unix_now()).await?)
}

/// Decode hex given on the command line or in a file (surrounding whitespace ignored),
/// naming `what` it was meant to be when it is not.
pub fn from_hex(text: &str, what: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() {
        bail!("{what} is empty");
    }
    kith_identity::hex::decode(text).map_err(|e| anyhow::anyhow!("{what} is not hex: {e}"))
}

/// An identity given on the command line: the name of one in the vault, or the hex key
/// history `kith identity show --full` prints (`changes_hex`).
pub async fn identity_arg(vault: &Vault, arg: &str) -> Result<Identity> {
    let arg = arg.trim();
    // A key history is well over 64 hex digits (a key and two signatures at least), and a
    // name is at most 64 characters, so the length tells them apart.
    if arg.len() <= kith_identity::vault::MAX_NAME_LEN {
        return Ok(vault.identity(arg).await?.identity);
    }
    let bytes = from_hex(arg, "the identity")?;
    Identity::import(&bytes, None).context(
        "the identity's key history does not verify; copy `changes_hex` from `kith identity show NAME --full`",
    )
}
