//! Bytes on their way to a socket, kept as they were handed over: small encodings copied
//! together into one buffer, large payloads left where they lie, and the lot written in one
//! vectored write. A sealed channel message is then written from the buffer it was sealed in,
//! never copied again on its way out.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use kith_node::Backlog;

/// 64: the most pieces one write hands the kernel, well under every system's `IOV_MAX`.
pub(crate) const MAX_SLICES: usize = 64;

/// Bytes to write, in order: `parts`, then `tail`.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    /// Whole pieces: large payloads as they were handed over, and closed runs of the tail.
    parts: VecDeque<Bytes>,
    /// Bytes of `parts`.
    parts_len: usize,
    /// Where small encodings are appended, after everything in `parts`.
    tail: BytesMut,
}

impl Segments {
    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.parts_len + self.tail.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer to append small encodings to: they go out after everything before them.
    pub(crate) fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Queue `bytes` as a piece of its own, after everything before it, without copying it.
    pub(crate) fn push_shared(&mut self, bytes: Bytes) {
        if !self.tail.is_empty() {
            let run = self.tail.split().freeze();
            self.parts_len += run.len();
            self.parts.push_back(run);
        }
        if !bytes.is_empty() {
            self.parts_len += bytes.len();
            self.parts.push_back(bytes);
        }
    }

    /// Fill `out` with the next pieces to write, in order; returns how many it filled.
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let pieces = self
            .parts
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|b| !b.is_empty());
        let mut filled = 0;
        for (slot, piece) in out.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            filled += 1;
        }
        filled
    }

    /// Drop the first `n` bytes: they were written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                self.tail.advance(n.min(self.tail.len()));
                return;
            };
            let k = n.min(front.len());
            front.advance(k);
            self.parts_len -= k;
            n -= k;
            if front.is_empty() {
                self.parts.pop_front();
            }
        }
    }
}

impl Backlog for Segments {
    fn load(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(s: &Segments) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = s.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn a_shared_payload_is_written_from_where_it_lies() {
        let mut s = Segments::default();
        s.tail_mut().extend_from_slice(b"head");
        let payload = Bytes::from(vec![7u8; 4096]);
        let at = payload.as_ptr();
        s.push_shared(payload);
        s.tail_mut().extend_from_slice(b"next");
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        assert_eq!(s.slices(&mut slices), 3);
        assert_eq!(&slices[0][..], b"head");
        assert_eq!(slices[1].as_ptr(), at, "the payload is not copied");
        assert_eq!(&slices[2][..], b"next");
        assert_eq!(s.len(), 4 + 4096 + 4);
    }

    proptest! {
        /// Whatever is pushed, however it is written in parts, comes out in order and whole.
        #[test]
        fn pieces_come_out_in_order_whatever_is_written_at_a_time(
            pushes in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..40),
            writes in proptest::collection::vec(1usize..500, 1..200),
        ) {
            let mut s = Segments::default();
            let mut expected = Vec::new();
            for (shared, bytes) in &pushes {
                expected.extend_from_slice(bytes);
                if *shared {
                    s.push_shared(Bytes::from(bytes.clone()));
                } else {
                    s.tail_mut().extend_from_slice(bytes);
                }
            }
            prop_assert_eq!(s.len(), expected.len());
            let mut out = Vec::new();
            for w in writes.iter().cycle().take(10_000) {
                if s.is_empty() {
                    break;
                }
                let next = written(&s);
                let n = (*w).min(next.len());
                out.extend_from_slice(&next[..n]);
                s.advance(n);
                prop_assert_eq!(s.len(), expected.len() - out.len());
            }
            prop_assert_eq!(out, expected);
        }
    }
}
