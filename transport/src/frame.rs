//! Frames: a `u32` big-endian body length, then the body.
//!
//! [`check`] looks at buffered bytes and says whether a whole frame is there, validating the
//! announced length against the maximum before anything is allocated for it. A zero-length
//! frame is a keep-alive.

use crate::FrameError;

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// 256 KiB: the default largest frame body. Big enough for a portal's 48 KiB chunks and a
/// handshake with several credentials, small enough that a peer cannot make us buffer much
/// per connection.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 * 1024;

/// What [`check`] found in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// A whole frame: the first `LEN_PREFIX + body_len` bytes.
    Complete {
        /// Body length (0 for a keep-alive).
        body_len: usize,
    },
    /// Not yet: at least `needed` more bytes must arrive.
    Incomplete {
        /// Bytes still missing.
        needed: usize,
    },
}

/// Whether `buf` starts with a whole frame whose body is at most `max_len` bytes.
pub fn check(buf: &[u8], max_len: usize) -> Result<FrameStatus, FrameError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(FrameStatus::Incomplete {
            needed: LEN_PREFIX.saturating_sub(buf.len()),
        });
    };
    let announced = u32::from_be_bytes(*prefix);
    let body_len = match usize::try_from(announced) {
        Ok(n) if n <= max_len => n,
        _ => {
            return Err(FrameError::TooLarge {
                len: u64::from(announced),
                max: max_len,
            });
        }
    };
    let total = LEN_PREFIX.saturating_add(body_len);
    if buf.len() >= total {
        Ok(FrameStatus::Complete { body_len })
    } else {
        Ok(FrameStatus::Incomplete {
            needed: total.saturating_sub(buf.len()),
        })
    }
}

/// A keep-alive frame.
pub const KEEPALIVE: [u8; LEN_PREFIX] = [0; LEN_PREFIX];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_need_more_bytes() {
        assert_eq!(check(&[], 10), Ok(FrameStatus::Incomplete { needed: 4 }));
        assert_eq!(
            check(&[0, 0], 10),
            Ok(FrameStatus::Incomplete { needed: 2 })
        );
        assert_eq!(
            check(&[0, 0, 0, 5, 1], 10),
            Ok(FrameStatus::Incomplete { needed: 4 })
        );
    }

    #[test]
    fn whole_frames_and_keepalives_are_complete() {
        assert_eq!(
            check(&KEEPALIVE, 10),
            Ok(FrameStatus::Complete { body_len: 0 })
        );
        assert_eq!(
            check(&[0, 0, 0, 2, 9, 9, 7], 10),
            Ok(FrameStatus::Complete { body_len: 2 })
        );
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert!(check(&[0, 0, 0, 11], 10).is_err());
        assert!(check(&[0, 0, 0, 10], 10).is_ok());
    }
}
