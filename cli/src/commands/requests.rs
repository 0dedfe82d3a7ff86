//! `kith project request` and `kith project requests …`: joining a project without a
//! ticket (DESIGN §5, "Join requests"; HTCondor's `condor_token_request` workflow).
//!
//! The requester opens a secure channel to the authority, files a request, shows its ID and
//! the verification code of that channel on stderr, and waits: each wait call is held by the
//! authority for a while and answered "still pending", so the requester asks again, and when
//! the channel breaks it opens a new one (pinned to the authority it first reached) with a
//! capped backoff and keeps waiting for the same request. It never files twice. The admin
//! lists requests, compares the code out of band, and approves or denies; the approval
//! carries the code, so the authority refuses one that was not compared.
//!
//! What it does not do: decide anything. Limits (pending requests per address, expiry,
//! narrowing never widening) are the authority's; this module reports its answers.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kith_authority::api::{
    self, AutoApproveRule, Enrolled, JoinRequestInfo, JoinState, PendingDenied, PendingSelector,
    RuleAdded,
};
use kith_authority::client::{AuthorityClient, JoinApproved, JoinEvent, JoinWait, JoinWaitError};
use kith_authority::project::Project;
use kith_identity::secure_channel::ChannelSettings;
use kith_identity::{Identifier, Identity};
use kith_node::Route;

use kith_identity::unix_now;

use super::args::{AutoApproveCommand, RequestArgs, RequestsCommand};
use super::output::{Output, attribute_list, clean};
use super::reach::{Retry, ask, connect_retrying, refused};
use crate::duration::{DisplayDuration, unix_time};
use crate::home::projects::{
    clashing_project, load_project, load_project_or_default, save_project,
};
use crate::home::requests::PendingRequest;
use crate::home::vault::{identity_arg, open_vault};
use crate::home::{AdmissionConfig, Home};
use crate::node::{RunningNode, channel_settings_scoped};

/// 10 s: how long one handshake with the authority may take; as for every other command
/// that reaches it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// 1 min: how often a requester without a terminal says it is still waiting (not once per
/// wait call: that would be a line every 10 s for an hour).
const NOTE_EVERY: Duration = Duration::from_secs(60);

/// Run `kith project requests …`.
pub(crate) async fn requests(home: &Home, out: &Output, cmd: RequestsCommand) -> Result<()> {
    match cmd {
        RequestsCommand::List { all, access } => {
            let list = ask(home, out, &access, async |c| c.join_requests(all).await).await?;
            let now = unix_now();
            out.result(|| request_table(&list, all, now), &list);
        }
        RequestsCommand::Show { id, access } => {
            let r = ask(home, out, &access, async |c| c.join_request(&id).await).await?;
            out.result(|| describe_request(&r, unix_now()), &r);
        }
        RequestsCommand::Approve {
            id,
            code,
            attributes,
            lifetime,
            access,
        } => {
            if let Some(l) = lifetime {
                whole_seconds(l, "--lifetime")?;
            }
            let code = match code {
                Some(code) => code,
                None => {
                    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
                        bail!(
                            "give --code (the code the requester sees): without a terminal, the request's code cannot be shown and confirmed"
                        );
                    }
                    let r = ask(home, out, &access, async |c| c.join_request(&id).await).await?;
                    if r.state != JoinState::Pending {
                        bail!(
                            "request {} is {}; only a pending request can be approved",
                            clean(&r.id),
                            r.state.as_str()
                        );
                    }
                    eprintln!("{}", describe_request(&r, unix_now()));
                    eprintln!(
                        "Approve only if the requester sees the same verification code, {}.",
                        clean(&r.code)
                    );
                    if !confirm("Approve?").await? {
                        bail!("not approved; request {} is still pending", clean(&r.id));
                    }
                    r.code
                }
            };
            let narrowed = (!attributes.is_empty())
                .then(|| attributes.into_iter().collect::<BTreeMap<_, _>>());
            let r = ask(home, out, &access, async |c| {
                c.approve_join_request(&id, &code, narrowed, lifetime).await
            })
            .await?;
            out.result(
                || {
                    let granted = r.granted_attributes.as_ref().unwrap_or(&r.attributes);
                    format!(
                        "Approved request {}: {} is a member with [{}], credential lifetime {}.",
                        clean(&r.id),
                        clean(&r.requester),
                        attribute_list(granted, ", "),
                        seconds(r.granted_lifetime.unwrap_or(r.lifetime))
                    )
                },
                &r,
            );
        }
        RequestsCommand::Deny {
            id: None,
            from,
            reason,
            access,
            ..
        } => {
            let select = match &from {
                Some(text) => PendingSelector::From(parse_from(text)?),
                None => PendingSelector::All,
            };
            let reason = reason.unwrap_or_default();
            if reason.trim().is_empty() {
                bail!(
                    "--reason must say why: every requester denied is told it, and the audit log keeps it"
                );
            }
            let done = ask(home, out, &access, async |c| {
                c.deny_pending_join_requests(select, &reason).await
            })
            .await?;
            out.result(|| bulk_denial(&done), &done);
        }
        RequestsCommand::Deny {
            id: Some(id),
            reason,
            access,
            ..
        } => {
            let reason = reason.unwrap_or_default();
            let r = ask(home, out, &access, async |c| {
                c.deny_join_request(&id, &reason).await
            })
            .await?;
            out.result(
                || {
                    format!(
                        "Denied request {} from {}.",
                        clean(&r.id),
                        clean(&r.requester)
                    )
                },
                &r,
            );
        }
        RequestsCommand::AutoApprove(cmd) => auto_approve(home, out, cmd).await?,
    }
    Ok(())
}

