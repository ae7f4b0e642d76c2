//! Reading a message off a bus: the one place where the runtime decodes
//! what a bus delivered, with the bus's own compression options, and counts
//! and logs (in the bus's drop tally) what does not decode.

use bytes::Bytes;

use super::MessageBus;
use crate::wire::{Envelope, WireError};

/// Decodes one message received on a channel of `bus` as a `M` of type
/// `type_url`, with the bus's [`CompressionOptions`](crate::codec::CompressionOptions). A message that does
/// not decode is dropped: counted and logged in
/// [`bus.drops()`](MessageBus::drops) with its reason and the channel's name
/// (which `channel` gives, called only then), and `None` is returned.
///
/// This is the one place where the runtime reads a message off a bus.
pub fn receive<M: prost::Message + Default>(
    bus: &(impl MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    type_url: &str,
    bytes: Bytes,
) -> Option<M> {
    let r = bus
        .compression()
        .decode_value(bytes, type_url)
        .and_then(|v| Ok(M::decode(v)?));
    match r {
        Ok(m) => Some(m),
        Err(e) => {
            bus.drops().record(e.drop_reason(), &channel(), &e);
            None
        }
    }
}

/// The first half of [`receive`]: the payload of a message of type
/// `type_url` (inflated), or `None` when it is dropped (counted and logged).
pub(crate) fn receive_payload(
    bus: &(impl MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    type_url: &str,
    bytes: Bytes,
) -> Option<Bytes> {
    match bus.compression().decode_value(bytes, type_url) {
        Ok(v) => Some(v),
        Err(e) => {
            bus.drops().record(e.drop_reason(), &channel(), &e);
            None
        }
    }
}

/// The second half of [`receive`]: decodes a payload as a `M`, or `None`
/// when it does not decode (counted and logged).
pub(crate) fn decode_payload<M: prost::Message + Default>(
    bus: &(impl MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    payload: Bytes,
) -> Option<M> {
    match M::decode(payload) {
        Ok(m) => Some(m),
        Err(e) => {
            let e = WireError::from(e);
            bus.drops().record(e.drop_reason(), &channel(), &e);
            None
        }
    }
}

/// [`receive`] for an envelope message, whose type URL is known.
pub fn receive_envelope<M: Envelope>(
    bus: &(impl MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    bytes: Bytes,
) -> Option<M> {
    receive(bus, channel, M::TYPE_URL, bytes)
}
