//! Following the revocation feeds of the authorities a node trusts (DESIGN §5): per
//! authority of a project known here, one task keeps a secure channel to the authority and
//! asks it for the statements after the last it has, each request held by the authority
//! until there is one; what arrives is verified, applied to the node's revocations (which
//! closes the revoked members' channels and refuses their new ones) and kept in the node's
//! directory, so a restart starts from it.
//!
//! A node that cannot reach an authority keeps what it knows for the grace
//! (`--revocation-grace`, [`DEFAULT_REVOCATION_GRACE`]), counted from when it last heard the
//! feed, also across restarts; past it, credentials from that authority admit no one until
//! the feed is heard again.
//!
//! A statement about the node itself makes it renew its credentials at once: its
//! attributes changed, and the credential it holds no longer speaks for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::api::MAX_REVOCATION_WAIT;
use kith_authority::client::AuthorityClient;
use kith_authority::project::Project;
use kith_identity::revocation::{
    AuthorityRevocations, Followed, Revocation, RevocationKind, Revocations,
};
use kith_identity::{Identifier, unix_now};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::running::RunningNode;
use crate::home::projects::project_of_authority;
use crate::home::routes::api_route;
use crate::home::{DEFAULT_REVOCATION_GRACE, Home, write_private_atomic};

/// 10 s: how long opening the channel to an authority, or an answer beyond the held wait,
/// may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// 1 s doubling to 30 s: the pause before trying an authority again after it could not be
/// reached.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Follow the feeds of the authorities node `name` trusts, for as long as it runs; an
/// authority trusted later (an enrollment) is followed from then on.
pub async fn run(home: Home, name: String, running: Arc<RunningNode>, grace: Option<u64>) {
    let grace = grace.unwrap_or(DEFAULT_REVOCATION_GRACE);
    let mut followed: BTreeMap<Identifier, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut reloads = running.identity.reloads.subscribe();
    loop {
        if let Some(settings) = running.settings() {
            let own = *settings.local.identity.identifier();
            for authority in &settings.trust.authorities {
                let id = *authority.identifier();
                // An authority's own node applies its feed as it commits it.
                if id == own || followed.contains_key(&id) {
                    continue;
                }
                let project = match project_of_authority(&home, &id) {
                    Ok(Some(project)) => project,
                    Ok(None) => {
                        debug!(authority = %id, "no known project has this authority; its revocations are not followed");
                        continue;
                    }
                    Err(e) => {
                        warn!(authority = %id, error = format!("{e:#}"), "cannot read the known projects");
                        continue;
                    }
                };
                let follower = Follower {
                    home: home.clone(),
                    path: kept_path(&home, &name, &id),
                    running: running.clone(),
                    revocations: settings.trust.revocations.clone(),
                    project,
                    own,
                    grace,
                };
                followed.insert(id, tokio::spawn(follower.run()));
            }
        }
        if reloads.changed().await.is_err() {
            break;
        }
    }
    for (_, task) in followed {
        task.abort();
    }
}

/// Where node `name` keeps what it knows of `authority`'s revocations.
fn kept_path(home: &Home, name: &str, authority: &Identifier) -> PathBuf {
    home.node_dir(name)
        .join("revocations")
        .join(format!("{authority}.json"))
}

/// One authority's feed, followed for one node.
struct Follower {
    home: Home,
    path: PathBuf,
    running: Arc<RunningNode>,
    revocations: Arc<Revocations>,
    project: Project,
    own: Identifier,
    grace: u64,
}

impl Follower {
    fn authority(&self) -> Identifier {
        *self.project.authority_identifier()
    }

