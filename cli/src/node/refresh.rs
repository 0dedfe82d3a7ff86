//! Keeping a node's credentials fresh: before a credential expires, the daemon asks the
//! authority that issued it for a new one, stores it and presents it from then on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::client::{AuthorityClient, decode_credential};
use kith_identity::vault::StoredCredential;

use kith_identity::unix_now;

use super::running::RunningNode;
use crate::home::Home;
use crate::home::projects::project_of_authority;
use crate::home::routes::api_route;
use crate::home::vault::open_vault;

/// A credential is renewed once two thirds of its lifetime have passed.
const RENEW_AT_FRACTION: u64 = 3;

/// 1 hour: the longest the refresher sleeps, so a clock jump or a credential stored by
/// another command (`kith project enroll`) is noticed within the hour.
const MAX_SLEEP: Duration = Duration::from_secs(60 * 60);

/// 1 s: the shortest pause, so a credential that cannot be renewed is not asked for in a
/// tight loop.
const MIN_SLEEP: Duration = Duration::from_secs(1);

/// 5 s doubling to 5 min: the pause after a failed renewal.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);

/// 10 s: how long one renewal may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

/// When `c` should be renewed, Unix seconds.
fn renew_at(c: &StoredCredential) -> u64 {
    let cred = &c.credential.credential;
    let life = cred.expires_at().saturating_sub(cred.created_at());
    cred.expires_at().saturating_sub(life / RENEW_AT_FRACTION)
}

/// Renew the credentials of `identity` as they come due, for as long as the node runs.
pub async fn run(home: Home, identity: String, running: Arc<RunningNode>) {
    let mut retry = FIRST_RETRY;
    let mut now = false;
    loop {
        let pause = match renew_due(&home, &identity, &running, std::mem::take(&mut now)).await {
            Ok(next) => {
                retry = FIRST_RETRY;
                next
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?retry, "cannot renew a credential");
                let pause = retry;
                retry = (retry * 2).min(MAX_RETRY);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause.clamp(MIN_SLEEP, MAX_SLEEP)) => {}
            // An enrollment or a renewal stored something new: look again.
            _ = running.identity.changed.notified() => {}
            // The authority changed our attributes: what we hold no longer speaks for us.
            _ = running.identity.renew_now.notified() => now = true,
        }
    }
}

/// Renew every credential that is due (every one, if `all`); return how long until the
/// next one is.
async fn renew_due(
    home: &Home,
    identity: &str,
    running: &RunningNode,
    all: bool,
) -> Result<Duration> {
    let vault = open_vault(home).await?;
    let held = vault.credentials(identity).await;
    vault.close().await;
    let held = held?;
    let now = unix_now();
    let mut renewed = 0;
    let mut next: Option<u64> = None;
    for c in &held {
        // Only credentials from a known project's authority can be renewed; others (stored
        // by hand with `kith credential store`) are kept as they are.
        if project_of_authority(home, c.issuer.identifier())?.is_none() {
            continue;
        }
        let due = renew_at(c);
        if due > now && !all {
            next = Some(next.map_or(due, |n| n.min(due)));
            continue;
        }
        let fresh = renew(home, identity, running, c).await?;
        renewed += 1;
        let due = renew_at(&fresh);
        next = Some(next.map_or(due, |n| n.min(due)));
    }
    if renewed > 0 {
        running.identity.reload().await?;
    }
    Ok(next.map_or(MAX_SLEEP, |n| {
        Duration::from_secs(n.saturating_sub(unix_now()))
    }))
}

/// Ask the issuer of `old` for a fresh credential and store it.
async fn renew(
    home: &Home,
    identity: &str,
    running: &RunningNode,
    old: &StoredCredential,
) -> Result<StoredCredential> {
    let issuer = *old.issuer.identifier();
    let project = project_of_authority(home, &issuer)?
        .with_context(|| format!("no known project has the authority {issuer}, so the credential it issued cannot be renewed"))?;
    let route = api_route(home, &project).await?;
    let settings = running
        .settings()
        .context("the node has no identity to renew credentials for")?;
    let mut client =
        AuthorityClient::connect(&running.node, route, &issuer, &settings, RENEW_TIMEOUT)
            .await
            .with_context(|| format!("cannot reach the authority of project {}", project.name))?;
    let answer = client.credential().await;
    client.close().await;
    let answer = answer.with_context(|| {
        format!(
            "the authority of project {} did not renew the credential",
            project.name
        )
    })?;
    let credential = decode_credential(&answer)?;
    let vault = open_vault(home).await?;
    let stored = vault
        .store_credential(identity, &project.authority, &credential, unix_now())
        .await;
    vault.close().await;
    let verified = stored?;
    tracing::info!(project = %project.name, expires_at = verified.expires_at, "renewed a credential");
    Ok(StoredCredential {
        issuer: project.authority.clone(),
        credential,
        stored_at: unix_now(),
    })
}