async fn auto_approve(home: &Home, out: &Output, cmd: AutoApproveCommand) -> Result<()> {
    match cmd {
        AutoApproveCommand::Add {
            netblock,
            lifetime,
            max_credential_lifetime,
            allow_attributes,
            access,
        } => {
            check_netblock(&netblock)?;
            whole_seconds(lifetime, "--lifetime")?;
            if let Some(l) = max_credential_lifetime {
                whole_seconds(l, "--max-credential-lifetime")?;
            }
            let allowed: BTreeMap<String, String> = allow_attributes.into_iter().collect();
            let added: RuleAdded = ask(home, out, &access, async |c| {
                c.add_auto_approve_rule(&netblock, allowed, max_credential_lifetime, lifetime)
                    .await
            })
            .await?;
            out.result(
                || {
                    let r = &added.rule;
                    let mut s = format!(
                        "Added auto-approve rule {}: requests from {} asking only for [{}] are approved, with credentials of at most {}, until {}.",
                        clean(&r.id),
                        clean(&r.netblock),
                        attribute_list(&r.attributes, ", "),
                        seconds(r.max_credential_lifetime),
                        unix_time(r.expires_at)
                    );
                    if !added.approved.is_empty() {
                        let ids: Vec<String> = added.approved.iter().map(|i| clean(i)).collect();
                        s.push_str(&format!(
                            "\nIt approved {} pending request{}: {}",
                            ids.len(),
                            if ids.len() == 1 { "" } else { "s" },
                            ids.join(", ")
                        ));
                    }
                    s
                },
                &added,
            );
        }
        AutoApproveCommand::List { access } => {
            let rules = ask(home, out, &access, async |c| c.auto_approve_rules().await).await?;
            let now = unix_now();
            out.result(|| rule_table(&rules, now), &rules);
        }
        AutoApproveCommand::Delete { id, access } => {
            let r = ask(home, out, &access, async |c| {
                c.delete_auto_approve_rule(&id).await
            })
            .await?;
            out.result(
                || {
                    format!(
                        "Deleted auto-approve rule {} ({}).",
                        clean(&r.id),
                        clean(&r.netblock)
                    )
                },
                &r,
            );
        }
    }
    Ok(())
}

/// Where the authority is, and how we know it is the one.
struct Authority {
    /// The project, if we know it (a project file, or a project known here).
    project: Option<Project>,
    /// The project came from --project-file: save it once we are a member.
    save: bool,
    /// The route to its secure-channel listener.
    listener: Route,
    /// Its route as the user knows it, for messages.
    shown: String,
    /// Its identifier, if known; otherwise whoever answers is shown for confirmation.
    pinned: Option<Identifier>,
    /// --accept-authority: the identifier the user expects of whoever answers.
    accept: Option<Identifier>,
}

