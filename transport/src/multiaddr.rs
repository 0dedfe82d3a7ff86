//! Routes as written on the command line: `/ip4/127.0.0.1/tcp/4000/service/echo`.
//!
//! A [`MultiAddr`] is parsed from text with positioned errors, then turned into a [`Route`].
//! `/node/NAME` names a node of the local user; whoever builds the route (the CLI) resolves it
//! to that node's listener. `/project/NAME`, only first, names a project's node: whoever knows
//! the project replaces it with the project node's route and a secure channel to its
//! listener ([`MultiAddr::with_project`]).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use kith_node::{Address, MAX_ADDRESS_LEN, MAX_ROUTE_LEN, Route, TCP};

use crate::MultiAddrError;

/// One segment of a multiaddr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// `/ip4/A.B.C.D`
    Ip4(Ipv4Addr),
    /// `/ip6/ADDR`
    Ip6(Ipv6Addr),
    /// `/dnsaddr/HOST`
    DnsAddr(String),
    /// `/tcp/PORT`, after a host.
    Tcp(u16),
    /// `/service/NAME`: a worker on the node reached so far.
    Service(String),
    /// `/node/NAME`: a local node, by name.
    Node(String),
    /// `/secure/LISTENER`: open a secure channel to the listener on the node reached so far;
    /// the rest of the route travels inside it.
    Secure(String),
    /// `/project/NAME`, first only: a secure channel to the project's node.
    Project(String),
}

/// 4 channels: the most `/secure/` hops (a `/project/` counts as one) one route may nest. A
/// relay needs two; each layer costs a handshake and a seal per message.
pub const MAX_SECURE_HOPS: usize = 4;

/// The listener a `/project/NAME` route opens its channel with.
pub const PROJECT_LISTENER: &str = "api";

/// One protocol a route may name: its name, an example of its use, and how its value parses.
struct ProtocolSpec {
    name: &'static str,
    example: &'static str,
    parse: fn(&str) -> Result<Protocol, MultiAddrError>,
}

/// Every protocol a route may name. The parser looks names up here and the "unknown
/// protocol" error lists them from here, so what the error offers is what parses.
const PROTOCOLS: &[ProtocolSpec] = &[
    ProtocolSpec {
        name: "ip4",
        example: "/ip4/127.0.0.1/tcp/4000",
        parse: |v| {
            v.parse()
                .map(Protocol::Ip4)
                .map_err(|e| invalid("ip4", v, e))
        },
    },
    ProtocolSpec {
        name: "ip6",
        example: "/ip6/::1/tcp/4000",
        parse: |v| {
            v.parse()
                .map(Protocol::Ip6)
                .map_err(|e| invalid("ip6", v, e))
        },
    },
    ProtocolSpec {
        name: "dnsaddr",
        example: "/dnsaddr/localhost/tcp/4000",
        parse: |v| {
            let host = name("dnsaddr", v)?;
            if host.starts_with(['-', '.']) || host.contains("..") {
                return Err(invalid("dnsaddr", v, "not a host name"));
            }
            Ok(Protocol::DnsAddr(host))
        },
    },
    ProtocolSpec {
        name: "tcp",
        example: "/ip4/127.0.0.1/tcp/4000",
        parse: |v| match v.parse::<u16>() {
            Ok(0) => Err(invalid("tcp", v, "port 0 cannot be dialed")),
            Ok(p) => Ok(Protocol::Tcp(p)),
            Err(e) => Err(invalid("tcp", v, e)),
        },
    },
    ProtocolSpec {
        name: "service",
        example: "/service/echo",
        parse: |v| name("service", v).map(Protocol::Service),
    },
    ProtocolSpec {
        name: "node",
        example: "/node/n1",
        parse: |v| name("node", v).map(Protocol::Node),
    },
    ProtocolSpec {
        name: "secure",
        example: "/node/n1/secure/api/service/echo",
        parse: |v| name("secure", v).map(Protocol::Secure),
    },
    ProtocolSpec {
        name: "project",
        example: "/project/acme/service/forward_to_db",
        parse: |v| name("project", v).map(Protocol::Project),
    },
];

