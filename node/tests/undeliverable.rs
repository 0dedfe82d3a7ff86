//! Error messages: what a node sends back when it cannot deliver a message from another node,
//! and what it never sends. Driven through the public API of real in-process nodes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_node::*;

const WAIT: Duration = Duration::from_secs(5);

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
