//! Channels stacked one inside another, and the signal that tells a channel's owner it has
//! ended, between real nodes over loopback TCP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Peer, WAIT, until};
use kith_identity::channel::HandshakeError;
use kith_identity::secure_channel::{
    self, ChannelEnded, ChannelHop, ChannelStack, ChannelStackError, DEFAULT_LISTENER,
    SecureChannelError,
};
use kith_node::{Address, AllowAll, Origin, Route};

/// `b`'s listener over TCP, answered by `b` alone.
fn to_listener_of(b: &Peer) -> ChannelHop {
    ChannelHop {
        route: b.route(DEFAULT_LISTENER),
        peer: Some(b.identifier()),
    }
}

/// The listener of the node at the far end of the channel before.
fn inside(peer: Option<kith_identity::Identifier>) -> ChannelHop {
    ChannelHop {
        route: Route::from(DEFAULT_LISTENER),
        peer,
    }
}

#[tokio::test]
async fn a_stack_opens_each_channel_inside_the_one_before_and_routes_through_the_innermost() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let hops = [to_listener_of(&b), inside(None)];
    let stack = ChannelStack::open(&a.node, &a.settings, &hops, WAIT)
        .await
        .unwrap();
    let [outer, inner] = stack.channels() else {
        panic!("two channels, not {}", stack.channels().len());
    };
    assert_eq!(inner.peer.identifier, b.identifier());
    assert_ne!(outer.handshake_hash, inner.handshake_hash);
    until("b's two channels", || b.channel_ends() == 4).await;

    let route = stack.route_through(&Route::from("echo")).unwrap();
    assert_eq!(
        route,
        Route::from(vec![inner.encryptor.clone(), Address::local("echo")])
    );
    let mut client = a.node.client().unwrap();
    let reply = client.request(route, "through both", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("through both"));
    assert!(matches!(
        reply.origin(),
        Origin::SecureChannel(peer) if peer.handshake_hash == inner.handshake_hash
    ));

    drop(stack);
    // B's end of the outer channel is told. Its end of the inner one hears nothing: the
    // inner `Close` would travel through the outer channel, which is closed at once.
    until("both channels to close here and the outer one at b", || {
        a.channel_ends() == 0 && b.channel_ends() <= 2
    })
    .await;
}

#[tokio::test]
async fn a_hop_answered_by_another_identity_fails_naming_its_route_and_closes_those_before() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    // B answers the second hop too, but it admits only A.
    let hops = [to_listener_of(&b), inside(Some(a.identifier()))];
    let error = match ChannelStack::open(&a.node, &a.settings, &hops, WAIT).await {
        Ok(_) => panic!("the second hop admits only a, and b answered"),
        Err(e) => e,
    };
    let ChannelStackError::Open {
        route,
        source: SecureChannelError::Handshake(HandshakeError::NotAdmitted(found, _)),
    } = &error
    else {
        panic!("not a refusal of the second hop: {error:?}");
    };
    assert_eq!((route.as_str(), *found), ("[0#api]", b.identifier()));
    assert!(
        error
            .to_string()
            .starts_with("cannot open a secure channel to [0#api]"),
        "{error}"
    );
    until("the first channel to close", || a.channel_ends() == 0).await;
}

