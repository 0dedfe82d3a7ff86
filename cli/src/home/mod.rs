//! Local state in `$KITH_HOME`: one directory per node, private to its owner.
//!
//! ```text
//! $KITH_HOME/nodes/NAME/config.json   what the node is (name, listener address)
//! $KITH_HOME/nodes/NAME/control.sock  the running daemon's control socket
//! $KITH_HOME/nodes/NAME/node.pid      the running daemon's process id
//! $KITH_HOME/nodes/NAME/node.log      the daemon's log (rotated: node.log.1 is the newest
//!                                     before it; see `crate::logfile`)
//! ```
//! Directories are mode 0700 and files 0600, so only the owner can read or control a node.
//! Files are replaced atomically (write a temporary file, then rename), so a crash never
//! leaves half a configuration.
//!
//! Both the command line and the node host read this state; neither is imported here.

pub mod projects;
pub mod requests;
pub mod routes;
pub mod vault;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// 64 bytes: room for a descriptive name, short enough for the control socket's path.
const MAX_NODE_NAME: usize = 64;

/// The state directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// A node's saved configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// `host:port` it listens on. A port of 0 is replaced by the bound port on first start,
    /// so routes others hold to this node stay valid across restarts.
    pub tcp_listener_address: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The identity the node runs as (a name in the vault). Nodes made before identities
    /// existed get the default identity when they next start.
    #[serde(default)]
    pub identity: Option<String>,
    /// Who may open secure channels to the node.
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Set if the node is a project's authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<AuthorityNodeConfig>,
    /// Relays the node keeps up (`kith relay create`), restored when it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayConfig>,
    /// TCP outlets the node serves, restored when it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlets: Vec<OutletConfig>,
    /// TCP inlets the node listens on, restored when it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inlets: Vec<InletConfig>,
    /// `host:port` it serves metrics on (`--metrics-address`), if any. A port of 0 is
    /// replaced by the bound port on first start, as the listener's is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

/// A TCP outlet a node serves (`kith tcp-outlet create`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutletConfig {
    /// Its service address on the node (`outlet` by default).
    pub name: String,
    /// Where it connects: `host:port`.
    pub to: String,
    /// The `--allow` policy as given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
}

/// A TCP inlet a node listens on (`kith tcp-inlet create`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InletConfig {
    /// Its name (the listen address unless `--alias` gave one).
    pub alias: String,
    /// The address it listens on; a port of 0 is replaced by the bound port.
    pub from: String,
    /// The route to the outlet, as given.
    pub to: String,
    /// The `--allow` policy over the outlet's node, as given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
    /// How long a new connection may wait for the outlet, in milliseconds.
    pub open_timeout_ms: u64,
}

/// A relay a node keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's name: it is reached at `forward_to_NAME` on the project node.
    pub name: String,
    /// Where: `/project/NAME`.
    pub at: String,
}

/// What makes a node a project authority (`kith authority create`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorityNodeConfig {
    /// The project's name.
    pub project: String,
    /// The project's id (32 hex digits).
    pub project_id: String,
    /// Identifiers of the project's admins.
    pub admins: Vec<String>,
    /// `postgres://…`, or none for an SQLite file in the node's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// How long credentials last, seconds.
    pub credential_ttl: u64,
    /// How long a join request stays pending, seconds (default 1 h).
    #[serde(default = "default_request_ttl")]
    pub request_ttl: u64,
    /// How many join requests may be pending from one address (default 5).
    #[serde(default = "default_max_pending_per_address")]
    pub max_pending_per_address: u32,
    /// How many join requests may be pending in all (default 1,000).
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    /// Whether the node's next start creates the project's membership store (stamped with
    /// `project_id`) rather than opening it. `kith authority create` sets it for a new
    /// project; the start that creates the store clears it, so every later start only opens
    /// the store, and refuses one that is empty or another project's (DESIGN §5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_store: bool,
}

fn default_request_ttl() -> u64 {
    kith_authority::join::JoinSettings::default()
        .request_ttl
        .as_secs()
}

fn default_max_pending_per_address() -> u32 {
    kith_authority::join::JoinSettings::default().max_pending_per_source
}

fn default_max_pending() -> u32 {
    kith_authority::join::JoinSettings::default().max_pending
}

/// Who may open secure channels to a node, and whose credentials it accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// If not empty, only these identifiers are admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_identities: Vec<String>,
    /// Only peers with a valid credential from a trusted authority are admitted.
    #[serde(default)]
    pub require_credential: bool,
    /// Authorities whose credentials the node accepts (hex key histories), beside the
    /// issuers of its own identity's credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_authorities: Vec<String>,
    /// Who may use the node's services through secure channels (a policy over the peer's
    /// attributes and identifier); anyone, if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
    /// How long, in seconds, what the node knows of an authority's revocations holds while
    /// it cannot reach the authority; [`DEFAULT_REVOCATION_GRACE`] if not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_grace: Option<u64>,
    /// The caps on what peers may hold at the node (`--limit`); defaults where unset.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: crate::limits::LimitsConfig,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// 1 hour: how long a node goes on admitting an authority's members while it cannot reach
/// the authority to hear its revocations. Long enough to ride out a restart or an upgrade of
/// the authority, short enough that a deleted member cannot wait out an outage it caused.
pub const DEFAULT_REVOCATION_GRACE: u64 = 60 * 60;

/// Check that `address` looks like `host:port`.
pub fn validate_listener(address: &str) -> Result<()> {
    let Some((host, port)) = address.rsplit_once(':') else {
        bail!(
            "invalid listener address {address:?}: write HOST:PORT, e.g. 127.0.0.1:4000 (port 0 picks a free one)"
        );
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("invalid listener address {address:?}: write HOST:PORT with a port from 0 to 65535");
    }
    Ok(())
}

