//! Sources: who a cap is counted against. One address is one source, except that an IPv6
//! host owns a whole /64 (one machine gets one from its router and may use any address in
//! it), and an IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The source a peer's caps are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer at `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)))
                }
            },
        }
    }

    /// The address (or, for IPv6, the first address of the /64) that names the source.
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv4_is_its_own_source_and_mapped_ipv6_is_the_same() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(Source::of(v4), Source::of(mapped));
        assert_ne!(Source::of(v4), Source::of("127.0.0.3".parse().unwrap()));
        assert_eq!(Source::of(v4).to_string(), "127.0.0.2");
    }

    #[test]
    fn an_ipv6_host_owns_its_slash_64() {
        let a = Source::of("2001:db8:1:2::1".parse().unwrap());
        let b = Source::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let other = Source::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    proptest! {
        #[test]
        fn every_address_has_one_source_that_is_stable(bytes in any::<[u8; 16]>()) {
            let ip = IpAddr::V6(Ipv6Addr::from(bytes));
            let s = Source::of(ip);
            prop_assert_eq!(Source::of(s.ip()), s);
        }
    }
}
