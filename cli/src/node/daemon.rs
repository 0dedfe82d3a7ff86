//! Running a node as a daemon: the control socket, the pid file, restoring what the node
//! keeps, renewing its credentials, until Ctrl-C, SIGTERM or a `stop` request; then an
//! orderly shutdown.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::kept::Saved;
use super::running::RunningNode;
use super::settings::{NodeIdentity, services_policy};
use super::{authority, refresh, revocations, server};
use crate::control::{self, Request};
use crate::home::{Home, write_private_atomic};

/// What a daemon prints on stdout once it is serving: the spawning command waits for it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ready {
    /// Node name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Bound TCP listener address.
    pub listener: String,
    /// The node's identifier.
    #[serde(default)]
    pub identifier: String,
}

/// Run node `name` from `home` until it is told to stop. `on_ready` is called once it serves.
pub async fn run(home: &Home, name: &str, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let mut config = home.load_node(name)?;
    let socket = home.socket_path(name);
    if control::call(&socket, &Request::Status, control::STATUS_TIMEOUT)
        .await
        .is_ok()
    {
        bail!("node {name:?} is already running");
    }
    // A socket file left by a node that died is stale: nobody answers on it.
    let _ = std::fs::remove_file(&socket);

    let (identity, identity_name) = NodeIdentity::from_vault(
        home,
        config.identity.clone(),
        &config.admission,
        config.authority.is_some(),
    )
    .await?;
    if config.identity.as_deref() != Some(identity_name.as_str()) {
        // Keep the identity the node first ran as, even if the default changes later.
        config.identity = Some(identity_name.clone());
        home.save_node(&config)?;
    }
    let services = services_policy(&config.admission)?;
    let running = RunningNode::assemble(
        name,
        Some(&config.tcp_listener_address),
        identity,
        services,
        Some(Saved::new(home.clone(), name)),
    )
    .await?;
    let revocations = running.settings().map(|s| s.trust.revocations.clone());
    let authority = match &config.authority {
        Some(a) => {
            match authority::start_services(home, &running.node, &config, a, revocations).await {
                Ok(held) => Some(held),
                Err(e) => {
                    running.node.shutdown().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let listener = running.listener.clone().unwrap_or_default();
    let mut changed = false;
    if config.tcp_listener_address.ends_with(":0") {
        // Keep the port we were given, so the node's address survives restarts.
        config.tcp_listener_address = listener.clone();
        changed = true;
    }
    if let Some(a) = config.authority.as_mut().filter(|a| a.create_store) {
        // The store exists now, stamped: later starts must open it, never create one.
        a.create_store = false;
        changed = true;
    }
    if changed {
        home.save_node(&config)?;
    }
    let control = UnixListener::bind(&socket)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;
    write_private_atomic(
        &home.pid_path(name),
        std::process::id().to_string().as_bytes(),
    )?;
    info!(node = name, %listener, identity = %identity_name, pid = std::process::id(), "node started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let identifier = running
        .settings()
        .map(|c| c.local.identity.identifier().to_string())
        .unwrap_or_default();
    on_ready(&Ready {
        name: name.to_owned(),
        pid: std::process::id(),
        listener,
        identifier,
    });

    let running = Arc::new(running);
    running.relays.restore(&config.relays).await;
    running
        .portals
        .restore(&config.outlets, &config.inlets)
        .await;
    let refresher = tokio::spawn(refresh::run(home.clone(), identity_name, running.clone()));
    let follower = tokio::spawn(revocations::run(
        home.clone(),
        name.to_owned(),
        running.clone(),
        config.admission.revocation_grace,
    ));
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("interrupted"); break; }
            _ = sigterm.recv() => { info!("terminated"); break; }
            _ = stop_rx.recv() => { info!("stop requested"); break; }
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    // Reap finished sessions so the set holds only live ones.
                    while sessions.try_join_next().is_some() {}
                    sessions.spawn(server::serve(stream, running.clone(), stop_tx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause as the TCP listener does,
                    // instead of spinning on an error that lasts until something closes.
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(kith_transport::ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(control);
    refresher.abort();
    follower.abort();
    running.node.shutdown().await;
    if let Some((store, vault)) = authority {
        store.close().await;
        vault.close().await;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(home.pid_path(name));
    info!(node = name, "node stopped");
    // Dropping the sessions closes their connections; a waiting `kith node stop` then sees
    // the end of its stream and knows the shutdown is complete.
    sessions.shutdown().await;
    Ok(())
}
