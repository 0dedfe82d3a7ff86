//! `kith credential …`: credentials an identity holds, and issuing or checking one by hand.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use kith_identity::vault::{StoredCredential, Vault};
use kith_identity::{CredentialAndPurposeKey, Identifier, VerifiedCredential};

use kith_identity::unix_now;

use super::args::{CredentialCommand, HolderArgs};
use super::output::{Output, attribute_list};
use crate::home::Home;
use crate::home::vault::{from_hex, identity_arg, open_vault, resolve_identity};

/// The vault name of the identity a `--identity` / `--node` pair points at.
pub async fn holder_name(home: &Home, vault: &Vault, holder: &HolderArgs) -> Result<String> {
    let name = match (&holder.identity, &holder.node) {
        (Some(identity), _) => Some(identity.clone()),
        (None, Some(node)) => home.load_node(node)?.identity,
        (None, None) => None,
    };
    Ok(resolve_identity(vault, name.as_deref()).await?.name)
}

fn status(stored: &StoredCredential, now: u64) -> (String, Option<VerifiedCredential>) {
    match stored.verify(now) {
        Ok(v) => (
            format!(
                "valid, expires in {}",
                crate::duration::RoundedDuration(v.expires_at - now)
            ),
            Some(v),
        ),
        Err(e) => (format!("invalid: {e}"), None),
    }
}

fn credential_json(c: &CredentialAndPurposeKey, issuer: &Identifier) -> serde_json::Value {
    let cred = &c.credential;
    serde_json::json!({
        "issuer": issuer.to_string(),
        "subject": cred.subject().to_string(),
        "attributes": cred.attributes(),
        "created_at": cred.created_at(),
        "expires_at": cred.expires_at(),
    })
}

fn describe(c: &CredentialAndPurposeKey, issuer: &Identifier) -> String {
    let cred = &c.credential;
    let mut s = format!(
        "Issuer:     {issuer}\nSubject:    {}\nCreated:    {}\nExpires:    {}\nAttributes:",
        cred.subject(),
        crate::duration::unix_time(cred.created_at()),
        crate::duration::unix_time(cred.expires_at()),
    );
    if cred.attributes().is_empty() {
        s.push_str(" (none)");
    }
    for (k, v) in cred.attributes() {
        s.push_str(&format!("\n  {k} = {v}"));
    }
    s
}

/// Run a credential command.
pub async fn run(home: &Home, out: &Output, cmd: CredentialCommand) -> Result<()> {
    let vault = open_vault(home).await?;
    let result = run_with(home, out, &vault, cmd).await;
    vault.close().await;
    result
}

