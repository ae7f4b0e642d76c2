//! The envelope messages of `proto/psrpc/internal.proto` (docs/PROTOCOL.md, "Envelopes")
//! and their encoding, byte for byte as the Go library writes them.
//!
//! The message types are generated from the proto by prost-build in
//! `build.rs`. Two things are written by hand here because prost differs from
//! Go on them: the `Msg` envelope is written around the payload without a
//! second copy, and map entries always carry both key and value (prost leaves
//! out empty ones; Go does not), so `Request` has its own encoder.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{self, WireType, encode_key, encode_varint, encoded_len_varint, key_len};

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/internal.rs"));
}

pub use pb::stream::Body as StreamBody;
pub use pb::{
    Channel as ChannelField, ClaimRequest, ClaimResponse, Compression, Msg, Request, Response,
    Stream, StreamAck, StreamClose, StreamMessage, StreamOpen,
};

/// The prefix of every type URL psrpc puts on the wire.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Errors reading a message off the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The envelope names another type than the channel carries.
    #[error("unexpected message type {got:?}, expected {expected:?}")]
    UnexpectedType {
        /// The type URL that arrived.
        got: String,
        /// The type URL the channel carries.
        expected: String,
    },
    /// `Msg.compression` is neither none (0) nor gzip (1).
    #[error("unrecognized message compression {0}")]
    UnknownCompression(i32),
    /// The payload is flagged gzip but does not inflate: bad header, CRC or
    /// length, or trailing bytes that are not a gzip member.
    #[error("bad gzip payload: {0}")]
    BadCompression(std::io::Error),
    /// The payload inflates past the bus's cap.
    #[error("decompressed message exceeds {0} bytes")]
    DecompressedTooLarge(usize),
}

/// A psrpc envelope message with its fixed type URL.
pub trait Envelope: Message + Default + Sized {
    /// `type.googleapis.com/internal.<Name>`.
    const TYPE_URL: &'static str;

    /// The encoded length, as Go computes it.
    fn go_encoded_len(&self) -> usize {
        self.encoded_len()
    }

    /// Writes the message as Go would.
    fn go_encode(&self, buf: &mut BytesMut) {
        self.encode_raw(buf)
    }
}

impl Envelope for Request {
    const TYPE_URL: &'static str = "type.googleapis.com/internal.Request";

    fn go_encoded_len(&self) -> usize {
        request_len(self)
    }

    fn go_encode(&self, buf: &mut BytesMut) {
        encode_request(self, buf)
    }
}
impl Envelope for Response {
    const TYPE_URL: &'static str = "type.googleapis.com/internal.Response";
}
impl Envelope for ClaimRequest {
    const TYPE_URL: &'static str = "type.googleapis.com/internal.ClaimRequest";
}
impl Envelope for ClaimResponse {
    const TYPE_URL: &'static str = "type.googleapis.com/internal.ClaimResponse";
}
impl Envelope for Stream {
    const TYPE_URL: &'static str = "type.googleapis.com/internal.Stream";

    fn go_encoded_len(&self) -> usize {
        match &self.body {
            Some(StreamBody::Open(o)) => {
                let inner = open_len(o);
                self.len_without_body() + key_len(6) + encoded_len_varint(inner as u64) + inner
            }
            _ => self.encoded_len(),
        }
    }

    fn go_encode(&self, buf: &mut BytesMut) {
        match &self.body {
            // StreamOpen carries a map: written by hand so empty keys and
            // values are kept, as Go writes them.
            Some(StreamBody::Open(o)) => {
                use encoding::*;
                if !self.stream_id.is_empty() {
                    string::encode(1, &self.stream_id, buf);
                }
                if !self.request_id.is_empty() {
                    string::encode(2, &self.request_id, buf);
                }
                if self.sent_at != 0 {
                    int64::encode(3, &self.sent_at, buf);
                }
                if self.expiry != 0 {
                    int64::encode(4, &self.expiry, buf);
                }
                encode_key(6, WireType::LengthDelimited, buf);
                encode_varint(open_len(o) as u64, buf);
                if !o.node_id.is_empty() {
                    string::encode(1, &o.node_id, buf);
                }
                encode_map(7, &o.metadata, buf);
            }
            _ => self.encode_raw(buf),
        }
    }
}

