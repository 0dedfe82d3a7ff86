//! Portals between two nodes over the TCP transport alone (no secure channels): the session
//! protocol, flow control, half-close, failures and refusals on real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use kith_node::*;
use kith_transport::portal::*;
use kith_transport::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// A connector that routes plainly to the outlet at `peer`.
struct Plain {
    peer: String,
    outlet: &'static str,
}

impl Connector for Plain {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            Ok(PortalRoute {
                route: Route::from(vec![
                    Address::try_new(TCP, &self.peer).unwrap(),
                    Address::local(self.outlet),
                ]),
                replies: Arc::new(AllowTransport),
                guard: Box::new(()),
                ended: None,
            })
        })
    }
}

struct Pair {
    inlet_node: Node,
    outlet_node: Node,
    inlet: Inlet,
    outlet: Outlet,
    /// Where the outlet node listens.
    outlet_listener: String,
}

/// An outlet node carrying to `target`, an inlet node pointing at it.
async fn pair(
    target: &str,
    policy: Arc<dyn IncomingAccessControl>,
    options: PortalOptions,
) -> Pair {
    let outlet_node = Node::new("outlet-node");
    let tcp = TcpTransport::start(&outlet_node);
    let addr = tcp.listen("127.0.0.1:0").await.unwrap().to_string();
    let outlet = Outlet::start(&outlet_node, "outlet", target, policy, options.clone()).unwrap();
    let inlet_node = Node::new("inlet-node");
    TcpTransport::start(&inlet_node);
    let inlet = Inlet::start(
        &inlet_node,
        "127.0.0.1:0",
        Arc::new(Plain {
            peer: addr.clone(),
            outlet: "outlet",
        }),
        options,
    )
    .await
    .unwrap();
    Pair {
        inlet_node,
        outlet_node,
        inlet,
        outlet,
        outlet_listener: addr,
    }
}

/// A server that echoes every connection until the client half-closes, then closes.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn bytes_round_trip_in_order_and_half_close_passes_on() {
    let target = echo_server().await;
    let p = pair(&target, Arc::new(AllowTransport), PortalOptions::default()).await;
    let sent = pattern(7, 3 * 1024 * 1024 + 17);
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    let (mut r, mut w) = client.split();
    let writing = async {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let reading = async {
        tokio::time::timeout(WAIT, r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap()
    };
    tokio::join!(writing, reading);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "echoed bytes differ");
    let inlet = p.inlet.stats().view();
    assert_eq!(inlet.bytes_in, sent.len() as u64);
    assert_eq!(inlet.bytes_out, sent.len() as u64);
    p.inlet_node.shutdown().await;
    p.outlet_node.shutdown().await;
}

#[tokio::test]
async fn a_stalled_reader_stops_the_sender_after_one_window() {
    // The target floods; the client does not read. What sits anywhere in between is bounded
    // by the window (plus the two sockets' kernel buffers), not by the flood.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let chunk = vec![1u8; 64 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
    });
    let p = pair(&target, Arc::new(AllowTransport), PortalOptions::default()).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    let window = u64::from(PortalOptions::default().window);
    // Read from the outlet first: the inlet's count can only have grown since, so the
    // difference never overstates what is held between the two sockets.
    let in_flight = || {
        let read_at_outlet = p.outlet.stats().view().bytes_in;
        read_at_outlet - p.inlet.stats().view().bytes_out
    };
    // The client reads nothing: the window fills (once the client's socket buffer has), and
    // at no moment holds more than the window.
    tokio::time::timeout(WAIT, async {
        loop {
            let held = in_flight();
            assert!(held <= window, "{held} bytes held between the ends");
            if held >= window / 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the window never filled while the client read nothing");
    for _ in 0..200 {
        let held = in_flight();
        assert!(held <= window, "{held} bytes held between the ends");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // And it resumes: read some, and more gets written.
    let mut buf = vec![0u8; 4 * 1024 * 1024];
    let mut read = 0;
    while read < buf.len() {
        read += tokio::time::timeout(WAIT, client.read(&mut buf[read..]))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(buf.iter().all(|b| *b == 1));
    p.inlet_node.shutdown().await;
    p.outlet_node.shutdown().await;
}

#[tokio::test]
async fn a_refused_open_resets_the_client_at_once() {
    let target = echo_server().await;
    // The outlet admits nobody: the Open is answered Refused.
    let p = pair(&target, Arc::new(AllowLocal), PortalOptions::default()).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .unwrap();
    assert!(r.is_err(), "expected a reset, got {r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(p.outlet.stats().view().refused, 1);
    assert_eq!(p.inlet.stats().view().refused, 1);
}

#[tokio::test]
async fn an_unreachable_target_resets_the_client() {
    // Bind and drop: nothing listens there now.
    let target = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let p = pair(&target, Arc::new(AllowTransport), PortalOptions::default()).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .unwrap();
    assert!(r.is_err(), "expected a reset, got {r:?}");
}

#[tokio::test]
async fn a_target_that_resets_resets_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"partial").await.unwrap();
        #[expect(deprecated, reason = "a zero linger is how a server resets")]
        s.set_linger(Some(Duration::ZERO)).unwrap();
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
        drop(s);
    });
    let p = pair(&target, Arc::new(AllowTransport), PortalOptions::default()).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    let mut got = vec![0u8; 7];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");
    client.write_all(b"x").await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(r.is_err(), "expected a reset, got {r:?} after {rest:?}");
}

#[tokio::test]
async fn a_silent_outlet_is_given_up_after_the_idle_timeout() {
    let target = echo_server().await;
    let options = PortalOptions {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        ..PortalOptions::default()
    };
    let p = pair(&target, Arc::new(AllowTransport), options).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).await.unwrap();
    // The outlet's node vanishes without a word (its tasks are dropped).
    p.outlet_node.shutdown().await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(r.is_err(), "expected a reset, got {r:?}");
    assert_eq!(p.inlet.stats().view().failed, 1);
}

