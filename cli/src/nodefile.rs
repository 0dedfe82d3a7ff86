//! A node declared in a YAML file (`kith node create --config FILE`).
//!
//! ```yaml
//! name: db-node
//! identity: db                       # made if the vault has no such identity
//! tcp-listener-address: 127.0.0.1:0
//! require-credential: true
//! ticket: ${DB_TICKET}               # a ticket, or a file holding one
//! relays: [db]
//! tcp-outlets:
//!   postgres:
//!     to: 127.0.0.1:5432
//!     allow: 'component = "web"'
//! tcp-inlets:
//!   psql:
//!     from: 127.0.0.1:15432
//!     via: db                        # the relay the outlet's node keeps
//!     to: postgres                   # the outlet's name there
//! ```
//!
//! Keys that mean what an Ockam node configuration's keys mean have Ockam's names and shapes
//! (`ticket`, `relays`, `tcp-outlets` with `to` and `allow`, `tcp-inlets` with `from`, `via`,
//! `to` and `allow`). The text is untrusted: it is read under a size cap, `${VAR}` is taken
//! from the environment, and the YAML is parsed by `serde-saphyr` (panic-free, with budgets
//! against alias bombs and deep nesting), rejecting unknown and duplicate keys. Every value is
//! checked as it is read, so an error names the line and column it is at. Nothing here
//! touches the state directory or the network: applying the file is `commands::apply`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kith_authority::relay::check_relay_name;
use kith_authority::ticket::Ticket;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// 256 KiB: a node's file is a few hundred bytes; a ticket is under 4 KiB.
pub const MAX_FILE: usize = 256 * 1024;

/// A problem with the file, at a line and column (1-based) when it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Line and column of the problem.
    pub at: Option<(u64, u64)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FileError {}

/// A node as its file declares it. What the file leaves out is `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeFile {
    /// The node's name.
    #[serde(default, deserialize_with = "node_name")]
    pub name: Option<String>,
    /// The identity the node runs as (made if missing).
    #[serde(default, deserialize_with = "identity_name")]
    pub identity: Option<String>,
    /// `HOST:PORT` to listen on.
    #[serde(default, deserialize_with = "listener")]
    pub tcp_listener_address: Option<String>,
    /// `HOST:PORT` to serve metrics on.
    #[serde(default, deserialize_with = "listener")]
    pub metrics_address: Option<String>,
    /// Admit only peers with a valid credential from a trusted authority.
    #[serde(default)]
    pub require_credential: bool,
    /// Admit only these identifiers.
    #[serde(default, deserialize_with = "identifiers")]
    pub allow_identities: Vec<String>,
    /// Authorities whose credentials the node accepts: identity names or key histories.
    #[serde(default)]
    pub trust_authorities: Vec<String>,
    /// Who may use the node's services: a policy.
    #[serde(default, deserialize_with = "policy")]
    pub allow: Option<String>,
    /// How long revocations known from an unreachable authority hold.
    #[serde(default, deserialize_with = "duration")]
    pub revocation_grace: Option<Duration>,
    /// Caps on what peers may hold (`--limit`), as `NAME=VALUE`.
    #[serde(default, deserialize_with = "limits")]
    pub limits: Vec<String>,
    /// Enroll with this ticket if the identity is not yet a member of its project.
    #[serde(default, deserialize_with = "ticket")]
    pub ticket: Option<TicketSource>,
    /// The project relays and `via` go through; default: the ticket's, or the default one.
    #[serde(default, deserialize_with = "project")]
    pub project: Option<String>,
    /// Relays the node keeps.
    #[serde(default, deserialize_with = "relays")]
    pub relays: Vec<DeclaredRelay>,
    /// One relay, as Ockam's `relay: NAME` declares it; kept beside `relays`.
    #[serde(default, deserialize_with = "via")]
    pub relay: Option<String>,
    /// TCP outlets, by name.
    #[serde(default, deserialize_with = "outlets")]
    pub tcp_outlets: Vec<DeclaredOutlet>,
    /// TCP inlets, by name.
    #[serde(default, deserialize_with = "inlets")]
    pub tcp_inlets: Vec<DeclaredInlet>,
}