async fn run_with(home: &Home, out: &Output, vault: &Vault, cmd: CredentialCommand) -> Result<()> {
    let now = unix_now();
    match cmd {
        CredentialCommand::List { holder } => {
            let name = holder_name(home, vault, &holder).await?;
            let held = vault.credentials(&name).await?;
            let rows: Vec<_> = held
                .iter()
                .map(|c| {
                    let (status, verified) = status(c, now);
                    let mut j = credential_json(&c.credential, c.issuer.identifier());
                    j["valid"] = verified.is_some().into();
                    j["status"] = status.into();
                    j
                })
                .collect();
            out.result(
                || {
                    if held.is_empty() {
                        return format!(
                            "Identity {name} holds no credentials. Enroll it in a project, or store one with `kith credential store`."
                        );
                    }
                    let mut s = format!("Credentials of identity {name}:");
                    for (c, row) in held.iter().zip(&rows) {
                        let attrs = attribute_list(c.credential.credential.attributes(), ", ");
                        s.push_str(&format!(
                            "\n  from {}  [{}]  {}",
                            c.issuer.identifier(),
                            attrs,
                            row["status"].as_str().unwrap_or_default()
                        ));
                    }
                    s
                },
                &serde_json::json!({ "identity": name, "credentials": rows }),
            );
        }
        CredentialCommand::Show {
            holder,
            issuer,
            encoded,
        } => {
            let name = holder_name(home, vault, &holder).await?;
            let held = vault.credentials(&name).await?;
            let chosen: Vec<&StoredCredential> = held
                .iter()
                .filter(|c| {
                    issuer
                        .as_deref()
                        .is_none_or(|i| c.issuer.identifier().to_string() == i)
                })
                .collect();
            let stored = match chosen.as_slice() {
                [one] => *one,
                [] if issuer.is_some() => bail!(
                    "identity {name} holds no credential from {}; `kith credential list` shows the ones it holds",
                    issuer.unwrap_or_default()
                ),
                [] => bail!(
                    "identity {name} holds no credentials; enroll it in a project first (`kith project enroll`)"
                ),
                _ => bail!(
                    "identity {name} holds credentials from {} issuers; choose one with --issuer I…",
                    chosen.len()
                ),
            };
            let (status, verified) = status(stored, now);
            let hex = kith_identity::hex::encode(&stored.credential.encode());
            let mut j = credential_json(&stored.credential, stored.issuer.identifier());
            j["identity"] = name.clone().into();
            j["valid"] = verified.is_some().into();
            j["status"] = status.clone().into();
            j["encoded"] = hex.clone().into();
            out.result(
                || {
                    if encoded {
                        return hex.clone();
                    }
                    format!(
                        "{}\nStatus:     {status}",
                        describe(&stored.credential, stored.issuer.identifier())
                    )
                },
                &j,
            );
        }
        CredentialCommand::Verify {
            holder,
            credential,
            issuer,
        } => match credential {
            Some(credential) => {
                let Some(issuer) = issuer else {
                    bail!("--credential needs --issuer: the identity that issued it");
                };
                let issuer = identity_arg(vault, &issuer).await?;
                let c = decode_credential(&credential)?;
                let subject = *c.credential.subject();
                let v = c
                    .verify(&subject, std::slice::from_ref(&issuer), now)
                    .context("the credential does not verify")?;
                out.result(
                    || format!("{}\nStatus:     valid", describe(&c, &v.issuer)),
                    &{
                        let mut j = credential_json(&c, &v.issuer);
                        j["valid"] = true.into();
                        j
                    },
                );
            }
            None => {
                let name = holder_name(home, vault, &holder).await?;
                let held = vault.credentials(&name).await?;
                if held.is_empty() {
                    bail!("identity {name} holds no credentials to verify");
                }
                let mut rows = Vec::new();
                let mut bad = 0;
                for c in &held {
                    let (status, verified) = status(c, now);
                    if verified.is_none() {
                        bad += 1;
                    }
                    let mut j = credential_json(&c.credential, c.issuer.identifier());
                    j["valid"] = verified.is_some().into();
                    j["status"] = status.into();
                    rows.push(j);
                }
                out.result(
                    || {
                        rows.iter()
                            .map(|r| {
                                format!(
                                    "from {}: {}",
                                    r["issuer"].as_str().unwrap_or_default(),
                                    r["status"].as_str().unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                    &serde_json::json!({ "identity": name, "credentials": rows }),
                );
                if bad > 0 {
                    bail!(
                        "{bad} of identity {name}'s {} credentials do not verify",
                        held.len()
                    );
                }
            }
        },
        CredentialCommand::Issue {
            as_identity,
            subject,
            attributes,
            ttl,
        } => {
            let issuer = resolve_identity(vault, as_identity.as_deref()).await?;
            let subject: Identifier = subject.parse().with_context(|| {
                format!("--for {subject:?} is not an identifier (I + 40 hex digits)")
            })?;
            let expires_at = now.saturating_add(ttl.as_secs());
            let key = vault
                .credential_signing_key_until(&issuer.name, now, expires_at)
                .await?;
            let attributes: BTreeMap<String, String> = attributes.into_iter().collect();
            let c = CredentialAndPurposeKey::issue(&key, &subject, attributes, now, expires_at)?;
            let hex = kith_identity::hex::encode(&c.encode());
            let mut j = credential_json(&c, issuer.identifier());
            j["encoded"] = hex.clone().into();
            out.result(|| hex.clone(), &j);
        }
        CredentialCommand::Store {
            holder,
            issuer,
            credential,
        } => {
            let name = holder_name(home, vault, &holder).await?;
            let issuer = identity_arg(vault, &issuer).await?;
            let c = decode_credential(&credential)?;
            let v = vault.store_credential(&name, &issuer, &c, now).await?;
            out.result(
                || format!("Stored for identity {name}:\n{}", describe(&c, &v.issuer)),
                &{
                    let mut j = credential_json(&c, &v.issuer);
                    j["identity"] = name.clone().into();
                    j
                },
            );
        }
    }
    Ok(())
}

/// A credential from the command line: hex, or `@FILE` holding hex.
fn decode_credential(arg: &str) -> Result<CredentialAndPurposeKey> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the credential file {path}"))?,
        None => arg.to_owned(),
    };
    let bytes = from_hex(&text, "the credential")?;
    CredentialAndPurposeKey::decode(&bytes).context("the credential does not decode")
}
