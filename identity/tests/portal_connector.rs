//! The inlet's connector: fresh channels per session, the policy on who answers, retries
//! within the open timeout; between real nodes over loopback TCP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Peer, WAIT, until};
use kith_identity::Identifier;
use kith_identity::policy::{Policy, PolicyAccessControl};
use kith_identity::portal::PortalConnector;
use kith_identity::secure_channel::{ChannelHop, DEFAULT_LISTENER, SharedSettings};
use kith_node::Route;
use kith_transport::portal::{Connector, Inlet, Outlet, PortalOptions, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Admits `who` alone.
fn only(who: Identifier) -> Policy {
    Policy::parse(&format!("identifier = \"{who}\"")).unwrap()
}

/// A connector from `inlet` to the `outlet` service on `to`, through one channel to its
/// listener, answered only by whom `policy` admits.
fn connector(inlet: &Peer, to: &Peer, policy: Policy, open_timeout: Duration) -> PortalConnector {
    let hops = vec![ChannelHop {
        route: to.route(DEFAULT_LISTENER),
        peer: None,
    }];
    PortalConnector::new(
        &inlet.node,
        SharedSettings::new(inlet.settings.clone()),
        hops,
        Route::from("outlet"),
        policy,
        open_timeout,
    )
}

/// Why `connector` gave a session no route, and how long it took to say so.
async fn refusal(connector: &PortalConnector) -> (Refusal, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(WAIT, connector.connect()).await {
        Ok(Err(why)) => (why, started.elapsed()),
        Ok(Ok(_)) => panic!("the session got a route"),
        Err(_) => panic!("no answer within {WAIT:?}"),
    }
}

/// A TCP server that writes back what it reads, on every connection.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_session_runs_through_fresh_channels_to_an_outlet_the_policy_admits() {
    let (i, o) = (Peer::start("i").await, Peer::listening("o").await);
    let policy = PolicyAccessControl(only(i.identifier()));
    let target = echo_server().await.to_string();
    let options = PortalOptions::default();
    Outlet::start(
        &o.node,
        "outlet",
        &target,
        Arc::new(policy),
        options.clone(),
    )
    .unwrap();
    let connector = connector(&i, &o, only(o.identifier()), options.open_timeout);
    let inlet = Inlet::start(&i.node, "127.0.0.1:0", Arc::new(connector), options)
        .await
        .unwrap();

    for round in 0..2 {
        let mut client = TcpStream::connect(inlet.address()).await.unwrap();
        let sent = format!("round {round} through the portal");
        client.write_all(sent.as_bytes()).await.unwrap();
        let mut back = vec![0; sent.len()];
        tokio::time::timeout(WAIT, client.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, sent.as_bytes());
        // One channel per session, open while it runs.
        assert_eq!(i.channel_ends(), 2);
        drop(client);
        until("the session's channel to close", || i.channel_ends() == 0).await;
    }
}

#[tokio::test]
async fn an_outlet_node_the_policy_does_not_admit_is_refused_at_once() {
    let (i, o) = (Peer::start("i").await, Peer::listening("o").await);
    // Admits only the inlet's own identity, so not the node that answers.
    let connector = connector(&i, &o, only(i.identifier()), WAIT * 3);
    let (error, waited) = refusal(&connector).await;
    assert_eq!(error.class, "outlet-not-allowed");
    assert_eq!(
        error.reason,
        format!(
            "the node at the end of the route, {}, does not satisfy the inlet's policy {}",
            o.identifier(),
            only(i.identifier())
        )
    );
    // Refused on the first answer, not retried until the open timeout.
    assert!(waited < WAIT, "{waited:?}");
    until("the refused channel to close", || i.channel_ends() == 0).await;
}

/// `i` with short handshakes, so that an attempt at a node without a listener
/// fails fast.
fn quick(mut i: Peer) -> Peer {
    i.settings.handshake_timeout = Duration::from_millis(100);
    i
}

#[tokio::test]
async fn a_session_is_retried_until_the_outlet_nodes_listener_appears() {
    let (i, o) = (quick(Peer::start("i").await), Peer::start("o").await);
    let connector = connector(&i, &o, only(o.identifier()), WAIT);
    let connecting = tokio::spawn(async move { connector.connect().await.map(|r| r.route) });
    // Each attempt's first handshake message reaches o, where no one listens yet.
    until("two attempts to fail", || {
        o.node.stats().dropped_unknown_address >= 2
    })
    .await;
    o.listen();
    let route = tokio::time::timeout(WAIT, connecting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        route.iter().last(),
        Some(&kith_node::Address::local("outlet"))
    );
}

#[tokio::test]
async fn a_session_whose_outlet_node_never_answers_gives_up_after_the_open_timeout() {
    let (i, o) = (quick(Peer::start("i").await), Peer::start("o").await);
    let open_timeout = Duration::from_millis(800);
    let connector = connector(&i, &o, only(o.identifier()), open_timeout);
    let (error, waited) = refusal(&connector).await;
    // Each attempt was told at once that o has no listener; the last answer is the class.
    assert_eq!(error.class, "unknown-address", "{error}");
    let error = error.reason;
    assert!(
        error.starts_with(&format!(
            "cannot reach the outlet: cannot open a secure channel to {}: ",
            o.route(DEFAULT_LISTENER)
        )),
        "{error}"
    );
    assert!(o.node.stats().dropped_unknown_address >= 2, "retried");
    assert!(
        waited < open_timeout + Duration::from_secs(1),
        "gave up {waited:?} after starting, for an open timeout of {open_timeout:?}"
    );
}
