//! An authority's node: the membership store, the vault and the authority's services.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::join::JoinSettings;
use kith_authority::service::{Authority, AuthorityConfig};
use kith_authority::store::{MembershipStore, StoreOwner};
use kith_identity::revocation::Revocations;
use kith_identity::vault::Vault;
use kith_identity::{Identifier, unix_now};
use kith_node::Node;

use crate::home::{AuthorityNodeConfig, Home, NodeConfig};

/// The SQLite file of an authority that has no `--database-url`.
pub const STORE_FILE: &str = "authority.sqlite";

/// Start the authority services of node `config` on `node`; the returned store and vault
/// are closed by the caller at shutdown, and here if the services do not start.
///
/// The membership store is created (stamped with the project) only by the first start
/// after `kith authority create` ([`AuthorityNodeConfig::create_store`]); every other start
/// opens the project's store, and refuses, changing nothing, one that is missing, empty,
/// damaged or another project's (DESIGN §5).
pub async fn start_services(
    home: &Home,
    node: &Node,
    config: &NodeConfig,
    authority: &AuthorityNodeConfig,
    revocations: Option<Arc<Revocations>>,
) -> Result<(MembershipStore, Vault)> {
    let location = match &authority.database_url {
        Some(url) => url.clone(),
        None => home
            .node_dir(&config.name)
            .join(STORE_FILE)
            .to_string_lossy()
            .into_owned(),
    };
    let vault = crate::home::vault::open_vault(home).await?;
    let identity = config.identity.clone().unwrap_or_default();
    let store = match open_store(&vault, &identity, authority, &location).await {
        Ok(store) => store,
        Err(e) => {
            vault.close().await;
            return Err(e);
        }
    };
    let started = start_on(node, &store, &vault, identity, authority, revocations);
    if let Err(e) = started {
        store.close().await;
        vault.close().await;
        return Err(e);
    }
    Ok((store, vault))
}

/// The project's store at `location`: created on the first start of a new project's
/// authority, opened on every other.
async fn open_store(
    vault: &Vault,
    identity: &str,
    authority: &AuthorityNodeConfig,
    location: &str,
) -> Result<MembershipStore> {
    let stored = vault
        .identity(identity)
        .await
        .with_context(|| format!("cannot find the authority's identity {identity:?}"))?;
    let owner = StoreOwner {
        project_id: authority.project_id.clone(),
        authority: Some(*stored.identifier()),
    };
    if authority.create_store {
        MembershipStore::create(location, &owner, unix_now())
            .await
            .context("cannot create the new project's membership store")
    } else {
        MembershipStore::open(location, &owner, unix_now())
            .await
            .context("cannot open the authority's store")
    }
}

/// Start the authority's services and the relay service on `node`.
fn start_on(
    node: &Node,
    store: &MembershipStore,
    vault: &Vault,
    identity: String,
    authority: &AuthorityNodeConfig,
    revocations: Option<Arc<Revocations>>,
) -> Result<()> {
    let mut admins = std::collections::BTreeSet::new();
    for a in &authority.admins {
        admins.insert(
            a.parse::<Identifier>()
                .with_context(|| format!("admin {a:?} in the node's configuration"))?,
        );
    }
    let service = Authority::new(
        store.clone(),
        vault.clone(),
        identity,
        AuthorityConfig {
            project_id: authority.project_id.clone(),
            admins,
            credential_ttl: Duration::from_secs(authority.credential_ttl),
            join: JoinSettings {
                request_ttl: Duration::from_secs(authority.request_ttl),
                max_pending_per_source: authority.max_pending_per_address,
                max_pending: authority.max_pending,
            },
            clock: Arc::new(kith_authority::SystemClock),
        },
    );
    // The node closes a deleted member's channels (and with them its relays) as soon as the
    // deletion is committed.
    if let Some(revocations) = revocations {
        service.apply_revocations_to(revocations);
    }
    service
        .start(node)
        .context("cannot start the authority services")?;
    // The project node is the authority's own node: relays live here.
    kith_authority::relay::start(&service, node).context("cannot start the relay service")?;
    Ok(())
}
