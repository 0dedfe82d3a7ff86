//! The TCP transport on real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_node::testing::until;
use kith_node::*;
use kith_transport::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn node(name: &str, options: TcpOptions) -> (Node, TcpTransport, String) {
    let node = Node::new(name);
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    node.start_worker("private", Echo).unwrap();
    let tcp = TcpTransport::start_with(&node, options);
    let addr = tcp.listen("127.0.0.1:0").await.unwrap();
    (node, tcp, addr.to_string())
}

fn to(peer: &str, service: &str) -> Route {
    Route::from(vec![
        Address::try_new(TCP, peer).unwrap(),
        Address::local(service),
    ])
}

/// Read until the peer closes; returns what was read.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    out
}

#[tokio::test]
async fn message_round_trips_over_tcp_with_a_transport_origin() {
    let (_a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, tb, b_addr) = node("b", TcpOptions::default()).await;
    let a = _a;
    let mut client = a.client().unwrap();
    let reply = client
        .request(to(&b_addr, "echo"), "hello", WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("hello"));
    // The reply came back over the connection: its origin says so.
    assert!(matches!(reply.origin(), Origin::Transport { .. }));
    assert_eq!(reply.return_route.len(), 2, "connection, then echo");
    assert_eq!(tb.stats().accepted, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn worker_without_transport_policy_refuses_tcp_senders_with_a_denied_error() {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("b", TcpOptions::default()).await;
    let mut client = a.client().unwrap();
    let err = client
        .request(to(&b_addr, "private"), "x", WAIT)
        .await
        .unwrap_err();
    let RequestError::Undeliverable(error) = &err else {
        panic!("expected b's error message, got {err:?}");
    };
    assert_eq!(
        (error.node.as_str(), error.address.clone(), error.class),
        ("b", Address::local("private"), ErrorClass::Denied)
    );
    assert_eq!(
        err.to_string(),
        "b refused: denied by the access policy of service private"
    );
    assert_eq!(b.stats().dropped_denied, 1);
}

#[tokio::test]
async fn concurrent_senders_share_one_connection_per_peer() {
    let (a, ta, _) = node("a", TcpOptions::default()).await;
    let (_b, tb, b_addr) = node("b", TcpOptions::default()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let a = a.clone();
        let route = to(&b_addr, "echo");
        tasks.push(tokio::spawn(async move {
            let mut c = a.client().unwrap();
            c.request(route, format!("m{i}"), WAIT)
                .await
                .unwrap()
                .payload
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), Bytes::from(format!("m{i}")));
    }
    assert_eq!(ta.stats().dialed, 1);
    assert_eq!(tb.stats().accepted, 1);
}

#[tokio::test]
async fn unreachable_peer_is_an_error_not_a_timeout() {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    // A port that was just free: bind, read it back, close.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut client = a.client().unwrap();
    let started = std::time::Instant::now();
    let err = client
        .request(to(&free, "echo"), "x", WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Route(RouteError::Unreachable { .. })),
        "{err}"
    );
    let chain = DisplayChain(&err).to_string();
    assert!(
        chain.contains("cannot connect") && chain.contains("refused"),
        "{chain}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(a.stats().dropped_unreachable, 1);
}

#[tokio::test]
async fn a_peer_that_is_silent_closes_or_sends_another_version_is_reported_as_such() {
    let (a, ta, _) = node(
        "a",
        TcpOptions {
            preamble_timeout: Duration::from_millis(300),
            ..TcpOptions::default()
        },
    )
    .await;
    // Three peers that accept: one stays silent, one closes at once, one speaks first with
    // a byte that is not our version (an SSH server's "S").
    let peer = |answer: Option<&'static [u8]>| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the dialer's version byte first: closing on unread bytes would be a reset.
            std::io::Read::read_exact(&mut s, &mut [0u8; 1]).unwrap();
            if let Some(bytes) = answer {
                std::io::Write::write_all(&mut s, bytes).unwrap();
                // Held until the dialer gives up, so what it reads is only this.
                let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
            }
        });
        address
    };
    let silent = peer(Some(b""));
    let closing = peer(None);
    let ssh = peer(Some(b"SSH-2.0-OpenSSH_9.6\r\n"));
    for (peer, says) in [
        (
            silent,
            "did not answer the kith version exchange within 300ms",
        ),
        (
            closing,
            "closed the connection before answering the kith version exchange",
        ),
        (ssh, "sent protocol version 83; this node speaks 1"),
    ] {
        let e = ta.connect(&peer).await.unwrap_err();
        let e = DisplayChain(&e).to_string();
        assert!(e.contains(says), "{e}");
        assert!(!e.contains("not a kith node"), "{e}");
    }
    drop(a);
}

