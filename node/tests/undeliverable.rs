//! Error messages: what a node sends back when it cannot deliver a message from another node,
//! and what it never sends. Driven through the public API of real in-process nodes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_node::*;

const WAIT: Duration = Duration::from_secs(5);

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
