//! The transport message: `{0: version, 1: onward_route, 2: return_route, 3: payload}` in CBOR,
//! and `4: 1` after them for an error message ([`MessageKind::Undeliverable`]).
//!
//! Encoded as a definite map with integer keys in order; a data message has exactly the four
//! fields it always had, so nodes that predate error messages read it unchanged; a route is a definite array of
//! addresses, an address a two-element array `[kind, value]`. Decoding is strict (exact shape,
//! definite lengths, every count checked against a named maximum before the loop that reads
//! it, no trailing bytes) and borrows from the frame, so a hostile length can make us read
//! nothing that is not there and allocate nothing it did not send.

use bytes::{BufMut, Bytes, BytesMut};
use kith_node::{Address, MAX_ROUTE_LEN, MessageKind, Route};
use minicbor::{Decoder, Encoder};

use crate::DecodeError;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, LEN_PREFIX};

/// The transport message version this node speaks, also the connection preamble byte.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest payload that fits in a default-size frame with room for two full routes.
pub const MAX_PAYLOAD_LEN: usize = DEFAULT_MAX_FRAME_LEN - 24 * 1024;

/// The value of field 4 for an error message. A data message has no field 4: its only
/// encoding is the four-field map, so `4: 0` is refused as non-canonical.
const KIND_UNDELIVERABLE: u8 = 1;

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportMessage {
    /// Where the message goes from the receiving node on.
    pub onward_route: Route,
    /// How to answer, as seen from the sending node.
    pub return_route: Route,
    /// Application bytes, or an encoded [`kith_node::Undeliverable`].
    pub payload: Bytes,
    /// What the payload is.
    pub kind: MessageKind,
}

impl TransportMessage {
    /// Append the encoding of this message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut e = Encoder::new(minicbor::encode::write::Writer::new(dst.writer()));
        // Writing into a BytesMut cannot fail; an error here would be a bug in minicbor.
        let _ = encode_into(&mut e, self);
    }

    /// Append a whole frame (length prefix and body) to `dst`. Returns the body length, or
    /// `None` (with `dst` unchanged) if the body would exceed `max_frame_len`.
    pub fn encode_frame(&self, dst: &mut BytesMut, max_frame_len: usize) -> Option<usize> {
        let start = dst.len();
        dst.put_u32(0);
        self.encode(dst);
        let body_len = dst.len().saturating_sub(start + LEN_PREFIX);
        match u32::try_from(body_len) {
            Ok(n) if body_len <= max_frame_len => {
                if let Some(prefix) = dst.get_mut(start..start + LEN_PREFIX) {
                    prefix.copy_from_slice(&n.to_be_bytes());
                }
                Some(body_len)
            }
            _ => {
                dst.truncate(start);
                None
            }
        }
    }

    /// Append a frame's length prefix and the body's encoding up to its payload's bytes,
    /// for a sender that writes the payload from where it lies (a vectored write) instead of
    /// copying it after the head. Only a data message ends with its payload, so this is
    /// `None` for an error message, as it is (with `dst` unchanged) for a body over
    /// `max_frame_len`. Returns the body length: the head's and the payload's.
    pub fn encode_frame_head(&self, dst: &mut BytesMut, max_frame_len: usize) -> Option<usize> {
        if self.kind != MessageKind::Data {
            return None;
        }
        let body_len = self.encoded_len();
        let prefix = u32::try_from(body_len)
            .ok()
            .filter(|_| body_len <= max_frame_len)?;
        dst.put_u32(prefix);
        let mut e = Encoder::new(minicbor::encode::write::Writer::new(dst.writer()));
        // Writing into a BytesMut cannot fail; an error here would be a bug in minicbor.
        let _ = encode_head(&mut e, self);
        Some(body_len)
    }

    /// The length of [`TransportMessage::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        encoded_len(
            self.onward_route.iter(),
            &self.return_route,
            self.payload.len(),
            self.kind,
        )
    }

    /// Decode a frame body. The payload is a slice of `body`, not a copy.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(body);
        let fields = match d.map().map_err(DecodeError::Cbor)? {
            Some(n @ (4 | 5)) => n,
            Some(_) => {
                return Err(DecodeError::Shape {
                    found: "a map with other than 4 or 5 fields",
                });
            }
            None => {
                return Err(DecodeError::Shape {
                    found: "an indefinite-length map",
                });
            }
        };
        expect_key(&mut d, 0)?;
        let version = d.u8().map_err(DecodeError::Cbor)?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        expect_key(&mut d, 1)?;
        let onward_route = decode_route(&mut d)?;
        expect_key(&mut d, 2)?;
        let return_route = decode_route(&mut d)?;
        expect_key(&mut d, 3)?;
        let payload = d.bytes().map_err(DecodeError::Cbor)?;
        let payload = body.slice_ref(payload);
        let kind = if fields == 5 {
            expect_key(&mut d, 4)?;
            match d.u8().map_err(DecodeError::Cbor)? {
                KIND_UNDELIVERABLE => MessageKind::Undeliverable,
                _ => {
                    return Err(DecodeError::Shape {
                        found: "a message kind other than 1 (an error message) in field 4",
                    });
                }
            }
        } else {
            MessageKind::Data
        };
        let rest = body.len().saturating_sub(d.position());
        if rest != 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(Self {
            onward_route,
            return_route,
            payload,
            kind,
        })
    }
}