impl Authority {
    async fn from_args(home: &Home, args: &RequestArgs) -> Result<Self> {
        if let Some(route) = &args.authority_route {
            let addr: kith_transport::MultiAddr = route
                .parse()
                .with_context(|| format!("--authority-route {route:?} is not a route"))?;
            let listener = crate::home::routes::resolve_target(
                home,
                &format!(
                    "{addr}/service/{}",
                    kith_identity::secure_channel::DEFAULT_LISTENER
                ),
            )
            .await
            .with_context(|| format!("--authority-route {route:?}"))?
            .route;
            let pinned = match &args.authority_identity {
                Some(text) => Some(identifier_arg(home, text).await?),
                None => None,
            };
            let accept = match &args.accept_authority {
                Some(text) => Some(text.trim().parse::<Identifier>().with_context(|| {
                    format!(
                        "--accept-authority {text:?} is not an identifier (I + 40 hex digits, as `kith project show` prints it)"
                    )
                })?),
                None => None,
            };
            let project = pinned.and_then(|id| {
                crate::home::projects::project_of_authority(home, &id)
                    .ok()
                    .flatten()
            });
            return Ok(Self {
                project,
                save: false,
                listener,
                shown: addr.to_string(),
                pinned,
                accept,
            });
        }
        let (project, save) = match &args.project_file {
            Some(path) => {
                let text = read_limited(path, kith_authority::project::MAX_PROJECT_JSON)?;
                let project = Project::from_json(&text).with_context(|| {
                    format!("{} is not a valid project description", path.display())
                })?;
                (project, true)
            }
            None => match &args.project {
                Some(name) => (load_project(home, name)?, false),
                None => (
                    load_project_or_default(home, None, "--project NAME").context(
                        "to join a project not known here, give --project-file FILE or --authority-route ROUTE",
                    )?,
                    false,
                ),
            },
        };
        Ok(Self {
            listener: crate::home::routes::api_route(home, &project).await?,
            shown: project.authority_route.to_string(),
            pinned: Some(*project.authority_identifier()),
            accept: None,
            save,
            project: Some(project),
        })
    }

    /// Who the admin is asked to approve with.
    fn whose(&self, authority: &Identifier) -> String {
        match &self.project {
            Some(p) => format!("project {}", p.name),
            None => format!("the project whose authority is {authority}"),
        }
    }
}

/// An identifier (`I…`), or an identity as `--authority-identity` takes it elsewhere: a vault
/// name or a hex key history.
async fn identifier_arg(home: &Home, text: &str) -> Result<Identifier> {
    if let Ok(id) = text.trim().parse::<Identifier>() {
        return Ok(id);
    }
    let vault = open_vault(home).await?;
    let identity = identity_arg(&vault, text).await;
    vault.close().await;
    Ok(*identity
        .context("--authority-identity is neither an identifier (I…) nor an identity")?
        .identifier())
}

/// Run `kith project request`.
pub(crate) async fn request(home: &Home, out: &Output, mut args: RequestArgs) -> Result<()> {
    if let Some(id) = &args.resume
        && args.project_file.is_none()
        && args.project.is_none()
        && args.authority_route.is_none()
    {
        // Resume where it was filed, as whom it was filed, unless told otherwise.
        if let Some(filed) = home.pending_request(id)? {
            args.project_file = filed.project_file;
            args.project = filed.project;
            args.authority_route = filed.authority_route;
            args.authority_identity = filed.authority_identity;
            if args.identity.is_none() && args.node.is_none() {
                args.identity = filed.identity;
                args.node = filed.node;
            }
        }
    }
    if args.note.len() > api::MAX_JOIN_NOTE {
        bail!(
            "--note is {} bytes; at most {} are sent",
            args.note.len(),
            api::MAX_JOIN_NOTE
        );
    }
    if let Some(l) = args.lifetime {
        whole_seconds(l, "--lifetime")?;
    }
    let retry = Retry::from_options(args.retry_count, args.retry_delay, args.no_retry)?;
    let authority = Authority::from_args(home, &args).await?;
    let storing = args.file.is_none() && !args.no_wait;
    if storing
        && authority.save
        && let Some(project) = &authority.project
    {
        refuse_project_clash(home, project)?;
    }
    let identity = match (&args.identity, &args.node) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(n)) => home.load_node(n)?.identity,
        (None, None) => None,
    };
    let (settings, holder) =
        channel_settings_scoped(home, identity.as_deref(), &AdmissionConfig::default(), None)
            .await?;
    let node = RunningNode::start("cli", None, Some(settings.clone())).await?;
    let done = request_through(
        home, out, &args, &authority, &node, &settings, &holder, retry,
    )
    .await;
    node.node.shutdown().await;
    done
}

