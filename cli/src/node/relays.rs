//! Relays the node keeps up at project nodes (`kith relay create`): a keeper per relay
//! (`kith_authority::keeper`), saved in the node's configuration and restored when it starts.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_authority::api::ErrorKind;
use kith_authority::client::{AuthorityClient, ClientError};
use kith_authority::keeper::{ConfirmError, HEARTBEAT, KeeperConfig, RelayKeeper};
use kith_identity::secure_channel::SharedSettings;
use kith_node::Node;
use tracing::warn;

use super::kept::{Kept, Saved};
use crate::control::RelayView;
use crate::home::RelayConfig;
use crate::home::routes::resolve_at;

/// 10 s: how long reaching the project node may take when a daemon restores or deletes a
/// relay (a handshake and one request).
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal from the project node, as one line that says who refused and why.
pub fn refused(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(api) => anyhow!("the project node refused: {}", api.message),
        other => anyhow::Error::new(other).context("cannot reach the project node"),
    }
}

/// [`refused`], for an error shared with others who wait on the same answer.
fn refused_ref(e: &ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(api) => anyhow!("the project node refused: {}", api.message),
        other => anyhow!(
            "cannot reach the project node: {}",
            kith_node::DisplayChain(other)
        ),
    }
}

/// A relay the node keeps, and where (`/project/NAME`).
struct KeptRelay {
    keeper: RelayKeeper,
    at: String,
}

/// The relays a node keeps, by name. A create or delete talks to the project node while it
/// holds only its relay's name, so `list` and changes to other relays go on meanwhile.
pub struct Relays {
    node: Node,
    settings: Option<SharedSettings>,
    saved: Option<Saved>,
    kept: Kept<KeptRelay>,
}

impl Relays {
    /// None yet, on `node`, with its channel settings (if it has an identity) and its saved
    /// configuration (if it keeps one).
    pub(crate) fn new(node: &Node, settings: Option<SharedSettings>, saved: Option<Saved>) -> Self {
        Self {
            node: node.clone(),
            settings,
            saved,
            kept: Kept::default(),
        }
    }

    fn saved(&self) -> Result<&Saved> {
        self.saved
            .as_ref()
            .context("this node keeps no state, so it cannot keep relays")
    }

    fn view(&self, kept: &KeptRelay) -> RelayView {
        RelayView::new(self.node.name(), &kept.at, kept.keeper.status())
    }

    /// Where relay `name` at `at` connects: the project node's listener and identifier.
    async fn keeper_config(&self, name: &str, at: &str, timeout: Duration) -> Result<KeeperConfig> {
        let (listener, project_node) = resolve_at(self.saved()?.home(), at).await?;
        Ok(KeeperConfig {
            name: name.to_owned(),
            listener,
            project_node,
            timeout,
            heartbeat: HEARTBEAT,
        })
    }