    async fn run(self) {
        let authority = self.authority();
        let heard_at = match load(&self.path) {
            Ok(Some(kept)) => {
                let heard_at = kept.followed.map_or_else(unix_now, |f| f.heard_at);
                info!(authority = %authority, head = kept.head, "restored the revocations kept here");
                self.revocations.restore(&authority, kept);
                heard_at
            }
            Ok(None) => unix_now(),
            Err(e) => {
                warn!(path = %self.path.display(), error = format!("{e:#}"), "cannot read the revocations kept here; following the feed from its start");
                unix_now()
            }
        };
        self.revocations.follow(&authority, heard_at, self.grace);
        let mut retry = FIRST_RETRY;
        loop {
            match self.follow().await {
                Ok(()) => retry = FIRST_RETRY,
                Err(e) => {
                    warn!(project = %self.project.name, error = format!("{e:#}"), retry_in = ?retry, "cannot follow the authority's revocations");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Open a channel to the authority and follow its feed until the channel fails.
    async fn follow(&self) -> Result<()> {
        let authority = self.authority();
        let settings = self
            .running
            .settings()
            .context("the node has no identity to follow revocations with")?;
        let route = api_route(&self.home, &self.project).await?;
        let mut client = AuthorityClient::connect(
            &self.running.node,
            route,
            &authority,
            &settings,
            CALL_TIMEOUT,
        )
        .await
        .with_context(|| {
            format!(
                "cannot reach the authority of project {}",
                self.project.name
            )
        })?;
        debug!(project = %self.project.name, "following the authority's revocations");
        let result = async {
            let mut wait = Duration::ZERO;
            loop {
                let after = self.revocations.head(&authority);
                let (asked, held) = (tokio::time::Instant::now(), wait);
                let (statements, head) = client.revocations(after, held).await?;
                self.revocations.heard(&authority, unix_now());
                let applied = self.revocations.apply(&authority, &statements);
                if applied > 0 {
                    info!(project = %self.project.name, applied, head, "applied revocations");
                    self.about_us(&statements);
                }
                self.keep();
                // More than a page behind: ask again at once.
                let caught_up = self.revocations.head(&authority) >= head;
                wait = if caught_up {
                    self.held_wait()
                } else {
                    Duration::ZERO
                };
                // Nothing new, and answered at once although we asked to be held: the
                // authority has no room to hold us now. Ask again after a pause, not in a
                // tight loop.
                if caught_up && statements.is_empty() && asked.elapsed() < held / 2 {
                    tokio::time::sleep(FIRST_RETRY).await;
                }
            }
        }
        .await;
        client.close().await;
        result
    }

    /// How long the authority may hold a request: the feed counts as heard when an answer
    /// comes, so at least three answers come within the grace.
    fn held_wait(&self) -> Duration {
        MAX_REVOCATION_WAIT.min(Duration::from_secs(self.grace) / 3)
    }

    /// What `statements` say of this node itself.
    fn about_us(&self, statements: &[Revocation]) {
        for s in statements.iter().filter(|s| s.subject == self.own) {
            match s.kind {
                RevocationKind::Changed => {
                    info!(project = %self.project.name, "the authority changed this node's attributes; renewing its credential");
                    self.running.identity.renew_now.notify_one();
                }
                RevocationKind::Revoked => warn!(
                    project = %self.project.name,
                    "the authority revoked this node's membership; its credential admits it nowhere"
                ),
            }
        }
    }

    /// Keep what is known now, for the next start.
    fn keep(&self) {
        let Some(known) = self.revocations.snapshot(&self.authority()) else {
            return;
        };
        let text = match serde_json::to_vec_pretty(&Kept::from(&known)) {
            Ok(text) => text,
            Err(e) => {
                warn!(error = %e, "cannot encode the revocations to keep");
                return;
            }
        };
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(anyhow::Error::from)
            .and_then(|()| write_private_atomic(&self.path, &text));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = format!("{e:#}"), "cannot keep the revocations");
        }
    }
}

/// What a node keeps of one authority's revocations, as JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Kept {
    head: u64,
    heard_at: Option<u64>,
    statements: Vec<KeptStatement>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct KeptStatement {
    seq: u64,
    subject: String,
    at: u64,
    kind: String,
}

impl From<&AuthorityRevocations> for Kept {
    fn from(known: &AuthorityRevocations) -> Self {
        let mut statements: Vec<KeptStatement> = known
            .latest
            .values()
            .map(|r| KeptStatement {
                seq: r.seq,
                subject: r.subject.to_string(),
                at: r.at,
                kind: r.kind.as_str().to_owned(),
            })
            .collect();
        statements.sort_by_key(|s| s.seq);
        Self {
            head: known.head,
            heard_at: known.followed.map(|f| f.heard_at),
            statements,
        }
    }
}

/// What was kept at `path`, if anything.
fn load(path: &std::path::Path) -> Result<Option<AuthorityRevocations>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let kept: Kept = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not what a node keeps", path.display()))?;
    let mut known = AuthorityRevocations {
        head: kept.head,
        ..AuthorityRevocations::default()
    };
    for s in kept.statements {
        let subject: Identifier = s
            .subject
            .parse()
            .with_context(|| format!("{}: a subject is not an identifier", path.display()))?;
        let kind = match s.kind.as_str() {
            "revoked" => RevocationKind::Revoked,
            "changed" => RevocationKind::Changed,
            other => anyhow::bail!("{}: unknown kind {other:?}", path.display()),
        };
        known.latest.insert(
            subject,
            Revocation {
                seq: s.seq,
                subject,
                at: s.at,
                kind,
            },
        );
    }
    known.followed = kept
        .heard_at
        .map(|heard_at| Followed { heard_at, grace: 0 });
    Ok(Some(known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept.json");
        let subject: Identifier = "I0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        let mut known = AuthorityRevocations {
            head: 9,
            followed: Some(Followed {
                heard_at: 1_700_000_000,
                grace: 0,
            }),
            ..AuthorityRevocations::default()
        };
        known.latest.insert(
            subject,
            Revocation {
                seq: 9,
                subject,
                at: 1_699_999_999,
                kind: RevocationKind::Revoked,
            },
        );
        std::fs::write(&path, serde_json::to_vec(&Kept::from(&known)).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(known));
        assert_eq!(load(&dir.path().join("none.json")).unwrap(), None);
        std::fs::write(&path, b"{\"head\": 1}").unwrap();
        assert!(load(&path).is_err());
    }
}