/// Where the ticket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketSource {
    /// The ticket itself (it decodes).
    Inline(String),
    /// A file holding it, relative to the configuration file's directory.
    File(PathBuf),
}

/// A relay the node keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredRelay {
    /// Its name.
    pub name: String,
    /// The project whose node holds it; default: the ticket's project, or the default one.
    pub project: Option<String>,
}

/// A TCP outlet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredOutlet {
    /// Its service name on the node.
    pub name: String,
    /// `HOST:PORT` it connects to.
    pub to: String,
    /// Who may use it: a policy.
    pub allow: Option<String>,
}

/// A TCP inlet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredInlet {
    /// Its alias.
    pub name: String,
    /// Where it listens.
    pub from: String,
    /// Where its connections go.
    pub to: InletTarget,
    /// What the outlet's node must satisfy: a policy.
    pub allow: Option<String>,
    /// How long a new connection may wait for the outlet.
    pub timeout: Option<Duration>,
}

/// Where an inlet's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InletTarget {
    /// A whole route.
    Route(String),
    /// Outlet `outlet` on the node that keeps relay `relay` at the project node.
    Via {
        /// The relay.
        relay: String,
        /// The outlet's name on that node.
        outlet: String,
    },
}

impl InletTarget {
    /// The route, the relay's through project `project`.
    pub fn route(&self, project: &str) -> String {
        match self {
            InletTarget::Route(r) => r.clone(),
            InletTarget::Via { relay, outlet } => {
                format!("/project/{project}/service/forward_to_{relay}/secure/api/service/{outlet}")
            }
        }
    }
}

/// Parse a node's file: `${VAR}` from `env`, then the YAML.
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<NodeFile, FileError> {
    if text.len() > MAX_FILE {
        return Err(FileError {
            at: None,
            message: format!(
                "the file is {} bytes; at most {MAX_FILE} are read",
                text.len()
            ),
        });
    }
    let text = substitute(text, env)?;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 16;
    budget.max_aliases = 64;
    budget.max_anchors = 64;
    budget.max_events = 100_000;
    let options = serde_saphyr::options! {
        budget: Some(budget),
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        merge_keys: serde_saphyr::MergeKeyPolicy::Error,
        with_snippet: false,
    };
    if text.trim().is_empty() {
        return Ok(NodeFile::default());
    }
    let mut file =
        serde_saphyr::from_str_with_options::<NodeFile>(&text, options).map_err(|e| FileError {
            at: e
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| (l.line(), l.column())),
            message: strip_location(&e.to_string()),
        })?;
    if let Some(name) = file.relay.take() {
        if file.relays.iter().any(|r| r.name == name) {
            return Err(FileError {
                at: None,
                message: format!("relay {name} is declared by both `relay` and `relays`"),
            });
        }
        file.relays.push(DeclaredRelay {
            name,
            project: None,
        });
    }
    Ok(file)
}

/// serde-saphyr's message, without the position it also reports on its own (and, for a
/// value reached through an alias, where the alias was defined) or advice meant for
/// programmers.
fn strip_location(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let mut trimmed = first;
    for cut in [" at line ", " (defined"] {
        if let Some(i) = trimmed.find(cut) {
            trimmed = &trimmed[..i];
        }
    }
    if let Some(key) = trimmed.strip_prefix("duplicate mapping key: ") {
        let key = key.split(", set ").next().unwrap_or(key);
        return format!("key {key} is given twice");
    }
    trimmed.trim().to_owned()
}

/// Replace each `${NAME}` with the value of variable `NAME` (letters, digits, `_`, not
/// starting with a digit); `$${` stands for a literal `${`. A variable that is not set, or
/// whose value spans lines, is an error at the `${`. Comments (from a `#` at the start of a
/// line or after a space, outside quotes, to the end of the line) are left as they are.
pub fn substitute(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, FileError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = u64::try_from(index + 1).unwrap_or(u64::MAX);
        let (body, comment) = line.split_at(comment_start(line));
        substitute_line(body, number, &env, &mut out)?;
        out.push_str(comment);
    }
    Ok(out)
}

