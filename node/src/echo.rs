//! The echo service: answers every message with its payload.

use crate::{Context, Message, MessageKind, Worker, WorkerError};

/// Replies to each message's return route with the same payload. Every node runs one at
/// `echo`, open to every origin, so reachability can be checked end to end. Error messages
/// are not echoed: they are never answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Worker for Echo {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        if message.kind == MessageKind::Undeliverable {
            return Ok(());
        }
        ctx.send(message.return_route, message.payload).await?;
        Ok(())
    }
}
