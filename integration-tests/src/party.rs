//! What the in-process benches are made of: a [`Party`], an identity created in memory (no
//! vault) with a fresh attested channel key for each set of channel settings it is given,
//! and a [`ProjectNode`], the authority's services on a real store and vault.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kith_authority::join::JoinSettings;
use kith_authority::relay;
use kith_authority::service::{Authority, AuthorityConfig};
use kith_authority::store::{MembershipStore, StoreOwner};
use kith_authority::ticket::OneTimeCode;
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::vault::Vault;
use kith_identity::{
    CredentialAndPurposeKey, Identifier, Identity, IdentitySecret, SecureChannelKey, hex, unix_now,
};
use kith_node::{Address, Node, Route, TCP};
use kith_transport::TcpTransport;
use tempfile::TempDir;

/// 1 hour: how long a party's channel keys last, far beyond any bench run.
pub const KEY_LIFETIME: Duration = Duration::from_secs(3600);

/// 10 s: the handshake timeout of a party's channels. Loopback answers in milliseconds;
/// only a bug takes this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An identity and its secret.
pub struct Party {
    identity: Identity,
    secret: IdentitySecret,
}

impl Party {
    /// A new identity.
    pub fn new() -> Self {
        let (identity, secret) = Identity::create(unix_now());
        Self { identity, secret }
    }

    /// Its identifier.
    pub fn identifier(&self) -> Identifier {
        *self.identity.identifier()
    }

    /// Channel settings presenting `credentials` and trusting as `trust` says, with a
    /// channel key attested for [`KEY_LIFETIME`].
    pub fn settings(
        &self,
        credentials: Vec<CredentialAndPurposeKey>,
        trust: Arc<Trust>,
    ) -> ChannelSettings {
        let now = unix_now();
        let key = SecureChannelKey::generate(
            &self.identity,
            &self.secret,
            now - 5,
            now + KEY_LIFETIME.as_secs(),
        );
        let local = LocalIdentity {
            identity: self.identity.clone(),
            key,
            credentials,
        };
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = HANDSHAKE_TIMEOUT;
        settings
    }
}

impl Default for Party {
    fn default() -> Self {
        Self::new()
    }
}

/// `[tcp addr, service]`: `service` on the node listening at `addr`.
pub fn tcp_route(addr: SocketAddr, service: &str) -> anyhow::Result<Route> {
    Ok(Route::from(vec![
        Address::try_new(TCP, addr.to_string())?,
        Address::local(service),
    ]))
}

/// Trust that admits `who` alone and accepts credentials from `authorities`.
pub fn only(who: Identifier, authorities: Vec<Identity>) -> Arc<Trust> {
    Arc::new(Trust {
        authorities,
        admission: Admission::Identifiers(BTreeSet::from([who])),
        revocations: Default::default(),
    })
}

/// The one-time code in a created ticket (64 hex digits).
pub fn ticket_code(hex: &str) -> anyhow::Result<OneTimeCode> {
    Ok(OneTimeCode::from_bytes(
        hex::decode_array(hex).context("a ticket code")?,
    ))
}

/// A project node's identity in its vault.
const AUTHORITY_NAME: &str = "project";

/// What a [`ProjectNode`] runs.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    /// The node's name.
    pub node_name: &'static str,
    /// The project's id, carried by every credential the authority issues.
    pub project_id: &'static str,
    /// Who may administer the project.
    pub admins: BTreeSet<Identifier>,
    /// How join requests are kept.
    pub join: JoinSettings,
    /// Whether the node runs the relay service too.
    pub relay: bool,
}

/// A project node in this process: the authority's services (credentials lasting
/// [`KEY_LIFETIME`]) and, if asked, the relay service, on a real SQLite store and vault in
/// a temporary directory, with a secure-channel listener that admits any identity and
/// verifies the credentials the node itself issues (so that members' channels carry the
/// project's id). It listens on loopback TCP, its port read back after binding port 0.
pub struct ProjectNode {
    /// The node.
    pub node: Node,
    /// Its identity: the project's authority.
    pub authority: Identity,
    /// Its TCP listener.
    pub addr: SocketAddr,
    store: MembershipStore,
    vault: Vault,
    _dir: TempDir,
}

impl ProjectNode {
    /// Start one.
    pub async fn start(config: ProjectConfig) -> anyhow::Result<Self> {
        let dir = TempDir::new()?;
        let vault = Vault::open(&dir.path().join("vault.sqlite")).await?;
        let authority = vault
            .create_identity(AUTHORITY_NAME, unix_now())
            .await?
            .identity;
        let owner = StoreOwner {
            project_id: config.project_id.into(),
            authority: Some(*authority.identifier()),
        };
        let store = MembershipStore::create_sqlite(
            &dir.path().join("authority.sqlite"),
            &owner,
            unix_now(),
        )
        .await?;
        let node = Node::new(config.node_name);
        let local = LocalIdentity {
            identity: authority.clone(),
            key: vault.secure_channel_key(AUTHORITY_NAME, unix_now()).await?,
            credentials: vec![],
        };
        let anyone = Arc::new(Trust {
            authorities: vec![authority.clone()],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        });
        let mut settings = ChannelSettings::new(Arc::new(local), anyone);
        settings.handshake_timeout = HANDSHAKE_TIMEOUT;
        secure_channel::listen(&node, DEFAULT_LISTENER, settings)?;
        let service = Authority::new(
            store.clone(),
            vault.clone(),
            AUTHORITY_NAME.into(),
            AuthorityConfig {
                project_id: config.project_id.into(),
                admins: config.admins,
                credential_ttl: KEY_LIFETIME,
                join: config.join,
                clock: Arc::new(kith_authority::SystemClock),
            },
        );
        service.start(&node)?;
        if config.relay {
            relay::start(&service, &node)?;
        }
        let addr = TcpTransport::start(&node).listen("127.0.0.1:0").await?;
        Ok(Self {
            node,
            authority,
            addr,
            store,
            vault,
            _dir: dir,
        })
    }

    /// Its identifier.
    pub fn identifier(&self) -> Identifier {
        *self.authority.identifier()
    }

    /// `[tcp P, api]`: its secure-channel listener.
    pub fn listener(&self) -> anyhow::Result<Route> {
        tcp_route(self.addr, DEFAULT_LISTENER)
    }

    /// Trust that admits this node alone (a client pins it) and accepts its credentials.
    pub fn pinned(&self) -> Arc<Trust> {
        only(self.identifier(), vec![self.authority.clone()])
    }

    /// Credentials signed with the authority's key straight from the vault: what a member
    /// enrolled now would hold.
    pub async fn issue(
        &self,
        to: &Identifier,
        attributes: BTreeMap<String, String>,
    ) -> anyhow::Result<CredentialAndPurposeKey> {
        let now = unix_now();
        Ok(CredentialAndPurposeKey::issue(
            &self
                .vault
                .credential_signing_key(AUTHORITY_NAME, now)
                .await?,
            to,
            attributes,
            now - 5,
            now + KEY_LIFETIME.as_secs(),
        )?)
    }

    /// Shut the node down and close its store and vault.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        self.store.close().await;
        self.vault.close().await;
    }
}
