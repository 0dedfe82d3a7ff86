//! Secure channels the node opens: the ones `kith secure-channel create` keeps, and the
//! fresh ones a sent message travels through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use kith_identity::secure_channel::{
    self, ChannelHop, ChannelSettings, ChannelStack, ChannelStackError, SecureChannel,
    SharedSettings,
};
use kith_node::{Address, Node, Route};

use super::kept::lock;
use crate::control::{ChannelView, SendReply};
use crate::home::routes::Target;

/// 1 s: how much longer a channel's own handshake deadline runs than the bound the node puts
/// on it. The node's bound is then what expires on a silent peer, and it says so; the
/// channel's own deadline reports it as an unexpected handshake message. An abandoned
/// handshake lingers this long at most.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// `settings` for a handshake the caller bounds by `timeout`.
fn bounded_by(mut settings: ChannelSettings, timeout: Duration) -> ChannelSettings {
    settings.handshake_timeout = timeout.saturating_add(HANDSHAKE_GRACE);
    settings
}

/// What a peer that did not finish the handshake in time is told it did.
fn no_answer(route: &str, timeout: Duration) -> anyhow::Error {
    anyhow::anyhow!(
        "{route} did not answer the secure channel handshake within {timeout:?}; is a secure channel listener at the end of the route?"
    )
}

/// The channels a node opened on request and keeps until they are deleted or torn down.
pub struct Channels {
    node: Node,
    settings: Option<SharedSettings>,
    /// Each channel with the route it was opened to (for `list`).
    kept: Mutex<Vec<(SecureChannel, String)>>,
}

impl Channels {
    /// None yet, on `node`, opened with its channel settings (if it has an identity).
    pub(crate) fn new(node: &Node, settings: Option<SharedSettings>) -> Self {
        Self {
            node: node.clone(),
            settings,
            kept: Mutex::default(),
        }
    }

    fn settings(&self) -> Result<ChannelSettings> {
        self.settings
            .as_ref()
            .map(SharedSettings::get)
            .context("this node has no identity, so it cannot open secure channels")
    }

    /// Open a channel to the listener at the end of `to` and keep it.
    pub async fn open(&self, to: Route, timeout: Duration) -> Result<ChannelView> {
        let settings = bounded_by(self.settings()?, timeout);
        let shown = to.to_string();
        let channel =
            tokio::time::timeout(timeout, secure_channel::create(&self.node, to, &settings))
                .await
                .map_err(|_| no_answer(&shown, timeout))?
                .with_context(|| format!("cannot open a secure channel to {shown}"))?;
        let view = channel_view(&channel, &shown);
        lock(&self.kept).push((channel, shown));
        Ok(view)
    }

    /// The kept channels still up (a channel torn down by its peer drops out).
    pub fn list(&self) -> Vec<ChannelView> {
        let live = self.node.addresses();
        let mut kept = lock(&self.kept);
        kept.retain(|(c, _)| live.contains(&c.encryptor));
        kept.iter().map(|(c, to)| channel_view(c, to)).collect()
    }

    /// Close the kept channel at `address` (`sc-enc-…`, with or without `0#`).
    pub fn close(&self, address: &str) -> Result<ChannelView> {
        let wanted = address
            .parse::<Address>()
            .with_context(|| format!("invalid channel address {address:?}"))?;
        let mut kept = lock(&self.kept);
        let at = kept
            .iter()
            .position(|(c, _)| c.encryptor == wanted)
            .with_context(|| {
                format!(
                    "no secure channel {address:?} on this node; see `kith secure-channel list`"
                )
            })?;
        let (channel, to) = kept.remove(at);
        secure_channel::close(&self.node, &channel);
        Ok(channel_view(&channel, &to))
    }

    /// Open the channels of `hops`, each inside the one before, within `timeout`. On
    /// failure the ones already open are closed.
    async fn open_stack(&self, hops: &[ChannelHop], timeout: Duration) -> Result<ChannelStack> {
        if hops.is_empty() {
            return Ok(ChannelStack::new(&self.node));
        }
        let settings = bounded_by(self.settings()?, timeout);
        match ChannelStack::open(&self.node, &settings, hops, timeout).await {
            Ok(stack) => Ok(stack),
            Err(ChannelStackError::Timeout { route, timeout }) => Err(no_answer(&route, timeout)),
            Err(e) => Err(e.into()),
        }
    }

    /// Send `payload` to `target` and wait for one reply; through fresh secure channels
    /// (closed afterwards) if the target asks for them.
    pub async fn send(
        &self,
        target: Target,
        payload: String,
        timeout: Duration,
    ) -> Result<SendReply> {
        let started = Instant::now();
        let channels = self.open_stack(&target.channels, timeout).await?;
        let route = channels.route_through(&target.route)?;
        let mut client = self.node.client()?;
        let shown = route.to_string();
        let left = timeout.saturating_sub(started.elapsed());
        let end = channels.innermost().map(SecureChannel::end_signal);
        let reply = tokio::select! {
            reply = client.request(route, Bytes::from(payload), left) => reply,
            // The channel the message went into ended (its peer stopped, say): no answer
            // can come, so say so now.
            how = async {
                match &end {
                    Some(end) => end.ended().await,
                    None => std::future::pending().await,
                }
            } => anyhow::bail!("no reply from {shown}: {how}"),
        };
        let inner = channels.innermost().cloned();
        drop(channels);
        let reply = match reply {
            Ok(reply) => reply,
            // A node on the way says why; that is the whole story.
            Err(kith_node::RequestError::Undeliverable(why)) => {
                anyhow::bail!("the message to {shown} was not delivered: {why}")
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("no reply from {shown}"))),
        };
        Ok(SendReply {
            reply: String::from_utf8_lossy(&reply.payload).into_owned(),
            route: shown,
            return_route: reply.return_route.to_string(),
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
            peer: inner.as_ref().map(|c| c.peer.identifier.to_string()),
            verification_code: inner.map(|c| c.verification_code),
        })
    }
}

fn channel_view(c: &secure_channel::SecureChannel, to: &str) -> ChannelView {
    ChannelView {
        address: c.encryptor.value().to_owned(),
        decryptor: c.decryptor.value().to_owned(),
        peer: c.peer.identifier.to_string(),
        verification_code: c.verification_code.clone(),
        to: to.to_owned(),
    }
}
