//! Routes as written on the command line: `/ip4/127.0.0.1/tcp/4000/service/echo`.
//!
//! A [`MultiAddr`] is parsed from text with positioned errors, then turned into a [`Route`].
//! `/node/NAME` names a node of the local user; whoever builds the route (the CLI) resolves it
//! to that node's listener.

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
}

/// A parsed multiaddr route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiAddr(Vec<Protocol>);

impl MultiAddr {
    /// Split at the first `/secure/LISTENER`: the route to the listener (ending in
    /// `/service/LISTENER`), and what follows, which travels inside the channel. `None` if
    /// there is no secure hop.
    pub fn secure_split(&self) -> Option<(MultiAddr, MultiAddr)> {
        let at = self
            .0
            .iter()
            .position(|p| matches!(p, Protocol::Secure(_)))?;
        let (before, after) = self.0.split_at(at);
        let (secure, rest) = after.split_first()?;
        let Protocol::Secure(listener) = secure else {
            return None;
        };
        let mut to_listener = before.to_vec();
        to_listener.push(Protocol::Service(listener.clone()));
        Some((MultiAddr(to_listener), MultiAddr(rest.to_vec())))
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
            let (protocol, example): (&'static str, &'static str) = match proto {
                "ip4" => ("ip4", "/ip4/127.0.0.1/tcp/4000"),
                "ip6" => ("ip6", "/ip6/::1/tcp/4000"),
                "dnsaddr" => ("dnsaddr", "/dnsaddr/localhost/tcp/4000"),
                "tcp" => ("tcp", "/ip4/127.0.0.1/tcp/4000"),
                "service" => ("service", "/service/echo"),
                "node" => ("node", "/node/n1"),
                "secure" => ("secure", "/node/n1/secure/api/service/echo"),
                "" if position > 1 && parts.clone().next().is_none() => break, // trailing '/'
                other => {
                    return Err(MultiAddrError::UnknownProtocol {
                        name: other.to_owned(),
                        position,
                    });
                }
            };
            let value = match parts.next() {
                Some((_, v)) if !v.is_empty() => v,
                _ => return Err(MultiAddrError::MissingValue { protocol, example }),
            };
            out.push(match protocol {
                "ip4" => Protocol::Ip4(value.parse().map_err(|e| invalid(protocol, value, e))?),
                "ip6" => Protocol::Ip6(value.parse().map_err(|e| invalid(protocol, value, e))?),
                "dnsaddr" => {
                    let host = name(protocol, value)?;
                    if host.starts_with(['-', '.']) || host.contains("..") {
                        return Err(invalid(protocol, value, "not a host name"));
                    }
                    Protocol::DnsAddr(host)
                }
                "tcp" => match value.parse::<u16>() {
                    Ok(0) => return Err(invalid(protocol, value, "port 0 cannot be dialed")),
                    Ok(p) => Protocol::Tcp(p),
                    Err(e) => return Err(invalid(protocol, value, e)),
                },
                "service" => Protocol::Service(name(protocol, value)?),
                "secure" => Protocol::Secure(name(protocol, value)?),
                _ => Protocol::Node(name(protocol, value)?),
            });
        }
        let addr = MultiAddr(out);
        // Check structure now so a bad route fails at parse time, before any node is used:
        // each side of a secure hop must be a valid route on its own.
        let check = |m: &MultiAddr| {
            m.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .map(|_| ())
        };
        match addr.secure_split() {
            Some((to_listener, rest)) => {
                check(&to_listener)?;
                if rest.0.iter().any(|p| matches!(p, Protocol::Secure(_))) {
                    return Err(structure("one /secure/ hop per route is supported"));
                }
                check(&rest)?;
            }
            None => check(&addr)?,
        }
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
        assert!(e("/node/a/secure/api/secure/api/service/echo").contains("one /secure/ hop"));
        assert!(e("/node/a/secure/api/tcp/4").contains("/tcp must follow"));
    }

    #[test]
    fn secure_routes_split_at_the_channel() {
        let m: MultiAddr = "/ip4/127.0.0.1/tcp/4002/secure/api/service/echo"
            .parse()
            .unwrap();
        let (to_listener, rest) = m.secure_split().unwrap();
        assert_eq!(
            to_listener.to_string(),
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
        assert!(plain.secure_split().is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "(/(ip4|ip6|tcp|dnsaddr|service|node|secure|x)?(/[0-9a-z.:]{0,6})?){0,8}") {
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