#[tokio::test]
async fn a_hop_whose_end_never_answers_times_out_naming_its_route() {
    let (a, b) = (Peer::start("a").await, Peer::start("b").await);
    // Takes the handshake and says nothing, as a listener that hung would.
    let _silent = b
        .node
        .register_mailbox([Address::local("silent")], Arc::new(AllowAll))
        .unwrap();
    let shown = b.route("silent").to_string();
    let hops = [ChannelHop {
        route: b.route("silent"),
        peer: None,
    }];
    let timeout = Duration::from_millis(200);
    let error = tokio::time::timeout(
        WAIT,
        ChannelStack::open(&a.node, &a.settings, &hops, timeout),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(
        matches!(&error, ChannelStackError::Timeout { route, timeout: t } if *route == shown && *t == timeout),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("no secure channel to {shown} within {timeout:?}")
    );
}

#[tokio::test]
async fn a_hop_without_a_listener_fails_before_its_timeout_naming_its_route() {
    let (a, b) = (Peer::start("a").await, Peer::start("b").await);
    let shown = b.route(DEFAULT_LISTENER).to_string();
    let hops = [ChannelHop {
        route: b.route(DEFAULT_LISTENER),
        peer: None,
    }];
    // b answers the first handshake message with an error message (no service `api`), so
    // the stack fails at once rather than after the handshake timeout.
    let error = tokio::time::timeout(
        WAIT,
        ChannelStack::open(&a.node, &a.settings, &hops, WAIT * 10),
    )
    .await
    .expect("the error message ends the wait, not the handshake timeout")
    .err()
    .unwrap();
    assert!(
        matches!(&error, ChannelStackError::Open { route, .. } if *route == shown),
        "{error:?}"
    );
    assert_eq!(b.node.stats().error_replies_sent, 1);
}

#[tokio::test]
async fn no_hops_make_an_empty_stack_whose_route_is_the_route_itself() {
    let a = Peer::start("a").await;
    let stack = ChannelStack::open(&a.node, &a.settings, &[], WAIT)
        .await
        .unwrap();
    assert!(stack.innermost().is_none());
    let route = a.route("echo");
    assert_eq!(stack.route_through(&route).unwrap(), route);
}

/// A channel from `a` to `b`'s listener, and its end signal, not yet fired.
async fn channel(a: &Peer, b: &Peer) -> (secure_channel::SecureChannel, secure_channel::EndSignal) {
    let channel = secure_channel::create(&a.node, b.route(DEFAULT_LISTENER), &a.settings)
        .await
        .unwrap();
    let end = channel.end_signal();
    assert_eq!(end.has_ended(), None);
    (channel, end)
}

#[tokio::test]
async fn a_channels_end_signal_fires_when_it_is_closed() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let (channel, end) = channel(&a, &b).await;
    assert!(secure_channel::close(&a.node, &channel));
    let ended = tokio::time::timeout(WAIT, end.ended()).await.unwrap();
    assert_eq!(ended, ChannelEnded::Closed);
    assert_eq!(channel.end_signal().has_ended(), Some(ChannelEnded::Closed));
}

#[tokio::test]
async fn a_channels_end_signal_fires_when_the_peer_node_shuts_down() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let (_channel, end) = channel(&a, &b).await;
    b.node.shutdown().await;
    // The peer's `Close` or the connection's end, whichever is first.
    tokio::time::timeout(WAIT, end.ended()).await.unwrap();
}

#[tokio::test]
async fn a_channels_end_signal_fires_when_its_connection_is_dropped() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let (_channel, end) = channel(&a, &b).await;
    // B drops the connection without closing its end of the channel: no `Close` is sent.
    let connections = b.tcp.connections();
    assert_eq!(connections.len(), 1);
    assert!(b.node.stop_worker(&connections[0].address));
    let ended = tokio::time::timeout(WAIT, end.ended()).await.unwrap();
    assert_eq!(ended, ChannelEnded::ConnectionClosed);
}

#[tokio::test]
async fn both_ends_of_a_channel_close_themselves_when_its_connection_is_dropped() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let (_channel, end) = channel(&a, &b).await;
    until("b's end of the channel", || b.channel_ends() == 2).await;
    let connections = b.tcp.connections();
    assert_eq!(connections.len(), 1);
    assert!(b.node.stop_worker(&connections[0].address));
    let ended = tokio::time::timeout(WAIT, end.ended()).await.unwrap();
    assert_eq!(ended, ChannelEnded::ConnectionClosed);
    // Nobody closed either end: each noticed that its connection was gone, and freed it.
    until("both ends to free their channel", || {
        a.channel_ends() == 0 && b.channel_ends() == 0
    })
    .await;
}