/// Check a node name: letters, digits, '-' and '_', starting with a letter or digit.
pub fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "invalid node name {name:?}: use 1 to {MAX_NODE_NAME} letters, digits, '-' or '_', starting with a letter or digit"
        );
    }
    Ok(())
}

impl Home {
    /// The state directory at `root`, created (mode 0700) if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let home = Self { root: root.into() };
        make_private_dir(&home.nodes_dir())?;
        Ok(home)
    }

    /// The state directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn projects_dir(&self) -> PathBuf {
        self.root.join("projects")
    }

    /// Where project `name`'s description is kept.
    pub fn project_path(&self, name: &str) -> PathBuf {
        self.projects_dir().join(format!("{name}.json"))
    }

    /// Save a project description (replacing one of the same name), atomically. The first
    /// project saved becomes the default.
    pub fn save_project(&self, name: &str, json: &str) -> Result<()> {
        make_private_dir(&self.projects_dir())?;
        write_private_atomic(&self.project_path(name), json.as_bytes())?;
        if self.default_project_name()?.is_none() {
            self.set_default_project(name)?;
        }
        Ok(())
    }

    /// The text of project `name`'s description.
    pub fn load_project(&self, name: &str) -> Result<String> {
        let path = self.project_path(name);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no project named {name:?} here; `kith project list` shows the known ones, and `kith project import` or `kith project enroll` adds one"
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Names of the known projects, sorted.
    pub fn project_names(&self) -> Result<Vec<String>> {
        let dir = self.projects_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".json") {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The default project's name, if one is set and still known.
    pub fn default_project_name(&self) -> Result<Option<String>> {
        match fs::read_to_string(self.projects_dir().join("default")) {
            Ok(n) => {
                let n = n.trim().to_owned();
                Ok(self.project_path(&n).is_file().then_some(n))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read the default project's name"),
        }
    }

    /// Make project `name` the default.
    pub fn set_default_project(&self, name: &str) -> Result<()> {
        make_private_dir(&self.projects_dir())?;
        write_private_atomic(&self.projects_dir().join("default"), name.as_bytes())
    }

    /// Delete project `name`'s description.
    pub fn delete_project(&self, name: &str) -> Result<()> {
        let path = self.project_path(name);
        fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))
    }

    fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// The vault of identities and secret keys.
    pub fn vault_path(&self) -> PathBuf {
        self.root.join("vault.sqlite")
    }

    /// The directory of node `name`.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.nodes_dir().join(name)
    }

    /// The control socket of node `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("control.sock")
    }

    /// The pid file of node `name`.
    pub fn pid_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.pid")
    }

    /// The log of node `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.log")
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("config.json")
    }

    /// Names of all nodes, sorted.
    pub fn node_names(&self) -> Result<Vec<String>> {
        let dir = self.nodes_dir();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join("config.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether node `name` exists.
    pub fn node_exists(&self, name: &str) -> bool {
        self.config_path(name).is_file()
    }

    /// Fail if node `name` exists, saying what to do instead.
    pub fn ensure_no_node(&self, name: &str) -> Result<()> {
        if self.node_exists(name) {
            bail!(
                "node {name:?} already exists; start it with `kith node start {name}` or pick another name"
            );
        }
        Ok(())
    }

    /// Load node `name`'s configuration.
    pub fn load_node(&self, name: &str) -> Result<NodeConfig> {
        validate_node_name(name)?;
        let path = self.config_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "no node named {name:?}; see `kith node list`, or create it with `kith node create {name}`"
                )
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_str(&text)
            .with_context(|| format!("node configuration {} is corrupt", path.display()))
    }

    /// Create node `name`'s directory and save its configuration; fails if it exists.
    pub fn create_node(&self, config: &NodeConfig) -> Result<()> {
        validate_node_name(&config.name)?;
        self.ensure_no_node(&config.name)?;
        make_private_dir(&self.node_dir(&config.name))?;
        self.save_node(config)
    }

    /// Save node configuration atomically.
    pub fn save_node(&self, config: &NodeConfig) -> Result<()> {
        let json = serde_json::to_vec_pretty(config)?;
        write_private_atomic(&self.config_path(&config.name), &json)
    }

    /// Delete node `name`'s directory.
    pub fn delete_node(&self, name: &str) -> Result<()> {
        validate_node_name(name)?;
        let dir = self.node_dir(name);
        fs::remove_dir_all(&dir).with_context(|| format!("cannot delete {}", dir.display()))
    }
}

/// Create `dir` and its parents; the last component gets mode 0700.
pub(crate) fn make_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

/// Write `bytes` to `path` (mode 0600) through a temporary file and a rename.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_checked() {
        for ok in ["n1", "db-node", "A_1"] {
            validate_node_name(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_is_private_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        let cfg = NodeConfig {
            name: "n1".into(),
            tcp_listener_address: "127.0.0.1:0".into(),
            metrics_address: None,
            created_at: 1,
            identity: Some("default".into()),
            authority: None,
            relays: Vec::new(),
            outlets: Vec::new(),
            inlets: Vec::new(),
            admission: Default::default(),
        };
        home.create_node(&cfg).unwrap();
        assert!(
            home.create_node(&cfg)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        let mode = fs::metadata(home.node_dir("n1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        let home = Home::open(dir.path()).unwrap();
        assert_eq!(home.load_node("n1").unwrap(), cfg);
        assert_eq!(home.node_names().unwrap(), vec!["n1".to_string()]);
        assert!(
            home.load_node("n2")
                .unwrap_err()
                .to_string()
                .contains("no node named")
        );
        home.delete_node("n1").unwrap();
        assert!(home.node_names().unwrap().is_empty());
    }
}
