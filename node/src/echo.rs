//! The echo service: answers every message with its payload.

use crate::{Context, Message, Worker, WorkerError};

/// Replies to each message's return route with the same payload. Every node runs one at
/// `echo`, open to every origin, so reachability can be checked end to end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Worker for Echo {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        ctx.send(message.return_route, message.payload).await?;
        Ok(())
    }
}
