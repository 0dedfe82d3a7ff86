//! `kith project …`: project descriptions, tickets, enrollment, members and the audit log.
//! Every command that reaches the authority runs an embedded node, opens a secure channel
//! to the authority (checking its identifier), asks, and stops the node.

use std::collections::BTreeMap;
use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use kith_authority::api::{self, ErrorKind};
use kith_authority::client::ClientError;
use kith_authority::project::Project;
use kith_authority::ticket::{Encoding, OneTimeCode, Ticket};
use kith_identity::{Identifier, unix_now};

use super::args::{EnrollArgs, MemberCommand, ProjectCommand, TicketArgs, TicketCommand};
use super::output::{Output, attribute_list};
use super::reach::{Reach, Retry, Session, ask, reach, refused};
use crate::duration::{DisplayDuration, RoundedDuration, unix_time};
use crate::home::Home;
use crate::home::projects::{
    clashing_project, load_project, load_project_or_default, save_project,
};
use crate::home::routes::api_route;
use crate::home::vault::{open_vault, resolve_identity};

fn project_json(p: &Project) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "id": p.id,
        "authority_identifier": p.authority_identifier().to_string(),
        "authority_route": p.authority_route.to_string(),
        "project_route": p.project_route.to_string(),
        "project_identifier": p.project_identifier.to_string(),
    })
}