/// The encoded length of a message with these parts: what [`TransportMessage::encoded_len`]
/// computes, for a sender that has the parts but no [`TransportMessage`] yet.
pub(crate) fn encoded_len<'a>(
    onward_route: impl ExactSizeIterator<Item = &'a Address>,
    return_route: &Route,
    payload_len: usize,
    kind: MessageKind,
) -> usize {
    // map header, then keys 0..=3 and the version: one byte each.
    let fields = 1 + 4 + 1;
    let kind_field = match kind {
        MessageKind::Data => 0,
        MessageKind::Undeliverable => 2,
    };
    fields
        + kind_field
        + route_len(onward_route)
        + route_len(return_route.iter())
        + head_len(payload_len)
        + payload_len
}

fn route_len<'a>(route: impl ExactSizeIterator<Item = &'a Address>) -> usize {
    let header = head_len(route.len());
    route.fold(header, |sum, a| {
        // array(2), the kind as an unsigned integer, the value as text.
        let kind = if a.kind() < 24 { 1 } else { 2 };
        sum + 1 + kind + head_len(a.value().len()) + a.value().len()
    })
}

/// Bytes of a CBOR head (major type and argument) for the argument `n`.
fn head_len(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn encode_into<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    m: &TransportMessage,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    encode_head(e, m)?;
    e.writer_mut()
        .write_all(&m.payload)
        .map_err(minicbor::encode::Error::write)?;
    if m.kind == MessageKind::Undeliverable {
        e.u8(4)?.u8(KIND_UNDELIVERABLE)?;
    }
    Ok(())
}

/// Everything up to the payload's bytes: the map, the version, the routes, key 3 and the
/// payload's byte-string head.
fn encode_head<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    m: &TransportMessage,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    let fields = match m.kind {
        MessageKind::Data => 4,
        MessageKind::Undeliverable => 5,
    };
    e.map(fields)?.u8(0)?.u8(PROTOCOL_VERSION)?.u8(1)?;
    encode_route(e, &m.onward_route)?;
    e.u8(2)?;
    encode_route(e, &m.return_route)?;
    e.u8(3)?.bytes_len(m.payload.len() as u64)?;
    Ok(())
}

fn encode_route<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    route: &Route,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.array(route.len() as u64)?;
    for a in route.iter() {
        e.array(2)?.u8(a.kind())?.str(a.value())?;
    }
    Ok(())
}

fn expect_key(d: &mut Decoder<'_>, key: u8) -> Result<(), DecodeError> {
    let found = d.u8().map_err(DecodeError::Cbor)?;
    if found == key {
        Ok(())
    } else {
        Err(DecodeError::Shape {
            found: "fields out of order or unknown",
        })
    }
}