#[tokio::test]
async fn deleting_an_inlet_closes_its_sessions_and_its_port() {
    let target = echo_server().await;
    let p = pair(&target, Arc::new(AllowTransport), PortalOptions::default()).await;
    let mut client = TcpStream::connect(p.inlet.address()).await.unwrap();
    client.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    client.read_exact(&mut got).await.unwrap();
    p.inlet.stop();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(r.is_err(), "expected a reset, got {r:?}");
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(p.inlet.address()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the inlet's port is still open");
    assert_eq!(p.outlet.stats().view().open, 0);
}

#[tokio::test]
async fn a_stopped_outlets_name_is_free_at_once_and_a_late_stop_spares_its_successor() {
    let node = Node::new("n");
    let start = || {
        Outlet::start(
            &node,
            "app",
            "127.0.0.1:9",
            Arc::new(AllowTransport),
            PortalOptions::default(),
        )
    };
    let first = start().unwrap();
    assert!(start().is_err(), "two outlets at one address");
    first.stop();
    // No wait for the outlet's task: the name is free when `stop` returns.
    let second = start().expect("the stopped outlet's name is still taken");
    // Stopping the first again must not stop the second, which now holds the name.
    first.stop();
    assert!(
        start().is_err(),
        "a late stop of the first freed the second's name"
    );
    second.stop();
}

#[tokio::test]
async fn one_peer_holds_at_most_its_share_of_an_outlets_sessions_and_another_still_gets_in() {
    let target = echo_server().await;
    let options = PortalOptions {
        max_sessions_per_peer: 2,
        ..PortalOptions::default()
    };
    let p = pair(&target, Arc::new(AllowAll), options.clone()).await;
    // Two sessions from the inlet node, each proven open by an echo.
    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut c = TcpStream::connect(p.inlet.address()).await.unwrap();
        c.write_all(&[i]).await.unwrap();
        let mut back = [0u8; 1];
        tokio::time::timeout(WAIT, c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, [i]);
        held.push(c);
    }
    // A third from the same peer is refused: the client is reset at once.
    let mut third = TcpStream::connect(p.inlet.address()).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Err(_) | Ok(0)), "expected a reset, got {r:?}");
    assert_eq!(p.outlet.stats().view().refused, 1);

    // Another connection from the same host is the same peer: refused too.
    let same_host = Node::new("same-host-inlet-node");
    TcpTransport::start(&same_host);
    let same = Inlet::start(
        &same_host,
        "127.0.0.1:0",
        Arc::new(Plain {
            peer: p.outlet_listener.clone(),
            outlet: "outlet",
        }),
        options.clone(),
    )
    .await
    .unwrap();
    let mut fourth = TcpStream::connect(same.address()).await.unwrap();
    let r = tokio::time::timeout(WAIT, fourth.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Err(_) | Ok(0)), "expected a reset, got {r:?}");
    assert_eq!(p.outlet.stats().view().refused, 2);
    same_host.shutdown().await;

    // Another host (an inlet node speaking from 127.0.0.2) still gets in.
    let other_node = Node::new("other-inlet-node");
    TcpTransport::start_with(
        &other_node,
        TcpOptions {
            source_address: Some(std::net::IpAddr::from([127, 0, 0, 2])),
            ..TcpOptions::default()
        },
    );
    let listener = p.outlet_listener.clone();
    let other = Inlet::start(
        &other_node,
        "127.0.0.1:0",
        Arc::new(Plain {
            peer: listener,
            outlet: "outlet",
        }),
        options,
    )
    .await
    .unwrap();
    let mut c = TcpStream::connect(other.address()).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut back = [0u8; 1];
    tokio::time::timeout(WAIT, c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"x");
    // A session that ends gives its place back to its peer.
    drop(held.pop());
    kith_node::testing::until("the ended session's place to be free", || {
        p.outlet.stats().view().open == 2
    })
    .await;
    let mut again = TcpStream::connect(p.inlet.address()).await.unwrap();
    again.write_all(b"y").await.unwrap();
    tokio::time::timeout(WAIT, again.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"y");
    other_node.shutdown().await;
}
