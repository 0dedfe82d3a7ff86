//! Reaching a project's authority from the command line: as which identity, where, with
//! which retries, through an embedded node that lives for one call.

use std::time::Duration;

use anyhow::{Context as _, Result};
use kith_authority::client::{AuthorityClient, ClientError};
use kith_authority::project::Project;
use kith_identity::Identifier;
use kith_node::Route;

use super::args::ProjectAccess;
use super::output::Output;
use crate::duration::DisplayDuration;
use crate::home::projects::load_project_or_default;
use crate::home::routes::api_route;
use crate::home::vault::{identity_arg, open_vault};
use crate::home::{AdmissionConfig, Home};
use crate::node::{RunningNode, channel_settings_scoped};

/// The retry policy of a command: `--no-retry` wins, then the options, then
/// `KITH_RETRY_COUNT` / `KITH_RETRY_DELAY`; by default, no retries, 1 s apart.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Extra attempts after the first.
    pub count: u32,
    /// Pause between attempts.
    pub delay: Duration,
}

impl Retry {
    /// From the options and the environment.
    pub fn from_options(
        count: Option<u32>,
        delay: Option<Duration>,
        no_retry: bool,
    ) -> Result<Self> {
        let env_count = match std::env::var("KITH_RETRY_COUNT") {
            Ok(v) if !v.trim().is_empty() => Some(
                v.trim()
                    .parse::<u32>()
                    .with_context(|| format!("KITH_RETRY_COUNT={v:?} is not a whole number"))?,
            ),
            _ => None,
        };
        let env_delay = match std::env::var("KITH_RETRY_DELAY") {
            Ok(v) if !v.trim().is_empty() => Some(
                crate::duration::parse_duration(v.trim())
                    .with_context(|| format!("KITH_RETRY_DELAY={v:?}"))?,
            ),
            _ => None,
        };
        let count = if no_retry {
            0
        } else {
            count.or(env_count).unwrap_or(0)
        };
        let delay = delay.or(env_delay).unwrap_or(Duration::from_secs(1));
        Ok(Self { count, delay })
    }
}

/// Where and as whom to reach an authority.
pub(crate) struct Reach {
    /// The identity to reach it as (the default one if none).
    pub(crate) identity: Option<String>,
    /// Present only credentials of this project, if set.
    pub(crate) scope: Option<String>,
    /// The route to the authority's channel listener.
    pub(crate) route: Route,
    /// The only identity that may answer.
    pub(crate) authority: Identifier,
    /// How long connecting may take.
    pub(crate) timeout: Duration,
    /// How often to try again while the authority cannot be reached.
    pub(crate) retry: Retry,
}

impl Reach {
    /// The project node (the authority's node) at `route`, pinned to `identifier`, as the
    /// default identity with no retries: for commands that do not take the project options.
    pub(crate) fn project_node(route: Route, identifier: Identifier, timeout: Duration) -> Self {
        Self {
            identity: None,
            scope: None,
            route,
            authority: identifier,
            timeout,
            retry: Retry {
                count: 0,
                delay: Duration::ZERO,
            },
        }
    }
}

/// Connect with `connect` under a spinner, trying again `retry.count` times, `retry.delay`
/// apart, while the authority cannot be reached (any other failure ends it at once).
pub(crate) async fn connect_retrying<F, Fut>(
    out: &Output,
    shown: &str,
    retry: Retry,
    mut connect: F,
) -> Result<AuthorityClient, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<AuthorityClient, ClientError>>,
{
    let spinner = out.spinner(format!("contacting the authority at {shown}"));
    let mut attempt = 0;
    let client = loop {
        match connect().await {
            Ok(c) => break Ok(c),
            Err(e @ (ClientError::Connect { .. } | ClientError::ConnectTimeout { .. }))
                if attempt < retry.count =>
            {
                attempt += 1;
                out.note(format!(
                    "cannot reach the authority ({e}); retry {attempt} of {} in {}",
                    retry.count,
                    DisplayDuration(retry.delay)
                ));
                tokio::time::sleep(retry.delay).await;
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    client
}

/// An embedded node with a channel to the authority.
pub(crate) struct Session {
    node: RunningNode,
    client: AuthorityClient,
}

impl Session {
    pub(crate) async fn open(home: &Home, out: &Output, reach: &Reach) -> Result<Self> {
        let (settings, _) = channel_settings_scoped(
            home,
            reach.identity.as_deref(),
            &AdmissionConfig::default(),
            reach.scope.as_deref(),
        )
        .await?;
        let node = RunningNode::start("cli", None, Some(settings.clone())).await?;
        let client = connect_retrying(out, &reach.route.to_string(), reach.retry, || {
            AuthorityClient::connect(
                &node.node,
                reach.route.clone(),
                &reach.authority,
                &settings,
                reach.timeout,
            )
        })
        .await;
        match client {
            Ok(client) => Ok(Self { node, client }),
            Err(e) => {
                node.node.shutdown().await;
                Err(e).context("cannot reach the project's authority")
            }
        }
    }

    async fn close(self) {
        self.client.close().await;
        self.node.node.shutdown().await;
    }
}

impl Session {
    /// Run `call` against the authority, then close the session whatever it answered.
    pub(crate) async fn call<T>(
        mut self,
        call: impl AsyncFnOnce(&mut AuthorityClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let answer = call(&mut self.client).await;
        self.close().await;
        answer
    }
}

/// Reach the authority as `access` says, make one call, and turn a refusal into one line.
pub(crate) async fn ask<T>(
    home: &Home,
    out: &Output,
    access: &ProjectAccess,
    call: impl AsyncFnOnce(&mut AuthorityClient) -> Result<T, ClientError>,
) -> Result<T> {
    let (reach, _) = reach(home, access).await?;
    Session::open(home, out, &reach)
        .await?
        .call(call)
        .await
        .map_err(refused)
}

/// Resolve `access` into where the authority is and which project that is.
pub(crate) async fn reach(home: &Home, access: &ProjectAccess) -> Result<(Reach, Project)> {
    let mut project = load_project_or_default(home, access.project.as_deref(), "--project NAME");
    if let (Some(identity), Some(route)) = (&access.authority_identity, &access.authority_route) {
        let vault = open_vault(home).await?;
        let authority = identity_arg(&vault, identity).await;
        vault.close().await;
        let authority = authority.context("--authority-identity")?;
        let route = route
            .parse()
            .with_context(|| format!("--authority-route {route:?} is not a route"))?;
        let mut p = project.context(
            "--authority-identity and --authority-route replace how a known project is reached; import the project first (`kith project import`)",
        )?;
        p.authority = authority;
        p.authority_route = route;
        project = Ok(p);
    }
    let project = project?;
    let retry = Retry::from_options(access.retry_count, access.retry_delay, access.no_retry)?;
    Ok((
        Reach {
            identity: access.identity.clone(),
            scope: access.credential_scope.clone(),
            route: api_route(home, &project).await?,
            authority: *project.authority_identifier(),
            timeout: access.timeout,
            retry,
        },
        project,
    ))
}

/// Turn a refusal into one clear line.
pub(crate) fn refused(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(api) => anyhow::anyhow!("the authority refused: {}", api.message),
        other => anyhow::Error::new(other),
    }
}