/// Refuse a project description that clashes with a known project of the same name, before
/// anything is sent.
fn refuse_project_clash(home: &Home, project: &Project) -> Result<()> {
    if let Some(known) = clashing_project(home, project) {
        bail!(
            "a different project named {:?} (id {}) is already known here; this description is for project id {}",
            project.name,
            known.id,
            project.id
        );
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename these"
)]
async fn request_through(
    home: &Home,
    out: &Output,
    args: &RequestArgs,
    authority: &Authority,
    node: &RunningNode,
    settings: &ChannelSettings,
    holder: &str,
    retry: Retry,
) -> Result<()> {
    // Listening from before the request is filed: a Ctrl-C once its ID is shown must leave
    // it pending and say how to resume, never kill the command before it can.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let (mut client, issuer) = first_connection(out, node, settings, authority, retry).await?;
    let authority_id = *issuer.identifier();
    let id = match &args.resume {
        Some(id) => {
            out.note(format!(
                "Waiting for a decision on request {id} (its verification code is the one shown when it was filed)."
            ));
            id.clone()
        }
        None => {
            let attributes: BTreeMap<String, String> = args.attributes.iter().cloned().collect();
            let (filed, code) = client
                .file_join_request(attributes, args.lifetime, &args.note)
                .await
                .map_err(|e| refused(e).context("the join request was not filed"))?;
            // Not through `out.note`: the ID and code are what the user must pass on, so
            // they are shown even with --quiet or --output json (on stderr, as condor does).
            if filed.state == JoinState::Pending {
                eprintln!(
                    "Join request enqueued. Ask an administrator of {} to approve request {}.",
                    authority.whose(&authority_id),
                    clean(&filed.id)
                );
                eprintln!("Verification code: {code} (the administrator must see the same code)");
            } else {
                // An auto-approval rule decided it as it was filed.
                eprintln!(
                    "Join request {} filed, and {} at once by {}.",
                    clean(&filed.id),
                    filed.state.as_str(),
                    filed
                        .decided_by
                        .as_deref()
                        .map_or("the authority".to_owned(), clean)
                );
            }
            if filed.state == JoinState::Pending {
                let record = PendingRequest {
                    project_file: args
                        .project_file
                        .as_deref()
                        .map(std::path::absolute)
                        .transpose()
                        .context("cannot find the project file's full path")?,
                    project: args.project.clone(),
                    authority_route: args.authority_route.clone(),
                    authority_identity: args
                        .authority_route
                        .is_some()
                        .then(|| authority_id.to_string()),
                    identity: args.identity.clone(),
                    node: args.node.clone(),
                };
                if let Err(e) = home.save_pending_request(&filed.id, &record) {
                    eprintln!(
                        "warning: cannot remember request {} here ({e:#}); to resume it, give the same options with --resume",
                        clean(&filed.id)
                    );
                }
            }
            if !api::codes_match(&code, &filed.code) {
                // Whoever sits in between rewrites this too; a mismatch is still worth a
                // word, as the admin will see the authority's code, not ours.
                eprintln!(
                    "warning: the authority reports code {} for this request, not {code}: someone may sit between you and the authority; the administrator should deny it",
                    clean(&filed.code)
                );
            }
            if args.no_wait {
                client.close().await;
                out.result(
                    || filed.id.clone(),
                    &serde_json::json!({
                        "id": filed.id,
                        "code": code,
                        "requester": filed.requester,
                        "state": filed.state,
                        "expires_at": filed.expires_at,
                        "authority": authority_id.to_string(),
                    }),
                );
                return Ok(());
            }
            filed.id
        }
    };
    let wait = JoinWait::new(
        &node.node,
        authority.listener.clone(),
        settings,
        &id,
        args.timeout,
    )
    .with_connect_timeout(CONNECT_TIMEOUT);
    let progress = RefCell::new(Progress::new(out, &id, wait.deadline()));
    let run = wait.run(client, |event| {
        progress.borrow_mut().set_doing(match event {
            JoinEvent::Waiting => "waiting for approval".to_owned(),
            JoinEvent::Busy { message } => {
                format!("the authority says: {}; waiting again", clean(message))
            }
            JoinEvent::Lost { error: None } => {
                "lost the connection to the authority; reconnecting".to_owned()
            }
            JoinEvent::Lost { error: Some(e) } => format!("lost the authority ({e}); reconnecting"),
            JoinEvent::Unreachable { error } => {
                format!("cannot reach the authority ({error}); reconnecting")
            }
        });
    });
    let decided = tokio::select! {
        decided = Progress::ticking(&progress, run) => decided,
        _ = interrupt.recv() => return Err(super::Interrupted(format!(
            "interrupted; request {id} is still pending: wait for it with `kith project request --resume {id}`"
        )).into()),
    };
    drop(progress);
    if !matches!(decided, Err(JoinWaitError::TimedOut { .. })) {
        // Decided (or gone): there is nothing left to resume.
        if let Err(e) = home.forget_pending_request(&id) {
            tracing::debug!(error = %e, "cannot forget a decided request");
        }
    }
    let JoinApproved {
        request,
        credential: enrolled,
    } = decided.map_err(|e| match e {
        JoinWaitError::TimedOut { id, after, last } => {
            let last = last.map_or(String::new(), |e| format!(" (last: {e})"));
            anyhow!(
                "no decision on request {id} within {}{last}; it may still be pending: wait again with `kith project request --resume {id}`",
                DisplayDuration(after)
            )
        }
        JoinWaitError::Expired { id, at } => anyhow!(
            "request {id} expired at {} without a decision; file a new one",
            unix_time(at)
        ),
        other => anyhow::Error::new(other),
    })?;
    deliver(
        home, out, args, authority, &issuer, holder, &request, &enrolled,
    )
    .await
}

