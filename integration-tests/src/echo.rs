//! A TCP echo server on 127.0.0.1: the application behind the outlets of tests and benches.

use std::net::{Shutdown, TcpListener};

/// Start a server that echoes every connection until end of stream, on a thread of its own
/// per connection; where it listens.
pub fn echo_server() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                if let Ok(mut r) = s.try_clone() {
                    let _ = std::io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                }
            });
        }
    });
    Ok(addr)
}
