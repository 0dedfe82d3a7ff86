//! An authority's node: the membership store, the vault and the authority's services.

use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::join::JoinSettings;
use kith_authority::service::{Authority, AuthorityConfig};
use kith_authority::store::MembershipStore;
use kith_identity::Identifier;
use kith_node::Node;

use crate::home::{AuthorityNodeConfig, Home, NodeConfig};

/// The SQLite file of an authority that has no `--database-url`.
pub const STORE_FILE: &str = "authority.sqlite";

/// Start the authority services of node `config` on `node`; the returned store is closed
/// by the caller at shutdown.
pub async fn start_services(
    home: &Home,
    node: &Node,
    config: &NodeConfig,
    authority: &AuthorityNodeConfig,
    revocations: Option<std::sync::Arc<kith_identity::revocation::Revocations>>,
) -> Result<(MembershipStore, kith_identity::vault::Vault)> {
    let location = match &authority.database_url {
        Some(url) => url.clone(),
        None => home
            .node_dir(&config.name)
            .join(STORE_FILE)
            .to_string_lossy()
            .into_owned(),
    };
    let store = MembershipStore::open(&location)
        .await
        .context("cannot open the authority's store")?;
    let vault = crate::home::vault::open_vault(home).await?;
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
        config.identity.clone().unwrap_or_default(),
        AuthorityConfig {
            project_id: authority.project_id.clone(),
            admins,
            credential_ttl: Duration::from_secs(authority.credential_ttl),
            join: JoinSettings {
                request_ttl: Duration::from_secs(authority.request_ttl),
                max_pending_per_source: authority.max_pending_per_address,
                max_pending: authority.max_pending,
            },
            clock: std::sync::Arc::new(kith_authority::SystemClock),
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
    Ok((store, vault))
}