fn open_len(o: &StreamOpen) -> usize {
    let id = if o.node_id.is_empty() {
        0
    } else {
        encoding::string::encoded_len(1, &o.node_id)
    };
    id + map_len(7, &o.metadata)
}

impl Stream {
    fn len_without_body(&self) -> usize {
        use encoding::*;
        let mut n = 0;
        if !self.stream_id.is_empty() {
            n += string::encoded_len(1, &self.stream_id);
        }
        if !self.request_id.is_empty() {
            n += string::encoded_len(2, &self.request_id);
        }
        if self.sent_at != 0 {
            n += int64::encoded_len(3, &self.sent_at);
        }
        if self.expiry != 0 {
            n += int64::encoded_len(4, &self.expiry);
        }
        n
    }
}

fn map_len(tag: u32, map: &std::collections::BTreeMap<String, String>) -> usize {
    map.iter()
        .map(|(k, v)| {
            let inner = key_len(1)
                + encoded_len_varint(k.len() as u64)
                + k.len()
                + key_len(2)
                + encoded_len_varint(v.len() as u64)
                + v.len();
            key_len(tag) + encoded_len_varint(inner as u64) + inner
        })
        .sum()
}

fn encode_map(tag: u32, map: &std::collections::BTreeMap<String, String>, buf: &mut impl BufMut) {
    for (k, v) in map {
        let inner = key_len(1)
            + encoded_len_varint(k.len() as u64)
            + k.len()
            + key_len(2)
            + encoded_len_varint(v.len() as u64)
            + v.len();
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(inner as u64, buf);
        // Go writes key and value even when empty.
        encoding::string::encode(1, k, buf);
        encoding::string::encode(2, v, buf);
    }
}

fn request_len(r: &Request) -> usize {
    r.len_without_metadata() + map_len(7, &r.metadata)
}

impl Request {
    /// Length of every field but the metadata map (prost's rules, which match
    /// Go's for these fields).
    fn len_without_metadata(&self) -> usize {
        use encoding::*;
        let mut n = 0;
        if !self.request_id.is_empty() {
            n += string::encoded_len(1, &self.request_id);
        }
        if !self.client_id.is_empty() {
            n += string::encoded_len(2, &self.client_id);
        }
        if self.sent_at != 0 {
            n += int64::encoded_len(3, &self.sent_at);
        }
        if self.expiry != 0 {
            n += int64::encoded_len(4, &self.expiry);
        }
        if self.multi {
            n += bool::encoded_len(5, &self.multi);
        }
        #[allow(deprecated)]
        if let Some(any) = &self.request {
            n += message::encoded_len(6, any);
        }
        if !self.raw_request.is_empty() {
            n += bytes::encoded_len(8, &self.raw_request);
        }
        if self.skip_claim {
            n += bool::encoded_len(10, &self.skip_claim);
        }
        n
    }
}

fn encode_request(r: &Request, buf: &mut impl BufMut) {
    use encoding::*;
    if !r.request_id.is_empty() {
        string::encode(1, &r.request_id, buf);
    }
    if !r.client_id.is_empty() {
        string::encode(2, &r.client_id, buf);
    }
    if r.sent_at != 0 {
        int64::encode(3, &r.sent_at, buf);
    }
    if r.expiry != 0 {
        int64::encode(4, &r.expiry, buf);
    }
    if r.multi {
        bool::encode(5, &r.multi, buf);
    }
    #[allow(deprecated)]
    if let Some(any) = &r.request {
        message::encode(6, any, buf);
    }
    encode_map(7, &r.metadata, buf);
    if !r.raw_request.is_empty() {
        bytes::encode(8, &r.raw_request, buf);
    }
    if r.skip_claim {
        bool::encode(10, &r.skip_claim, buf);
    }
}

