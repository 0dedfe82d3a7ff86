//! The runtime's behaviour, driven through its public API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kith_node::*;

const WAIT: Duration = Duration::from_secs(5);

fn node_with_echo() -> Node {
    let node = Node::new("test");
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    node
}

#[tokio::test]
async fn client_request_reaches_echo_and_gets_the_payload_back() {
    let node = node_with_echo();
    let mut client = node.client().unwrap();
    let reply = client.request("echo", "hello", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("hello"));
    assert_eq!(reply.return_route, Route::from("echo"));
    assert_eq!(node.stats().delivered, 2);
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_address_is_an_error_and_counted_not_a_panic() {
    let node = Node::new("test");
    let client = node.client().unwrap();
    let err = client.send("nobody", "x").await.unwrap_err();
    assert!(matches!(err, RouteError::UnknownAddress(a) if a == Address::local("nobody")));
    assert_eq!(node.stats().dropped_unknown_address, 1);
    let err = client.send(Route::new(), "x").await.unwrap_err();
    assert!(matches!(err, RouteError::EmptyRoute));
    assert_eq!(node.stats().dropped_empty_route, 1);
}

#[tokio::test]
async fn worker_without_policy_refuses_transport_and_channel_origins() {
    let node = Node::new("test");
    node.start_worker("private", Echo).unwrap();
    for origin in [
        Origin::Transport {
            connection: Address::local("tcp-1"),
            peer: None,
        },
        Origin::SecureChannel(Arc::new(ChannelPeer {
            identifier: "I00".into(),
            attributes: Default::default(),
            handshake_hash: [0; 32],
            source: None,
        })),
    ] {
        let mut m = Message::new(Route::from("private"), Route::new(), "x");
        m.local_info.origin = origin;
        assert!(matches!(node.route(m).await, Err(RouteError::Denied(_))));
    }
    assert_eq!(node.stats().dropped_denied, 2);
    // The same worker accepts a local message.
    let mut client = node.client().unwrap();
    assert!(client.request("private", "ok", WAIT).await.is_ok());
}

#[tokio::test]
async fn transport_origin_reaches_a_worker_that_allows_it() {
    let node = Node::new("test");
    node.start_worker_with_policy([Address::local("open")], Arc::new(AllowTransport), Echo)
        .unwrap();
    let client = node.client().unwrap();
    let mut m = Message::new(
        Route::from("open"),
        Route::from(client.address().clone()),
        "x",
    );
    m.local_info.origin = Origin::Transport {
        connection: Address::local("tcp-1"),
        peer: None,
    };
    node.route(m).await.unwrap();
}

#[tokio::test]
async fn forwarding_keeps_the_remote_origin() {
    struct Forwarder;
    impl Worker for Forwarder {
        async fn handle_message(
            &mut self,
            ctx: &mut Context,
            mut m: Message,
        ) -> Result<(), WorkerError> {
            m.onward_route.step();
            m.return_route.prepend(ctx.address().clone());
            ctx.forward(m).await?;
            Ok(())
        }
    }
    let node = Node::new("test");
    node.start_worker_with_policy([Address::local("fwd")], Arc::new(AllowAll), Forwarder)
        .unwrap();
    node.start_worker("private", Echo).unwrap();
    let mut m = Message::new(
        vec![Address::local("fwd"), Address::local("private")].into(),
        Route::new(),
        "x",
    );
    m.local_info.origin = Origin::Transport {
        connection: Address::local("tcp-1"),
        peer: None,
    };
    node.route(m).await.unwrap();
    // The forwarder delivers asynchronously; wait for the refusal to be counted.
    tokio::time::timeout(WAIT, async {
        while node.stats().dropped_denied == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn address_in_use_and_stop_worker() {
    let node = node_with_echo();
    assert!(matches!(
        node.start_worker("echo", Echo),
        Err(StartError::AddressInUse(_))
    ));
    assert!(node.stop_worker(&Address::local("echo")));
    assert!(!node.stop_worker(&Address::local("echo")));
    let client = node.client().unwrap();
    assert!(matches!(
        client.send("echo", "x").await,
        Err(RouteError::UnknownAddress(_))
    ));
    // The address is free again.
    node.start_worker("echo", Echo).unwrap();
}

#[tokio::test]
async fn request_times_out_when_nobody_answers() {
    struct Sink;
    impl Worker for Sink {
        async fn handle_message(&mut self, _: &mut Context, _: Message) -> Result<(), WorkerError> {
            Ok(())
        }
    }
    let node = Node::new("test");
    node.start_worker("sink", Sink).unwrap();
    let mut client = node.client().unwrap();
    let err = client
        .request("sink", "x", Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)));
}

#[tokio::test]
async fn worker_errors_are_counted_and_the_worker_keeps_serving() {
    struct Picky;
    impl Worker for Picky {
        async fn handle_message(
            &mut self,
            ctx: &mut Context,
            m: Message,
        ) -> Result<(), WorkerError> {
            if m.payload.as_ref() == b"bad" {
                return Err("bad payload".into());
            }
            ctx.send(m.return_route, m.payload).await?;
            Ok(())
        }
    }
    let node = Node::new("test");
    node.start_worker("picky", Picky).unwrap();
    let mut client = node.client().unwrap();
    client.send("picky", "bad").await.unwrap();
    let reply = client.request("picky", "good", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("good"));
    assert_eq!(node.stats().worker_errors, 1);
}

#[tokio::test]
async fn shutdown_runs_worker_shutdown_hooks_and_is_idempotent() {
    struct Flag(Arc<AtomicBool>);
    impl Worker for Flag {
        async fn handle_message(&mut self, _: &mut Context, _: Message) -> Result<(), WorkerError> {
            Ok(())
        }
        async fn shutdown(&mut self, _: &mut Context) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Arc::new(AtomicBool::new(false));
    let node = Node::new("test");
    node.start_worker("flag", Flag(flag.clone())).unwrap();
    let (a, b) = tokio::join!(node.shutdown(), node.shutdown());
    let _ = (a, b);
    assert!(flag.load(Ordering::SeqCst));
    assert!(node.addresses().is_empty());
    assert!(matches!(
        node.start_worker("late", Echo),
        Err(StartError::ShuttingDown)
    ));
    node.shutdown().await;
}

#[tokio::test]
async fn a_registrations_stop_token_is_cancelled_when_it_is_stopped_or_dropped() {
    let node = node_with_echo();
    let echo = node.stop_token(&Address::local("echo")).unwrap();
    let client = node.client().unwrap();
    let dropped = node.stop_token(client.address()).unwrap();
    assert!(node.stop_token(&Address::local("nobody")).is_none());
    assert!(!echo.is_cancelled() && !dropped.is_cancelled());
    drop(client);
    tokio::time::timeout(WAIT, dropped.cancelled())
        .await
        .unwrap();
    assert!(node.stop_worker(&Address::local("echo")));
    tokio::time::timeout(WAIT, echo.cancelled()).await.unwrap();
    node.shutdown().await;
}