/// Where the comment in `line` starts (its length if it has none).
fn comment_start(line: &str) -> usize {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut before = ' ';
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if double => escaped = true,
            '"' if !single => double = !double,
            '\'' if !double => single = !single,
            '#' if !single && !double && before.is_whitespace() => return i,
            _ => {}
        }
        before = c;
    }
    line.len()
}

fn substitute_line(
    line: &str,
    number: u64,
    env: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), FileError> {
    let mut rest = line;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let column = u64::try_from(line[..line.len() - rest.len() + i].chars().count() + 1)
            .unwrap_or(u64::MAX);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let at = Some((number, column));
        let Some(end) = body.find('}') else {
            return Err(FileError {
                at,
                message: "`${` without its closing `}`; write `$${` for a literal `${`".into(),
            });
        };
        let name = &body[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(FileError {
                at,
                message: format!(
                    "`${{{}}}` is not a variable: a name is letters, digits and '_'",
                    name.escape_debug()
                ),
            });
        }
        let Some(value) = env(name) else {
            return Err(FileError {
                at,
                message: format!("variable {name} is not set"),
            });
        };
        if value.contains(['\n', '\r']) {
            return Err(FileError {
                at,
                message: format!("variable {name} holds more than one line"),
            });
        }
        out.push_str(&value);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

fn checked<'de, D: Deserializer<'de>, T>(
    d: D,
    check: impl FnOnce(String) -> Result<T, String>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    check(s).map_err(de::Error::custom)
}

fn node_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        crate::home::validate_node_name(&s).map_err(|e| e.to_string())?;
        Ok(Some(s))
    })
}

fn identity_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        kith_identity::vault::check_name(&s).map_err(|e| e.to_string())?;
        Ok(Some(s))
    })
}

fn listener<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        crate::home::validate_listener(&s).map_err(|e| e.to_string())?;
        Ok(Some(s))
    })
}

fn identifiers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let all = Vec::<String>::deserialize(d)?;
    for id in &all {
        id.parse::<kith_identity::Identifier>().map_err(|_| {
            de::Error::custom(format!(
                "{id:?} is not an identifier (I followed by 40 hex digits)"
            ))
        })?;
    }
    Ok(all)
}

fn check_policy(s: &str) -> Result<(), String> {
    kith_identity::policy::Policy::parse(s)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "not a policy: {}",
                crate::node::settings::policy_error(s, &e)
            )
        })
}

fn policy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        check_policy(&s)?;
        Ok(Some(s))
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked(d, |s| {
        crate::duration::parse_duration(&s)
            .map(Some)
            .map_err(|e| format!("{s:?} is not a duration: {e}"))
    })
}

fn limits<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let given = BTreeMap::<String, String>::deserialize(d)?;
    let all: Vec<String> = given.iter().map(|(k, v)| format!("{k}={v}")).collect();
    crate::limits::LimitsConfig::parse_all(&all)
        .map_err(|e| de::Error::custom(e.to_string().replace("--limit ", "limit ")))?;
    Ok(all)
}

/// A ticket, a file holding one, or nothing (an empty value: a variable left empty once
/// the node is a member).
fn ticket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TicketSource>, D::Error> {
    checked(d, |s| {
        let text = s.trim();
        if text.is_empty() {
            return Ok(None);
        }
        match Ticket::decode(text) {
            Ok(_) => Ok(Some(TicketSource::Inline(text.to_owned()))),
            Err(decode) => {
                let path_like = !text.is_empty()
                    && text.len() <= 4096
                    && !text.chars().any(|c| c.is_whitespace() || c.is_control());
                if path_like && (text.contains('/') || text.contains('.')) {
                    Ok(Some(TicketSource::File(PathBuf::from(text))))
                } else {
                    Err(format!(
                        "ticket: not a ticket ({decode}), nor a file name (write ./{} for a file here)",
                        text.chars().take(40).collect::<String>()
                    ))
                }
            }
        }
    })
}