    /// Create relay `name` at `at` and keep it up. Succeeds only once the project node has
    /// registered it during this call: a relay this node keeps already is confirmed again,
    /// not taken on the word of an older answer. A new relay is remembered in the node's
    /// configuration only once the project node accepted it, unless `keep_on_failure` asks
    /// to keep (and retry) it anyway; an error says which happened.
    pub async fn create(
        &self,
        name: &str,
        at: &str,
        timeout: Duration,
        keep_on_failure: bool,
    ) -> Result<RelayView> {
        kith_authority::relay::check_relay_name(name)?;
        let shared = self
            .settings
            .clone()
            .context("this node has no identity, so it cannot keep relays")?;
        let node = self.node.name();
        let change = self.kept.change(name).await;
        let existing = change.current(|k| k.map(|k| (k.at.clone(), k.keeper.confirm())));
        if let Some((kept_at, confirm)) = existing {
            if kept_at != at {
                bail!("this node already keeps relay {name:?} at {kept_at}; delete it first");
            }
            let still_kept = format!(
                "node {node} still keeps relay {name} as before and retries it; `kith relay delete {name}` stops that"
            );
            return match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(_)) => change
                    .current(|k| k.map(|k| self.view(k)))
                    .context("the relay was deleted meanwhile"),
                Ok(Err(ConfirmError::Failed(e))) => {
                    Err(anyhow!("{:#}; {still_kept}", refused_ref(&e)))
                }
                Ok(Err(e)) => Err(anyhow!("{e}")),
                Err(_) => Err(anyhow!(
                    "the project node did not confirm relay {name} within {timeout:?}; {still_kept}"
                )),
            };
        }
        let config = self.keeper_config(name, at, timeout).await?;
        let keeper = match RelayKeeper::start(&self.node, shared.clone(), config.clone()).await {
            Ok(keeper) => keeper,
            Err(e) if keep_on_failure => {
                let keeper = RelayKeeper::spawn_after_failure(&self.node, shared, config, &e);
                self.save(name, at)?;
                change.set(KeptRelay {
                    keeper,
                    at: at.to_owned(),
                });
                bail!(
                    "{:#}; relay {name} is not up, but node {node} keeps it and retries it (see `kith relay show {name}`)",
                    refused_ref(&e)
                );
            }
            Err(e) => return Err(refused(e)),
        };
        self.save(name, at)?;
        let kept = KeptRelay {
            keeper,
            at: at.to_owned(),
        };
        let view = self.view(&kept);
        change.set(kept);
        Ok(view)
    }

    /// Remember relay `name` at `at` in the node's configuration.
    fn save(&self, name: &str, at: &str) -> Result<()> {
        self.saved()?.update(|c| {
            c.relays.retain(|r| r.name != name);
            c.relays.push(RelayConfig {
                name: name.to_owned(),
                at: at.to_owned(),
            });
        })
    }

    /// Keep the relays of the node's configuration up, without waiting for them.
    pub(crate) async fn restore(&self, saved: &[RelayConfig]) {
        let Some(shared) = self.settings.clone() else {
            return;
        };
        for r in saved {
            let change = self.kept.change(&r.name).await;
            match self.keeper_config(&r.name, &r.at, RELAY_TIMEOUT).await {
                Ok(config) => change.set(KeptRelay {
                    keeper: RelayKeeper::spawn(&self.node, shared.clone(), config),
                    at: r.at.clone(),
                }),
                Err(e) => {
                    warn!(relay = %r.name, at = %r.at, error = %format!("{e:#}"), "cannot keep a saved relay")
                }
            }
        }
    }

    /// The relays the node keeps.
    pub fn list(&self) -> Vec<RelayView> {
        self.kept.map(|k| self.view(k))
    }

    /// Stop keeping relay `name`, forget it, and delete it at the project node.
    pub async fn delete(&self, name: &str) -> Result<RelayView> {
        let change = self.kept.change(name).await;
        let Some(kept) = change.take() else {
            bail!("node {} keeps no relay {name:?}", self.node.name());
        };
        let mut view = self.view(&kept);
        kept.keeper.stop();
        self.saved()?
            .update(|c| c.relays.retain(|r| r.name != name))?;
        let deleted = async {
            let config = self.keeper_config(name, &kept.at, RELAY_TIMEOUT).await?;
            let settings = self
                .settings
                .as_ref()
                .map(SharedSettings::get)
                .context("this node has no identity")?;
            let mut client = AuthorityClient::connect(
                &self.node,
                config.listener,
                &config.project_node,
                &settings,
                config.timeout,
            )
            .await?;
            match client.delete_relay(name).await {
                // The keeper's channel closed as it stopped, and the relay went with it.
                Err(ClientError::Refused(e)) if e.kind == ErrorKind::NotFound => {}
                other => {
                    other?;
                }
            }
            anyhow::Ok(())
        }
        .await;
        view.deleted_at_project_node = Some(match deleted {
            Ok(()) => "deleted".to_owned(),
            Err(e) => format!("not deleted: {e:#}"),
        });
        Ok(view)
    }
}