/// The bytes of one envelope message alone, as Go writes them.
pub fn encode<M: Envelope>(m: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(m.go_encoded_len());
    m.go_encode(&mut buf);
    buf.freeze()
}

/// Wraps an envelope message in `Msg` (no channel field, uncompressed): what
/// Redis and the local bus publish, and what NATS publishes before appending
/// field 3. The runtime encodes through
/// [`CompressionOptions::encode`](crate::codec::CompressionOptions::encode),
/// which comes here when it does not compress.
pub fn encode_msg<M: Envelope>(m: &M) -> Bytes {
    let len = m.go_encoded_len();
    write_msg(&[M::TYPE_URL], len, false, |buf| m.go_encode(buf))
}

/// Wraps already encoded user message bytes in `Msg` with `type_url`
/// (subscription updates: the user message is the payload itself).
pub fn encode_msg_raw(type_url: &str, value: &[u8]) -> Bytes {
    write_msg(&[type_url], value.len(), false, |buf| buf.put_slice(value))
}

/// Wraps a gzipped payload in `Msg` with `type_url` and
/// `compression = COMPRESSION_GZIP` (field 4, written last as Go does).
pub fn encode_msg_gzip(type_url: &str, gz: &[u8]) -> Bytes {
    write_msg(&[type_url], gz.len(), true, |buf| buf.put_slice(gz))
}

/// `Msg.compression = COMPRESSION_GZIP`: key of field 4 (varint), value 1.
const GZIP_FIELD: [u8; 2] = [0x20, 0x01];

/// Wraps a user message in `Msg` (uncompressed) with the type URL made of
/// `type_url`'s parts, encoding it straight into the envelope.
pub(crate) fn encode_msg_message(type_url: &[&str], m: &impl Message) -> Bytes {
    write_msg(type_url, m.encoded_len(), false, |buf| m.encode_raw(buf))
}

/// Writes `Msg` with the type URL made of `type_url`'s parts (concatenated)
/// and a payload of `len` bytes that `write` writes.
fn write_msg(
    type_url: &[&str],
    len: usize,
    gzip: bool,
    write: impl FnOnce(&mut BytesMut),
) -> Bytes {
    let url_len: usize = type_url.iter().map(|p| p.len()).sum();
    let mut cap = key_len(1) + encoded_len_varint(url_len as u64) + url_len;
    if len > 0 {
        cap += key_len(2) + encoded_len_varint(len as u64) + len;
    }
    if gzip {
        cap += GZIP_FIELD.len();
    }
    let mut buf = BytesMut::with_capacity(cap);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(url_len as u64, &mut buf);
    for part in type_url {
        buf.put_slice(part.as_bytes());
    }
    // An empty payload leaves field 2 out (proto3 implicit presence).
    if len > 0 {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        write(&mut buf);
    }
    if gzip {
        buf.put_slice(&GZIP_FIELD);
    }
    debug_assert_eq!(buf.len(), cap);
    buf.freeze()
}

/// Adds `Msg.channel` (field 3) to an encoded `Msg`: the NATS form of a
/// server-side message. It goes after fields 1 and 2 and before
/// `compression` (field 4) if the message has one, which is where Go writes
/// it, so the bytes are exactly Go's. An empty `local` adds nothing.
pub fn append_channel(msg: &[u8], local: &str) -> Bytes {
    if local.is_empty() {
        return Bytes::copy_from_slice(msg);
    }
    let at = fields_1_2_len(msg).unwrap_or(msg.len());
    let mut buf = BytesMut::with_capacity(
        msg.len() + key_len(3) + encoded_len_varint(local.len() as u64) + local.len(),
    );
    buf.put_slice(&msg[..at]);
    encode_key(3, WireType::LengthDelimited, &mut buf);
    encode_varint(local.len() as u64, &mut buf);
    buf.put_slice(local.as_bytes());
    buf.put_slice(&msg[at..]);
    buf.freeze()
}

