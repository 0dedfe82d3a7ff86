//! Caps per source on a listener's connections, shedding from the heaviest source when the
//! node is full, and a per-frame deadline: attackers speak from 127.0.0.2 and 127.0.0.3, the
//! legitimate client from 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_node::testing::until;
use kith_node::*;
use kith_transport::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn listening(options: TcpOptions) -> (Node, TcpTransport, SocketAddr) {
    let node = Node::new("b");
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    let tcp = TcpTransport::start_with(&node, options);
    let addr = tcp.listen("127.0.0.1:0").await.unwrap();
    (node, tcp, addr)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A raw connection from `source` that has exchanged versions (or been told "busy": the
/// byte it got back).
async fn raw_from(source: IpAddr, to: SocketAddr) -> (TcpStream, u8) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    s.write_all(&[PROTOCOL_VERSION]).await.unwrap();
    let mut theirs = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut theirs))
        .await
        .unwrap()
        .unwrap();
    (s, theirs[0])
}

/// A client node whose connections come from `source`.
fn client_from(name: &str, source: IpAddr) -> (Node, TcpTransport) {
    let node = Node::new(name);
    let tcp = TcpTransport::start_with(
        &node,
        TcpOptions {
            source_address: Some(source),
            ..TcpOptions::default()
        },
    );
    (node, tcp)
}

fn echo_at(listener: SocketAddr) -> Route {
    Route::from(vec![
        Address::try_new(TCP, listener.to_string()).unwrap(),
        Address::local("echo"),
    ])
}

async fn echo_works(node: &Node, listener: SocketAddr) {
    let mut c = node.client().unwrap();
    let reply = c.request(echo_at(listener), "hi", WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from("hi"));
}

#[tokio::test]
async fn a_source_at_its_connection_cap_is_told_busy_at_once_and_others_still_connect() {
    let (b, tb, listener) = listening(TcpOptions {
        max_connections_per_source: 4,
        ..TcpOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let (s, byte) = raw_from(ip(2), listener).await;
        assert_eq!(byte, PROTOCOL_VERSION);
        held.push(s);
    }
    // The fifth from 127.0.0.2 gets the busy byte, not a version and not silence.
    let (_, byte) = raw_from(ip(2), listener).await;
    assert_eq!(byte, BUSY);
    // A kith node speaking from 127.0.0.2 says so, at once.
    let (attacker, at) = client_from("a2", ip(2));
    let started = std::time::Instant::now();
    let e = at.connect(&listener.to_string()).await.unwrap_err();
    assert!(matches!(e, TransportError::Busy { .. }), "{e:?}");
    assert!(e.to_string().contains("is busy"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // From 127.0.0.1 all is well.
    let (legit, _lt) = client_from("a1", ip(1));
    echo_works(&legit, listener).await;
    assert_eq!(tb.stats().refused_busy, 2);
    // A connection that closes gives its place back.
    drop(held.pop());
    until("127.0.0.2's place to be free", || tb.stats().open == 4).await;
    assert_eq!(raw_from(ip(2), listener).await.1, PROTOCOL_VERSION);
    for n in [attacker, legit, b] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_full_node_sheds_the_heaviest_sources_newest_connection_for_a_quiet_newcomer() {
    let (b, tb, listener) = listening(TcpOptions {
        max_connections: 6,
        max_connections_per_source: 5,
        ..TcpOptions::default()
    })
    .await;
    // 127.0.0.2 holds five, 127.0.0.3 one: the node is full.
    let mut heavy = Vec::new();
    for _ in 0..5 {
        let (s, byte) = raw_from(ip(2), listener).await;
        assert_eq!(byte, PROTOCOL_VERSION);
        heavy.push(s);
    }
    let (mut light, byte) = raw_from(ip(3), listener).await;
    assert_eq!(byte, PROTOCOL_VERSION);
    until("six connections", || tb.stats().open == 6).await;
    // A newcomer from 127.0.0.1 gets in, and its messages go through.
    let (legit, _lt) = client_from("a1", ip(1));
    echo_works(&legit, listener).await;
    assert_eq!(tb.stats().shed, 1);
    // The one shed is 127.0.0.2's newest; its other four, and 127.0.0.3's, stay open.
    let mut newest = heavy.pop().unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(WAIT, newest.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    for s in heavy.iter_mut().chain([&mut light]) {
        let quiet = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
        assert!(
            quiet.is_err(),
            "a connection other than the newest of the heaviest closed"
        );
    }
    // 127.0.0.2 (four) is now no heavier than a newcomer from it would be: refused.
    let (_, byte) = raw_from(ip(2), listener).await;
    assert_eq!(byte, BUSY);
    for n in [legit, b] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_that_trickles_a_frame_is_closed_at_the_frame_deadline() {
    let (b, tb, listener) = listening(TcpOptions {
        frame_timeout: Duration::from_millis(300),
        ..TcpOptions::default()
    })
    .await;
    let (mut s, byte) = raw_from(ip(2), listener).await;
    assert_eq!(byte, PROTOCOL_VERSION);
    // Announce a 200 KiB frame, then a byte every 100 ms: never idle, never done.
    s.write_all(&(200u32 * 1024).to_be_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let closed = async {
        loop {
            if s.write_all(&[0]).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, closed).await.unwrap();
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    // A peer that sends its frames whole is not affected.
    let (legit, _lt) = client_from("a1", ip(1));
    echo_works(&legit, listener).await;
    assert_eq!(tb.stats().open, 1);
    for n in [legit, b] {
        n.shutdown().await;
    }
}
