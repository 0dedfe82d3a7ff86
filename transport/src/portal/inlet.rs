//! The inlet: a TCP listener whose every connection becomes a portal session to an outlet.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kith_node::{ErrorClass, IncomingAccessControl, Message, Node, Route, SinkHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inbox::Inbox;
use super::session::{self, End, window_ok};
use super::{PortalMessage, PortalOptions, PortalStats};

/// What [`Connector::connect`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<PortalRoute, Refusal>> + Send + 'a>>;

/// Why a session could not be opened: a short class an inlet counts its refusals by
/// (`denied`, `no-trusted-credential`, `unknown-address`, `outlet-refused`, `timeout`, …)
/// and the reason in full, for the log and `tcp-inlet show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The class.
    pub class: &'static str,
    /// Why, in full.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `class`, for `reason`.
    pub fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Finds the way to the outlet for one new session: typically opens secure channels along
/// the inlet's route and checks who answered.
pub trait Connector: Send + Sync + 'static {
    /// A route to the outlet for one session, or why there is none.
    fn connect(&self) -> ConnectFuture<'_>;
}

/// The way to an outlet for one session.
pub struct PortalRoute {
    /// The route to the outlet service.
    pub route: Route,
    /// Who may answer: applied to every message the session receives (the channel the
    /// route runs through, say).
    pub replies: Arc<dyn IncomingAccessControl>,
    /// Held for as long as the session lives, then dropped: the channels to close, say.
    pub guard: Box<dyn Any + Send>,
    /// Finishes, saying why, when what the route runs through has ended (the secure
    /// channel closed, or its peer's credential was revoked): the session then ends at
    /// once, and resets its connection, instead of waiting for a message to fail.
    pub ended: Option<RouteEnded>,
}

/// What tells a session that its route has ended, and why.
pub type RouteEnded = Pin<Box<dyn Future<Output = String> + Send>>;

/// A running inlet.
#[derive(Clone)]
pub struct Inlet {
    bound: SocketAddr,
    stats: Arc<PortalStats>,
    stop: CancellationToken,
    /// Cancelled once the listening socket is closed, so its port is free again.
    closed: CancellationToken,
}