/// The first channel to the authority: pinned to its identifier if we know it, otherwise to
/// whoever answers once the user confirmed its identifier. Returns who it is.
async fn first_connection(
    out: &Output,
    node: &RunningNode,
    settings: &ChannelSettings,
    authority: &Authority,
    retry: Retry,
) -> Result<(AuthorityClient, Identity)> {
    let connected = connect_retrying(out, &authority.shown.to_string(), retry, || async {
        match &authority.pinned {
            Some(id) => {
                AuthorityClient::connect(
                    &node.node,
                    authority.listener.clone(),
                    id,
                    settings,
                    CONNECT_TIMEOUT,
                )
                .await
            }
            None => {
                AuthorityClient::connect_unpinned(
                    &node.node,
                    authority.listener.clone(),
                    settings,
                    CONNECT_TIMEOUT,
                )
                .await
            }
        }
    })
    .await;
    let client = connected.context("cannot reach the project's authority")?;
    let identity = client.authority().clone();
    if authority.pinned.is_none() {
        let found = *identity.identifier();
        if let Err(e) = confirm_authority(authority, &found).await {
            client.close().await;
            return Err(e);
        }
    }
    Ok((client, identity))
}

/// Have the user confirm that `found`, who answered at an authority route given without an
/// identifier, is the authority they mean: --accept-authority, or a question on a terminal.
async fn confirm_authority(authority: &Authority, found: &Identifier) -> Result<()> {
    if let Some(expected) = &authority.accept {
        if expected != found {
            bail!(
                "the node at {} is {found}, not {expected} as --accept-authority says: a wrong route, or someone in between; nothing was sent",
                authority.shown
            );
        }
        return Ok(());
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        bail!(
            "the node at {} is {found}; nothing says that is the project's authority: compare it with the identifier an admin reads from `kith project show`, then run again with --accept-authority {found}",
            authority.shown
        );
    }
    eprintln!("The node at {} is", authority.shown);
    eprintln!("  {found}");
    eprintln!("Compare this identifier with the one an admin reads from `kith project show`.");
    if !confirm("Is it the project's authority? File the request?").await? {
        bail!("not filed: the authority's identifier was not confirmed");
    }
    Ok(())
}

/// What the requester sees while it waits: a spinner with the time left on a terminal, a
/// line a minute otherwise.
struct Progress<'a> {
    out: &'a Output,
    id: String,
    deadline: Instant,
    bar: Option<ProgressBar>,
    doing: String,
    next_note: Instant,
}

impl<'a> Progress<'a> {
    fn new(out: &'a Output, id: &str, deadline: Instant) -> Self {
        let bar = out.spinner(format!(
            "waiting for approval ({} left)…",
            clock(deadline.saturating_duration_since(Instant::now()))
        ));
        if let Some(b) = &bar
            && let Ok(style) = ProgressStyle::with_template("{spinner} {msg}")
        {
            b.set_style(style);
        }
        let mut p = Self {
            out,
            id: id.to_owned(),
            deadline,
            bar,
            doing: "waiting for approval".to_owned(),
            // The first line after a second, so an answer that comes at once (a request an
            // auto-approval rule took) prints no "waiting".
            next_note: Instant::now() + Duration::from_secs(1),
        };
        p.show();
        p
    }

    fn show(&mut self) {
        let left = clock(self.deadline.saturating_duration_since(Instant::now()));
        match &self.bar {
            Some(b) => b.set_message(format!("{} ({left} left)…", self.doing)),
            None => {
                let now = Instant::now();
                if now >= self.next_note {
                    self.out.note(format!(
                        "request {}: {} ({left} left)…",
                        self.id, self.doing
                    ));
                    self.next_note = now + NOTE_EVERY;
                }
            }
        }
    }