/// The length of the leading fields 1 and 2 (both length-delimited) of an
/// encoded `Msg`; `None` if it does not start that way.
fn fields_1_2_len(msg: &[u8]) -> Option<usize> {
    let mut rest = msg;
    for key in [0x0a, 0x12] {
        if rest.first() != Some(&key) {
            continue;
        }
        let mut after_key = &rest[1..];
        let n = encoding::decode_varint(&mut after_key).ok()? as usize;
        rest = after_key.get(n..)?;
    }
    Some(msg.len() - rest.len())
}

/// One top-level field of an encoded message, as [`scan`] sees it.
enum Field<'a> {
    /// Wire type 0: its bytes (see [`Field::value`]).
    Varint(&'a [u8]),
    /// Wire type 2: the bytes of the field.
    Len(&'a [u8]),
    /// Wire types 1 and 5 (skipped).
    Fixed,
}

impl Field<'_> {
    /// The value of a varint field.
    fn value(&self) -> u64 {
        match self {
            Field::Varint(v) => varint(&mut &v[..]).unwrap_or_default(),
            _ => 0,
        }
    }
}

/// Walks the top-level fields of an encoded message without copying
/// anything, calling `f(tag, field)` for each; `f` returns `false` to give
/// up. `None` when the framing is anything but plain (a group, a bad
/// varint, a length past the end) or `f` gave up: the caller then decodes
/// with prost, which reports the error exactly as before.
fn scan<'a>(mut b: &'a [u8], mut f: impl FnMut(u32, Field<'a>) -> bool) -> Option<()> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        // prost's limits: a key within 32 bits, a tag of at least 1.
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return None;
        }
        let tag = (key >> 3) as u32;
        let field = match key & 7 {
            0 => {
                let start = b;
                skip_varint(&mut b)?;
                Field::Varint(&start[..start.len() - b.len()])
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                b = b.get(n..)?;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let v = b.get(..n)?;
                b = &b[n..];
                Field::Len(v)
            }
            _ => return None,
        };
        if !f(tag, field) {
            return None;
        }
    }
    Some(())
}

/// A varint off the front of `b`; `None` where prost would fail (past the
/// end, more than 64 bits).
fn varint(b: &mut &[u8]) -> Option<u64> {
    if let Some(&byte) = b.first()
        && byte < 0x80
    {
        *b = &b[1..];
        return Some(u64::from(byte));
    }
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            *b = &b[i + 1..];
            return Some(v);
        }
    }
    None
}

/// Skips a varint off the front of `b` (as [`varint`], without its value).
fn skip_varint(b: &mut &[u8]) -> Option<()> {
    // The end is the first byte below 0x80: eight bytes at a time. A time
    // in nanoseconds (every envelope has one or two) takes nine.
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = match b.first_chunk::<8>() {
        Some(w) if u64::from_le_bytes(*w) & HIGH != HIGH => {
            (!u64::from_le_bytes(*w) & HIGH).trailing_zeros() as usize / 8
        }
        Some(_) if *b.get(8)? < 0x80 => 8,
        Some(_) if *b.get(9)? < 0x80 => 9,
        Some(_) => return None,
        None => b.iter().position(|&byte| byte < 0x80)?,
    };
    if n == 9 && b[9] > 1 {
        return None;
    }
    *b = &b[n + 1..];
    Some(())
}

/// Where the fields of an encoded `Msg` are, as offsets into its bytes.
pub(crate) struct MsgParts {
    /// `Msg.type_url` (field 1).
    pub(crate) type_url: std::ops::Range<usize>,
    /// `Msg.value` (field 2); empty when absent.
    pub(crate) value: std::ops::Range<usize>,
    /// `Msg.compression` (field 4).
    pub(crate) compression: i32,
}