impl Inlet {
    /// Listen on `bind` (`host:port`; port 0 picks one) and carry every accepted connection
    /// to the outlet that `connector` finds.
    pub async fn start(
        node: &Node,
        bind: &str,
        connector: Arc<dyn Connector>,
        options: PortalOptions,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let bound = listener.local_addr()?;
        let stop = node.shutdown_token().child_token();
        let inlet = Self {
            bound,
            stats: Arc::new(PortalStats::default()),
            stop: stop.clone(),
            closed: CancellationToken::new(),
        };
        let this = inlet.clone();
        let task_node = node.clone();
        let permits = Arc::new(Semaphore::new(options.max_sessions));
        node.spawn_listener(async move {
            info!(inlet = %bound, "inlet listening");
            loop {
                let permit = tokio::select! {
                    () = this.stop.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let accepted = tokio::select! {
                    () = this.stop.cancelled() => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, from)) => {
                        let this = this.clone();
                        let node = task_node.clone();
                        let connector = connector.clone();
                        let options = options.clone();
                        task_node.spawn(async move {
                            this.carry(node, stream, from, connector, options).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        warn!(inlet = %bound, error = %e, "accepting a connection failed");
                        // Out of descriptors, say: give the system a moment.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            drop(listener);
            this.closed.cancel();
            info!(inlet = %bound, "inlet stopped");
        });
        Ok(inlet)
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.bound
    }

    /// Its counters.
    pub fn stats(&self) -> &PortalStats {
        &self.stats
    }

    /// Stop listening and close the open sessions.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Wait until the inlet no longer listens (after [`Inlet::stop`]): its port is free,
    /// so a new inlet can take it at once.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// One accepted connection: reach the outlet, open, run the session.
    async fn carry(
        self,
        node: Node,
        stream: TcpStream,
        from: SocketAddr,
        connector: Arc<dyn Connector>,
        options: PortalOptions,
    ) {
        let _ = stream.set_nodelay(true);
        let stream = Arc::new(stream);
        let label = format!("inlet {}", self.bound);
        let deadline = Instant::now() + options.open_timeout;
        let opened = tokio::select! {
            () = self.stop.cancelled() => Err(Refusal::new("deleted", "the inlet was deleted")),
            r = tokio::time::timeout_at(deadline, open(&node, &*connector, &stream, &options, &self.stats)) => match r {
                Ok(r) => r,
                Err(_) => Err(Refusal::new("timeout", format!(
                    "no session with the outlet within {:?}; is its route up?",
                    options.open_timeout
                ))),
            },
        };
        let (mut route, (handle, inbox), peer, peer_window) = match opened {
            Ok(o) => o,
            Err(refusal) => {
                self.stats.refuse(&refusal, unix_now());
                warn!(portal = %label, client = %from, class = refusal.class, reason = %refusal.reason, "cannot carry a connection");
                session::abort(&stream);
                return;
            }
        };
        debug!(portal = %label, client = %from, "portal session opened");
        session::run(End {
            node,
            handle,
            inbox,
            peer,
            peer_window,
            stream,
            options,
            stats: self.stats.clone(),
            stop: self.stop.clone(),
            route_ended: route.ended.take(),
            local_peer: Some(from),
            label,
        })
        .await;
        // The channels the session ran through go only now.
        drop(route.guard);
    }
}

/// Now, in Unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reach the outlet and have it open a session: the route (kept for its guard), our
/// session's address and inbox, the outlet session's route and the window it grants.
async fn open(
    node: &Node,
    connector: &dyn Connector,
    stream: &Arc<TcpStream>,
    options: &PortalOptions,
    stats: &Arc<PortalStats>,
) -> Result<(PortalRoute, (SinkHandle, Arc<Inbox>), Route, u32), Refusal> {
    let route = connector.connect().await?;
    let inbox = Arc::new(Inbox::new(stream.clone(), options.window, stats.clone()));
    let handle = node
        .register_sink(
            [kith_node::Address::random_local("portal-in")],
            route.replies.clone(),
            inbox.clone(),
        )
        .map_err(|e| Refusal::new("stopping", e.to_string()))?;
    let open = Message::new(
        route.route.clone(),
        Route::from(handle.address().clone()),
        PortalMessage::Open {
            window: options.window,
        }
        .encode(),
    );
    node.route(open).await.map_err(|e| {
        let class = e.class().map_or("unreachable", ErrorClass::name);
        Refusal::new(class, format!("cannot reach the outlet: {e}"))
    })?;
    let answer = inbox
        .recv()
        .await
        .ok_or_else(|| Refusal::new("stopping", "the node is stopping"))?;
    match answer.undeliverable() {
        None => {}
        Some(Ok(error)) => {
            return Err(Refusal::new(
                error.class.name(),
                format!("cannot reach the outlet: {error}"),
            ));
        }
        Some(Err(e)) => {
            return Err(Refusal::new(
                "invalid-answer",
                format!("cannot reach the outlet (the error message about it was malformed: {e})"),
            ));
        }
    }
    let invalid = |reason: String| Refusal::new("invalid-answer", reason);
    match PortalMessage::decode(&answer.payload) {
        Ok(PortalMessage::Opened { window }) if window_ok(window) => {
            Ok((route, (handle, inbox), answer.return_route, window))
        }
        Ok(PortalMessage::Opened { window }) => Err(invalid(format!(
            "the outlet granted an invalid window ({window})"
        ))),
        Ok(PortalMessage::Refused { reason }) => Err(Refusal::new(
            "outlet-refused",
            format!("the outlet refused: {reason}"),
        )),
        Ok(_) => Err(invalid("the outlet answered out of turn".to_owned())),
        Err(e) => Err(invalid(format!("the outlet's answer is invalid: {e}"))),
    }
}
