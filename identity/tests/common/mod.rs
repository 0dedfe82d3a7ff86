//! What the channel-stack and portal-connector tests share: nodes on loopback TCP, each
//! with an identity of its own.

#![allow(dead_code)]

pub use kith_node::testing::until;
use std::sync::Arc;
use std::time::Duration;

use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::{Identifier, Identity, SecureChannelKey, unix_now};
use kith_node::{Address, AllowAll, Echo, Node, Route, TCP};
use kith_transport::TcpTransport;

/// Bounds every wait; loopback answers in milliseconds, so only a bug takes this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node listening on loopback TCP with an `echo` service anyone may use, and an identity
/// that admits any other.
pub struct Peer {
    pub node: Node,
    pub tcp: TcpTransport,
    pub listener: String,
    pub settings: ChannelSettings,
}

impl Peer {
    /// A new node named `name`, without a secure-channel listener yet.
    pub async fn start(name: &str) -> Self {
        let node = Node::new(name);
        let tcp = TcpTransport::start(&node);
        let listener = tcp.listen("127.0.0.1:0").await.unwrap().to_string();
        node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
            .unwrap();
        let (identity, secret) = Identity::create(unix_now());
        let now = unix_now();
        let local = LocalIdentity {
            key: SecureChannelKey::generate(&identity, &secret, now - 5, now + 3600),
            identity,
            credentials: vec![],
        };
        let anyone = Trust {
            authorities: vec![],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        };
        let settings = ChannelSettings::new(Arc::new(local), Arc::new(anyone));
        Self {
            node,
            tcp,
            listener,
            settings,
        }
    }

    /// As [`Peer::start`], with its secure-channel listener (`api`) up.
    pub async fn listening(name: &str) -> Self {
        let peer = Self::start(name).await;
        peer.listen();
        peer
    }

    /// Start the secure-channel listener.
    pub fn listen(&self) {
        secure_channel::listen(&self.node, DEFAULT_LISTENER, self.settings.clone()).unwrap();
    }

    /// `[tcp this node, service]`.
    pub fn route(&self, service: &str) -> Route {
        Route::from(vec![
            Address::try_new(TCP, &self.listener).unwrap(),
            Address::local(service),
        ])
    }

    /// Its identity's identifier.
    pub fn identifier(&self) -> Identifier {
        *self.settings.local.identity.identifier()
    }

    /// How many channel ends (encryptors and decryptors) it has.
    pub fn channel_ends(&self) -> usize {
        self.node
            .addresses()
            .iter()
            .filter(|a| a.value().starts_with("sc-"))
            .count()
    }
}