    /// Say what we are doing now (at once, not at the next minute).
    fn set_doing(&mut self, doing: String) {
        if doing != self.doing {
            self.doing = doing;
            self.next_note = Instant::now();
        }
        self.show();
    }

    /// Run `f`, keeping the time left up to date meanwhile (`f` may say what it is doing
    /// through the same `progress`; neither holds it across a wait).
    async fn ticking<F: std::future::Future>(progress: &RefCell<Self>, f: F) -> F::Output {
        tokio::pin!(f);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                done = &mut f => return done,
                _ = tick.tick() => progress.borrow_mut().show(),
            }
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Store the credential of an approved request (or write it to --file), and say so.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename these"
)]
async fn deliver(
    home: &Home,
    out: &Output,
    args: &RequestArgs,
    authority: &Authority,
    issuer: &Identity,
    holder: &str,
    request: &JoinRequestInfo,
    enrolled: &Enrolled,
) -> Result<()> {
    let credential = kith_authority::client::decode_credential(enrolled)
        .context("the authority sent a credential we cannot use")?;
    let mut json = serde_json::json!({
        "id": request.id,
        "identity": holder,
        "project": authority.project.as_ref().map(|p| p.name.clone()),
        "issuer": issuer.identifier().to_string(),
        "attributes": enrolled.attributes,
        "expires_at": enrolled.expires_at,
        "decided_by": request.decided_by,
    });
    if let Some(file) = &args.file {
        let hex = kith_identity::hex::encode(&credential.encode());
        let summary = format!(
            "Request {} approved by {}: credential for identity {holder} from {}: [{}], expires {}",
            request.id,
            request
                .decided_by
                .as_deref()
                .map_or("an administrator".to_owned(), clean),
            issuer.identifier(),
            attribute_list(&enrolled.attributes, ", "),
            unix_time(enrolled.expires_at)
        );
        if file.as_os_str() == "-" {
            // The credential alone on stdout, so `> credential.hex` captures it.
            println!("{hex}");
            out.note(summary);
            return Ok(());
        }
        crate::home::write_private_atomic(file, format!("{hex}\n").as_bytes())?;
        json["file"] = file.display().to_string().into();
        out.result(
            || format!("{summary}\nWrote the credential to {}", file.display()),
            &json,
        );
        return Ok(());
    }
    let vault = open_vault(home).await?;
    let stored = vault
        .store_credential(holder, issuer, &credential, unix_now())
        .await;
    vault.close().await;
    let verified = stored.context("cannot store the credential")?;
    if authority.save
        && let Some(project) = &authority.project
    {
        save_project(home, project)?;
    }
    if let Some(node) = &args.node
        && let Err(e) = crate::commands::nodes::reload_credentials(home, node).await
    {
        out.note(format!(
            "warning: {e:#}; restart it to present the credential: kith node stop {node} && kith node start {node}"
        ));
    }
    let project = match &authority.project {
        Some(p) => format!("project {}", p.name),
        None => format!(
            "the project of authority {} (import its description with `kith project import` to reach it by name)",
            issuer.identifier()
        ),
    };
    out.result(
        || {
            format!(
                "Request {} approved: identity {holder} is a member of {project}.\nCredential from {}: [{}], expires {}",
                request.id,
                verified.issuer,
                attribute_list(&verified.attributes, ", "),
                unix_time(verified.expires_at)
            )
        },
        &json,
    );
    Ok(())
}

/// Ask a yes/no question on stderr and read the answer from stdin; no is the default.
async fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("cannot read the answer")?
    .context("cannot read the answer from standard input")?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Read at most `limit` bytes of `path` as text, refusing a longer file.
fn read_limited(path: &Path, limit: usize) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() > limit {
        bail!(
            "{} is larger than a project description can be ({limit} bytes)",
            path.display()
        );
    }
    Ok(text)
}

/// `d` in whole seconds (what the authority takes), refusing less than one.
fn whole_seconds(d: Duration, option: &str) -> Result<u64> {
    match d.as_secs() {
        0 => bail!("{option} must be at least 1s"),
        s => Ok(s),
    }
}

/// Check a netblock before it is sent, with the authority's own parser (it checks again).
fn check_netblock(text: &str) -> Result<()> {
    kith_authority::join::parse_netblock(text)
        .map(drop)
        .map_err(|e| anyhow!("--netblock: {e}"))
}

