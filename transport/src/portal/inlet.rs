//! The inlet: a TCP listener whose every connection becomes a portal session to an outlet.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kith_node::{IncomingAccessControl, Message, Node, Route};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::session::{self, End, window_ok};
use super::{PortalMessage, PortalOptions, PortalStats};

/// What [`Connector::connect`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = Result<PortalRoute, String>> + Send + 'a>>;

/// Finds the way to the outlet for one new session: typically opens secure channels along
/// the inlet's route and checks who answered.
pub trait Connector: Send + Sync + 'static {
    /// A route to the outlet for one session, or why there is none (for the log).
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
}

/// A running inlet.
#[derive(Clone)]
pub struct Inlet {
    bound: SocketAddr,
    stats: Arc<PortalStats>,
    stop: CancellationToken,
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
        let label = format!("inlet {}", self.bound);
        let deadline = Instant::now() + options.open_timeout;
        let opened = tokio::select! {
            () = self.stop.cancelled() => Err("the inlet was deleted".to_owned()),
            r = tokio::time::timeout_at(deadline, open(&node, &*connector, &options)) => match r {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no session with the outlet within {:?}; is its route up?",
                    options.open_timeout
                )),
            },
        };
        let (route, mailbox, peer, peer_window) = match opened {
            Ok(o) => o,
            Err(reason) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!(portal = %label, client = %from, %reason, "cannot carry a connection");
                session::abort(&stream);
                return;
            }
        };
        debug!(portal = %label, client = %from, "portal session opened");
        session::run(End {
            node,
            mailbox,
            peer,
            peer_window,
            stream,
            options,
            stats: self.stats.clone(),
            stop: self.stop.clone(),
            local_peer: Some(from),
            label,
        })
        .await;
        // The channels the session ran through go only now.
        drop(route.guard);
    }
}

/// Reach the outlet and have it open a session: the route (kept for its guard), our
/// mailbox, the outlet session's route and the window it grants.
async fn open(
    node: &Node,
    connector: &dyn Connector,
    options: &PortalOptions,
) -> Result<(PortalRoute, kith_node::Mailbox, Route, u32), String> {
    let route = connector.connect().await?;
    let mut mailbox = node
        .register_mailbox(
            [kith_node::Address::random_local("portal-in")],
            route.replies.clone(),
        )
        .map_err(|e| e.to_string())?;
    let open = Message::new(
        route.route.clone(),
        Route::from(mailbox.address().clone()),
        PortalMessage::Open {
            window: options.window,
        }
        .encode(),
    );
    node.route(open)
        .await
        .map_err(|e| format!("cannot reach the outlet: {e}"))?;
    let answer = mailbox
        .recv()
        .await
        .ok_or_else(|| "the node is stopping".to_owned())?;
    match answer.undeliverable() {
        None => {}
        Some(Ok(error)) => return Err(format!("cannot reach the outlet: {error}")),
        Some(Err(e)) => {
            return Err(format!(
                "cannot reach the outlet (the error message about it was malformed: {e})"
            ));
        }
    }
    match PortalMessage::decode(&answer.payload) {
        Ok(PortalMessage::Opened { window }) if window_ok(window) => {
            Ok((route, mailbox, answer.return_route, window))
        }
        Ok(PortalMessage::Opened { window }) => {
            Err(format!("the outlet granted an invalid window ({window})"))
        }
        Ok(PortalMessage::Refused { reason }) => Err(format!("the outlet refused: {reason}")),
        Ok(_) => Err("the outlet answered out of turn".to_owned()),
        Err(e) => Err(format!("the outlet's answer is invalid: {e}")),
    }
}
