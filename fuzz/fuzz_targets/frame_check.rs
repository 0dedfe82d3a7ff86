//! `kith_transport::frame::check` never panics and agrees with a reference model of the
//! framing rule: with fewer than 4 bytes it asks for exactly the missing prefix bytes; an
//! announced length over `max_len` is `TooLarge` (whatever follows); otherwise a buffer holding
//! the whole frame is `Complete { body_len }` with `body_len <= max_len` and
//! `4 + body_len <= buf.len()`, and a shorter one is `Incomplete { needed }` with `needed > 0`
//! and `buf.len() + needed` exactly the frame's size.
//!
//! Input: the first 8 bytes (little-endian `u64`, if present) are `max_len`, so the whole range
//! up to `usize::MAX` is tried; the rest is the buffer.

#![no_main]

use kith_transport::FrameError;
use kith_transport::frame::{FrameStatus, LEN_PREFIX, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (max_len, buf) = match data.split_first_chunk::<8>() {
        Some((m, rest)) => (
            usize::try_from(u64::from_le_bytes(*m)).unwrap_or(usize::MAX),
            rest,
        ),
        None => (kith_transport::frame::DEFAULT_MAX_FRAME_LEN, data),
    };
    let got = check(buf, max_len);

    match got {
        Ok(FrameStatus::Complete { body_len }) => {
            assert!(
                body_len <= max_len,
                "body_len {body_len} > max_len {max_len}"
            );
            assert!(
                LEN_PREFIX + body_len <= buf.len(),
                "frame of {body_len} not all in {} bytes",
                buf.len()
            );
        }
        Ok(FrameStatus::Incomplete { needed }) => {
            assert!(needed > 0, "Incomplete with needed == 0")
        }
        Err(_) => assert!(
            buf.len() >= LEN_PREFIX,
            "error before the length prefix was complete"
        ),
    }

    assert_eq!(
        got,
        model(buf, max_len),
        "buf {buf:02x?}, max_len {max_len}"
    );
});

/// The framing rule written out in `u64`, independent of the implementation's arithmetic.
fn model(buf: &[u8], max_len: usize) -> Result<FrameStatus, FrameError> {
    let have = buf.len() as u64;
    let Some(prefix) = buf.get(..4) else {
        return Ok(FrameStatus::Incomplete {
            needed: (4 - have) as usize,
        });
    };
    let announced = u64::from(u32::from_be_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]));
    if announced > max_len as u64 {
        return Err(FrameError::TooLarge {
            len: announced,
            max: max_len,
        });
    }
    let total = 4 + announced;
    if have >= total {
        Ok(FrameStatus::Complete {
            body_len: announced as usize,
        })
    } else {
        Ok(FrameStatus::Incomplete {
            needed: (total - have) as usize,
        })
    }
}
