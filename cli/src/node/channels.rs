//! Secure channels the node opens: the ones `kith secure-channel create` keeps, and the
//! fresh ones a sent message travels through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use kith_identity::secure_channel::{
    self, ChannelHop, ChannelSettings, ChannelStack, SecureChannel, SharedSettings,
};
use kith_node::{Address, Node, Route};

use super::kept::lock;
use crate::control::{ChannelView, SendReply};
use crate::home::routes::Target;

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
        let settings = self.settings()?;
        let shown = to.to_string();
        let channel =
            tokio::time::timeout(timeout, secure_channel::create(&self.node, to, &settings))
                .await
                .map_err(|_| anyhow::anyhow!("no secure channel to {shown} within {timeout:?}"))?
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
        Ok(ChannelStack::open(&self.node, &self.settings()?, hops, timeout).await?)
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
        let reply = client.request(route, Bytes::from(payload), left).await;
        let inner = channels.innermost().cloned();
        drop(channels);
        let reply = reply.with_context(|| format!("no reply from {shown}"))?;
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