#[tokio::test]
async fn messages_from_peers_cannot_make_a_node_dial() {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, tb, b_addr) = node("b", TcpOptions::default()).await;
    let (_c, tc, c_addr) = node("c", TcpOptions::default()).await;
    let client = a.client().unwrap();
    let route = Route::from(vec![
        Address::try_new(TCP, b_addr.as_str()).unwrap(),
        Address::try_new(TCP, c_addr.as_str()).unwrap(),
        Address::local("echo"),
    ]);
    client.send(route, "x").await.unwrap();
    until("b to refuse dialing c", || {
        b.stats().dropped_unreachable == 1
    })
    .await;
    assert_eq!(tb.stats().dialed, 0);
    assert_eq!(tc.stats().accepted, 0);
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_that_connection_only() {
    let (b, tb, b_addr) = node("b", TcpOptions::default()).await;

    // A version byte we do not speak.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    s.write_all(&[7]).await.unwrap();
    assert_eq!(
        read_to_close(&mut s).await,
        vec![1],
        "we send our version, then close"
    );
    until("the refusal", || tb.stats().refused == 1).await;

    // The right version, then a length far over the maximum: closed before any body.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    s.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    read_to_close(&mut s).await;
    until("the oversized frame", || tb.stats().invalid == 1).await;

    // The right version, then a well-sized frame of garbage.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    s.write_all(&[1, 0, 0, 0, 3, 0xde, 0xad, 0xbe])
        .await
        .unwrap();
    read_to_close(&mut s).await;
    until("the garbage frame", || tb.stats().invalid == 2).await;

    // A peer that closes in the middle of a frame.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    s.write_all(&[1, 0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    read_to_close(&mut s).await;

    // The node still serves a well-behaved peer.
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let mut client = a.client().unwrap();
    let reply = client
        .request(to(&b_addr, "echo"), "still here", WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("still here"));
    b.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let options = TcpOptions {
        idle_timeout: Duration::from_millis(200),
        preamble_timeout: Duration::from_millis(200),
        ..TcpOptions::default()
    };
    let (_b, _tb, b_addr) = node("b", options).await;
    // Never sends a version byte.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    read_to_close(&mut s).await;
    // Sends the version byte, then nothing.
    let mut s = TcpStream::connect(&b_addr).await.unwrap();
    s.write_all(&[1]).await.unwrap();
    read_to_close(&mut s).await;
}

