//! What a worker (or a client outside any worker) uses to talk to the node.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::{Address, Mailbox, Message, Node, RequestError, Route, RouteError, StartError, Worker};

/// A worker's view of its node: send, forward, start and stop workers.
pub struct Context {
    node: Node,
    address: Address,
    stop: CancellationToken,
}

impl Context {
    pub(crate) fn new(node: Node, address: Address, stop: CancellationToken) -> Self {
        Self {
            node,
            address,
            stop,
        }
    }

    /// The worker's primary address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Send `payload` along `route`, with this worker as the return route.
    pub async fn send(
        &self,
        route: impl Into<Route>,
        payload: impl Into<Bytes>,
    ) -> Result<(), RouteError> {
        let message = Message::new(route.into(), Route::from(self.address.clone()), payload);
        self.node.route(message).await
    }

    /// Send with an explicit return route.
    pub async fn send_with_return(
        &self,
        route: impl Into<Route>,
        return_route: impl Into<Route>,
        payload: impl Into<Bytes>,
    ) -> Result<(), RouteError> {
        let message = Message::new(route.into(), return_route.into(), payload);
        self.node.route(message).await
    }

    /// Route `message` on, keeping its origin: forwarding never upgrades a remote message
    /// to a local one.
    pub async fn forward(&self, message: Message) -> Result<(), RouteError> {
        self.node.route(message).await
    }

    /// Start another worker on this node, accepting messages from this node only.
    pub fn start_worker<W: Worker>(
        &self,
        address: impl Into<Address>,
        worker: W,
    ) -> Result<(), StartError> {
        self.node.start_worker(address, worker)
    }

    /// Stop a worker on this node.
    pub fn stop_worker(&self, address: &Address) -> bool {
        self.node.stop_worker(address)
    }

    /// Cancelled when this worker is being stopped.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }
}

/// Sends messages and awaits replies from outside any worker (a CLI command, a test).
pub struct Client {
    mailbox: Mailbox,
}

impl Client {
    pub(crate) fn new(mailbox: Mailbox) -> Self {
        Self { mailbox }
    }

    /// The client's (random) address: the return route of what it sends.
    pub fn address(&self) -> &Address {
        self.mailbox.address()
    }

    /// Send `payload` along `route` with this client as the return route.
    pub async fn send(
        &self,
        route: impl Into<Route>,
        payload: impl Into<Bytes>,
    ) -> Result<(), RouteError> {
        let message = Message::new(route.into(), Route::from(self.address().clone()), payload);
        self.mailbox.node().route(message).await
    }

    /// The next message, waiting at most `timeout`. An error message (a node on the way
    /// could not deliver what this client sent) is returned as
    /// [`RequestError::Undeliverable`].
    pub async fn receive(&mut self, timeout: Duration) -> Result<Message, RequestError> {
        match tokio::time::timeout(timeout, self.mailbox.recv()).await {
            Ok(Some(m)) => data_or_error(m),
            Ok(None) => Err(RequestError::Closed),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Send and wait for one reply; `timeout` bounds both, connecting included. An error
    /// message in reply is returned as [`RequestError::Undeliverable`].
    pub async fn request(
        &mut self,
        route: impl Into<Route>,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let route = route.into();
        let payload = payload.into();
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.send(route, payload)).await {
            Ok(r) => r?,
            Err(_) => return Err(RequestError::Timeout(timeout)),
        }
        match tokio::time::timeout_at(deadline, self.mailbox.recv()).await {
            Ok(Some(m)) => data_or_error(m),
            Ok(None) => Err(RequestError::Closed),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }
}

/// `message` if it carries data; the error it carries if it is an error message.
fn data_or_error(message: Message) -> Result<Message, RequestError> {
    match message.undeliverable() {
        None => Ok(message),
        Some(Ok(error)) => Err(RequestError::Undeliverable(error)),
        Some(Err(malformed)) => Err(RequestError::MalformedErrorReply(malformed)),
    }
}