fn decode_route(d: &mut Decoder<'_>) -> Result<Route, DecodeError> {
    let Some(len) = d.array().map_err(DecodeError::Cbor)? else {
        return Err(DecodeError::Shape {
            found: "an indefinite-length route",
        });
    };
    if len > MAX_ROUTE_LEN as u64 {
        return Err(DecodeError::RouteTooLong {
            len,
            max: MAX_ROUTE_LEN,
        });
    }
    let mut hops = Vec::new();
    for _ in 0..len {
        if d.array().map_err(DecodeError::Cbor)? != Some(2) {
            return Err(DecodeError::Shape {
                found: "an address that is not [kind, value]",
            });
        }
        let kind = d.u8().map_err(DecodeError::Cbor)?;
        let value = d.str().map_err(DecodeError::Cbor)?;
        hops.push(Address::try_new(kind, value)?);
    }
    Ok(Route::from(hops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> TransportMessage {
        TransportMessage {
            onward_route: Route::from(vec![Address::local("echo")]),
            return_route: Route::from(vec![
                Address::local("tcp-1"),
                "1#127.0.0.1:4000".parse().unwrap(),
            ]),
            payload: Bytes::from_static(b"hello"),
            kind: MessageKind::Data,
        }
    }

    fn encoded(m: &TransportMessage) -> Bytes {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        buf.freeze()
    }

    #[test]
    fn a_data_message_is_the_four_field_map_and_an_error_message_adds_field_4() {
        let data = encoded(&sample());
        assert_eq!(
            data[0], 0xa4,
            "map(4): what nodes before error messages read"
        );
        let error = TransportMessage {
            kind: MessageKind::Undeliverable,
            ..sample()
        };
        let bytes = encoded(&error);
        assert_eq!(bytes[0], 0xa5);
        assert_eq!(&bytes[bytes.len() - 2..], [0x04, 0x01]);
        assert_eq!(&bytes[1..bytes.len() - 2], &data[1..]);
        assert_eq!(TransportMessage::decode(&bytes).unwrap(), error);
    }

    #[test]
    fn a_fifth_field_that_is_not_an_error_kind_is_refused() {
        let data = encoded(&sample());
        for field in [[0x04, 0x00], [0x04, 0x02], [0x04, 0x17], [0x05, 0x01]] {
            let mut v = data.to_vec();
            v[0] = 0xa5;
            v.extend_from_slice(&field);
            assert!(
                matches!(
                    TransportMessage::decode(&Bytes::from(v)),
                    Err(DecodeError::Shape { .. })
                ),
                "{field:?}"
            );
        }
        // Six fields, or a kind field in a four-field map, are not shapes either.
        let mut v = encoded(&TransportMessage {
            kind: MessageKind::Undeliverable,
            ..sample()
        })
        .to_vec();
        v[0] = 0xa6;
        assert!(matches!(
            TransportMessage::decode(&Bytes::from(v.clone())),
            Err(DecodeError::Shape { .. })
        ));
        v[0] = 0xa4;
        assert!(matches!(
            TransportMessage::decode(&Bytes::from(v)),
            Err(DecodeError::TrailingBytes(2))
        ));
    }

    #[test]
    fn round_trip_and_frame() {
        let m = sample();
        let mut buf = BytesMut::new();
        let n = m.encode_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(buf.len(), n + LEN_PREFIX);
        let body = buf.freeze().slice(LEN_PREFIX..);
        assert_eq!(TransportMessage::decode(&body).unwrap(), m);
    }

    #[test]
    fn oversized_message_is_not_framed() {
        let mut m = sample();
        m.payload = Bytes::from(vec![0u8; 1000]);
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(m.encode_frame(&mut buf, 100), None);
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn wrong_version_trailing_bytes_and_truncation_are_refused() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        let good = buf.freeze();
        let mut v = good.to_vec();
        v[2] = 2; // the version value follows map header and key 0
        assert!(matches!(
            TransportMessage::decode(&Bytes::from(v)),
            Err(DecodeError::Version(2))
        ));
        let mut v = good.to_vec();
        v.push(0);
        assert!(matches!(
            TransportMessage::decode(&Bytes::from(v)),
            Err(DecodeError::TrailingBytes(1))
        ));
        for cut in 0..good.len() {
            assert!(
                TransportMessage::decode(&good.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn huge_announced_route_is_refused_without_reading_it() {
        // map(4), 0: 1, 1: array(2^32-1)
        let body = Bytes::from_static(&[0xa4, 0x00, 0x01, 0x01, 0x9a, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            TransportMessage::decode(&body),
            Err(DecodeError::RouteTooLong { .. })
        ));
    }

    fn arb_address() -> impl Strategy<Value = Address> {
        (any::<u8>(), "[a-z0-9.:#-]{1,40}").prop_map(|(k, v)| Address::try_new(k, v).unwrap())
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        proptest::collection::vec(arb_address(), 0..=MAX_ROUTE_LEN).prop_map(Route::from)
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            onward in arb_route(),
            ret in arb_route(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            kind in prop_oneof![Just(MessageKind::Data), Just(MessageKind::Undeliverable)],
        ) {
            let m = TransportMessage { onward_route: onward, return_route: ret, payload: payload.into(), kind };
            let bytes = encoded(&m);
            prop_assert_eq!(m.encoded_len(), bytes.len());
            prop_assert_eq!(TransportMessage::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn encoded_len_is_exact_for_long_values_and_large_payloads(
            kind in any::<u8>(),
            value_len in prop_oneof![1usize..30, 250usize..=255],
            payload_len in prop_oneof![0usize..30, 250usize..300, 65_530usize..65_540],
        ) {
            let address = Address::try_new(kind, "v".repeat(value_len)).unwrap();
            let m = TransportMessage {
                onward_route: Route::from(vec![address.clone(); 24]),
                return_route: Route::from(address),
                payload: Bytes::from(vec![0u8; payload_len]),
                kind: MessageKind::Data,
            };
            prop_assert_eq!(m.encoded_len(), encoded(&m).len());
        }

        #[test]
        fn a_frame_head_and_its_payload_are_the_whole_frame(
            onward in arb_route(),
            ret in arb_route(),
            payload in proptest::collection::vec(any::<u8>(), 0..70_000),
            max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0usize..80_000],
            kind in prop_oneof![Just(MessageKind::Data), Just(MessageKind::Undeliverable)],
        ) {
            let m = TransportMessage { onward_route: onward, return_route: ret, payload: payload.into(), kind };
            let mut whole = BytesMut::from(&b"before"[..]);
            let framed = m.encode_frame(&mut whole, max);
            let mut head = BytesMut::from(&b"before"[..]);
            match m.encode_frame_head(&mut head, max) {
                Some(body_len) => {
                    prop_assert_eq!(Some(body_len), framed);
                    head.extend_from_slice(&m.payload);
                    prop_assert_eq!(head, whole);
                }
                None => {
                    prop_assert!(kind == MessageKind::Undeliverable || framed.is_none());
                    prop_assert_eq!(&head[..], b"before");
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_valid_ones_re_encode(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = TransportMessage::decode(&Bytes::from(bytes)) {
                let mut buf = BytesMut::new();
                m.encode(&mut buf);
                prop_assert_eq!(TransportMessage::decode(&buf.freeze()).unwrap(), m);
            }
        }

        #[test]
        fn frame_check_accounts_for_every_byte(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..100) {
            match crate::frame::check(&bytes, max) {
                Ok(crate::frame::FrameStatus::Complete { body_len }) => prop_assert!(body_len <= max && LEN_PREFIX + body_len <= bytes.len()),
                Ok(crate::frame::FrameStatus::Incomplete { needed }) => prop_assert!(needed > 0),
                Err(_) => prop_assert!(bytes.len() >= LEN_PREFIX),
            }
        }
    }
}