#[tokio::test]
async fn an_oversized_outgoing_message_is_refused_to_its_sender_as_too_large() {
    let (a, ta, _) = node("a", TcpOptions::default()).await;
    let (_b, tb, b_addr) = node("b", TcpOptions::default()).await;
    let client = a.client().unwrap();
    let err = client
        .send(to(&b_addr, "echo"), vec![0u8; 300 * 1024])
        .await
        .unwrap_err();
    let peer = Address::try_new(TCP, b_addr.as_str()).unwrap();
    assert!(
        matches!(&err, RouteError::Refused { address, class: ErrorClass::TooLarge, .. } if *address == peer),
        "{err:?}"
    );
    let shown = DisplayChain(&err).to_string();
    let max = kith_transport::frame::DEFAULT_MAX_FRAME_LEN;
    assert!(
        shown.starts_with(&format!(
            "cannot send to {peer}: the message is too large: 307"
        )) && shown.ends_with(&format!(" bytes, at most {max}")),
        "{shown}"
    );
    // Refused before it was taken: nothing was written, and the sender, told at once, is
    // sent no error message as well.
    assert_eq!((ta.stats().dropped, ta.stats().frames_out), (1, 0));
    assert_eq!(tb.stats().frames_in, 0);
    assert_eq!(a.stats().dropped_refused, 1);
    assert_eq!(a.stats().error_replies_sent, 0);
    // The connection is still usable.
    let mut client = a.client().unwrap();
    assert!(
        client
            .request(to(&b_addr, "echo"), "ok", WAIT)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn persistent_connection_reconnects_when_the_peer_comes_back() {
    let options = TcpOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
        ..TcpOptions::default()
    };
    let (a, ta, _) = node("a", options.clone()).await;
    let (b, _tb, b_addr) = node("b", options.clone()).await;
    let mut conn = ta.connect_persistent(&b_addr).unwrap();
    conn.state
        .wait_for(|s| *s == ConnectionState::Connected { epoch: 1 })
        .await
        .unwrap();

    b.shutdown().await;
    conn.state
        .wait_for(|s| matches!(s, ConnectionState::Connecting { .. }))
        .await
        .unwrap();

    // The peer comes back on the same port.
    let b2 = Node::new("b2");
    b2.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    TcpTransport::start_with(&b2, options)
        .listen(&b_addr)
        .await
        .unwrap();
    let reconnected = tokio::time::timeout(
        WAIT,
        conn.state
            .wait_for(|s| *s == ConnectionState::Connected { epoch: 2 }),
    );
    reconnected.await.unwrap().unwrap();

    // Routes to the peer use the kept-up connection at its stable address.
    let mut client = a.client().unwrap();
    let reply = client
        .request(to(&b_addr, "echo"), "again", WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("again"));
    assert_eq!(reply.return_route.iter().next(), Some(&conn.address));

    assert!(a.stop_worker(&conn.address));
    conn.state
        .wait_for(|s| *s == ConnectionState::Stopped)
        .await
        .unwrap();
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let (_b, _tb, b_addr) = node("b", TcpOptions::default()).await;
    let other = Node::new("other");
    let err = TcpTransport::start(&other)
        .listen(&b_addr)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}

#[tokio::test]
async fn a_peer_that_stops_reading_makes_senders_wait_and_then_gets_everything_in_order() {
    const FRAMES: usize = 1024; // 64 MiB in all: far beyond the outbox cap and socket buffers
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&[1]).await.unwrap();
        let mut v = [0u8; 1];
        s.read_exact(&mut v).await.unwrap();
        go_rx.await.unwrap(); // stop reading until told
        let mut seen = Vec::new();
        while seen.len() < FRAMES {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).await.unwrap();
            if body.is_empty() {
                continue; // keep-alive
            }
            let m = TransportMessage::decode(&Bytes::from(body)).unwrap();
            seen.push(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
        }
        seen
    });

    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let sender = {
        let a = a.clone();
        let route = to(&peer, "sink");
        tokio::spawn(async move {
            let client = a.client().unwrap();
            for i in 0..FRAMES as u32 {
                let mut payload = vec![0u8; 64 * 1024];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                client.send(route.clone(), payload).await.unwrap();
            }
        })
    };
    // The peer reads nothing, so the sender must be held back rather than buffer 64 MiB.
    let mut sender = sender;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut sender).await;
    assert!(
        early.is_err(),
        "all 64 MiB were accepted by a connection whose peer reads nothing"
    );
    go_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        (0..FRAMES as u32).collect::<Vec<_>>(),
        "frames lost or reordered"
    );
}

#[tokio::test]
async fn keepalives_hold_an_idle_connection_open_past_the_idle_timeout() {
    let options = TcpOptions {
        keepalive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(200),
        ..TcpOptions::default()
    };
    let (a, ta, _) = node("a", options.clone()).await;
    let (_b, tb, b_addr) = node("b", options).await;
    let mut client = a.client().unwrap();
    client
        .request(to(&b_addr, "echo"), "one", WAIT)
        .await
        .unwrap();
    // Stay quiet for three idle timeouts: only keep-alives cross the connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        (ta.stats().open, tb.stats().open),
        (1, 1),
        "the idle connection was dropped"
    );
    client
        .request(to(&b_addr, "echo"), "two", WAIT)
        .await
        .unwrap();
    assert_eq!(ta.stats().dialed, 1, "a second connection was needed");
}

/// Reports every message's payload, and whether it arrived owning its buffer.
struct Owned(tokio::sync::mpsc::UnboundedSender<(Bytes, bool)>);

impl Worker for Owned {
    async fn handle_message(
        &mut self,
        _ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        let unique = message.payload.is_unique();
        let _ = self.0.send((message.payload, unique));
        Ok(())
    }
}

#[tokio::test]
async fn a_large_frame_arrives_owning_its_buffer_so_it_can_be_opened_in_place() {
    let (a, _ta, _) = node("a", TcpOptions::default()).await;
    let (b, _tb, b_addr) = node("b", TcpOptions::default()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.start_worker_with_policy([Address::local("owned")], Arc::new(AllowAll), Owned(tx))
        .unwrap();
    // Bursts of large frames back to back (each read must stop where its frame ends), and
    // of a frame-cap's worth, as a portal or a channel sends them.
    let sizes = [64 * 1024, 20 * 1024, MAX_PAYLOAD_LEN, 16 * 1024 + 1];
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(40).enumerate() {
        let payload = Bytes::from((0..len).map(|j| (i + j) as u8).collect::<Vec<u8>>());
        a.route(Message::new(
            to(&b_addr, "owned"),
            Route::new(),
            payload.clone(),
        ))
        .await
        .unwrap();
        sent.push(payload);
    }
    for (i, payload) in sent.iter().enumerate() {
        let (got, unique) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, *payload, "message {i} arrives whole and in order");
        assert!(
            unique,
            "message {i} ({} bytes) shares its buffer",
            got.len()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
