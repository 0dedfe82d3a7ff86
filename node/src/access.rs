//! Incoming access control: which origins a mailbox accepts. Deny by default.

use crate::Origin;

/// A policy over the origin of each message a mailbox receives. A message that fails it is
/// dropped and counted before it reaches the mailbox.
pub trait IncomingAccessControl: Send + Sync + 'static {
    /// Whether a message with `origin` may be delivered.
    fn is_authorized(&self, origin: &Origin) -> bool;
}

/// Messages from this node only: the default for every mailbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowLocal;

impl IncomingAccessControl for AllowLocal {
    fn is_authorized(&self, origin: &Origin) -> bool {
        origin.is_local()
    }
}

/// Messages from this node and from transport connections, not yet authenticated.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowTransport;

impl IncomingAccessControl for AllowTransport {
    fn is_authorized(&self, origin: &Origin) -> bool {
        matches!(origin, Origin::Local | Origin::Transport { .. })
    }
}

/// Every origin. For services meant to be public (echo) and for forwarding points whose
/// destinations apply their own policy (a connection's sender, a one-time reply address).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl IncomingAccessControl for AllowAll {
    fn is_authorized(&self, _origin: &Origin) -> bool {
        true
    }
}

/// A policy from a predicate, for rules the built-ins do not cover.
pub struct AllowOrigins<F>(pub F);

impl<F> IncomingAccessControl for AllowOrigins<F>
where
    F: Fn(&Origin) -> bool + Send + Sync + 'static,
{
    fn is_authorized(&self, origin: &Origin) -> bool {
        (self.0)(origin)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Address, ChannelPeer};

    #[test]
    fn default_policy_denies_everything_but_local() {
        let tcp = Origin::Transport {
            connection: Address::local("tcp-1"),
            peer: None,
        };
        let sc = Origin::SecureChannel(Arc::new(ChannelPeer {
            identifier: "I00".into(),
            attributes: Default::default(),
            handshake_hash: [0; 32],
            source: None,
        }));
        assert!(AllowLocal.is_authorized(&Origin::Local));
        assert!(!AllowLocal.is_authorized(&tcp));
        assert!(!AllowLocal.is_authorized(&sc));
        assert!(AllowTransport.is_authorized(&tcp));
        assert!(!AllowTransport.is_authorized(&sc));
        assert!(AllowAll.is_authorized(&sc));
    }
}
