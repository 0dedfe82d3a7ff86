//! What the two ends of a portal session say to each other, inside a secure channel.
//!
//! Every message is a CBOR array whose first item is a tag:
//!
//! | tag | message    | items after the tag                                   |
//! |-----|------------|-------------------------------------------------------|
//! | 0   | `Open`     | window (u32): the credit the opener grants            |
//! | 1   | `Opened`   | window (u32): the credit the outlet grants            |
//! | 2   | `Refused`  | reason (text ≤ [`MAX_REASON_LEN`] bytes)              |
//! | 3   | `Data`     | bytes (1 ..= [`MAX_CHUNK`])                           |
//! | 4   | `Credit`   | credit (u32) returned for data written to the socket   |
//! | 5   | `End`      | — the sender's socket reached end of stream            |
//! | 6   | `Close`    | reason: the session failed; abort                      |
//! | 7   | `Ping`     | — nothing else to say lately: I am alive               |
//!
//! Decoding is strict: exactly these shapes, definite lengths, nothing after the message.
//! `Data` is decoded without copying: its bytes are a slice of the payload.

use bytes::{BufMut, Bytes, BytesMut};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// 48 KiB: what a session reads from its socket into one `Data` message. A frame carrying
/// it, inside two nested channels, stays under the 64 KiB a connection's reader reserves
/// ahead of arrived bytes, so the frame is read into one buffer without growing it.
pub const CHUNK: usize = 48 * 1024;

/// 192 KiB: the most bytes one `Data` message carries, so that a chunk inside two nested
/// channels, with their routes and overhead, still fits one frame (256 KiB) with room to
/// spare.
pub const MAX_CHUNK: usize = 192 * 1024;

/// 1 KiB: the longest reason a `Refused` or `Close` carries; longer ones are cut.
pub const MAX_REASON_LEN: usize = 1024;

/// One portal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortalMessage {
    /// Open a session; the opener grants `window` credit for data sent to it.
    Open {
        /// Credit granted to the other end.
        window: u32,
    },
    /// The outlet connected to its target; it grants `window` credit.
    Opened {
        /// Credit granted to the other end.
        window: u32,
    },
    /// The outlet will not carry this session.
    Refused {
        /// Why, for the inlet's log.
        reason: String,
    },
    /// Bytes read from one end's socket, to be written to the other's.
    Data(Bytes),
    /// Credit returned: the receiver wrote that much to its socket.
    Credit(u32),
    /// The sender's socket reached end of stream: shut down writing at the other end.
    End,
    /// The session failed at the sender's end: abort at the other end too.
    Close {
        /// Why, for the other end's log.
        reason: String,
    },
    /// A heartbeat.
    Ping,
}

