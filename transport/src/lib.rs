//! kith's TCP transport.
//!
//! A [`TcpTransport`] registers itself with a node for address kind 1 (`1#host:port`), listens
//! for connections, dials peers that local workers send to (one connection per peer), and
//! keeps up connections that a service asks for, reconnecting with capped backoff. On the
//! wire, after a one-byte protocol version each way, every message is one length-prefixed
//! [`TransportMessage`] frame ([`frame`]). Routes given on the command line are parsed here as
//! [`MultiAddr`]s.
//!
//! It does not authenticate or encrypt: that is the job of secure channels (`kith-identity`),
//! which run over it.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// The transport message: its CBOR encoding, checked before it is decoded.
mod codec;
/// One TCP connection: the version preamble, reading frames, the coalescing outbox.
mod connection;
/// Error types, one per surface a caller reacts to.
mod error;
/// Length-prefixed frames: the check-then-parse deframer.
pub mod frame;
/// Routes as the command line writes them: `/ip4/…/tcp/…/secure/api/service/echo`.
mod multiaddr;
/// TCP portals: inlets, outlets and the sessions between them.
pub mod portal;
/// Bytes on their way to a socket: small encodings together, large payloads where they lie.
mod segments;
/// Sources: the address (IPv4) or /64 (IPv6) a peer's caps are counted against.
pub mod source;
/// The transport: listeners, dialing, one connection per peer, persistent connections.
mod tcp;

pub use codec::{MAX_PAYLOAD_LEN, PROTOCOL_VERSION, TransportMessage};
pub use connection::BUSY;
pub use error::{ConnectionError, DecodeError, FrameError, MultiAddrError, TransportError};
pub use multiaddr::{MAX_SECURE_HOPS, MultiAddr, PROJECT_LISTENER, Protocol};
pub use tcp::{
    ACCEPT_ERROR_PAUSE, ConnectionInfo, ConnectionState, Direction, PersistentConnection,
    TcpOptions, TcpStats, TcpTransport,
};
pub use tcp::{FRAME_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE};