fn relay_name(name: &str) -> Result<(), String> {
    check_relay_name(name).map_err(|e| format!("relay name: {e}"))
}

fn project_name(name: &str) -> Result<(), String> {
    let route = format!("/project/{name}");
    match route.parse::<kith_transport::MultiAddr>() {
        Ok(m) if m.project() == Some(name) && m.protocols().len() == 1 => Ok(()),
        _ => Err(format!("{name:?} is not a project name")),
    }
}

fn project<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        project_name(&s)?;
        Ok(Some(s))
    })
}

/// `relays: [db, cache]` or `relays: {db: {project: acme}, cache: {}}`.
fn relays<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DeclaredRelay>, D::Error> {
    struct Relays;

    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct RelayBody {
        #[serde(default)]
        project: Option<String>,
    }

    impl<'de> Visitor<'de> for Relays {
        type Value = Vec<DeclaredRelay>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of relay names, or a map from relay name to {project: NAME}")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut all: Vec<DeclaredRelay> = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                relay_name(&name).map_err(de::Error::custom)?;
                if all.iter().any(|r| r.name == name) {
                    return Err(de::Error::custom(format!("relay {name} is listed twice")));
                }
                all.push(DeclaredRelay {
                    name,
                    project: None,
                });
            }
            Ok(all)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                relay_name(&name).map_err(de::Error::custom)?;
                let body = map.next_value::<Option<RelayBody>>()?;
                let project = body.and_then(|b| b.project);
                if let Some(p) = &project {
                    project_name(p).map_err(de::Error::custom)?;
                }
                all.push(DeclaredRelay { name, project });
            }
            Ok(all)
        }
    }

    d.deserialize_any(Relays)
}

fn service_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn target<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |s| {
        crate::node::check_target(&s).map_err(|e| e.to_string().replace("--to", "to"))?;
        Ok(s)
    })
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |s| {
        crate::node::listen_address(&s).map_err(|e| e.to_string().replace("--from", "from"))?;
        Ok(s)
    })
}

fn via<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| {
        relay_name(&s)?;
        Ok(Some(s))
    })
}

fn outlets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DeclaredOutlet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Body {
        #[serde(deserialize_with = "target")]
        to: String,
        #[serde(default, deserialize_with = "policy")]
        allow: Option<String>,
    }

    struct Outlets;

    impl<'de> Visitor<'de> for Outlets {
        type Value = Vec<DeclaredOutlet>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from outlet name to {to: HOST:PORT, allow: POLICY}")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                service_name("outlet", &name).map_err(de::Error::custom)?;
                let body = map.next_value::<Body>()?;
                all.push(DeclaredOutlet {
                    name,
                    to: body.to,
                    allow: body.allow,
                });
            }
            Ok(all)
        }
    }

    d.deserialize_map(Outlets)
}

