//! Error messages: what a node sends back when it cannot deliver a message from another node,
//! and what it never sends. Driven through the public API of real in-process nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_node::*;

const WAIT: Duration = Duration::from_secs(5);

/// A message as a TCP connection hands it to the node: from a peer at `peer`.
fn from_peer(onward: impl Into<Route>, return_route: impl Into<Route>, peer: u16) -> Message {
    let mut m = Message::new(onward.into(), return_route.into(), "secret payload");
    m.local_info.origin = Origin::Transport {
        connection: Address::local("tcp-1"),
        peer: Some(SocketAddr::from(([127, 0, 0, 1], peer))),
    };
    m
}

/// A node with an echo at `remote-only` that refuses this node's own messages.
fn remote_only_echo(name: &str) -> Node {
    let node = Node::new(name);
    node.start_worker_with_policy(
        [Address::local("remote-only")],
        Arc::new(AllowOrigins(|o: &Origin| !o.is_local())),
        Echo,
    )
    .unwrap();
    node
}

/// The error a client received, which must be an error message.
async fn error_at(client: &mut Client) -> Undeliverable {
    match client.receive(WAIT).await {
        Err(RequestError::Undeliverable(u)) => u,
        other => panic!("expected an error message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_remote_message_to_an_unknown_address_is_answered_along_its_return_route() {
    let node = Node::new("db-node");
    let mut client = node.client().unwrap();
    let err = node
        .route(from_peer("nosuch", client.address().clone(), 4000))
        .await
        .unwrap_err();
    assert!(matches!(err, RouteError::UnknownAddress(_)), "{err}");
    let error = error_at(&mut client).await;
    assert_eq!(
        error,
        Undeliverable {
            node: "db-node".into(),
            address: Address::local("nosuch"),
            class: ErrorClass::UnknownAddress,
        }
    );
    assert_eq!(error.to_string(), "db-node has no service nosuch");
    let stats = node.stats();
    assert_eq!(
        (stats.error_replies_sent, stats.error_replies_suppressed),
        (1, 0)
    );
}

#[tokio::test]
async fn an_error_message_is_a_fresh_local_message_that_never_repeats_the_payload() {
    let node = Node::new("db-node");
    // A raw mailbox, so the error message itself can be looked at.
    let mut raw = node
        .register_mailbox([Address::local("raw")], Arc::new(AllowAll))
        .unwrap();
    let _ = node
        .route(from_peer("nosuch", Route::from("raw"), 4000))
        .await;
    let m = tokio::time::timeout(WAIT, raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.kind, MessageKind::Undeliverable);
    assert!(m.return_route.is_empty(), "nobody answers an error message");
    assert_eq!(m.origin(), &Origin::Local);
    let expected = Undeliverable {
        node: "db-node".into(),
        address: Address::local("nosuch"),
        class: ErrorClass::UnknownAddress,
    };
    assert_eq!(m.payload, Bytes::from(expected.encode()));
    assert_eq!(m.undeliverable(), Some(Ok(expected)));
}

#[tokio::test]
async fn a_message_refused_by_a_policy_is_answered_as_denied() {
    let node = Node::new("db-node");
    node.start_worker("echo", Echo).unwrap(); // local senders only
    let mut client = node.client().unwrap();
    let _ = node
        .route(from_peer("echo", client.address().clone(), 4000))
        .await;
    let error = error_at(&mut client).await;
    assert_eq!(error.class, ErrorClass::Denied);
    assert_eq!(
        error.to_string(),
        "db-node refused: denied by the access policy of service echo"
    );
}

#[tokio::test]
async fn a_local_sender_gets_the_error_itself_and_no_error_message() {
    let node = remote_only_echo("db-node");
    let client = node.client().unwrap();
    assert!(matches!(
        client.send("nosuch", "x").await,
        Err(RouteError::UnknownAddress(_))
    ));
    assert!(matches!(
        client.send("remote-only", "x").await,
        Err(RouteError::Denied(_))
    ));
    // A client of a transport kind no one registered: unreachable, still no error message.
    let remote = Route::from(Address::try_new(TCP, "127.0.0.1:1").unwrap());
    assert!(matches!(
        client.send(remote, "x").await,
        Err(RouteError::NoTransport { .. })
    ));
    let stats = node.stats();
    assert_eq!(stats.dropped(), 3);
    assert_eq!(
        (stats.error_replies_sent, stats.error_replies_suppressed),
        (0, 0)
    );
}

#[tokio::test]
async fn an_error_message_that_cannot_be_delivered_is_dropped_and_never_answered() {
    let node = remote_only_echo("db-node");
    // The return route leads to an unknown address, then to one whose policy refuses the
    // node's own messages: each failed message gets one error message, whose own failure
    // ends there.
    for return_hop in ["gone", "remote-only"] {
        let _ = node
            .route(from_peer("nosuch", Route::from(return_hop), 4000))
            .await;
    }
    let stats = node.stats();
    assert_eq!(stats.error_replies_sent, 2, "one per failed message");
    assert_eq!(stats.undeliverable_dropped, 2);
    assert_eq!(
        (stats.dropped_unknown_address, stats.dropped_denied),
        (3, 1),
        "nosuch twice and gone; remote-only"
    );
    // An error message from a peer that cannot be delivered is not answered either.
    let mut client = node.client().unwrap();
    let mut error = from_peer("nosuch", client.address().clone(), 4000);
    error.kind = MessageKind::Undeliverable;
    let _ = node.route(error).await;
    assert_eq!(node.stats().error_replies_sent, 2);
    assert_eq!(node.stats().undeliverable_dropped, 3);
    // The client is still reachable and got nothing but this.
    node.route(Message::new(
        Route::from(client.address().clone()),
        Route::new(),
        "only this",
    ))
    .await
    .unwrap();
    assert_eq!(
        client.receive(WAIT).await.unwrap().payload,
        Bytes::from("only this")
    );
}

#[tokio::test]
async fn try_route_answers_a_remote_failure_and_sends_from_a_task_when_it_would_block() {
    let node = Node::new("db-node");
    let mut slow = node
        .register_mailbox([Address::local("slow")], Arc::new(AllowAll))
        .unwrap();
    for _ in 0..MAILBOX_CAPACITY {
        node.try_route(Message::new(Route::from("slow"), Route::new(), "filler"))
            .unwrap();
    }
    let failed = node.try_route(from_peer("nosuch", Route::from("slow"), 4000));
    assert!(matches!(
        failed,
        Err(TryRouteError::Failed(RouteError::UnknownAddress(_)))
    ));
    assert_eq!(node.stats().error_replies_sent, 1);
    // The full mailbox made the error message wait; it comes after what was queued.
    for _ in 0..MAILBOX_CAPACITY {
        let m = slow.recv().await.unwrap();
        assert_eq!(m.payload, Bytes::from("filler"));
    }
    let m = tokio::time::timeout(WAIT, slow.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.undeliverable().unwrap().unwrap().class,
        ErrorClass::UnknownAddress
    );
}

/// A sink that takes nothing larger than `max` payload bytes.
struct Small {
    max: usize,
}

impl MessageSink for Small {
    fn try_deliver(&self, message: Message) -> Result<(), SinkError> {
        if message.payload.len() > self.max {
            let len = message.payload.len();
            return Err(SinkError::too_large(message, len, self.max));
        }
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(async {})
    }
}

fn with_small_sink(node: &Node) -> SinkHandle {
    node.register_sink(
        [Address::local("small")],
        Arc::new(AllowAll),
        Arc::new(Small { max: 4 }),
    )
    .unwrap()
}

#[tokio::test]
async fn a_sink_refusal_is_a_refused_error_for_a_local_sender() {
    let node = Node::new("db-node");
    let _small = with_small_sink(&node);
    let client = node.client().unwrap();
    let err = client.send("small", "too long").await.unwrap_err();
    assert!(
        matches!(
            &err,
            RouteError::Refused { address, class: ErrorClass::TooLarge, .. } if *address == Address::local("small")
        ),
        "{err:?}"
    );
    assert_eq!(
        DisplayChain(&err).to_string(),
        "cannot send to 0#small: the message is too large: 8 bytes, at most 4"
    );
    // The sink stays open for messages it takes.
    client.send("small", "fits").await.unwrap();
    assert_eq!(node.stats().dropped_refused, 1);
}

#[tokio::test]
async fn a_sink_refusal_is_answered_as_too_large_to_a_remote_sender() {
    let node = Node::new("db-node");
    let _small = with_small_sink(&node);
    let mut client = node.client().unwrap();
    let _ = node
        .route(from_peer("small", client.address().clone(), 4000))
        .await;
    let error = error_at(&mut client).await;
    assert_eq!(
        (error.address.clone(), error.class),
        (Address::local("small"), ErrorClass::TooLarge)
    );
    assert_eq!(
        error.to_string(),
        "db-node refused: the message is too large"
    );
    assert_eq!(node.stats().dropped_refused, 1);
}

#[tokio::test]
async fn each_sender_draws_error_messages_at_the_configured_rate_only() {
    let node = Node::new("db-node");
    node.set_error_reply_rate(ErrorReplyRate {
        per_second: 0,
        burst: 3,
    });
    assert_eq!(node.error_reply_rate().burst, 3);
    let mut client = node.client().unwrap();
    for _ in 0..10 {
        let _ = node
            .route(from_peer("nosuch", client.address().clone(), 4000))
            .await;
    }
    // Another connection has a bucket of its own.
    let _ = node
        .route(from_peer("nosuch", client.address().clone(), 4001))
        .await;
    let stats = node.stats();
    assert_eq!(
        (stats.error_replies_sent, stats.error_replies_suppressed),
        (4, 7)
    );
    for _ in 0..4 {
        error_at(&mut client).await;
    }
}

#[tokio::test]
async fn echo_does_not_answer_an_error_message() {
    let node = Node::new("db-node");
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    let mut client = node.client().unwrap();
    let mut error = Message::new(
        Route::from("echo"),
        Route::from(client.address().clone()),
        Undeliverable {
            node: "elsewhere".into(),
            address: Address::local("x"),
            class: ErrorClass::Closed,
        }
        .encode(),
    );
    error.kind = MessageKind::Undeliverable;
    node.route(error).await.unwrap();
    // Echo handles its mailbox in order: had it answered the error message, that answer would
    // arrive first.
    let reply = client.request("echo", "after", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("after"));
}

#[tokio::test]
async fn a_client_gets_an_error_message_as_the_error_it_carries() {
    let node = Node::new("db-node");
    let mut client = node.client().unwrap();
    let carried = Undeliverable {
        node: "elsewhere".into(),
        address: Address::local("api"),
        class: ErrorClass::NotAllowed,
    };
    let mut error = Message::new(
        Route::from(client.address().clone()),
        Route::new(),
        carried.encode(),
    );
    error.kind = MessageKind::Undeliverable;
    node.route(error).await.unwrap();
    let err = client.receive(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, RequestError::Undeliverable(u) if *u == carried),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "elsewhere refused the secure channel: not on its allow list"
    );
}

#[tokio::test]
async fn a_malformed_error_message_is_reported_as_such_to_a_client() {
    let node = Node::new("db-node");
    let mut client = node.client().unwrap();
    let mut error = Message::new(
        Route::from(client.address().clone()),
        Route::new(),
        &b"\x09garbage"[..],
    );
    error.kind = MessageKind::Undeliverable;
    node.route(error).await.unwrap();
    let err = client.receive(WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::MalformedErrorReply(UndeliverableDecodeError::Version(9))
        ),
        "{err:?}"
    );
}