/// The names of the protocols a route may use, as the parser knows them: `ip4, ip6, …`.
pub(crate) fn known_protocols() -> String {
    PROTOCOLS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A parsed multiaddr route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiAddr(Vec<Protocol>);

impl MultiAddr {
    /// Split at every `/secure/LISTENER`: the routes to each listener in turn (the first from
    /// here, each next one inside the channel before it, each ending in `/service/LISTENER`),
    /// and what travels inside the last channel. No listeners if there is no secure hop.
    pub fn secure_split(&self) -> (Vec<MultiAddr>, MultiAddr) {
        let mut listeners = Vec::new();
        let mut current = Vec::new();
        for p in &self.0 {
            match p {
                Protocol::Secure(listener) => {
                    current.push(Protocol::Service(listener.clone()));
                    listeners.push(MultiAddr(std::mem::take(&mut current)));
                }
                other => current.push(other.clone()),
            }
        }
        (listeners, MultiAddr(current))
    }

    /// The project a route starts with (`/project/NAME/…`), if it does.
    pub fn project(&self) -> Option<&str> {
        match self.0.first() {
            Some(Protocol::Project(name)) => Some(name),
            _ => None,
        }
    }

    /// This route with its leading `/project/NAME` replaced by `project_route` (the project
    /// node's address) and a secure channel to its [`PROJECT_LISTENER`]. A route without a
    /// project is returned as it is.
    pub fn with_project(&self, project_route: &MultiAddr) -> Result<MultiAddr, MultiAddrError> {
        let Some((Protocol::Project(_), rest)) = self.0.split_first() else {
            return Ok(self.clone());
        };
        if project_route
            .0
            .iter()
            .any(|p| matches!(p, Protocol::Project(_) | Protocol::Secure(_)))
        {
            return Err(structure(
                "a project's route must be a plain address, e.g. /ip4/10.0.0.1/tcp/4000",
            ));
        }
        let mut out = project_route.0.clone();
        out.push(Protocol::Secure(PROJECT_LISTENER.to_owned()));
        out.extend(rest.iter().cloned());
        let expanded = MultiAddr(out);
        expanded.check()?;
        Ok(expanded)
    }

    /// Check the structure: each part between secure hops must be a valid route on its own,
    /// with at most [`MAX_SECURE_HOPS`] hops, and a project only first.
    fn check(&self) -> Result<(), MultiAddrError> {
        // As many segments as the parser reads: an expanded route must parse again.
        if self.0.len() > MAX_ROUTE_LEN * 2 {
            return Err(MultiAddrError::TooLong(MAX_ROUTE_LEN));
        }
        let hops = self
            .0
            .iter()
            .enumerate()
            .filter(|(i, p)| match p {
                Protocol::Secure(_) => true,
                Protocol::Project(_) => *i == 0,
                _ => false,
            })
            .count();
        if self
            .0
            .iter()
            .skip(1)
            .any(|p| matches!(p, Protocol::Project(_)))
        {
            return Err(structure("/project/NAME can only start a route"));
        }
        if hops > MAX_SECURE_HOPS {
            return Err(structure(&format!(
                "at most {MAX_SECURE_HOPS} secure channels (/secure/ or /project/ hops) per route"
            )));
        }
        let plain = match self.0.split_first() {
            Some((Protocol::Project(_), rest)) => {
                let mut p = vec![Protocol::Node("project".to_owned())];
                p.push(Protocol::Secure(PROJECT_LISTENER.to_owned()));
                p.extend(rest.iter().cloned());
                MultiAddr(p)
            }
            _ => self.clone(),
        };
        let (listeners, rest) = plain.secure_split();
        for part in listeners.iter().chain(std::iter::once(&rest)) {
            part.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))?;
        }
        Ok(())
    }

    /// The segments in order.
    pub fn protocols(&self) -> &[Protocol] {
        &self.0
    }

    /// The route, with `/node/NAME` resolved by `node` to the address that reaches it.
    pub fn to_route<E>(&self, mut node: impl FnMut(&str) -> Result<Address, E>) -> Result<Route, E>
    where
        E: From<MultiAddrError>,
    {
        let mut hops = Vec::new();
        let mut it = self.0.iter().peekable();
        while let Some(p) = it.next() {
            let host = match p {
                Protocol::Ip4(ip) => ip.to_string(),
                Protocol::Ip6(ip) => format!("[{ip}]"),
                Protocol::DnsAddr(h) => h.clone(),
                Protocol::Tcp(_) => {
                    return Err(structure("/tcp must follow /ip4, /ip6 or /dnsaddr").into());
                }
                Protocol::Service(s) => {
                    hops.push(
                        Address::try_new(0, s.as_str()).map_err(|e| invalid("service", s, e))?,
                    );
                    continue;
                }
                Protocol::Node(n) => {
                    hops.push(node(n)?);
                    continue;
                }
                Protocol::Secure(_) => {
                    return Err(structure("a /secure/ hop is a channel to open first; split the route with secure_split").into());
                }
                Protocol::Project(_) => {
                    return Err(structure(
                        "a /project/ hop is a channel to the project's node; expand it with with_project",
                    )
                    .into());
                }
            };
            let Some(Protocol::Tcp(port)) = it.next() else {
                return Err(structure(&format!("{host} needs a /tcp/PORT after it")).into());
            };
            let value = format!("{host}:{port}");
            hops.push(
                Address::try_new(TCP, value.as_str()).map_err(|e| invalid("tcp", &value, e))?,
            );
        }
        Route::try_from_iter(hops).map_err(|_| MultiAddrError::TooLong(MAX_ROUTE_LEN).into())
    }
}

