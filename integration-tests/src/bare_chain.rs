//! The bare crypto chain: the least a TCP portal must do, as processes of their own, for the
//! deployed portal bench ([`crate::portal_deployed`]) to measure kith against.
//!
//! A portal carries a client's bytes from an inlet node to an outlet node sealed, with as
//! many sockets as hops. The bare chain does only that, with the cipher kith's secure
//! channels use (`ring` 0.17's AES-256-GCM through `LessSafeKey`, a counter nonce of 4 zero
//! bytes and the counter big-endian, no associated data; `kith_identity::channel`), and no
//! identities, routes, credit or messages:
//!
//! - `inlet`: for each client it accepts, one connection to `--to`; reads at most
//!   `--chunk` bytes (default [`CHUNK`], what a kith portal reads into one `Data`
//!   message), seals them and writes one [frame](#frames); and the other way, opens each
//!   frame and writes the plaintext to the client.
//! - `hop`: frames both ways; opens each and seals it again under the next link's key, so
//!   one more open-and-seal and one more pair of sockets, like a relay node's.
//! - `outlet`: the inlet's mirror, towards the server at `--to`.
//!
//! A direct chain is `inlet → outlet`, a relayed one `inlet → hop → outlet`: the client's
//! connection, one per link, and the server's, the same sockets as a direct or relayed
//! portal. End of stream is passed on as TCP's: a reader that reaches it shuts the next
//! socket's write side, so a half-close travels the chain the way a portal's `End` does.
//!
//! # Frames
//!
//! `u32` big-endian length of the rest, then the 8-byte nonce in clear, the ciphertext and
//! the 16-byte tag: the shape of a sealed channel message inside a kith frame, without the
//! routes. A reader checks that a whole frame is present before it opens one, checks the
//! length against [`MAX_FRAME`], and insists on the nonce it expects next (a link is one
//! TCP connection, so in order), the bare chain's counterpart of a channel's replay window.
//!
//! # Keys
//!
//! Links are numbered from the inlet: link 0 leaves the inlet, link 1 leaves the hop. Each
//! link and direction has a fixed key ([`link_key`]), known to every process of the chain;
//! a bench measures the work, not the secrecy. `hop --link N` opens link N and seals link
//! N+1; `outlet --link N` opens link N.
//!
//! # Runtime
//!
//! A tokio multi-thread runtime with one worker per core, the runtime a `kith` daemon runs.
//! Each connection is one task that drives both directions (`try_join!`), as a kith portal
//! session is one task; within a direction a chunk is read, sealed and written before the
//! next is read, with no queue between: pipelining comes only from the sockets' buffers.
//! That is the least a relaying program does, and what a kith inlet's session does on its
//! fast path too: a profile shows it read, seal and write to the connection's socket in one
//! call chain (`session::run` → `EncryptorSink::try_deliver` → `Outbox::try_deliver` →
//! `try_write`) when the socket takes the bytes at once.

use std::io::Read as _;
use std::net::SocketAddr;

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::BytesMut;
use kith_transport::portal::CHUNK;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// 4 bytes: a frame's length prefix.
const LEN_BYTES: usize = 4;

/// 8 bytes: the clear nonce in front of each sealed chunk, as in a kith channel message.
const NONCE_BYTES: usize = 8;

/// What precedes the ciphertext in a frame.
const HEADER: usize = LEN_BYTES + NONCE_BYTES;

/// 16 bytes: AES-256-GCM's tag.
const TAG_BYTES: usize = 16;

/// 1 MiB: the largest `--chunk`, far above kith's 48 KiB, so that a bench can try larger
/// reads than kith makes but not ask a reader to buffer without bound.
pub const MAX_CHUNK_FLAG: usize = 1024 * 1024;

/// The largest frame a reader takes (after the length prefix): a nonce, the largest chunk,
/// a tag.
pub const MAX_FRAME: usize = NONCE_BYTES + MAX_CHUNK_FLAG + TAG_BYTES;

/// 256 KiB: what a frame reader asks its socket for in one read, several frames' worth, so
/// that a burst of frames costs one system call rather than one each.
const READ_AHEAD: usize = 256 * 1024;

