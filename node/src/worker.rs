//! The worker trait: an async actor behind a bounded mailbox.

use std::future::Future;

use crate::{Context, Message, WorkerError};

/// An actor. The runtime calls `initialize` once, then `handle_message` for each message in
/// order, then `shutdown` once when the worker is stopped or the node shuts down.
pub trait Worker: Send + 'static {
    /// Called before the first message.
    fn initialize(
        &mut self,
        _ctx: &mut Context,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send {
        async { Ok(()) }
    }

    /// Handle one message. An error is logged and counted; the worker keeps running.
    fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send;

    /// Called once after the last message.
    fn shutdown(&mut self, _ctx: &mut Context) -> impl Future<Output = ()> + Send {
        async {}
    }
}