/// Reads a `Msg` envelope without copying (the runtime reads every message
/// this way): what prost would decode, as offsets into `b`, or `None` when
/// prost should decode it instead (anything unusual, which prost then
/// accepts or reports). A later occurrence of a field wins, as in prost.
pub(crate) fn scan_msg(b: &[u8]) -> Option<MsgParts> {
    let at = |v: &[u8]| {
        let start = v.as_ptr() as usize - b.as_ptr() as usize;
        start..start + v.len()
    };
    let mut parts = MsgParts {
        type_url: 0..0,
        value: 0..0,
        compression: 0,
    };
    scan(b, |tag, field| match (tag, field) {
        (1, Field::Len(v)) => {
            parts.type_url = at(v);
            true
        }
        (2, Field::Len(v)) => {
            parts.value = at(v);
            true
        }
        // The channel is not read here, but prost checks it is UTF-8.
        (3, Field::Len(v)) => std::str::from_utf8(v).is_ok(),
        (4, f @ Field::Varint(_)) => {
            parts.compression = f.value() as i32;
            true
        }
        (1..=4, _) => false,
        _ => true,
    })?;
    Some(parts)
}

/// Whether a `Msg` envelope says its value is compressed (`compression`,
/// field 4, read as the `i32` prost reads; the last occurrence wins), read
/// in place; `false` when its framing cannot be walked. Nothing else is
/// checked, so an envelope prost refuses may read as compressed: its
/// handler refuses it, off the reader.
pub(crate) fn is_compressed(b: &[u8]) -> bool {
    let mut compression = 0i32;
    let scanned = scan(b, |tag, field| {
        if let (4, f @ Field::Varint(_)) = (tag, &field) {
            compression = f.value() as i32;
        }
        true
    });
    scanned.is_some() && compression != 0
}

/// The string field `tag` of an encoded message (its last occurrence, as
/// prost reads it; empty when absent), without decoding the rest.
fn peek_bytes(b: &[u8], tags: [u32; 2]) -> Option<[&[u8]; 2]> {
    let mut found: [&[u8]; 2] = [&[], &[]];
    scan(b, |tag, field| {
        match (tags.iter().position(|t| *t == tag), field) {
            (Some(i), Field::Len(v)) => {
                found[i] = v;
                true
            }
            (Some(_), _) => false,
            (None, _) => true,
        }
    })?;
    Some(found)
}

/// The request id and server id of an encoded `ClaimResponse`, read in
/// place and not checked to be UTF-8 (prost would refuse the message if
/// they are not); `None` when prost should decode it (see [`scan`]).
pub(crate) fn peek_claim_response(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let [request_id, server_id] = peek_bytes(b, [1, 2])?;
    Some((request_id, server_id))
}

/// The tag of `Stream.open` in the `body` oneof.
pub(crate) const STREAM_OPEN_TAG: u32 = 6;
/// The tag of `Stream.message`.
pub(crate) const STREAM_MESSAGE_TAG: u32 = 7;
/// The tag of `Stream.ack`.
pub(crate) const STREAM_ACK_TAG: u32 = 8;
/// The tag of `Stream.close`.
pub(crate) const STREAM_CLOSE_TAG: u32 = 9;

/// A `Stream` envelope read in place: its ids borrowed and not yet checked
/// to be UTF-8, its times and body left encoded (the receiver reads what
/// it needs: most read only the stream id).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamView<'a> {
    pub(crate) stream_id: &'a [u8],
    pub(crate) request_id: &'a [u8],
    sent_at: &'a [u8],
    expiry: &'a [u8],
    /// The tag of the body (`STREAM_*_TAG`), 0 when there is none.
    pub(crate) body: u32,
    /// Where the body's bytes are in the message.
    pub(crate) body_bytes: std::ops::Range<usize>,
}