/// `--from`: an address or a netblock, checked before it is sent with the authority's own
/// parser (it checks again); host bits are cleared, so `10.1.2.3/16` is `10.1.0.0/16`.
/// Returns the netblock as CIDR.
fn parse_from(text: &str) -> Result<String> {
    kith_authority::join::parse_netblock(text)
        .map(|net| net.to_string())
        .map_err(|e| anyhow!("--from: {e}, or as one address, e.g. 192.0.2.7"))
}

/// 20 ids: the most a bulk denial lists in plain text (`--output json` has them all).
const SHOWN_IDS: usize = 20;

/// What a bulk denial did, in one or two lines.
fn bulk_denial(done: &PendingDenied) -> String {
    let whence = if done.selector == "all" {
        String::new()
    } else {
        format!(" from {}", clean(&done.selector))
    };
    if done.denied == 0 {
        return format!("No pending requests{whence}; nothing was denied.");
    }
    let mut ids: Vec<String> = done.ids.iter().take(SHOWN_IDS).map(|i| clean(i)).collect();
    if done.ids.len() > SHOWN_IDS {
        ids.push(format!("and {} more", done.ids.len() - SHOWN_IDS));
    }
    let mut s = format!(
        "Denied {} pending request{}{whence}: {}",
        done.denied,
        if done.denied == 1 { "" } else { "s" },
        ids.join(", ")
    );
    if done.more {
        s.push_str(&format!(
            "\nMore pending requests match than one denial takes ({}); run the command again.",
            api::MAX_BULK_DENY
        ));
    }
    s
}

/// Attributes in a table's cell: `k=v,k=v`, or `-` for none.
fn attribute_cell(attributes: &BTreeMap<String, String>) -> String {
    if attributes.is_empty() {
        "-".to_owned()
    } else {
        attribute_list(attributes, ",")
    }
}

fn seconds(s: u64) -> String {
    DisplayDuration(Duration::from_secs(s)).to_string()
}

/// `I6c20e8…d9a`: enough of an identifier to tell requests apart in a table.
fn short_identifier(id: &str) -> String {
    let id = clean(id);
    match (
        id.get(..7),
        id.len().checked_sub(3).and_then(|i| id.get(i..)),
    ) {
        (Some(head), Some(tail)) if id.len() > 12 => format!("{head}…{tail}"),
        _ => id,
    }
}

/// A time left as `59:41` or `6:59:41`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

/// An age in its largest whole unit: `19s`, `5m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

fn request_table(list: &[JoinRequestInfo], all: bool, now: u64) -> String {
    if list.is_empty() {
        return if all {
            "No join requests.".to_owned()
        } else {
            "No pending join requests.".to_owned()
        };
    }
    let mut header = vec![
        "ID",
        "REQUESTER",
        "FROM",
        "ATTRIBUTES",
        "LIFETIME",
        "CODE",
        "AGE",
    ];
    if all {
        header.push("STATE");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let mut row = vec![
                clean(&r.id),
                short_identifier(&r.requester),
                clean(&r.source),
                attribute_cell(&r.attributes),
                seconds(r.lifetime),
                clean(&r.code),
                age(now.saturating_sub(r.created_at)),
            ];
            if all {
                row.push(r.state.as_str().to_owned());
            }
            row
        })
        .collect();
    table(&header, &rows)
}

fn describe_request(r: &JoinRequestInfo, now: u64) -> String {
    let mut s = format!(
        "Join request {} ({})\n  requester   {}\n  from        {}\n  attributes  [{}]\n  lifetime    {}\n  code        {}\n  filed       {} ({} ago)",
        clean(&r.id),
        r.state.as_str(),
        clean(&r.requester),
        clean(&r.source),
        attribute_list(&r.attributes, ", "),
        seconds(r.lifetime),
        clean(&r.code),
        unix_time(r.created_at),
        age(now.saturating_sub(r.created_at)),
    );
    if !r.note.trim().is_empty() {
        s.push_str(&format!("\n  note        {}", clean(&r.note)));
    }
    if r.state == JoinState::Pending {
        s.push_str(&format!(
            "\n  expires     {} (in {})",
            unix_time(r.expires_at),
            age(r.expires_at.saturating_sub(now))
        ));
    }
    if let Some(at) = r.decided_at {
        let by = r.decided_by.as_deref().map(clean);
        s.push_str(&format!(
            "\n  decided     {}{}",
            unix_time(at),
            by.map_or(String::new(), |b| format!(" by {b}"))
        ));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!("\n  reason      {}", clean(reason)));
    }
    if let Some(granted) = &r.granted_attributes {
        s.push_str(&format!(
            "\n  granted     [{}], credential lifetime {}",
            attribute_list(granted, ", "),
            seconds(r.granted_lifetime.unwrap_or(r.lifetime))
        ));
    }
    s
}

