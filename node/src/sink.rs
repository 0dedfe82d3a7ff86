//! Sinks: registered addresses that take messages synchronously instead of through a mailbox
//! and a task. A transport connection is one: the sender writes straight to the socket when it
//! is not backed up, saving a task hand-off per message.

use std::future::Future;
use std::pin::Pin;

use crate::Message;

/// Why a sink did not take a message; the message is handed back.
#[derive(Debug)]
pub enum SinkError {
    /// Full for now: wait for [`MessageSink::ready`] and try again.
    Full(Message),
    /// Closed for good.
    Closed(Message),
}

/// What [`MessageSink::ready`] returns.
pub type ReadyFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Takes messages without a task of its own.
pub trait MessageSink: Send + Sync + 'static {
    /// Take `message` now, or hand it back. Must not block.
    #[expect(
        clippy::result_large_err,
        reason = "the message is handed back by value so a full sink costs no allocation"
    )]
    fn try_deliver(&self, message: Message) -> Result<(), SinkError>;

    /// Resolves when the sink may have room again, or has closed.
    fn ready(&self) -> ReadyFuture<'_>;
}
