//! Parsing a `MultiAddr` from any text never panics. Whatever parses prints (`Display`) as
//! text that parses back to an equal value and prints the same again. `to_route` never panics,
//! whatever the `/node/NAME` resolver does: with the resolver that parsing itself checks with
//! (`Address::local`) it succeeds, with a resolver that refuses it fails only if the route
//! names a node, and every route it returns has at most `MAX_ROUTE_LEN` hops.
//!
//! A route with one `/secure/L` hop splits into two routes that are each valid, and is not
//! itself a plain route.
//!
//! Input: UTF-8 text (other inputs are skipped).

#![no_main]

use kith_node::{Address, MAX_ROUTE_LEN, TCP};
use kith_transport::{MAX_SECURE_HOPS, MultiAddr, MultiAddrError, Protocol};
use libfuzzer_sys::fuzz_target;

/// A resolver's own error, as the CLI has one, to check `E: From<MultiAddrError>` plumbing.
#[derive(Debug)]
enum ResolveError {
    Route(MultiAddrError),
    UnknownNode,
}

impl From<MultiAddrError> for ResolveError {
    fn from(e: MultiAddrError) -> Self {
        Self::Route(e)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = text.parse::<MultiAddr>() else {
        return;
    };

    let shown = m.to_string();
    let again = shown
        .parse::<MultiAddr>()
        .unwrap_or_else(|e| panic!("{text:?} parsed but its display {shown:?} does not: {e}"));
    assert_eq!(again, m, "{text:?} -> {shown:?}");
    assert_eq!(again.to_string(), shown);

    // A route that starts with a project expands, with any plain project route, to a route
    // that parses again and no longer names the project.
    if m.project().is_some() {
        assert!(
            m.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .is_err()
        );
        let at: MultiAddr = "/ip4/10.0.0.1/tcp/4000"
            .parse()
            .expect("a plain route parses");
        // Expanding adds segments: a route near the limit may then be too long, which is an
        // error, never a route that does not parse again.
        let expanded = match m.with_project(&at) {
            Ok(e) => e,
            Err(MultiAddrError::TooLong(_)) => return,
            Err(e) => panic!("{text:?}: a parsed project route does not expand: {e}"),
        };
        assert!(expanded.project().is_none());
        assert_eq!(
            expanded.to_string().parse::<MultiAddr>().ok(),
            Some(expanded)
        );
        return;
    }

    // A route with secure hops is several routes: to each listener in turn, and inside the
    // last channel. Each is valid on its own; the whole is not a plain route.
    let (listeners, rest) = m.secure_split();
    if !listeners.is_empty() {
        assert!(
            m.to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .is_err()
        );
        assert!(
            listeners.len() <= MAX_SECURE_HOPS,
            "{text:?}: too many secure hops parsed"
        );
        assert!(rest.secure_split().0.is_empty());
        for part in listeners.iter().chain([&rest]) {
            let r = part
                .to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
                .unwrap_or_else(|e| panic!("{text:?}: part {part} of a secure route fails: {e}"));
            assert!(r.len() <= MAX_ROUTE_LEN);
        }
        return;
    }

    let names_a_node = m.protocols().iter().any(|p| matches!(p, Protocol::Node(_)));

    let local = m
        .to_route(|n| Ok::<_, MultiAddrError>(Address::local(n)))
        .unwrap_or_else(|e| panic!("{text:?} parsed but to_route with local nodes fails: {e}"));
    assert!(local.len() <= MAX_ROUTE_LEN);

    match m.to_route(|_| Err::<Address, _>(ResolveError::UnknownNode)) {
        Ok(r) => {
            assert!(!names_a_node, "a refused node was not asked for");
            assert_eq!(r, local);
        }
        Err(ResolveError::UnknownNode) => assert!(names_a_node),
        Err(ResolveError::Route(e)) => panic!("{text:?} parsed but to_route reports {e}"),
    }

    // A resolver that returns long TCP addresses (near MAX_ADDRESS_LEN) or fails by name.
    let _ = m.to_route(|n| {
        if n.starts_with('x') {
            return Err(ResolveError::UnknownNode);
        }
        Address::try_new(TCP, format!("{}.example:65535", n.repeat(4)))
            .map_err(|_| ResolveError::UnknownNode)
    });
});
