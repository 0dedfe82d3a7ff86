//! The peer of an established channel, with the origin stamped on every message the channel
//! delivers: one shared [`ChannelPeer`], built when the channel is established and again
//! whenever the peer's attributes change. Delivering a message clones a pointer, not the
//! peer's identifier and attributes; and since the peer changes only through
//! [`StampedPeer`], the stamp cannot disagree with what the peer's credentials say now.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use kith_node::{ChannelPeer, Origin};

use crate::Identifier;
use crate::channel::{Peer, PeerCredential, Trust};

/// An established channel's peer and its stamp. Reads see the [`Peer`] (through `Deref`);
/// every change goes through a method here that stamps anew.
#[derive(Debug)]
pub(super) struct StampedPeer {
    peer: Peer,
    stamp: Arc<ChannelPeer>,
}

impl StampedPeer {
    /// `peer`, stamped with the channel's handshake hash and where its handshake came from.
    pub(super) fn new(peer: Peer, handshake_hash: [u8; 32], source: Option<SocketAddr>) -> Self {
        let stamp = Arc::new(ChannelPeer {
            identifier: peer.identifier.to_string(),
            attributes: peer.attributes.clone(),
            handshake_hash,
            source,
        });
        Self { peer, stamp }
    }

    /// The origin of a message the channel delivers now.
    pub(super) fn origin(&self) -> Origin {
        Origin::SecureChannel(Arc::clone(&self.stamp))
    }

    /// [`Peer::replace`], then stamp anew.
    pub(super) fn replace(&mut self, credential: PeerCredential, trust: &Trust) {
        self.peer.replace(credential, trust);
        self.restamp();
    }

    /// [`Peer::withdraw`], then stamp anew.
    pub(super) fn withdraw(&mut self, issuer: &Identifier, now: u64, grace: u64) {
        self.peer.withdraw(issuer, now, grace);
        self.restamp();
    }

    /// A new stamp with the peer's attributes now. Messages already delivered keep the
    /// stamp they were given.
    fn restamp(&mut self) {
        self.stamp = Arc::new(ChannelPeer {
            identifier: self.stamp.identifier.clone(),
            attributes: self.peer.attributes.clone(),
            handshake_hash: self.stamp.handshake_hash,
            source: self.stamp.source,
        });
    }
}

impl Deref for StampedPeer {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        &self.peer
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Identity;
    use crate::channel::Admission;
    use crate::unix_now as now;

    fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn credential(issuer: &Identity, pairs: &[(&str, &str)], created_at: u64) -> PeerCredential {
        PeerCredential {
            issuer: *issuer.identifier(),
            attributes: attributes(pairs),
            created_at,
            expires_at: created_at + 600,
        }
    }

    /// A peer vouched for by `authority` with `component=web`, and the trust that ranks it.
    fn vouched(authority: &Identity) -> (StampedPeer, Trust) {
        let (identity, _) = Identity::create(now());
        let trust = Trust::new(vec![authority.clone()], Admission::AnyIdentity);
        let mut peer = Peer {
            identifier: *identity.identifier(),
            identity,
            attributes: BTreeMap::new(),
            credentials_expire_at: None,
            credentials: vec![],
        };
        peer.replace(
            credential(authority, &[("component", "web")], now()),
            &trust,
        );
        let source = Some(SocketAddr::from(([10, 0, 0, 1], 4000)));
        (StampedPeer::new(peer, [7; 32], source), trust)
    }

    fn stamp(origin: &Origin) -> Arc<ChannelPeer> {
        match origin {
            Origin::SecureChannel(stamp) => Arc::clone(stamp),
            other => panic!("not a channel origin: {other:?}"),
        }
    }

    #[test]
    fn every_message_between_changes_shares_one_stamp() {
        let (authority, _) = Identity::create(now());
        let (peer, _) = vouched(&authority);
        let first = stamp(&peer.origin());
        assert!(Arc::ptr_eq(&first, &stamp(&peer.origin())));
        assert_eq!(first.identifier, peer.identifier.to_string());
        assert_eq!(first.attributes, attributes(&[("component", "web")]));
        assert_eq!(first.handshake_hash, [7; 32]);
        assert_eq!(first.source, Some(SocketAddr::from(([10, 0, 0, 1], 4000))));
    }

    #[test]
    fn a_replaced_credential_restamps_with_the_new_attributes() {
        let (authority, _) = Identity::create(now());
        let (mut peer, trust) = vouched(&authority);
        let before = stamp(&peer.origin());
        peer.replace(
            credential(&authority, &[("component", "db")], now() + 1),
            &trust,
        );
        let after = stamp(&peer.origin());
        assert_eq!(after.attributes, attributes(&[("component", "db")]));
        assert_eq!(after.attributes, peer.attributes);
        // The channel's own facts carry over; what was delivered before keeps its stamp.
        assert_eq!(
            (&after.identifier, after.handshake_hash, after.source),
            (&before.identifier, before.handshake_hash, before.source)
        );
        assert_eq!(before.attributes, attributes(&[("component", "web")]));
    }

    #[test]
    fn a_withdrawn_credential_restamps_without_its_attributes() {
        let (authority, _) = Identity::create(now());
        let (mut peer, _) = vouched(&authority);
        peer.withdraw(authority.identifier(), now(), 10);
        let after = stamp(&peer.origin());
        assert!(after.attributes.is_empty());
        assert_eq!(after.attributes, peer.attributes);
    }
}
