//! Running a node as a daemon: the control socket, the pid file, restoring what the node
//! keeps, renewing its credentials, until Ctrl-C, SIGTERM or a `stop` request; then an
//! orderly shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kith_node::LOG_LIMITER;
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

/// 1 s: the least time between two sweeps of the warnings counted and not logged, whatever
/// the limiter's interval (a zero interval would otherwise make the sweep spin).
const MIN_LOG_SWEEP: Duration = Duration::from_secs(1);

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
    /// Where it serves metrics, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// What stopped a node that ran to a clean end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Ctrl-C (SIGINT): a foreground node's command exits 130, as an interrupted one does.
    Interrupted,
    /// SIGTERM, as service managers stop nodes.
    Terminated,
    /// `kith node stop` (a stop request on the control socket).
    Requested,
}

/// Run node `name` from `home` until it is told to stop. `on_ready` is called once it serves.
pub async fn run(home: &Home, name: &str, on_ready: impl FnOnce(&Ready)) -> Result<Stopped> {
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
    raise_open_file_limit(config.admission.limits.tcp_options().max_connections);
    // An authority node listens only once its services are up: a client that reached it
    // earlier would be told it has no enrollment service, which is not a refusal to retry.
    let listen_now = config
        .authority
        .is_none()
        .then_some(config.tcp_listener_address.as_str());
    let mut running = RunningNode::assemble(
        name,
        listen_now,
        identity,
        services,
        Some(Saved::new(home.clone(), name)),
        &config.admission.limits,
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
    if listen_now.is_none()
        && let Err(e) = running.listen(&config.tcp_listener_address).await
    {
        running.node.shutdown().await;
        return Err(e);
    }
    let listener = running.listener.clone().unwrap_or_default();
    let mut changed = false;
    if config.tcp_listener_address.ends_with(":0") {
        // Keep the port we were given, so the node's address survives restarts.
        config.tcp_listener_address = listener.clone();
        changed = true;
    }
    let metrics = match &config.metrics_address {
        None => None,
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(l) => Some(l),
            Err(e) => {
                running.node.shutdown().await;
                return Err(
                    anyhow::Error::new(e).context(format!("cannot serve metrics on {address}"))
                );
            }
        },
    };
    if let Some(l) = &metrics {
        let bound = l.local_addr()?.to_string();
        if config
            .metrics_address
            .as_deref()
            .is_some_and(|a| a.ends_with(":0"))
        {
            config.metrics_address = Some(bound.clone());
            changed = true;
        }
        running.metrics = Some(bound);
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
        metrics: running.metrics.clone(),
    });

    let running = Arc::new(running);
    if let Some(l) = metrics {
        let store = authority.as_ref().map(|(store, _)| store.clone());
        tokio::spawn(super::metrics::serve(l, running.clone(), store));
    }
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
    // Warnings a flood made repeat are counted, not logged (kith_node::LOG_LIMITER); a burst
    // that then stops gets its count logged by the next sweep.
    let mut sweep = tokio::time::interval(LOG_LIMITER.interval().max(MIN_LOG_SWEEP));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("interrupted"); break Stopped::Interrupted; }
            _ = sigterm.recv() => { info!("terminated"); break Stopped::Terminated; }
            _ = stop_rx.recv() => { info!("stop requested"); break Stopped::Requested; }
            _ = sweep.tick() => LOG_LIMITER.sweep(),
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
    };
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
    // What was counted and not yet logged, before the last line.
    LOG_LIMITER.flush();
    info!(node = name, "node stopped");
    // Dropping the sessions closes their connections; a waiting `kith node stop` then sees
    // the end of its stream and knows the shutdown is complete.
    sessions.shutdown().await;
    Ok(stopped)
}

/// 1,024: open files a node keeps for itself beyond its incoming connections (its store,
/// its log, outgoing connections, portal sockets).
const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// Raise the soft limit on open files toward what `connections` incoming connections
/// need, up to the hard limit (which needs no privilege). Many systems start processes at
/// 1,024, and a node that runs out refuses everyone with "accept failed" instead of
/// shedding the heaviest source. Logs what it could not get.
fn raise_open_file_limit(connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(FILES_BESIDES_CONNECTIONS);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() || target < wanted {
        warn!(
            soft,
            hard,
            wanted,
            "the open-file limit is below what the connection cap needs; raise `ulimit -Hn` or lower --limit connections"
        );
    }
}
