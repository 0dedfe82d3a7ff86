//! `kith authority create`, and running a node's authority services.

use anyhow::{Context as _, Result};
use kith_authority::project::{self, Project};
use kith_identity::{Identifier, unix_now};

use super::args::CreateAuthority;
use super::nodes::{spawn_daemon, stop_and_delete};
use super::output::Output;
use crate::home::projects::{listener_route, save_project};
use crate::home::validate_listener;
use crate::home::vault::{open_vault, resolve_identity};
use crate::home::{AuthorityNodeConfig, Home, NodeConfig};

/// `kith authority create`
pub async fn create(home: &Home, out: &Output, args: CreateAuthority) -> Result<()> {
    crate::home::validate_node_name(&args.name)?;
    validate_listener(&args.tcp_listener_address)?;
    if let Some(m) = &args.metrics_address {
        validate_listener(m).context("--metrics-address")?;
    }
    home.ensure_no_node(&args.name)?;
    project::check_name(&args.project).context("--project")?;
    let limits = crate::limits::LimitsConfig::parse_all(&args.limits)?;
    if args.credential_ttl.as_secs() == 0 || args.request_ttl.as_secs() == 0 {
        anyhow::bail!("--credential-ttl and --request-ttl must be at least 1s");
    }
    if home.project_path(&args.project).is_file() {
        anyhow::bail!(
            "a project named {:?} is already known here; choose another --project name",
            args.project
        );
    }
    let project_id = match &args.project_id {
        Some(id) => {
            project::check_id(id).context("--project-id")?;
            id.clone()
        }
        None => Project::new_id(),
    };
    let mut admins = Vec::new();
    for a in &args.admins {
        let id: Identifier = a
            .parse()
            .with_context(|| format!("--admin {a:?} is not an identifier (I + 40 hex digits)"))?;
        admins.push(id.to_string());
    }

    // The creator (the default identity) is the admin unless --admin says otherwise; it is
    // settled before the authority's own identity, so that one never becomes the default.
    let vault = open_vault(home).await?;
    let settled = async {
        let creator = resolve_identity(&vault, None).await?;
        let name = args.identity.clone().unwrap_or_else(|| args.name.clone());
        let authority = match vault.identity(&name).await {
            Ok(found) => found,
            Err(kith_identity::vault::VaultError::NotFound { .. }) if args.identity.is_none() => {
                vault.create_identity(&name, unix_now()).await?
            }
            Err(e) => return Err(e.into()),
        };
        anyhow::Ok((creator, authority))
    }
    .await;
    vault.close().await;
    let (creator, authority) = settled?;
    if admins.is_empty() {
        admins.push(creator.identifier().to_string());
    }

    let config = NodeConfig {
        name: args.name.clone(),
        tcp_listener_address: args.tcp_listener_address.clone(),
        metrics_address: args.metrics_address.clone(),
        created_at: unix_now(),
        identity: Some(authority.name.clone()),
        admission: crate::home::AdmissionConfig {
            limits,
            ..Default::default()
        },
        authority: Some(AuthorityNodeConfig {
            project: args.project.clone(),
            project_id: project_id.clone(),
            admins: admins.clone(),
            database_url: args.database_url.clone(),
            credential_ttl: args.credential_ttl.as_secs(),
            request_ttl: args.request_ttl.as_secs(),
            max_pending_per_address: args.max_pending_per_address,
            max_pending: args.max_pending_requests,
            // A new project's store is created by the daemon's first start; with
            // --project-id, this authority joins the project whose store is already there.
            create_store: args.project_id.is_none(),
        }),
        relays: Vec::new(),
        outlets: Vec::new(),
        inlets: Vec::new(),
    };
    home.create_node(&config)?;
    let spinner = out.spinner(format!("starting authority node {}", args.name));
    let ready = if args.foreground {
        Err(anyhow::anyhow!(
            "--foreground: create the authority first, then `kith node start {} --foreground`",
            args.name
        ))
    } else {
        spawn_daemon(home, &args.name).await
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            let _ = home.delete_node(&args.name);
            return Err(e);
        }
    };
    let route = listener_route(&ready.listener)?;
    let project = Project {
        name: args.project.clone(),
        id: project_id,
        authority: authority.identity.clone(),
        authority_route: route.clone(),
        project_route: route,
        project_identifier: *authority.identifier(),
    };
    if let Err(e) = save_project(home, &project) {
        let _ = stop_and_delete(home, &args.name).await;
        return Err(e);
    }
    out.result(
        || {
            format!(
                "Created project {} (id {}).\nIts authority, node {}, runs as {} at {} (pid {}).\nAdmins: {}\nNext: kith project ticket -a component=db > ticket.txt",
                project.name,
                project.id,
                args.name,
                authority.identifier(),
                project.authority_route,
                ready.pid,
                admins.join(", ")
            )
        },
        &serde_json::json!({
            "project": project.name,
            "project_id": project.id,
            "node": args.name,
            "authority_identifier": authority.identifier().to_string(),
            "authority_route": project.authority_route.to_string(),
            "admins": admins,
            "pid": ready.pid,
            "listener": ready.listener,
        }),
    );
    Ok(())
}