/// Which program of the chain a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Plaintext from clients, sealed frames onwards.
    Inlet,
    /// Sealed frames both ways, opened and sealed again under the next link's key.
    Hop,
    /// Sealed frames from the previous link, plaintext to the server.
    Outlet,
}

impl Role {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Inlet => "inlet",
            Role::Hop => "hop",
            Role::Outlet => "outlet",
        }
    }
}

/// The way bytes travel on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the client's side towards the server.
    Onward,
    /// From the server back towards the client.
    Back,
}

/// The fixed key of `link` in `direction`: every byte `0xB0 + 2 × link + direction`.
fn link_key(link: u8, direction: Direction) -> anyhow::Result<LessSafeKey> {
    let byte = 0xB0u8
        .wrapping_add(link.wrapping_mul(2))
        .wrapping_add(u8::from(direction == Direction::Back));
    let key = UnboundKey::new(&AES_256_GCM, &[byte; 32])
        .map_err(|_| anyhow!("ring refused a 32-byte AES-256 key"))?;
    Ok(LessSafeKey::new(key))
}

/// The 12-byte AEAD nonce of message `n`: 4 zero bytes and `n` big-endian, as kith's.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// One direction's sealing state: a key and the next nonce.
struct Sealer {
    key: LessSafeKey,
    next: u64,
}

impl Sealer {
    fn new(key: LessSafeKey) -> Self {
        Self { key, next: 0 }
    }

    /// `frame` is [`HEADER`] bytes of room, the plaintext and [`TAG_BYTES`] of room: fill in
    /// the length and the nonce, encrypt in place, write the tag.
    fn seal(&mut self, frame: &mut [u8]) -> anyhow::Result<()> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or_else(|| anyhow!("nonces used up"))?;
        let body = u32::try_from(frame.len() - LEN_BYTES)?;
        let (header, rest) = frame.split_at_mut(HEADER);
        header[..LEN_BYTES].copy_from_slice(&body.to_be_bytes());
        header[LEN_BYTES..].copy_from_slice(&n.to_be_bytes());
        let (plain, tag_room) = rest.split_at_mut(rest.len() - TAG_BYTES);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), plain)
            .map_err(|_| anyhow!("sealing a {}-byte chunk failed", plain.len()))?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(())
    }
}

/// One direction's opening state: a key and the nonce expected next.
struct Opener {
    key: LessSafeKey,
    next: u64,
}

impl Opener {
    fn new(key: LessSafeKey) -> Self {
        Self { key, next: 0 }
    }

    /// Open a whole frame (length prefix included) in place; the plaintext's range in it.
    fn open(&mut self, frame: &mut [u8]) -> anyhow::Result<std::ops::Range<usize>> {
        let n = u64::from_be_bytes(
            frame
                .get(LEN_BYTES..HEADER)
                .ok_or_else(|| anyhow!("a frame shorter than its header"))?
                .try_into()?,
        );
        ensure!(
            n == self.next,
            "frame with nonce {n}, expected {}: replayed or lost",
            self.next
        );
        let sealed = frame
            .get_mut(HEADER..)
            .ok_or_else(|| anyhow!("a frame shorter than its header"))?;
        let plain = self
            .key
            .open_in_place(nonce(n), Aad::empty(), sealed)
            .map_err(|_| anyhow!("frame {n} failed authentication"))?
            .len();
        self.next = n.checked_add(1).ok_or_else(|| anyhow!("nonces used up"))?;
        Ok(HEADER..HEADER + plain)
    }
}

/// If `buf` starts with a whole frame, its length (prefix included); `None` if more bytes
/// are needed; an error if the frame is invalid, after which the stream is closed.
fn whole_frame(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let body = usize::try_from(u32::from_be_bytes(prefix.try_into()?))?;
    ensure!(
        (NONCE_BYTES + TAG_BYTES..=MAX_FRAME).contains(&body),
        "a frame of {body} bytes; frames are {} to {MAX_FRAME}",
        NONCE_BYTES + TAG_BYTES
    );
    let whole = LEN_BYTES + body;
    Ok((buf.len() >= whole).then_some(whole))
}

