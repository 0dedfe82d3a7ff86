//! `TransportMessage::decode` never panics on any frame body, and whatever it accepts
//! survives `encode` then `decode` as an equal message. The re-encoding is also a fixed point
//! (encoding the re-decoded message gives the same bytes), and framing it with `encode_frame`
//! at the default maximum gives a frame that `frame::check` sees as complete and whose body
//! decodes to the same message.
//!
//! Input: the whole input is one frame body (without the length prefix).

#![no_main]

use bytes::{Bytes, BytesMut};
use kith_node::MAX_ROUTE_LEN;
use kith_transport::TransportMessage;
use kith_transport::frame::{DEFAULT_MAX_FRAME_LEN, FrameStatus, LEN_PREFIX, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(m) = TransportMessage::decode(&body) else {
        return;
    };
    assert!(m.onward_route.len() <= MAX_ROUTE_LEN);
    assert!(m.return_route.len() <= MAX_ROUTE_LEN);
    assert!(m.payload.len() <= data.len());

    let mut first = BytesMut::new();
    m.encode(&mut first);
    let first = first.freeze();
    let again =
        TransportMessage::decode(&first).expect("the encoding of a decoded message decodes");
    assert_eq!(again, m, "encode then decode changed the message");

    let mut second = BytesMut::new();
    again.encode(&mut second);
    assert_eq!(second.freeze(), first, "re-encoding is not a fixed point");

    let mut framed = BytesMut::new();
    if let Some(body_len) = m.encode_frame(&mut framed, DEFAULT_MAX_FRAME_LEN) {
        assert_eq!(body_len, first.len());
        assert_eq!(
            check(&framed, DEFAULT_MAX_FRAME_LEN),
            Ok(FrameStatus::Complete { body_len })
        );
        assert_eq!(framed.len(), LEN_PREFIX + body_len);
        let framed = framed.freeze();
        let from_frame = TransportMessage::decode(&framed.slice(LEN_PREFIX..))
            .expect("a framed message decodes");
        assert_eq!(from_frame, m);
    } else {
        assert!(
            framed.is_empty(),
            "a refused encode_frame left bytes behind"
        );
        assert!(first.len() > DEFAULT_MAX_FRAME_LEN);
    }
});