#[tokio::test]
async fn a_channel_nested_in_another_closes_with_it_at_both_ends() {
    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let hops = [to_listener_of(&b), inside(None)];
    let stack = ChannelStack::open(&a.node, &a.settings, &hops, WAIT)
        .await
        .unwrap();
    let [outer, inner] = stack.channels() else {
        panic!("two channels");
    };
    let inner_end = inner.end_signal();
    until("b's two channels", || b.channel_ends() == 4).await;
    // Only the outer channel is closed, here; the inner one is left to notice.
    assert!(secure_channel::close(&a.node, outer));
    let ended = tokio::time::timeout(WAIT, inner_end.ended()).await.unwrap();
    assert_eq!(ended, ChannelEnded::ConnectionClosed);
    until("every channel end to be freed on both nodes", || {
        a.channel_ends() == 0 && b.channel_ends() == 0
    })
    .await;
    drop(stack);
}

#[tokio::test]
async fn a_channel_whose_peer_goes_silent_ends_after_the_idle_timeout() {
    let (mut a, mut b) = (Peer::start("a").await, Peer::start("b").await);
    // A never sends a keep-alive; b gives up on a silent peer after 300 ms.
    a.settings.keepalive_interval = Duration::from_secs(3600);
    b.settings.idle_timeout = Duration::from_millis(300);
    b.listen();
    let (_channel, end) = channel(&a, &b).await;
    until("b's end of the channel", || b.channel_ends() == 2).await;
    let started = std::time::Instant::now();
    until("b to end the channel with its silent peer", || {
        b.channel_ends() == 0
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "ended after {:?}, before the idle timeout",
        started.elapsed()
    );
    // B's `Close` reaches a, whose end closes too.
    let ended = tokio::time::timeout(WAIT, end.ended()).await.unwrap();
    assert_eq!(ended, ChannelEnded::Closed);
}

#[tokio::test]
async fn keep_alives_hold_a_quiet_healthy_channel_open_past_the_idle_timeout() {
    let (mut a, mut b) = (Peer::start("a").await, Peer::start("b").await);
    for peer in [&mut a, &mut b] {
        peer.settings.keepalive_interval = Duration::from_millis(50);
        peer.settings.idle_timeout = Duration::from_millis(300);
    }
    b.listen();
    let (channel, end) = channel(&a, &b).await;
    // Quiet for five idle timeouts: waiting for the end must run out, since keep-alives
    // tell each side the other is there.
    let ended = tokio::time::timeout(Duration::from_millis(1500), end.ended()).await;
    assert!(ended.is_err(), "the channel ended: {ended:?}");
    let mut client = a.node.client().unwrap();
    let route = Route::from(vec![channel.encryptor.clone(), Address::local("echo")]);
    let reply = client.request(route, "still here", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("still here"));
}

#[tokio::test]
async fn a_message_at_the_payload_cap_crosses_a_nested_channel_whole_and_one_byte_more_is_refused()
{
    use kith_identity::channel::MAX_MESSAGE_PAYLOAD;

    let (a, b) = (Peer::start("a").await, Peer::listening("b").await);
    let hops = [to_listener_of(&b), inside(None)];
    let stack = ChannelStack::open(&a.node, &a.settings, &hops, WAIT)
        .await
        .unwrap();
    let route = stack.route_through(&Route::from("echo")).unwrap();
    let mut client = a.node.client().unwrap();
    for len in [MAX_MESSAGE_PAYLOAD, MAX_MESSAGE_PAYLOAD - 1, 1] {
        let payload = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let reply = client
            .request(route.clone(), payload.clone(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert!(reply.payload == payload, "{len} bytes came back altered");
    }
    let over = Bytes::from(vec![1u8; MAX_MESSAGE_PAYLOAD + 1]);
    let refused = client.request(route.clone(), over, WAIT).await.unwrap_err();
    assert!(
        refused.to_string().contains("too large"),
        "one byte over the cap: {refused}"
    );
    // The refusal concerned that message only.
    let reply = client.request(route, "still open", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("still open"));
}
