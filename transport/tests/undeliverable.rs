//! Error messages between real nodes over loopback TCP: a remote sender learns at once why
//! its message was not delivered, and a peer cannot make a node answer without bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_node::testing::until;
use kith_node::*;
use kith_transport::*;

const WAIT: Duration = Duration::from_secs(10);

async fn node(name: &str, options: TcpOptions) -> (Node, TcpTransport, String) {
    let node = Node::new(name);
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    let tcp = TcpTransport::start_with(&node, options);
    let addr = tcp.listen("127.0.0.1:0").await.unwrap();
    (node, tcp, addr.to_string())
}

fn peer(addr: &str) -> Address {
    Address::try_new(TCP, addr).unwrap()
}

fn to(addr: &str, service: &str) -> Route {
    Route::from(vec![peer(addr), Address::local(service)])
}

/// The error message `client` received.
async fn error_at(client: &mut Client) -> Undeliverable {
    match client.receive(WAIT).await {
        Err(RequestError::Undeliverable(error)) => error,
        other => panic!("expected an error message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_remote_sender_to_an_unknown_service_learns_the_node_hop_and_class_at_once() {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("db-node", TcpOptions::default()).await;
    let mut client = a.client().unwrap();
    // Answered, not timed out: the request's own timeout is far away.
    let err = client
        .request(to(&b_addr, "nosuch"), "hello", WAIT)
        .await
        .unwrap_err();
    let RequestError::Undeliverable(error) = &err else {
        panic!("expected db-node's error message, got {err:?}");
    };
    assert_eq!(
        *error,
        Undeliverable {
            node: "db-node".into(),
            address: Address::local("nosuch"),
            class: ErrorClass::UnknownAddress,
        }
    );
    assert_eq!(err.to_string(), "db-node has no service nosuch");
    assert_eq!(b.stats().error_replies_sent, 1);
    // The connection carries on.
    let reply = client
        .request(to(&b_addr, "echo"), "ok", WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("ok"));
}

#[tokio::test]
async fn one_failed_message_makes_one_error_message_even_when_its_return_route_fails_back_at_the_sender()
 {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("b", TcpOptions::default()).await;
    // Connect first, so the error message can come back over this connection.
    let mut client = a.client().unwrap();
    client
        .request(to(&b_addr, "echo"), "hi", WAIT)
        .await
        .unwrap();
    // Unknown at b, answered towards a; a sends the answer back to b, to another unknown
    // address: there the error message fails in turn, and nobody answers that.
    let m = Message::new(to(&b_addr, "nosuch"), to(&b_addr, "nosuch-either"), "x");
    a.route(m).await.unwrap();
    until("b to drop its own error message", || {
        b.stats().undeliverable_dropped == 1
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        sb.error_replies_sent, 1,
        "one error message for one failed message"
    );
    assert_eq!(sb.dropped_unknown_address, 2, "nosuch, then nosuch-either");
    assert_eq!(
        (sa.error_replies_sent, sa.undeliverable_dropped),
        (0, 0),
        "a passed the error message on and answered nothing"
    );
    // Nothing more is on its way: a round trip after it finds the counters unchanged.
    client
        .request(to(&b_addr, "echo"), "after", WAIT)
        .await
        .unwrap();
    assert_eq!(b.stats().error_replies_sent, 1);
    assert_eq!(b.stats().undeliverable_dropped, 1);
    assert_eq!(a.stats().error_replies_sent, 0);
}

#[tokio::test]
async fn a_flood_of_undeliverable_messages_on_one_connection_draws_error_messages_only_at_the_rate()
{
    const FLOOD: u64 = 200;
    let rate = ErrorReplyRate {
        per_second: 5,
        burst: 5,
    };
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("b", TcpOptions::default()).await;
    b.set_error_reply_rate(rate);
    let mut client = a.client().unwrap();
    let started = Instant::now();
    for _ in 0..FLOOD {
        client.send(to(&b_addr, "nosuch"), "x").await.unwrap();
    }
    until("b to have answered or suppressed every message", || {
        let s = b.stats();
        s.error_replies_sent + s.error_replies_suppressed == FLOOD
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = b.stats();
    let allowed = f64::from(rate.burst) + f64::from(rate.per_second) * elapsed;
    assert!(
        stats.error_replies_sent >= u64::from(rate.burst)
            && stats.error_replies_sent as f64 <= allowed.floor(),
        "{} error messages in {elapsed:.3} s, at most {allowed:.1} allowed",
        stats.error_replies_sent
    );
    assert_eq!(stats.dropped_unknown_address, FLOOD);
    // The client receives exactly the error messages that were sent.
    for _ in 0..stats.error_replies_sent {
        assert_eq!(
            error_at(&mut client).await.class,
            ErrorClass::UnknownAddress
        );
    }
    let reply = client
        .request(to(&b_addr, "echo"), "after", WAIT)
        .await
        .unwrap();
    assert_eq!(
        reply.payload,
        Bytes::from("after"),
        "no more error messages were queued"
    );
}

#[tokio::test]
async fn a_message_too_large_for_the_next_connection_is_answered_as_too_large() {
    // b takes frames of at most MAX from a and sends at most MAX to c; the message from a
    // fits, but on from b its return route is longer by b's connection address.
    const MAX: usize = 64 * 1024;
    let small = TcpOptions {
        max_frame_len: MAX,
        ..TcpOptions::default()
    };
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("relay-node", small).await;
    let (c, tc, c_addr) = node("c", TcpOptions::default()).await;
    // b connects to c itself: a message from a may use a connection, never open one.
    let mut at_b = b.client().unwrap();
    at_b.request(to(&c_addr, "echo"), "hi", WAIT).await.unwrap();

    let mut client = a.client().unwrap();
    let onward = Route::from(vec![peer(&b_addr), peer(&c_addr), Address::local("echo")]);
    let at_b_onward = Route::from(vec![peer(&c_addr), Address::local("echo")]);
    let fill = |payload_len: usize| TransportMessage {
        onward_route: at_b_onward.clone(),
        return_route: Route::from(client.address().clone()),
        payload: Bytes::from(vec![0u8; payload_len]),
        kind: MessageKind::Data,
    };
    // The largest payload whose frame from a to b is within MAX.
    let overhead = fill(0).encoded_len();
    let mut payload_len = MAX - overhead;
    while fill(payload_len).encoded_len() > MAX {
        payload_len -= 1;
    }
    let err = client
        .request(onward, vec![0u8; payload_len], WAIT)
        .await
        .unwrap_err();
    let RequestError::Undeliverable(error) = &err else {
        panic!("expected relay-node's error message, got {err:?}");
    };
    assert_eq!(
        (error.address.clone(), error.class),
        (peer(&c_addr), ErrorClass::TooLarge)
    );
    assert_eq!(
        err.to_string(),
        "relay-node refused: the message is too large"
    );
    assert_eq!(b.stats().dropped_refused, 1);
    assert_eq!(tc.stats().frames_in, 1, "only the first request reached c");
    c.shutdown().await;
}