/// Run a project command.
pub async fn run(home: &Home, out: &Output, cmd: ProjectCommand) -> Result<()> {
    match cmd {
        ProjectCommand::Show { name } => {
            let p = load_project_or_default(home, name.as_deref(), "a NAME argument")?;
            let j = project_json(&p);
            out.result(
                || {
                    format!(
                        "Project {} (id {})\n  authority {} at {}\n  project node {} at {}",
                        p.name,
                        p.id,
                        p.authority_identifier(),
                        p.authority_route,
                        p.project_identifier,
                        p.project_route
                    )
                },
                &j,
            );
            Ok(())
        }
        ProjectCommand::List => {
            let default = home.default_project_name()?;
            let mut rows = Vec::new();
            for name in home.project_names()? {
                let p = load_project(home, &name)?;
                let mut j = project_json(&p);
                j["default"] = (default.as_deref() == Some(name.as_str())).into();
                rows.push(j);
            }
            out.result(
                || {
                    if rows.is_empty() {
                        return "No projects. Create one with `kith authority create`, or enroll with `kith project enroll`.".to_owned();
                    }
                    let mut s = format!("{:<20} {:<34} {:<42} {}", "NAME", "ID", "AUTHORITY", "ROUTE");
                    for r in &rows {
                        s.push_str(&format!(
                            "\n{:<20} {:<34} {:<42} {}{}",
                            r["name"].as_str().unwrap_or_default(),
                            r["id"].as_str().unwrap_or_default(),
                            r["authority_identifier"].as_str().unwrap_or_default(),
                            r["authority_route"].as_str().unwrap_or_default(),
                            if r["default"] == true { "  (default)" } else { "" }
                        ));
                    }
                    s
                },
                &rows,
            );
            Ok(())
        }
        ProjectCommand::Import { file, default } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .take(api::MAX_REQUEST as u64 + 1)
                    .read_to_string(&mut s)
                    .context("cannot read the project from standard input")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            let p = Project::from_json(&text).context("not a valid project description")?;
            save_project(home, &p)?;
            if default {
                home.set_default_project(&p.name)?;
            }
            out.result(
                || {
                    format!(
                        "Imported project {} (authority {})",
                        p.name,
                        p.authority_identifier()
                    )
                },
                &project_json(&p),
            );
            Ok(())
        }
        ProjectCommand::Export { name } => {
            let p = load_project_or_default(home, name.as_deref(), "a NAME argument")?;
            println!("{}", p.to_json());
            Ok(())
        }
        ProjectCommand::Ticket(args) => ticket(home, out, *args).await,
        ProjectCommand::Enroll(args) => enroll(home, out, *args).await,
        ProjectCommand::Member(cmd) => member(home, out, cmd).await,
        ProjectCommand::Request(args) => crate::commands::requests::request(home, out, *args).await,
        ProjectCommand::Requests(cmd) => crate::commands::requests::requests(home, out, cmd).await,
        ProjectCommand::Audit { access, limit } => {
            let entries = ask(home, out, &access, async |c| c.audit(limit).await).await?;
            out.result(
                || {
                    entries
                        .iter()
                        .map(|e| {
                            format!(
                                "{}  {:<16} {}  by {}{}",
                                unix_time(e.at),
                                e.action,
                                e.subject,
                                e.actor,
                                if e.detail.is_empty() {
                                    String::new()
                                } else {
                                    format!("  ({})", e.detail)
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                &entries,
            );
            Ok(())
        }
    }
}

fn ticket_info_line(t: &api::TicketInfo, now: u64) -> String {
    let state = if t.revoked_at.is_some() {
        "revoked".to_owned()
    } else if t.expires_at <= now {
        "expired".to_owned()
    } else if t.uses_left == 0 {
        "used up".to_owned()
    } else {
        format!(
            "{} of {} uses left, expires in {}",
            t.uses_left,
            t.usage_count,
            RoundedDuration(t.expires_at - now)
        )
    };
    format!(
        "{:<14} [{}]  {state}",
        t.id,
        attribute_list(&t.attributes, ", ")
    )
}

async fn ticket(home: &Home, out: &Output, args: TicketArgs) -> Result<()> {
    match args.command {
        Some(TicketCommand::List { access }) => {
            let tickets = ask(home, out, &access, async |c| c.list_tickets().await).await?;
            let now = unix_now();
            out.result(
                || {
                    if tickets.is_empty() {
                        return "No tickets.".to_owned();
                    }
                    tickets
                        .iter()
                        .map(|t| ticket_info_line(t, now))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                &tickets,
            );
            Ok(())
        }
        Some(TicketCommand::Show {
            ticket,
            ticket_file,
        }) => {
            let t = Ticket::decode(&ticket_text(ticket.as_ref(), ticket_file.as_ref())?)
                .context("cannot read this ticket")?;
            let now = unix_now();
            let state = if t.expires_at <= now {
                format!("expired at {}", unix_time(t.expires_at))
            } else {
                format!(
                    "expires {} (in {})",
                    unix_time(t.expires_at),
                    RoundedDuration(t.expires_at - now)
                )
            };
            let attrs = attribute_list(&t.attributes, ", ");
            let mut j = project_json(&t.project);
            let j = serde_json::json!({
                "id": t.id(),
                "project": j.take(),
                "attributes": t.attributes,
                "expires_at": t.expires_at,
                "expired": t.expires_at <= now,
                "usage_count": t.usage_count,
            });
            out.result(
                || {
                    format!(
                        "Ticket {} for project {} (id {})\n  authority {} at {}\n  attributes [{}]\n  {} use{}, {state}\nThe authority's copy decides: `kith project ticket list` shows what is left of it.",
                        t.id(),
                        t.project.name,
                        t.project.id,
                        t.project.authority_identifier(),
                        t.project.authority_route,
                        attrs,
                        t.usage_count,
                        if t.usage_count == 1 { "" } else { "s" },
                    )
                },
                &j,
            );
            Ok(())
        }
        Some(TicketCommand::Revoke { id, access }) => {
            let t = ask(home, out, &access, async |c| c.revoke_ticket(&id).await).await?;
            out.result(|| format!("Revoked ticket {}", t.id), &t);
            Ok(())
        }
        None => {
            let mut attributes: BTreeMap<String, String> = args.attributes.into_iter().collect();
            if let Some(relay) = &args.relay {
                // The error describes the name without repeating it: it may be long.
                kith_authority::relay::check_relay_name(relay).context("--relay")?;
                attributes.insert(api::RELAY_ATTRIBUTE.to_owned(), relay.clone());
            }
            if args.enroller {
                attributes.insert(
                    api::ROLE_ATTRIBUTE.to_owned(),
                    api::ENROLLER_ROLE.to_owned(),
                );
            }
            if args.tls {
                attributes.insert("ockam-tls-certificate".to_owned(), "true".to_owned());
            }
            let (reach, project) = reach(home, &args.access).await?;
            let created = Session::open(home, out, &reach)
                .await?
                .call(async |c| {
                    c.create_ticket(attributes, args.expires_in, args.usage_count)
                        .await
                })
                .await
                .map_err(refused)?;
            let code = kith_identity::hex::decode_array(&created.code).map_err(|e| {
                anyhow::anyhow!("the authority sent a ticket code that is not 32 bytes of hex: {e}")
            })?;
            let ticket = Ticket {
                code: OneTimeCode::from_bytes(code),
                project,
                attributes: created.attributes.clone(),
                expires_at: created.expires_at,
                usage_count: created.usage_count,
            };
            let encoding = if args.hex {
                Encoding::Hex
            } else if args.legacy {
                Encoding::Legacy
            } else {
                Encoding::Text
            };
            let text = ticket.encode(encoding);
            if out.is_json() {
                out.result(
                    String::new,
                    &serde_json::json!({
                        "ticket": text,
                        "id": created.id,
                        "attributes": created.attributes,
                        "expires_at": created.expires_at,
                        "usage_count": created.usage_count,
                    }),
                );
            } else {
                // The ticket alone on stdout, so `> ticket.txt` and `$(…)` capture it.
                println!("{text}");
                out.note(format!(
                    "Ticket {} for project {}: {} use{}, expires {}",
                    created.id,
                    ticket.project.name,
                    created.usage_count,
                    if created.usage_count == 1 { "" } else { "s" },
                    unix_time(created.expires_at)
                ));
            }
            Ok(())
        }
    }
}

/// The ticket text from the argument (`-` = stdin), `--ticket-file`, or the environment.
fn ticket_text(
    ticket: Option<&String>,
    ticket_file: Option<&std::path::PathBuf>,
) -> Result<String> {
    let limit = kith_authority::ticket::MAX_TICKET_LEN as u64 + 1;
    if let Some(t) = ticket {
        if t == "-" {
            let mut s = String::new();
            std::io::stdin()
                .take(limit)
                .read_to_string(&mut s)
                .context("cannot read the ticket from standard input")?;
            return Ok(s);
        }
        return Ok(t.clone());
    }
    if let Some(f) = ticket_file {
        return read_ticket_file(f);
    }
    match std::env::var("KITH_ENROLLMENT_TICKET") {
        Ok(t) if !t.trim().is_empty() => Ok(t),
        _ => bail!(
            "no ticket: give it as an argument, with --ticket-file FILE, on standard input with -, or in KITH_ENROLLMENT_TICKET"
        ),
    }
}

/// A ticket file's text, read no further than a ticket can be long (a longer one is then
/// refused by [`Ticket::decode`]).
pub(crate) fn read_ticket_file(path: &std::path::Path) -> Result<String> {
    let limit = kith_authority::ticket::MAX_TICKET_LEN as u64 + 1;
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit).read_to_string(&mut s))
        .with_context(|| format!("cannot read the ticket file {}", path.display()))?;
    Ok(s)
}

/// Whether `ticket` can be redeemed from here: it has not expired, and no other project of
/// its name is known. Checked before anything is sent or written.
pub(crate) fn check_redeemable(home: &Home, ticket: &Ticket) -> Result<()> {
    let now = unix_now();
    if ticket.expires_at <= now {
        bail!(
            "this ticket expired at {} ({} ago); ask for a new one",
            unix_time(ticket.expires_at),
            RoundedDuration(now - ticket.expires_at)
        );
    }
    let project = &ticket.project;
    if clashing_project(home, project).is_some() {
        bail!(
            "a different project named {:?} is already known here; this ticket is for project id {}",
            project.name,
            project.id
        );
    }
    Ok(())
}

pub(crate) async fn enroll(home: &Home, out: &Output, args: EnrollArgs) -> Result<()> {
    let ticket = Ticket::decode(&ticket_text(
        args.ticket.as_ref(),
        args.ticket_file.as_ref(),
    )?)
    .context("cannot use this ticket")?;
    check_redeemable(home, &ticket)?;
    let project = ticket.project.clone();
    let identity = match (&args.identity, &args.node) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(n)) => home.load_node(n)?.identity,
        (None, None) => None,
    };
    let holder = {
        let vault = open_vault(home).await?;
        let found = resolve_identity(&vault, identity.as_deref()).await;
        vault.close().await;
        found?.name
    };
    let retry = Retry::from_options(args.retry_count, args.retry_delay, args.no_retry)?;
    let reach = Reach {
        identity: Some(holder.clone()),
        scope: None,
        route: api_route(home, &project).await?,
        authority: *project.authority_identifier(),
        timeout: args.timeout,
        retry,
    };
    // A redemption whose answer was lost (the channel or the connection ended, or no answer
    // came in time, once the request was sent) is tried again with the same ticket, within
    // the retry options: the authority recognizes the retry and spends no second use. A
    // refusal is an answer, and is never retried.
    let mut lost = 0;
    let enrolled = loop {
        let session = Session::open(home, out, &reach).await?;
        let answer = session
            .call(async |c| c.redeem_with(&ticket.code, args.replace).await)
            .await;
        match answer {
            Err(e) if answer_lost(&e) && lost < retry.count => {
                lost += 1;
                out.note(format!(
                    "the enrollment's answer was lost ({e}); retry {lost} of {} with the same ticket in {}",
                    retry.count,
                    DisplayDuration(retry.delay)
                ));
                tokio::time::sleep(retry.delay).await;
            }
            other => break other,
        }
    };
    let enrolled = enrolled.map_err(|e| match e {
        ClientError::Refused(api) => {
            let why = match api.kind {
                ErrorKind::TicketUnknown => "the authority knows no ticket with this code (was it created by another project's authority?)".to_owned(),
                ErrorKind::TicketExpired => "this ticket has expired; ask for a new one".to_owned(),
                ErrorKind::TicketRevoked => "this ticket was revoked".to_owned(),
                ErrorKind::TicketUsedUp => "this ticket has been used as many times as it allows".to_owned(),
                // "too many failed attempts; retry after Ns": wrong codes from this identity
                // or address are throttled; the message says how long to wait.
                ErrorKind::Throttled => api.message,
                _ => api.message,
            };
            anyhow::anyhow!("enrollment refused: {why}")
        }
        other => anyhow::Error::new(other).context("enrollment failed"),
    })?;
    let credential = kith_authority::client::decode_credential(&enrolled)
        .context("the authority sent a credential we cannot use")?;
    let vault = open_vault(home).await?;
    let stored = vault
        .store_credential(&holder, &project.authority, &credential, unix_now())
        .await;
    vault.close().await;
    let verified = stored?;
    save_project(home, &project)?;
    if let Some(node) = &args.node
        && let Err(e) = crate::commands::nodes::reload_credentials(home, node).await
    {
        out.note(format!(
            "warning: {e:#}; restart it to present the credential: kith node stop {node} && kith node start {node}"
        ));
    }
    let attrs = attribute_list(&verified.attributes, ", ");
    // The member's own attributes, without the project id the credential adds.
    let mut after = enrolled.attributes.clone();
    after.remove(api::PROJECT_ID_ATTRIBUTE);
    let membership = match &enrolled.before {
        Some(before) if before == &after => format!(
            "already a member; attributes unchanged: {{{}}}",
            attribute_list(before, ", ")
        ),
        Some(before) => format!(
            "already a member; attributes: {{{}}} -> {{{}}}",
            attribute_list(before, ", "),
            attribute_list(&after, ", ")
        ),
        None => format!("attributes: {{{}}}", attribute_list(&after, ", ")),
    };
    out.result(
        || {
            format!(
                "Enrolled identity {holder} in project {} ({membership}).\nCredential from {}: [{}], expires {}",
                project.name,
                verified.issuer,
                attrs,
                unix_time(verified.expires_at)
            )
        },
        &serde_json::json!({
            "identity": holder,
            "project": project.name,
            "project_id": project.id,
            "issuer": verified.issuer.to_string(),
            "attributes": verified.attributes,
            "before": enrolled.before,
            "retried": enrolled.retried,
            "expires_at": verified.expires_at,
        }),
    );
    Ok(())
}

/// Whether `e` means a redemption's request may have reached the authority but its answer
/// did not come back: the channel or connection ended, no answer came in time, or the
/// request could not be sent (then retrying is harmless too).
fn answer_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ChannelEnded { .. }
            | ClientError::Timeout { .. }
            | ClientError::Send { .. }
            | ClientError::Closed
    )
}