/// Why bytes are not a portal message.
#[derive(Debug, thiserror::Error)]
pub enum PortalDecodeError {
    /// Malformed or truncated CBOR, or a value of the wrong type.
    #[error("malformed portal message: {0}")]
    Cbor(#[from] minicbor::decode::Error),
    /// A well-formed value of the wrong shape.
    #[error("invalid portal message: {0}")]
    Shape(&'static str),
    /// An unknown tag.
    #[error("unknown portal message tag {0}")]
    Tag(u64),
    /// Bytes after the message.
    #[error("{0} trailing bytes after the portal message")]
    Trailing(usize),
}

const OPEN: u8 = 0;
const OPENED: u8 = 1;
const REFUSED: u8 = 2;
const DATA: u8 = 3;
const CREDIT: u8 = 4;
const END: u8 = 5;
const CLOSE: u8 = 6;
const PING: u8 = 7;

/// The longest `Data` header: array(2), tag, byte-string length in five bytes.
pub(crate) const DATA_HEADER_ROOM: usize = 7;

impl PortalMessage {
    /// The CBOR encoding.
    pub fn encode(&self) -> Bytes {
        if let PortalMessage::Data(data) = self {
            let mut buf = BytesMut::with_capacity(DATA_HEADER_ROOM + data.len());
            put_data_header(&mut buf, data.len());
            buf.put_slice(data);
            return buf.freeze();
        }
        let mut out = Vec::with_capacity(16);
        let mut e = Encoder::new(&mut out);
        // Writing to a Vec cannot fail.
        let _ = match self {
            PortalMessage::Open { window } => e.array(2).and_then(|e| e.u8(OPEN)?.u32(*window)),
            PortalMessage::Opened { window } => e.array(2).and_then(|e| e.u8(OPENED)?.u32(*window)),
            PortalMessage::Refused { reason } => {
                e.array(2).and_then(|e| e.u8(REFUSED)?.str(cut(reason)))
            }
            PortalMessage::Credit(n) => e.array(2).and_then(|e| e.u8(CREDIT)?.u32(*n)),
            PortalMessage::End => e.array(1).and_then(|e| e.u8(END)),
            PortalMessage::Close { reason } => {
                e.array(2).and_then(|e| e.u8(CLOSE)?.str(cut(reason)))
            }
            PortalMessage::Ping => e.array(1).and_then(|e| e.u8(PING)),
            PortalMessage::Data(_) => Ok(&mut e),
        };
        Bytes::from(out)
    }

    /// Decode `payload`; `Data` borrows from it.
    pub fn decode(payload: &Bytes) -> Result<Self, PortalDecodeError> {
        let mut d = Decoder::new(payload);
        let len = d
            .array()?
            .ok_or(PortalDecodeError::Shape("indefinite-length array"))?;
        let tag = d.u64()?;
        let want = match tag {
            0..=4 | 6 => 2,
            5 | 7 => 1,
            other => return Err(PortalDecodeError::Tag(other)),
        };
        if len != want {
            return Err(PortalDecodeError::Shape(
                "wrong number of items for the tag",
            ));
        }
        let message = match u8::try_from(tag).unwrap_or(u8::MAX) {
            OPEN => PortalMessage::Open { window: d.u32()? },
            OPENED => PortalMessage::Opened { window: d.u32()? },
            REFUSED => PortalMessage::Refused {
                reason: reason(&mut d)?,
            },
            DATA => {
                if d.datatype()? != Type::Bytes {
                    return Err(PortalDecodeError::Shape(
                        "data must be a definite byte string",
                    ));
                }
                let chunk = d.bytes()?;
                if chunk.is_empty() || chunk.len() > MAX_CHUNK {
                    return Err(PortalDecodeError::Shape("data must carry 1 to 192 KiB"));
                }
                let end = d.position();
                PortalMessage::Data(payload.slice(end - chunk.len()..end))
            }
            CREDIT => PortalMessage::Credit(d.u32()?),
            END => PortalMessage::End,
            CLOSE => PortalMessage::Close {
                reason: reason(&mut d)?,
            },
            _ => PortalMessage::Ping,
        };
        let rest = payload.len() - d.position();
        if rest != 0 {
            return Err(PortalDecodeError::Trailing(rest));
        }
        Ok(message)
    }
}

/// Write the header of a `Data` message carrying `len` bytes (`len` ≤ [`MAX_CHUNK`]).
pub(crate) fn put_data_header(buf: &mut BytesMut, len: usize) {
    buf.put_u8(0x82); // array(2)
    buf.put_u8(DATA);
    match len {
        0..=23 => buf.put_u8(0x40 | len as u8),
        24..=0xff => {
            buf.put_u8(0x58);
            buf.put_u8(len as u8);
        }
        0x100..=0xffff => {
            buf.put_u8(0x59);
            buf.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
        }
        _ => {
            buf.put_u8(0x5a);
            buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        }
    }
}

/// How many bytes [`put_data_header`] writes for `len`.
pub(crate) fn data_header_len(len: usize) -> usize {
    match len {
        0..=23 => 3,
        24..=0xff => 4,
        0x100..=0xffff => 5,
        _ => 7,
    }
}

fn reason(d: &mut Decoder<'_>) -> Result<String, PortalDecodeError> {
    if d.datatype()? != Type::String {
        return Err(PortalDecodeError::Shape(
            "a reason must be a definite text string",
        ));
    }
    let text = d.str()?;
    if text.len() > MAX_REASON_LEN {
        return Err(PortalDecodeError::Shape("reason longer than 1 KiB"));
    }
    Ok(text.to_owned())
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes, on a character boundary.
fn cut(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_message() -> impl Strategy<Value = PortalMessage> {
        prop_oneof![
            any::<u32>().prop_map(|window| PortalMessage::Open { window }),
            any::<u32>().prop_map(|window| PortalMessage::Opened { window }),
            ".{0,40}".prop_map(|reason| PortalMessage::Refused { reason }),
            proptest::collection::vec(any::<u8>(), 1..2000)
                .prop_map(|v| PortalMessage::Data(Bytes::from(v))),
            any::<u32>().prop_map(PortalMessage::Credit),
            Just(PortalMessage::End),
            ".{0,40}".prop_map(|reason| PortalMessage::Close { reason }),
            Just(PortalMessage::Ping),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in any_message()) {
            let bytes = m.encode();
            prop_assert_eq!(PortalMessage::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PortalMessage::decode(&Bytes::from(bytes));
        }

        #[test]
        fn a_cut_or_extended_message_is_refused(m in any_message(), extra in 1u8..=255) {
            let bytes = m.encode();
            let mut longer = bytes.to_vec();
            longer.push(extra);
            prop_assert!(PortalMessage::decode(&Bytes::from(longer)).is_err());
            let shorter = bytes.slice(..bytes.len() - 1);
            prop_assert!(PortalMessage::decode(&shorter).is_err());
        }
    }

    #[test]
    fn data_headers_match_their_length() {
        for len in [1, 23, 24, 255, 256, MAX_CHUNK] {
            let mut buf = BytesMut::new();
            put_data_header(&mut buf, len);
            assert_eq!(buf.len(), data_header_len(len));
            buf.put_bytes(7, len);
            let decoded = PortalMessage::decode(&buf.freeze()).unwrap();
            assert_eq!(decoded, PortalMessage::Data(Bytes::from(vec![7; len])));
        }
    }

    #[test]
    fn empty_oversized_and_unknown_are_refused() {
        let empty = Bytes::from_static(&[0x82, DATA, 0x40]);
        assert!(PortalMessage::decode(&empty).is_err());
        let mut big = BytesMut::new();
        big.put_u8(0x82);
        big.put_u8(DATA);
        big.put_u8(0x5a);
        big.put_u32(MAX_CHUNK as u32 + 1);
        big.put_bytes(0, MAX_CHUNK + 1);
        assert!(PortalMessage::decode(&big.freeze()).is_err());
        assert!(PortalMessage::decode(&Bytes::from_static(&[0x81, 0x08])).is_err());
        assert!(PortalMessage::decode(&Bytes::from_static(&[0x82, END, 0x00])).is_err());
        let long = "x".repeat(MAX_REASON_LEN + 10);
        let m = PortalMessage::Close { reason: long };
        match PortalMessage::decode(&m.encode()).unwrap() {
            PortalMessage::Close { reason } => assert_eq!(reason.len(), MAX_REASON_LEN),
            other => panic!("{other:?}"),
        }
    }
}