/// Read plaintext from `from` at most `chunk` bytes at a time, seal each read as one frame
/// and write it to `to`; at end of stream, shut `to`'s write side.
async fn seal_stream(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut sealer: Sealer,
    chunk: usize,
) -> anyhow::Result<()> {
    let mut frame = vec![0u8; HEADER + chunk + TAG_BYTES];
    loop {
        let read = from.read(&mut frame[HEADER..HEADER + chunk]).await?;
        if read == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let whole = &mut frame[..HEADER + read + TAG_BYTES];
        sealer.seal(whole)?;
        to.write_all(whole).await?;
    }
}

/// Read frames from `from` and open each; write its plaintext to `to`, or, with `reseal`,
/// seal it again under that key and write the frame. At end of stream, shut `to`'s write
/// side; a stream that ends inside a frame is an error.
async fn open_stream(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut opener: Opener,
    mut reseal: Option<Sealer>,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(READ_AHEAD);
    loop {
        while let Some(whole) = whole_frame(&buf)? {
            let mut frame = buf.split_to(whole);
            let plain = opener.open(&mut frame)?;
            match &mut reseal {
                None => to.write_all(&frame[plain]).await?,
                Some(sealer) => {
                    let end = plain.end + TAG_BYTES;
                    sealer.seal(&mut frame[..end])?;
                    to.write_all(&frame[..end]).await?;
                }
            }
        }
        // What is left is less than one frame, at most [`MAX_FRAME`]; the frames split off
        // are dropped, so this reuses their room, and the buffer stays under
        // `MAX_FRAME + READ_AHEAD`.
        buf.reserve(READ_AHEAD);
        if from.read_buf(&mut buf).await? == 0 {
            ensure!(
                buf.is_empty(),
                "the stream ended {} bytes into a frame",
                buf.len()
            );
            to.shutdown().await?;
            return Ok(());
        }
    }
}

/// A process's settings, from its command line.
#[derive(Debug, Clone)]
pub struct ChainArgs {
    /// Which program it is.
    pub role: Role,
    /// Where each accepted connection is carried: the next process, or the server.
    pub to: SocketAddr,
    /// The link a hop or an outlet opens (0 next to the inlet).
    pub link: u8,
    /// The most plaintext sealed into one frame.
    pub chunk: usize,
}

const USAGE: &str =
    "usage: kith-bare-chain inlet|hop|outlet --to HOST:PORT [--link N] [--chunk BYTES]";

impl ChainArgs {
    /// Parse `args` (without the program name).
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let role = match args.first().map(String::as_str) {
            Some("inlet") => Role::Inlet,
            Some("hop") => Role::Hop,
            Some("outlet") => Role::Outlet,
            _ => bail!("{USAGE}"),
        };
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| {
                    args.get(i + 1)
                        .ok_or_else(|| anyhow!("{flag} needs a value"))
                })
                .transpose()
        };
        let to = value("--to")?
            .ok_or_else(|| anyhow!("{USAGE}"))?
            .parse()
            .context("--to")?;
        let link = value("--link")?
            .map_or(Ok(0), |v| v.parse())
            .context("--link")?;
        let chunk = value("--chunk")?
            .map_or(Ok(CHUNK), |v| v.parse())
            .context("--chunk")?;
        ensure!(
            (1..=MAX_CHUNK_FLAG).contains(&chunk),
            "--chunk {chunk}: from 1 to {MAX_CHUNK_FLAG} bytes"
        );
        Ok(Self {
            role,
            to,
            link,
            chunk,
        })
    }
}

/// The `main` of `kith-bare-chain ROLE --to HOST:PORT [--link N] [--chunk BYTES]`: listen
/// on a free loopback port, print it on stdout, and carry every connection until stdin
/// closes (the parent closes it, or dies).
pub fn chain_main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = ChainArgs::parse(&args)?;
    // One worker per core, as a kith daemon's runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    println!("{}", listener.local_addr()?.port());
    let serving = rt.spawn(serve(listener, args));
    let mut rest = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut rest);
    serving.abort();
    rt.shutdown_background();
    Ok(())
}