async fn member(home: &Home, out: &Output, cmd: MemberCommand) -> Result<()> {
    let member_line = |m: &api::MemberInfo| {
        let attrs = attribute_list(&m.attributes, ", ");
        format!("{}  [{}]  via {}", m.identifier, attrs, m.via)
    };
    match cmd {
        MemberCommand::List { access } => {
            let members = ask(home, out, &access, async |c| c.members().await).await?;
            out.result(
                || {
                    if members.is_empty() {
                        return "No members.".to_owned();
                    }
                    members
                        .iter()
                        .map(member_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                &members,
            );
        }
        MemberCommand::Show { identifier, access } => {
            let id: Identifier = parse_identifier(&identifier)?;
            let m = ask(home, out, &access, async |c| c.member(&id).await).await?;
            out.result(
                || {
                    format!(
                        "{}\nadded {} by {}",
                        member_line(&m),
                        unix_time(m.added_at),
                        m.added_by
                    )
                },
                &m,
            );
        }
        MemberCommand::Add {
            identifier,
            attributes,
            access,
        } => {
            let id = parse_identifier(&identifier)?;
            let m = ask(home, out, &access, async |c| {
                c.add_member(&id, attributes.into_iter().collect()).await
            })
            .await?;
            out.result(|| format!("Added {}", member_line(&m)), &m);
        }
        MemberCommand::Update {
            identifiers,
            attributes,
            remove,
            access,
        } => {
            if attributes.is_empty() && remove.is_empty() {
                bail!("nothing to change: give --attribute KEY=VALUE or --remove KEY");
            }
            let ids = identifiers
                .iter()
                .map(|i| parse_identifier(i))
                .collect::<Result<Vec<_>>>()?;
            let set: BTreeMap<String, String> = attributes.into_iter().collect();
            let changes = ask(home, out, &access, async |c| {
                let mut changes = Vec::with_capacity(ids.len());
                for id in &ids {
                    changes.push(c.update_member(id, set.clone(), remove.clone()).await?);
                }
                Ok(changes)
            })
            .await?;
            let line = |change: &api::MemberChange| {
                let (before, after) = (&change.before.attributes, &change.after.attributes);
                if before == after {
                    format!(
                        "Unchanged {}: {{{}}}",
                        change.after.identifier,
                        attribute_list(after, ", ")
                    )
                } else {
                    format!(
                        "Updated {}: {{{}}} -> {{{}}}",
                        change.after.identifier,
                        attribute_list(before, ", "),
                        attribute_list(after, ", ")
                    )
                }
            };
            match changes.as_slice() {
                [change] => out.result(|| line(change), change),
                _ => out.result(
                    || changes.iter().map(line).collect::<Vec<_>>().join("\n"),
                    &changes,
                ),
            }
        }
        MemberCommand::Delete { identifier, access } => {
            let id = parse_identifier(&identifier)?;
            let m = ask(home, out, &access, async |c| c.delete_member(&id).await).await?;
            out.result(|| format!("Deleted member {}", m.identifier), &m);
        }
    }
    Ok(())
}

fn parse_identifier(text: &str) -> Result<Identifier> {
    text.parse()
        .with_context(|| format!("{text:?} is not an identifier (I + 40 hex digits)"))
}