fn rule_table(rules: &[AutoApproveRule], now: u64) -> String {
    if rules.is_empty() {
        return "No auto-approve rules.".to_owned();
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                clean(&r.id),
                clean(&r.netblock),
                attribute_cell(&r.attributes),
                seconds(r.max_credential_lifetime),
                age(r.expires_at.saturating_sub(now)),
                short_identifier(&r.created_by),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NETBLOCK",
            "ATTRIBUTES",
            "MAX LIFETIME",
            "EXPIRES IN",
            "BY",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_shortened_as_the_list_shows_them() {
        assert_eq!(
            short_identifier("I6c20e814b56579306f55c64e8747e6c1b4a53d9a"),
            "I6c20e8…d9a"
        );
        assert_eq!(short_identifier("unknown"), "unknown");
    }

    #[test]
    fn control_characters_from_the_wire_are_escaped() {
        assert_eq!(clean("ok\u{1b}[2Jx\n"), "ok\\u{1b}[2Jx\\n");
        assert_eq!(clean("rack 4 — sf"), "rack 4 — sf");
    }

    #[test]
    fn times_read_as_the_issue_shows_them() {
        assert_eq!(clock(Duration::from_secs(59 * 60 + 41)), "59:41");
        assert_eq!(clock(Duration::from_secs(7 * 3600 + 5)), "7:00:05");
        assert_eq!(age(19), "19s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(2 * 86_400 + 5), "2d");
    }

    #[test]
    fn netblocks_are_checked_before_they_are_sent() {
        for ok in [
            "127.0.0.0/8",
            "10.1.0.0/16",
            "fd00::/8",
            "0.0.0.0/0",
            "127.0.0.1",
        ] {
            check_netblock(ok).unwrap();
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "x/8", "10.0.0.0/-1", ""] {
            assert!(check_netblock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bulk_denial_selectors_are_checked_before_they_are_sent() {
        assert_eq!(parse_from("127.0.0.0/8").unwrap(), "127.0.0.0/8");
        assert_eq!(parse_from(" 10.1.2.3/16 ").unwrap(), "10.1.0.0/16");
        assert_eq!(parse_from("192.0.2.7").unwrap(), "192.0.2.7/32");
        assert_eq!(parse_from("::1").unwrap(), "::1/128");
        assert_eq!(parse_from("2001:db8:1::9/48").unwrap(), "2001:db8:1::/48");
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/-1",
            "10.0.0.0/",
            "/8",
            "example.com",
            "10.0.0.0/8/8",
            "127.0.0.1:4000",
            "1.2.3.4 5.6.7.8",
        ] {
            let e = parse_from(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--from: ") && e.contains("not a netblock"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn bulk_denials_say_how_many_from_where() {
        let done = |ids: &[&str], selector: &str| PendingDenied {
            denied: u32::try_from(ids.len()).unwrap(),
            ids: ids.iter().map(|i| (*i).to_owned()).collect(),
            selector: selector.to_owned(),
            reason: "flood".to_owned(),
            more: false,
        };
        assert_eq!(
            bulk_denial(&done(&["A", "B", "C"], "127.0.0.0/8")),
            "Denied 3 pending requests from 127.0.0.0/8: A, B, C"
        );
        assert_eq!(
            bulk_denial(&done(&["A"], "all")),
            "Denied 1 pending request: A"
        );
        assert_eq!(
            bulk_denial(&done(&[], "10.0.0.0/8")),
            "No pending requests from 10.0.0.0/8; nothing was denied."
        );
        let many: Vec<String> = (0..25).map(|i| format!("ID{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(bulk_denial(&done(&many, "all")).ends_with("ID19, and 5 more"));
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(
            &["ID", "AGE"],
            &[vec!["4KQ7-ZP2M".to_owned(), "19s".to_owned()]],
        );
        assert_eq!(t, "ID         AGE\n4KQ7-ZP2M  19s");
    }

    #[test]
    fn durations_under_a_second_are_refused() {
        assert!(whole_seconds(Duration::from_millis(500), "--lifetime").is_err());
        assert_eq!(
            whole_seconds(Duration::from_secs(7), "--lifetime").unwrap(),
            7
        );
    }
}
