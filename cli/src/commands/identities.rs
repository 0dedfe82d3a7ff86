//! `kith identity …`, and finding the identity a node or command runs as.

use anyhow::{Result, bail};
use kith_identity::vault::{IdentitySummary, StoredIdentity, Vault};

use kith_identity::unix_now;

use super::args::IdentityCommand;
use super::output::Output;
use crate::home::Home;
use crate::home::vault::open_vault;

fn summary_json(s: &IdentitySummary) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "identifier": s.identifier.to_string(),
        "default": s.is_default,
        "created_at": s.created_at,
    })
}

fn stored_json(s: &StoredIdentity, full: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": s.name,
        "identifier": s.identifier().to_string(),
        "default": s.is_default,
        "created_at": s.created_at,
        "key_changes": s.identity.change_count(),
    });
    if full {
        v["changes_hex"] = kith_identity::hex::encode(&s.identity.export()).into();
    }
    v
}

/// Node names that run as identity `name`.
fn nodes_using(home: &Home, name: &str, default_name: Option<&str>) -> Result<Vec<String>> {
    let mut users = Vec::new();
    for node in home.node_names()? {
        let config = home.load_node(&node)?;
        let runs_as = config.identity.as_deref().or(default_name);
        if runs_as == Some(name) {
            users.push(node);
        }
    }
    Ok(users)
}

/// Run an identity command.
pub async fn run(home: &Home, out: &Output, cmd: IdentityCommand) -> Result<()> {
    let vault = open_vault(home).await?;
    let result = run_with(home, out, &vault, cmd).await;
    vault.close().await;
    result
}

async fn run_with(home: &Home, out: &Output, vault: &Vault, cmd: IdentityCommand) -> Result<()> {
    match cmd {
        IdentityCommand::Create { name } => {
            let name = name
                .unwrap_or_else(|| format!("identity-{:06x}", rand::random::<u32>() & 0xff_ffff));
            let s = vault.create_identity(&name, unix_now()).await?;
            out.result(
                || {
                    format!(
                        "Created identity {} ({}){}",
                        s.name,
                        s.identifier(),
                        if s.is_default { ", the default" } else { "" }
                    )
                },
                &stored_json(&s, false),
            );
        }
        IdentityCommand::List => {
            let all = vault.list().await?;
            let json: Vec<_> = all.iter().map(summary_json).collect();
            out.result(
                || {
                    if all.is_empty() {
                        return "No identities. Create one with `kith identity create NAME`."
                            .to_owned();
                    }
                    let mut s = format!("{:<24} {:<42} {}", "NAME", "IDENTIFIER", "DEFAULT");
                    for i in &all {
                        s.push_str(&format!(
                            "\n{:<24} {:<42} {}",
                            i.name,
                            i.identifier.to_string(),
                            if i.is_default { "yes" } else { "" }
                        ));
                    }
                    s
                },
                &json,
            );
        }
        IdentityCommand::Show { name, full } => {
            let s = match name {
                Some(n) => vault.identity(&n).await?,
                None => match vault.default_identity().await? {
                    Some(s) => s,
                    None => bail!(
                        "there is no default identity; create one with `kith identity create NAME`"
                    ),
                },
            };
            let json = stored_json(&s, full);
            out.result(
                || {
                    let mut t = format!(
                        "Identity {}\n  identifier:  {}\n  default:     {}\n  key changes: {}",
                        s.name,
                        s.identifier(),
                        if s.is_default { "yes" } else { "no" },
                        s.identity.change_count()
                    );
                    if let Some(hex) = json["changes_hex"].as_str() {
                        t.push_str(&format!("\n  changes:     {hex}"));
                    }
                    t
                },
                &json,
            );
        }
        IdentityCommand::Default { name: Some(name) } => {
            vault.set_default(&name).await?;
            out.result(
                || format!("{name} is now the default identity."),
                &serde_json::json!({ "default": name }),
            );
        }
        IdentityCommand::Default { name: None } => match vault.default_identity().await? {
            Some(s) => out.result(|| s.name.clone(), &stored_json(&s, false)),
            None => {
                bail!("there is no default identity; create one with `kith identity create NAME`")
            }
        },
        IdentityCommand::Delete { name } => {
            vault.identity(&name).await?;
            let default_name = vault.default_identity().await?.map(|d| d.name);
            let users = nodes_using(home, &name, default_name.as_deref())?;
            if !users.is_empty() {
                bail!(
                    "identity {name:?} is used by node(s) {}; delete them first (`kith node delete NAME`)",
                    users.join(", ")
                );
            }
            let promoted = vault.delete_identity(&name).await?.map(|p| p.name);
            out.result(
                || match &promoted {
                    Some(p) => format!("Deleted identity {name}; {p} is now the default."),
                    None => format!("Deleted identity {name}."),
                },
                &serde_json::json!({ "deleted": name, "new_default": promoted }),
            );
        }
    }
    Ok(())
}