/// Reads a `Stream` envelope in place: what prost would decode, or `None`
/// when prost should decode it (see [`scan`]; also when the body occurs
/// more than once, which prost merges).
pub(crate) fn read_stream(b: &[u8]) -> Option<StreamView<'_>> {
    let mut v = StreamView {
        stream_id: &[],
        request_id: &[],
        sent_at: &[],
        expiry: &[],
        body: 0,
        body_bytes: 0..0,
    };
    scan(b, |tag, field| match (tag, field) {
        (1, Field::Len(x)) => {
            v.stream_id = x;
            true
        }
        (2, Field::Len(x)) => {
            v.request_id = x;
            true
        }
        (3, Field::Varint(x)) => {
            v.sent_at = x;
            true
        }
        (4, Field::Varint(x)) => {
            v.expiry = x;
            true
        }
        (6..=9, Field::Len(x)) if v.body == 0 => {
            v.body = tag;
            let start = x.as_ptr() as usize - b.as_ptr() as usize;
            v.body_bytes = start..start + x.len();
            true
        }
        (1..=4 | 6..=9, _) => false,
        _ => true,
    })?;
    Some(v)
}

impl StreamView<'_> {
    /// `Stream.sent_at`.
    pub(crate) fn sent_at(&self) -> i64 {
        Field::Varint(self.sent_at).value() as i64
    }

    /// `Stream.expiry`.
    pub(crate) fn expiry(&self) -> i64 {
        Field::Varint(self.expiry).value() as i64
    }

    /// `Stream.request_id`, if it is UTF-8 (prost requires it).
    pub(crate) fn request_id_str(&self) -> Option<&str> {
        std::str::from_utf8(self.request_id).ok()
    }
}

/// Reads only `Msg.channel` (field 3), as the NATS router does.
pub fn read_channel(msg: &[u8]) -> Result<String, WireError> {
    Ok(ChannelField::decode(msg)?.channel)
}

/// Decodes a `Msg` envelope as it is on the wire: the payload is a zero-copy
/// slice of `bytes`, compressed if `compression` says so (see
/// [`CompressionOptions::payload`](crate::codec::CompressionOptions::payload)).
pub fn decode_msg(bytes: Bytes) -> Result<Msg, WireError> {
    Ok(Msg::decode(bytes)?)
}

impl Response {
    /// The error a server sent in this response (see
    /// [`Error::from_wire`](crate::Error::from_wire)).
    pub(crate) fn into_error(self) -> crate::Error {
        crate::Error::from_wire(&self.code, self.error, self.error_details)
    }
}

/// Checks a received type URL against the expected one the way Go resolves
/// it: by the part after the last `/`.
pub fn check_type(got: &str, expected: &str) -> Result<(), WireError> {
    if got == expected {
        return Ok(());
    }
    let name = |u: &str| u.rsplit('/').next().unwrap_or_default().to_owned();
    if name(got) == name(expected) {
        Ok(())
    } else {
        Err(WireError::UnexpectedType {
            got: got.to_owned(),
            expected: expected.to_owned(),
        })
    }
}

/// The type URL of a user message type: `type.googleapis.com/<full name>`.
pub fn type_url_of<M: prost::Name>() -> String {
    format!("{TYPE_URL_PREFIX}{}", M::full_name())
}

/// Packs a user message as `Any` with a Go-style type URL.
pub fn pack_any<M: prost::Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url_of::<M>(),
        value: m.encode_to_vec(),
    }
}