fn structure(s: &str) -> MultiAddrError {
    MultiAddrError::Structure(s.to_owned())
}

fn invalid(protocol: &'static str, value: &str, reason: impl fmt::Display) -> MultiAddrError {
    MultiAddrError::InvalidValue {
        protocol,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn name(protocol: &'static str, value: &str) -> Result<String, MultiAddrError> {
    if value.len() > MAX_ADDRESS_LEN {
        return Err(invalid(
            protocol,
            value,
            format_args!("longer than {MAX_ADDRESS_LEN} bytes"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            protocol,
            value,
            "use letters, digits, '-', '_' and '.' only",
        ));
    }
    Ok(value.to_owned())
}

impl FromStr for MultiAddr {
    type Err = MultiAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(MultiAddrError::Empty);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(MultiAddrError::NoLeadingSlash(s.to_owned()));
        };
        let mut parts = rest.split('/').enumerate().map(|(i, p)| (i + 1, p));
        let mut out = Vec::new();
        while let Some((position, proto)) = parts.next() {
            if out.len() >= MAX_ROUTE_LEN * 2 {
                return Err(MultiAddrError::TooLong(MAX_ROUTE_LEN));
            }
            let spec = match PROTOCOLS.iter().find(|p| p.name == proto) {
                Some(spec) => spec,
                None if proto.is_empty() && position > 1 && parts.clone().next().is_none() => {
                    break; // trailing '/'
                }
                None => {
                    return Err(MultiAddrError::UnknownProtocol {
                        name: proto.to_owned(),
                        position,
                    });
                }
            };
            let value = match parts.next() {
                Some((_, v)) if !v.is_empty() => v,
                _ => {
                    return Err(MultiAddrError::MissingValue {
                        protocol: spec.name,
                        example: spec.example,
                    });
                }
            };
            out.push((spec.parse)(value)?);
        }
        let addr = MultiAddr(out);
        // Check structure now so a bad route fails at parse time, before any node is used.
        addr.check()?;
        Ok(addr)
    }
}

impl fmt::Display for MultiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Protocol::Ip4(ip) => write!(f, "/ip4/{ip}")?,
                Protocol::Ip6(ip) => write!(f, "/ip6/{ip}")?,
                Protocol::DnsAddr(h) => write!(f, "/dnsaddr/{h}")?,
                Protocol::Tcp(p) => write!(f, "/tcp/{p}")?,
                Protocol::Service(s) => write!(f, "/service/{s}")?,
                Protocol::Node(n) => write!(f, "/node/{n}")?,
                Protocol::Secure(l) => write!(f, "/secure/{l}")?,
                Protocol::Project(n) => write!(f, "/project/{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(s: &str) -> Result<Route, MultiAddrError> {
        s.parse::<MultiAddr>()?
            .to_route(|n| Ok(Address::try_new(TCP, format!("{n}.test:1")).unwrap()))
    }

    #[test]
    fn documented_forms_parse() {
        assert_eq!(
            route("/ip4/127.0.0.1/tcp/4000/service/echo")
                .unwrap()
                .to_string(),
            "[1#127.0.0.1:4000, 0#echo]"
        );
        assert_eq!(
            route("/ip6/::1/tcp/4000/service/echo").unwrap().to_string(),
            "[1#[::1]:4000, 0#echo]"
        );
        assert_eq!(
            route("/dnsaddr/localhost/tcp/4001/service/echo")
                .unwrap()
                .to_string(),
            "[1#localhost:4001, 0#echo]"
        );
        assert_eq!(
            route("/node/n1/service/echo").unwrap().to_string(),
            "[1#n1.test:1, 0#echo]"
        );
        assert_eq!(route("/service/echo/").unwrap().to_string(), "[0#echo]");
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        let e = |s: &str| route(s).unwrap_err().to_string();
        assert!(e("").contains("empty route"));
        assert!(e("node/n1").contains("must start with '/'"));
        assert!(e("/ip5/1.2.3.4").contains("unknown protocol \"ip5\" at segment 1"));
        assert!(e("/ip4/1.2.3.400/tcp/1").contains("invalid ip4 value"));
        assert!(e("/ip4/127.0.0.1").contains("needs a /tcp/PORT"));
        assert!(e("/ip4/127.0.0.1/tcp/70000").contains("invalid tcp value"));
        assert!(e("/ip4/127.0.0.1/tcp/0").contains("port 0"));
        assert!(e("/tcp/4000").contains("/tcp must follow"));
        assert!(e("/service").contains("/service needs a value"));
        assert!(e("/service/a b").contains("letters, digits"));
        assert!(e("/dnsaddr/../tcp/1").contains("invalid dnsaddr"));
        assert!(e("/secure").contains("/secure needs a value"));
        assert!(
            e("/node/a/secure/api/secure/b/secure/c/secure/d/secure/e/service/echo")
                .contains("at most 4 secure channels")
        );
        assert!(e("/service/a/project/acme").contains("can only start a route"));
        assert!(e("/project/acme/tcp/4").contains("/tcp must follow"));
        assert!(e("/project/a%2Fb").contains("invalid project"));
        assert!(e("/node/a/secure/api/tcp/4").contains("/tcp must follow"));
    }

    #[test]
    fn the_unknown_protocol_error_lists_exactly_the_protocols_the_parser_takes() {
        let shown = "/ip5/1.2.3.4".parse::<MultiAddr>().unwrap_err().to_string();
        let (_, listed) = shown.split_once("known: ").unwrap();
        let listed: std::collections::BTreeSet<&str> = listed.split(", ").collect();
        // Exhaustive: a new kind of segment does not compile here until it is named.
        let name_of = |p: &Protocol| match p {
            Protocol::Ip4(_) => "ip4",
            Protocol::Ip6(_) => "ip6",
            Protocol::DnsAddr(_) => "dnsaddr",
            Protocol::Tcp(_) => "tcp",
            Protocol::Service(_) => "service",
            Protocol::Node(_) => "node",
            Protocol::Secure(_) => "secure",
            Protocol::Project(_) => "project",
        };
        let every: MultiAddr = "/project/acme/service/forward_to_db/secure/api/node/n1\
             /ip4/127.0.0.1/tcp/1/ip6/::1/tcp/2/dnsaddr/localhost/tcp/3/service/echo"
            .parse()
            .unwrap();
        let parsed: std::collections::BTreeSet<&str> =
            every.protocols().iter().map(name_of).collect();
        assert_eq!(listed, parsed, "{shown}");
        assert!(
            listed.contains("secure") && listed.contains("project"),
            "{shown}"
        );
        for name in listed {
            let e = format!("/{name}/x").parse::<MultiAddr>().err();
            assert!(
                !matches!(e, Some(MultiAddrError::UnknownProtocol { .. })),
                "{name} is listed as known but does not parse: {e:?}"
            );
        }
    }

    #[test]
    fn secure_routes_split_at_each_channel() {
        let m: MultiAddr = "/ip4/127.0.0.1/tcp/4002/secure/api/service/echo"
            .parse()
            .unwrap();
        let (listeners, rest) = m.secure_split();
        assert_eq!(listeners.len(), 1);
        assert_eq!(
            listeners[0].to_string(),
            "/ip4/127.0.0.1/tcp/4002/service/api"
        );
        assert_eq!(rest.to_string(), "/service/echo");
        assert_eq!(
            m.to_string(),
            "/ip4/127.0.0.1/tcp/4002/secure/api/service/echo"
        );
        assert!(
            m.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .is_err()
        );
        let plain: MultiAddr = "/node/n1/service/echo".parse().unwrap();
        assert!(plain.secure_split().0.is_empty());

        let nested: MultiAddr = "/node/p/secure/api/service/forward_to_db/secure/api/service/echo"
            .parse()
            .unwrap();
        let (listeners, rest) = nested.secure_split();
        let shown: Vec<_> = listeners.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["/node/p/service/api", "/service/forward_to_db/service/api"]
        );
        assert_eq!(rest.to_string(), "/service/echo");
    }

    #[test]
    fn a_project_expands_to_its_route_and_a_channel() {
        let m: MultiAddr = "/project/acme/service/forward_to_db/secure/api/service/echo"
            .parse()
            .unwrap();
        assert_eq!(m.project(), Some("acme"));
        assert_eq!(
            m.to_string(),
            "/project/acme/service/forward_to_db/secure/api/service/echo"
        );
        assert!(
            m.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .unwrap_err()
                .to_string()
                .contains("with_project")
        );
        let at: MultiAddr = "/ip4/10.0.0.1/tcp/4000".parse().unwrap();
        let expanded = m.with_project(&at).unwrap();
        assert_eq!(
            expanded.to_string(),
            "/ip4/10.0.0.1/tcp/4000/secure/api/service/forward_to_db/secure/api/service/echo"
        );
        assert_eq!(expanded.project(), None);
        let bad: MultiAddr = "/node/x/secure/api".parse().unwrap();
        assert!(m.with_project(&bad).is_err());
        // Expanding adds segments; a route that then parses no more is refused.
        let half = "/service/s".repeat(MAX_ROUTE_LEN - 1);
        let longest = format!("/project/acme{half}/secure/api{half}");
        let longest: MultiAddr = longest.parse().unwrap();
        assert!(matches!(
            longest.with_project(&at),
            Err(MultiAddrError::TooLong(_))
        ));
        let none: MultiAddr = "/service/echo".parse().unwrap();
        assert_eq!(none.with_project(&at).unwrap(), none);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "(/(ip4|ip6|tcp|dnsaddr|service|node|secure|project|x)?(/[0-9a-z.:]{0,6})?){0,8}") {
            if let Ok(m) = s.parse::<MultiAddr>() {
                prop_assert_eq!(m.to_string().parse::<MultiAddr>().unwrap(), m);
            }
        }

        #[test]
        fn any_string_parses_or_errors(s in ".{0,200}") {
            let _ = s.parse::<MultiAddr>();
        }
    }
}