fn inlets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DeclaredInlet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Body {
        #[serde(deserialize_with = "listen")]
        from: String,
        #[serde(default, deserialize_with = "via")]
        via: Option<String>,
        #[serde(default)]
        to: Option<String>,
        #[serde(default, deserialize_with = "policy")]
        allow: Option<String>,
        #[serde(default, deserialize_with = "duration")]
        timeout: Option<Duration>,
    }

    struct Inlets;

    impl<'de> Visitor<'de> for Inlets {
        type Value = Vec<DeclaredInlet>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from inlet name to {from: ADDR, via: RELAY, to: OUTLET}")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                service_name("inlet", &name).map_err(de::Error::custom)?;
                let body = map.next_value::<Body>()?;
                let fail = |m: String| de::Error::custom(format!("inlet {name}: {m}"));
                let to = match (body.via, body.to) {
                    (Some(relay), outlet) => {
                        let outlet = outlet.unwrap_or_else(|| "outlet".to_owned());
                        service_name("outlet", &outlet).map_err(&fail)?;
                        InletTarget::Via { relay, outlet }
                    }
                    (None, Some(route)) => {
                        route.parse::<kith_transport::MultiAddr>().map_err(|e| {
                            fail(format!("to {route:?} is not a route ({e}); with `via: RELAY`, `to` is the outlet's name"))
                        })?;
                        InletTarget::Route(route)
                    }
                    (None, None) => {
                        return Err(fail(
                            "give `via: RELAY` (and `to: OUTLET`), or `to: ROUTE`".to_owned(),
                        ));
                    }
                };
                all.push(DeclaredInlet {
                    name,
                    from: body.from,
                    to,
                    allow: body.allow,
                    timeout: body.timeout,
                });
            }
            Ok(all)
        }
    }

    d.deserialize_map(Inlets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("5432".into()),
            "TWO_LINES" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn a_whole_file_reads_into_its_declaration() {
        let f = parse(
            "name: db-node\nidentity: db\ntcp-listener-address: 127.0.0.1:0\nrequire-credential: true\n\
             metrics-address: 127.0.0.1:9464\n\
             relays: [db]\ntcp-outlets:\n  postgres:\n    to: 127.0.0.1:${PORT}\n    allow: 'component = \"web\"'\n\
             tcp-inlets:\n  psql:\n    from: 127.0.0.1:15432\n    via: db\n    to: postgres\n    timeout: 5s\n\
             limits:\n  connections: 100\n",
            env,
        )
        .unwrap();
        assert_eq!(f.name.as_deref(), Some("db-node"));
        assert_eq!(f.metrics_address.as_deref(), Some("127.0.0.1:9464"));
        assert!(f.require_credential);
        assert_eq!(
            f.relays,
            vec![DeclaredRelay {
                name: "db".into(),
                project: None
            }]
        );
        assert_eq!(f.tcp_outlets[0].to, "127.0.0.1:5432");
        assert_eq!(
            f.tcp_outlets[0].allow.as_deref(),
            Some("component = \"web\"")
        );
        assert_eq!(
            f.tcp_inlets[0].to.route("acme"),
            "/project/acme/service/forward_to_db/secure/api/service/postgres"
        );
        assert_eq!(f.tcp_inlets[0].timeout, Some(Duration::from_secs(5)));
        assert_eq!(f.limits, vec!["connections=100".to_owned()]);
    }

    #[test]
    fn an_ockam_prefix_policy_fails_saying_how_kith_writes_it() {
        let text = "name: n1\ntcp-outlets:\n  pg:\n    to: 127.0.0.1:5432\n    allow: '(= subject.component \"web\")'\n";
        let e = parse(text, env).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(5), "{e}");
        assert!(
            e.message.contains("Ockam's prefix form") && e.message.contains("component = \"web\""),
            "{e}"
        );
        // A mistake of kith's own form gets no such hint.
        let text = "name: n1\nallow: '(component = \"web\"'\n";
        let e = parse(text, env).unwrap_err();
        assert!(!e.message.contains("Ockam"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_column_of_the_bad_value() {
        let text = "name: n1\nrelays:\n  - db\ntcp-outlets:\n  pg:\n    to: 127.0.0.1:5432\n    allow: 'component ='\n";
        let e = parse(text, env).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(7), "{e}");
        assert!(e.message.contains("not a policy"), "{e}");

        let e = parse("name: n1\nlisten: 1\n", env).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(2), "{e}");
        assert!(e.message.contains("listen"), "{e}");

        let e = parse("name: n1\nname: n2\n", env).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(2), "{e}");
        assert_eq!(e.message, "key name is given twice");

        let e = parse("name: bad name\n", env).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
    }

    #[test]
    fn variables_come_from_the_environment_and_a_missing_one_is_an_error_at_its_place() {
        assert_eq!(substitute("a: ${PORT}$${X}$", env).unwrap(), "a: 5432${X}$");
        let e = substitute("a: 1\nb: x ${NOPE}\n", env).unwrap_err();
        assert_eq!(e.at, Some((2, 6)));
        assert!(e.message.contains("NOPE"));
        assert!(substitute("a: ${TWO_LINES}", env).is_err());
        assert!(substitute("a: ${1X}", env).is_err());
        assert!(substitute("a: ${PORT", env).is_err());
        // Comments are left alone; a `#` inside quotes or a word starts none.
        assert_eq!(
            substitute(
                "# uses ${NOPE}\na: 1 # ${NOPE}\nb: '#${PORT}' x#${PORT}\n",
                env
            )
            .unwrap(),
            "# uses ${NOPE}\na: 1 # ${NOPE}\nb: '#5432' x#5432\n"
        );
    }

    #[test]
    fn an_inlet_needs_a_relay_or_a_route() {
        let e = parse("tcp-inlets:\n  x:\n    from: 127.0.0.1:0\n", env).unwrap_err();
        assert!(e.message.contains("via"), "{e}");
        let f = parse(
            "tcp-inlets:\n  x:\n    from: 4000\n    to: /node/db/secure/api/service/outlet\n",
            env,
        )
        .unwrap();
        assert_eq!(
            f.tcp_inlets[0].to,
            InletTarget::Route("/node/db/secure/api/service/outlet".into())
        );
    }

    #[test]
    fn the_file_in_node_create_help_parses() {
        use clap::CommandFactory as _;
        let mut cli = crate::commands::args::Cli::command();
        let help = cli
            .find_subcommand_mut("node")
            .and_then(|n| n.find_subcommand_mut("create"))
            .unwrap()
            .render_long_help()
            .to_string();
        let file = help
            .split("A node's file (YAML; ${VAR} is taken from the environment):\n")
            .nth(1)
            .and_then(|rest| rest.split("\nAlso:").next())
            .unwrap();
        let f = parse(file, |_| Some("./db.ticket".to_owned())).unwrap();
        assert_eq!(f.name.as_deref(), Some("db-node"));
        assert_eq!(f.tcp_outlets.len(), 1);
        assert_eq!(f.tcp_inlets.len(), 1);
    }

    #[test]
    fn ockams_single_relay_key_adds_a_relay() {
        let f = parse("relay: db\nrelays: [cache]\n", env).unwrap();
        let names: Vec<&str> = f.relays.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["cache", "db"]);
        assert_eq!(f.relay, None);
        assert!(parse("relay: db\nrelays: [db]\n", env).is_err());
    }

    #[test]
    fn an_empty_ticket_is_no_ticket() {
        assert_eq!(parse("ticket: ''\n", env).unwrap().ticket, None);
        assert!(parse("ticket: nonsense\n", env).is_err());
    }

    #[test]
    fn an_empty_file_declares_nothing_and_a_huge_one_is_refused() {
        assert_eq!(parse("", env).unwrap(), NodeFile::default());
        assert!(parse(&"#".repeat(MAX_FILE + 1), env).is_err());
    }

    #[test]
    fn a_file_of_aliases_is_refused_past_the_budget() {
        let id = format!("I{}", "ab".repeat(20));
        let few = format!("allow-identities: [&a {id}, {}]\n", ["*a"; 10].join(", "));
        assert_eq!(parse(&few, env).unwrap().allow_identities.len(), 11);
        let many = format!("allow-identities: [&a {id}, {}]\n", ["*a"; 100].join(", "));
        let e = parse(&many, env).unwrap_err();
        assert!(e.message.contains("budget"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_fails_without_a_panic(text in ".{0,400}") {
            let _ = parse(&text, env);
        }

        #[test]
        fn any_yaml_shaped_text_parses_or_fails_without_a_panic(
            lines in proptest::collection::vec(
                "(name|identity|relays|tcp-outlets|tcp-inlets|ticket|allow|limits|  to|  from|  via|  - db|    to|    allow)(: )?[ -~]{0,30}",
                0..12,
            )
        ) {
            let _ = parse(&lines.join("\n"), env);
        }
    }
}