/// Wall-clock time as nanoseconds since the Unix epoch (Go `UnixNano`).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envelopes and their mutations: duplicated fields, unknown fields
    /// around them, every truncation.
    fn mutations(whole: Bytes) -> Vec<Bytes> {
        let mut out = vec![whole.clone()];
        let mut twice = whole.to_vec();
        twice.extend_from_slice(&whole);
        out.push(twice.into());
        let mut unknown = vec![15 << 3, 1, 16 << 3 | 2, 1, b'x'];
        unknown.extend_from_slice(&whole);
        unknown.extend([17 << 3 | 5, 0, 0, 0, 0]);
        out.push(unknown.into());
        let mut group = whole.to_vec();
        group.extend([9 << 3 | 3, 9 << 3 | 4]);
        out.push(group.into());
        let mut bad_utf8 = whole.to_vec();
        bad_utf8.extend(BAD_UTF8);
        out.push(bad_utf8.into());
        for n in 0..whole.len() {
            out.push(whole.slice(..n));
        }
        out
    }

    /// Skipping a varint agrees with prost's reading of it: where it ends,
    /// and whether it is one (at most ten bytes, at most 64 bits), for
    /// every length, with bytes after it and without, and cut short.
    #[test]
    fn varint_skip_matches_prost() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            1 << 35,
            1_767_225_600_000_000_000,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            prost::encoding::encode_varint(v, &mut b);
            for extra in [&[][..], &[0x05], &[0x80, 0x01, 0x7f]] {
                let mut c = b.clone();
                c.extend_from_slice(extra);
                cases.push(c);
            }
            for cut in 0..b.len() {
                cases.push(b[..cut].to_vec());
            }
        }
        // Ten bytes whose last is above 1 (over 64 bits), eleven bytes,
        // and runs of continuation bytes of every length.
        cases.push(vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        cases.push(vec![0x80; 10].into_iter().chain([0x00]).collect());
        for n in 1..=12 {
            cases.push(vec![0x80; n]);
        }
        for c in cases {
            let mut ours = &c[..];
            let skipped = skip_varint(&mut ours).map(|()| c.len() - ours.len());
            let mut theirs = &c[..];
            let read = prost::encoding::decode_varint(&mut theirs).map(|_| c.len() - theirs.len());
            assert_eq!(skipped, read.ok(), "{c:02x?}");
        }
    }

    /// Field 1 (an id) once more, with a byte that is not UTF-8.
    const BAD_UTF8: &[u8] = &[1 << 3 | 2, 1, 0xff];

    /// The compression flag read in place agrees with the full reading of
    /// the envelope wherever that reading succeeds, compressed or not.
    #[test]
    fn is_compressed_agrees_with_scan_msg() {
        let plain = encode_msg_raw("type.googleapis.com/x", b"\x08\x01");
        let mut flagged = plain.to_vec();
        flagged.extend([4 << 3, 1]);
        let mut compressed = 0;
        for whole in [plain, Bytes::from(flagged)] {
            for b in mutations(whole) {
                if let Some(m) = scan_msg(&b) {
                    assert_eq!(is_compressed(&b), m.compression != 0, "{b:?}");
                    compressed += usize::from(m.compression != 0);
                }
            }
        }
        assert!(compressed > 0);
        // The last flag wins; a flag prost truncates to 0 is 0; a cut-off
        // envelope reads as plain.
        let flagged = [&encode_msg_raw("t", b"v")[..], &[4 << 3, 1]].concat();
        for (b, want) in [
            ([&flagged[..], &[4 << 3, 0]].concat(), false),
            (
                [&flagged[..], &[4 << 3, 0x80, 0x80, 0x80, 0x80, 0x10]].concat(),
                false,
            ),
            ([&flagged[..], &[4 << 3]].concat(), false),
            (flagged.clone(), true),
        ] {
            assert_eq!(is_compressed(&b), want, "{b:?}");
        }
    }

    /// Reading a claim response's ids in place gives what prost decodes,
    /// and whatever it reads, prost reads too, but for ids that are not UTF-8.
    #[test]
    fn claim_response_peek_matches_prost() {
        let whole = encode(&ClaimResponse {
            request_id: "REQ_abc".into(),
            server_id: "SRV_xyz".into(),
        });
        let mut empty_ids = 0;
        for b in mutations(whole) {
            let decoded = ClaimResponse::decode(b.clone());
            match peek_claim_response(&b) {
                Some((r, s)) if std::str::from_utf8(r).is_err() => {
                    // Read, but prost refuses it: the bytes are not UTF-8.
                    assert!(decoded.is_err() && b.ends_with(BAD_UTF8), "{b:?}");
                    assert_eq!(s, b"SRV_xyz");
                }
                Some((r, s)) => {
                    let d = decoded.expect("peeked, so prost reads it");
                    let d = (d.request_id.as_bytes(), d.server_id.as_bytes());
                    assert_eq!((r, s), d);
                    empty_ids += usize::from(r.is_empty());
                }
                None => assert!(decoded.is_err() || b.ends_with(&[9 << 3 | 4]), "{b:?}"),
            }
        }
        assert!(empty_ids > 0);
    }

    /// Reading a stream message in place gives what prost decodes.
    #[test]
    fn stream_read_matches_prost() {
        let bodies = [
            None,
            Some(StreamBody::Open(StreamOpen {
                node_id: "CLI_1".into(),
                metadata: Default::default(),
            })),
            Some(StreamBody::Message(StreamMessage {
                raw_message: Bytes::from_static(b"m"),
                ..Default::default()
            })),
            Some(StreamBody::Ack(StreamAck {})),
            Some(StreamBody::Close(StreamClose {
                error: "e".into(),
                code: "c".into(),
            })),
        ];
        for body in bodies {
            let whole = encode(&Stream {
                stream_id: "STR_1".into(),
                request_id: "REQ_1".into(),
                sent_at: 1,
                expiry: 2,
                body,
            });
            for b in mutations(whole) {
                let (Some(v), Ok(d)) = (read_stream(&b), Stream::decode(b.clone())) else {
                    // Read in place but not by prost: only for ids that
                    // are not UTF-8, which the readers check or match to
                    // nothing.
                    if let Some(v) = read_stream(&b) {
                        let bad = std::str::from_utf8(v.stream_id).is_err();
                        assert!(bad || v.request_id_str().is_none(), "{b:?}");
                    }
                    continue;
                };
                assert_eq!(
                    (v.request_id_str(), v.sent_at(), v.expiry()),
                    (Some(d.request_id.as_str()), d.sent_at, d.expiry)
                );
                let want = match d.body {
                    None => 0,
                    Some(StreamBody::Open(_)) => STREAM_OPEN_TAG,
                    Some(StreamBody::Message(_)) => STREAM_MESSAGE_TAG,
                    Some(StreamBody::Ack(_)) => STREAM_ACK_TAG,
                    Some(StreamBody::Close(_)) => STREAM_CLOSE_TAG,
                };
                assert_eq!(
                    (v.stream_id, v.body),
                    (d.stream_id.as_bytes(), want),
                    "{b:?}"
                );
                // The body's bytes decode to the body prost decoded.
                let body = b.slice(v.body_bytes.clone());
                match d.body {
                    Some(StreamBody::Message(m)) => {
                        assert_eq!(StreamMessage::decode(body).unwrap(), m)
                    }
                    Some(StreamBody::Close(c)) => assert_eq!(StreamClose::decode(body).unwrap(), c),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn empty_map_values_are_written_like_go() {
        let mut r = Request::default();
        r.metadata.insert("k".into(), String::new());
        r.metadata.insert(String::new(), "v".into());
        let b = encode(&r);
        // {"" : "v"} then {"k": ""}, both with key and value present.
        assert_eq!(hex::encode(&b), "3a050a001201763a050a016b1200");
        let back = Request::decode(b).unwrap();
        assert_eq!(back.metadata, r.metadata);
        assert_eq!(request_len(&r), encode(&r).len());
    }
}
