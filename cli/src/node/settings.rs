//! Who the node is in secure channels: its identity's key and credentials from the vault,
//! whose credentials it trusts, whom it admits, and who may use its services.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{ChannelSettings, SharedSettings};
use kith_identity::{Identity, unix_now};
use kith_node::{AllowAll, AllowOrigins, IncomingAccessControl, Origin};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::home::vault::{from_hex, open_vault, resolve_identity};
use crate::home::{AdmissionConfig, Home};

/// The node's identity in secure channels: the settings its listener reads at every
/// handshake (and every part reads for the channels it opens), and, for a daemon, how to
/// rebuild them from the vault when its credentials change.
pub struct NodeIdentity {
    shared: Option<SharedSettings>,
    reload: Option<Reload>,
    /// Notified when the node reloads its credentials (the refresher then looks again).
    pub(crate) changed: Notify,
    /// Notified when the node's credentials must be renewed now, whenever they are due:
    /// its authority changed its attributes.
    pub(crate) renew_now: Notify,
    /// Counts reloads, for those that follow what the node trusts.
    pub(crate) reloads: tokio::sync::watch::Sender<u64>,
}

impl NodeIdentity {
    /// Settings that never change (or none: a node with no identity opens no channels).
    pub(crate) fn fixed(settings: Option<ChannelSettings>) -> Self {
        Self {
            shared: settings.map(SharedSettings::new),
            reload: None,
            changed: Notify::new(),
            renew_now: Notify::new(),
            reloads: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The settings of identity `identity` (or the default, made if missing) in the vault
    /// of `home`, admitting peers as `admission` says; an authority's node (`trust_self`)
    /// also trusts the credentials it issues. Returns the identity's name too.
    pub(crate) async fn from_vault(
        home: &Home,
        identity: Option<String>,
        admission: &AdmissionConfig,
        trust_self: bool,
    ) -> Result<(Self, String)> {
        let mut reload = Reload {
            home: home.clone(),
            identity,
            admission: admission.clone(),
            trust_self,
        };
        let (settings, name) = reload.settings().await?;
        reload.identity = Some(name.clone());
        Ok((
            Self {
                shared: Some(SharedSettings::new(settings)),
                reload: Some(reload),
                changed: Notify::new(),
                renew_now: Notify::new(),
                reloads: tokio::sync::watch::Sender::new(0),
            },
            name,
        ))
    }

    /// The settings as shared with the listener: what a long-lived user (an inlet) reads
    /// afresh for every channel it opens.
    pub(crate) fn shared(&self) -> Option<SharedSettings> {
        self.shared.clone()
    }

    /// The settings now, if the node has an identity.
    pub fn settings(&self) -> Option<ChannelSettings> {
        self.shared.as_ref().map(SharedSettings::get)
    }

    /// Re-read the identity's credentials and trusted authorities from the vault and serve
    /// them: the secure-channel listener and channels opened from now on use them, and
    /// every open channel pushes the credentials to its peer. Returns how many credentials
    /// it presents.
    pub async fn reload(&self) -> Result<usize> {
        let (Some(reload), Some(shared)) = (&self.reload, &self.shared) else {
            bail!("this node does not keep its settings in a vault");
        };
        let (settings, _) = reload.settings().await?;
        let presented = settings.local.credentials.len();
        shared.set(settings);
        info!(credentials = presented, "reloaded credentials");
        self.changed.notify_one();
        self.reloads.send_modify(|n| *n += 1);
        Ok(presented)
    }
}

/// How a daemon rebuilds its channel settings from the vault.
struct Reload {
    home: Home,
    identity: Option<String>,
    admission: AdmissionConfig,
    /// An authority's node trusts the credentials it issues itself.
    trust_self: bool,
}

impl Reload {
    async fn settings(&self) -> Result<(ChannelSettings, String)> {
        let (mut settings, name) =
            channel_settings(&self.home, self.identity.as_deref(), &self.admission).await?;
        if self.trust_self {
            let own = settings.local.identity.clone();
            if !settings
                .trust
                .authorities
                .iter()
                .any(|a| a.identifier() == own.identifier())
            {
                // Its own word comes first on its own node.
                let mut authorities = settings.trust.authorities.clone();
                authorities.insert(0, own);
                settings.trust = Arc::new(Trust {
                    authorities,
                    admission: settings.trust.admission.clone(),
                    revocations: settings.trust.revocations.clone(),
                });
            }
        }
        Ok((settings, name))
    }
}

/// Channel settings for the identity `name` (or the default, made if missing) from the vault:
/// its channel key, the credentials it holds that are valid now, whose credentials it
/// trusts (the issuers of its own, and `admission.trusted_authorities`) and whom it admits.
pub async fn channel_settings(
    home: &Home,
    name: Option<&str>,
    admission: &AdmissionConfig,
) -> Result<(ChannelSettings, String)> {
    channel_settings_scoped(home, name, admission, None).await
}

/// As [`channel_settings`], presenting only the credentials whose `project_id` attribute is
/// `scope`, if given.
pub async fn channel_settings_scoped(
    home: &Home,
    name: Option<&str>,
    admission: &AdmissionConfig,
    scope: Option<&str>,
) -> Result<(ChannelSettings, String)> {
    let vault = open_vault(home).await?;
    let now = unix_now();
    let loaded = async {
        let stored = resolve_identity(&vault, name).await?;
        let key = vault.secure_channel_key(&stored.name, now).await?;
        let held = vault.credentials(&stored.name).await?;
        anyhow::Ok((stored, key, held))
    }
    .await;
    vault.close().await;
    let (stored, key, held) = loaded?;

    // In order of precedence (DESIGN §4: where two authorities' credentials carry the same
    // attribute for a peer, the first one's value is the peer's): the authorities of the
    // node's own memberships, then those it was told to trust besides.
    let mut authorities: Vec<Identity> = Vec::new();
    let mut credentials = Vec::new();
    for c in held {
        if let Some(scope) = scope {
            let project = c.credential.credential.attributes().get("project_id");
            if project.map(String::as_str) != Some(scope) {
                continue;
            }
        }
        match c.verify(now) {
            Ok(_) => {
                if !authorities
                    .iter()
                    .any(|a| a.identifier() == c.issuer.identifier())
                {
                    authorities.push(c.issuer.clone());
                }
                credentials.push(c.credential);
            }
            Err(e) => warn!(
                issuer = %c.issuer.identifier(),
                error = %e,
                "not presenting a credential that does not verify"
            ),
        }
    }
    for hex in &admission.trusted_authorities {
        let bytes = from_hex(hex, "a trusted authority in the node's configuration")?;
        let identity = Identity::import(&bytes, None)
            .context("a trusted authority in the node's configuration does not verify")?;
        if !authorities
            .iter()
            .any(|a| a.identifier() == identity.identifier())
        {
            authorities.push(identity);
        }
    }
    let local = LocalIdentity {
        identity: stored.identity.clone(),
        key,
        credentials,
    };
    let admission = if admission.require_credential {
        Admission::CredentialHolders
    } else if !admission.allow_identities.is_empty() {
        let mut ids = std::collections::BTreeSet::new();
        for id in &admission.allow_identities {
            ids.insert(id.parse().with_context(|| {
                format!("the node's allowed identity {id:?} is not an identifier")
            })?);
        }
        Admission::Identifiers(ids)
    } else {
        // Any identity that proves itself; services decide per message with their policies.
        Admission::AnyIdentity
    };
    let trust = Trust {
        authorities,
        admission,
        revocations: Default::default(),
    };
    Ok((
        ChannelSettings::new(Arc::new(local), Arc::new(trust)),
        stored.name,
    ))
}

/// Who may use a node's services: anyone, or local workers and the secure-channel peers
/// that satisfy the node's `--allow` policy.
pub(crate) fn services_policy(
    admission: &AdmissionConfig,
) -> Result<Arc<dyn IncomingAccessControl>> {
    let Some(text) = &admission.allow else {
        return Ok(Arc::new(AllowAll));
    };
    let policy = kith_identity::policy::Policy::parse(text)
        .map_err(|e| anyhow::anyhow!("the node's --allow policy does not parse: {e}"))?;
    Ok(Arc::new(AllowOrigins(
        move |origin: &Origin| match origin {
            Origin::Local => true,
            Origin::SecureChannel(peer) => policy.allows(&peer.identifier, &peer.attributes),
            Origin::Transport { .. } => false,
        },
    )))
}

/// An `--allow` policy, or an error that points at what is wrong in it.
pub fn parse_allow(text: &str) -> Result<kith_identity::policy::Policy> {
    kith_identity::policy::Policy::parse(text)
        .map_err(|e| anyhow::anyhow!("--allow is not a policy: {}", policy_error(text, &e)))
}

/// What is wrong with a policy, and how to write it when it is in Ockam's prefix form
/// (`(= subject.component "web")`), which users of Ockam's node files bring with them.
pub fn policy_error(text: &str, e: &kith_identity::policy::PolicyError) -> String {
    let prefix_form = text
        .trim_start()
        .strip_prefix('(')
        .map(str::trim_start)
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|op| ["=", "!=", "and", "or", "not", "member?", "exists?"].contains(&op));
    if prefix_form {
        format!(
            "{e}; this looks like Ockam's prefix form: kith writes comparisons infix and names \
             the peer's attributes without `subject.`, as in component = \"web\" and \
             (env = \"prod\" or env = \"test\")"
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_allow;

    #[test]
    fn a_bad_allow_says_what_is_wrong_once() {
        let e = parse_allow("component db").unwrap_err().to_string();
        assert_eq!(e.matches("expected").count(), 1, "{e}");
        assert!(e.contains("column 11"), "{e}");
    }

    #[test]
    fn an_ockam_prefix_allow_is_refused_with_how_kith_writes_it() {
        for ockam in [
            r#"(= subject.component "web")"#,
            r#"( and (= subject.a "1") (= subject.b "2"))"#,
            r#"(not (= subject.a "1"))"#,
        ] {
            let e = parse_allow(ockam).unwrap_err().to_string();
            assert!(e.contains("Ockam's prefix form"), "{ockam}: {e}");
        }
        assert!(parse_allow(r#"(component = "web")"#).is_ok());
    }
}