/// Accept connections and carry each in a task of its own until the runtime ends; a
/// connection that fails is reported on stderr and closed, the others go on.
async fn serve(listener: TcpListener, args: ChainArgs) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(carry(inbound, args.clone()));
                }
                Err(e) => eprintln!("kith-bare-chain {}: accept: {e}", args.role.name()),
            },
            Some(done) = connections.join_next() => {
                if let Ok(Err(e)) = done {
                    eprintln!("kith-bare-chain {}: {e:#}", args.role.name());
                }
            }
        }
    }
}

/// Carry one connection to `args.to`, both ways, until both directions have ended.
async fn carry(inbound: TcpStream, args: ChainArgs) -> anyhow::Result<()> {
    let outbound = TcpStream::connect(args.to)
        .await
        .with_context(|| format!("connecting to {}", args.to))?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let key = |link, direction| link_key(link, direction);
    match args.role {
        Role::Inlet => {
            let onward = seal_stream(
                in_read,
                out_write,
                Sealer::new(key(0, Direction::Onward)?),
                args.chunk,
            );
            let back = open_stream(
                out_read,
                in_write,
                Opener::new(key(0, Direction::Back)?),
                None,
            );
            tokio::try_join!(onward, back)?;
        }
        Role::Hop => {
            let next = args.link.checked_add(1).context("--link too large")?;
            let onward = open_stream(
                in_read,
                out_write,
                Opener::new(key(args.link, Direction::Onward)?),
                Some(Sealer::new(key(next, Direction::Onward)?)),
            );
            let back = open_stream(
                out_read,
                in_write,
                Opener::new(key(next, Direction::Back)?),
                Some(Sealer::new(key(args.link, Direction::Back)?)),
            );
            tokio::try_join!(onward, back)?;
        }
        Role::Outlet => {
            let onward = open_stream(
                in_read,
                out_write,
                Opener::new(key(args.link, Direction::Onward)?),
                None,
            );
            let back = seal_stream(
                out_read,
                in_write,
                Sealer::new(key(args.link, Direction::Back)?),
                args.chunk,
            );
            tokio::try_join!(onward, back)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(sealer: &mut Sealer, plain: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; HEADER + plain.len() + TAG_BYTES];
        frame[HEADER..HEADER + plain.len()].copy_from_slice(plain);
        sealer.seal(&mut frame).unwrap();
        frame
    }

    #[test]
    fn a_sealed_frame_opens_under_the_same_link_key_and_says_its_length() {
        let mut sealer = Sealer::new(link_key(0, Direction::Onward).unwrap());
        let mut frame = framed(&mut sealer, b"kith");
        assert_eq!(whole_frame(&frame[..frame.len() - 1]).unwrap(), None);
        assert_eq!(whole_frame(&frame).unwrap(), Some(frame.len()));
        let mut opener = Opener::new(link_key(0, Direction::Onward).unwrap());
        let plain = opener.open(&mut frame).unwrap();
        assert_eq!(&frame[plain], b"kith");
    }

    #[test]
    fn a_frame_fails_under_another_links_key_or_when_tampered_or_replayed() {
        let mut sealer = Sealer::new(link_key(0, Direction::Onward).unwrap());
        let frame = framed(&mut sealer, b"kith");
        for (link, direction) in [(1, Direction::Onward), (0, Direction::Back)] {
            let mut opener = Opener::new(link_key(link, direction).unwrap());
            assert!(opener.open(&mut frame.clone()).is_err());
        }
        let mut tampered = frame.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let mut opener = Opener::new(link_key(0, Direction::Onward).unwrap());
        assert!(opener.open(&mut tampered).is_err());
        let mut opener = Opener::new(link_key(0, Direction::Onward).unwrap());
        opener.open(&mut frame.clone()).unwrap();
        assert!(opener.open(&mut frame.clone()).is_err(), "a replay");
    }

    #[test]
    fn a_frame_length_outside_the_bounds_is_refused_before_anything_is_read() {
        for body in [0u32, 23, u32::try_from(MAX_FRAME).unwrap() + 1, u32::MAX] {
            assert!(whole_frame(&body.to_be_bytes()).is_err(), "{body}");
        }
        assert_eq!(whole_frame(&24u32.to_be_bytes()).unwrap(), None);
    }
}
