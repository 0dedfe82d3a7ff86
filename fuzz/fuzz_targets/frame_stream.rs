//! A byte stream read the way a connection reads it (`frame::check`, split off each complete
//! frame, skip keep-alives, `TransportMessage::decode` each body, stop at the first invalid
//! frame or body, never resynchronize) never panics and accounts for every byte: the bytes of
//! the frames split off plus the bytes left over (buffered or not yet read) equal the input
//! length. A stream that ends cleanly was consumed whole. Every `Incomplete { needed }` is
//! positive and exact. How the bytes arrive does not matter: reading the input all at once,
//! one byte at a time and in 5-byte reads gives the same messages, the same keep-alive count
//! and the same ending at the same offset.
//!
//! Input: the whole input is the stream after the version preamble.

#![no_main]

use bytes::BytesMut;
use kith_transport::frame::{DEFAULT_MAX_FRAME_LEN, FrameStatus, LEN_PREFIX, check};
use kith_transport::{FrameError, TransportMessage};
use libfuzzer_sys::fuzz_target;

/// Read sizes tried for each input: all at once, byte by byte, and an odd size that splits
/// length prefixes.
const READ_SIZES: [usize; 3] = [usize::MAX, 1, 5];

#[derive(Debug, PartialEq)]
enum End {
    /// The stream ended between frames.
    Clean,
    /// The stream ended inside a frame.
    ClosedMidFrame { buffered: usize },
    /// `frame::check` refused the frame starting at `at`.
    Frame { at: usize, error: FrameError },
    /// The body of the frame starting at `at` did not decode.
    Decode { at: usize, error: String },
}

#[derive(Debug, PartialEq)]
struct Reading {
    messages: Vec<TransportMessage>,
    keepalives: usize,
    /// Bytes of the frames split off the buffer, including one whose body failed to decode.
    consumed: usize,
    /// Bytes still buffered plus bytes never read when the reading stopped.
    left: usize,
    end: End,
}

fn read(input: &[u8], read_size: usize) -> Reading {
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut r = Reading {
        messages: Vec::new(),
        keepalives: 0,
        consumed: 0,
        left: 0,
        end: End::Clean,
    };
    loop {
        loop {
            match check(&buf, DEFAULT_MAX_FRAME_LEN) {
                Err(error) => {
                    r.left = buf.len() + (input.len() - fed);
                    r.end = End::Frame {
                        at: r.consumed,
                        error,
                    };
                    return r;
                }
                Ok(FrameStatus::Complete { body_len }) => {
                    let frame = buf.split_to(LEN_PREFIX + body_len).freeze();
                    let at = r.consumed;
                    r.consumed += frame.len();
                    if body_len == 0 {
                        r.keepalives += 1;
                        continue;
                    }
                    match TransportMessage::decode(&frame.slice(LEN_PREFIX..)) {
                        Ok(m) => r.messages.push(m),
                        Err(e) => {
                            r.left = buf.len() + (input.len() - fed);
                            r.end = End::Decode {
                                at,
                                error: e.to_string(),
                            };
                            return r;
                        }
                    }
                }
                Ok(FrameStatus::Incomplete { needed }) => {
                    assert!(needed > 0, "Incomplete with needed == 0");
                    let expected_total = match buf.first_chunk::<LEN_PREFIX>() {
                        Some(p) => LEN_PREFIX + u32::from_be_bytes(*p) as usize,
                        None => LEN_PREFIX,
                    };
                    assert_eq!(buf.len() + needed, expected_total, "needed is not exact");
                    break;
                }
            }
        }
        let n = read_size.min(input.len() - fed);
        if n == 0 {
            r.left = buf.len();
            r.end = if buf.is_empty() {
                End::Clean
            } else {
                End::ClosedMidFrame {
                    buffered: buf.len(),
                }
            };
            return r;
        }
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut first: Option<Reading> = None;
    for size in READ_SIZES {
        let r = read(data, size);
        assert_eq!(
            r.consumed + r.left,
            data.len(),
            "bytes unaccounted for with reads of {size}: {r:?}"
        );
        if r.end == End::Clean {
            assert_eq!(r.consumed, data.len());
        }
        match &first {
            None => first = Some(r),
            Some(f) => assert_eq!(
                &r, f,
                "reads of {size} bytes disagree with reading all at once"
            ),
        }
    }
});
