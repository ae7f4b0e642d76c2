//! The envelope codec: how the runtime turns its messages into the bytes a
//! bus carries and back, including gzip compression of the payload.
//!
//! Every message the runtime publishes goes through [`CompressionOptions::encode`]
//! (or [`encode_raw`](CompressionOptions::encode_raw) for subscription
//! updates, whose payload is already encoded), and every message it reads
//! goes through [`bus::receive`](crate::bus::receive). The options are a
//! bus's: each bus stores one [`CompressionOptions`] and hands it out through
//! [`MessageBus::compression`](crate::bus::MessageBus::compression).
//!
//! # Reading: always on
//!
//! `Msg.compression` (field 4) says how `Msg.value` is encoded: `0` plain,
//! `1` gzip. Gzip payloads are inflated whatever the bus's write options, so
//! a reader needs no configuration to accept compressed traffic. Several gzip
//! members written back to back are accepted and concatenated, as Go's
//! reader does. A message is dropped, counted in the bus's
//! [`Drops`](crate::drops::Drops) and logged with its channel when:
//!
//! - the compression value is neither 0 nor 1 ([`DropReason::UnknownCompression`]);
//! - the gzip data is invalid: bad header, CRC or length mismatch, or bytes
//!   after the last member that are not a member ([`DropReason::BadCompression`]);
//! - it inflates to more than the bus's cap ([`DropReason::DecompressedTooLarge`]):
//!   exactly the cap is accepted, one byte more is not, and at most the cap
//!   plus one byte is ever inflated, so a small "bomb" costs no more memory
//!   than one legitimate message of the cap's size.
//!
//! # Writing: off by default
//!
//! With a [`quality`](CompressionOptions::with_quality) of 1 to 9, a payload
//! whose encoded size is at least the [threshold](CompressionOptions::with_threshold)
//! (1024 bytes by default) is gzipped as one member at that level, and sent
//! compressed only if that made it strictly smaller. Only `Msg.value` is
//! compressed: the type URL and `Msg.channel` stay plain, so the NATS bus can
//! still route on the channel without inflating anything, and the Redis
//! queue lock (a hash of the bytes received) works as before, since all
//! competing servers hash the same bytes.
//!
//! Peers of Go psrpc older than v0.7.6 (and any reader that ignores field 4)
//! cannot read compressed messages and drop them. Roll out readers first:
//! every peer built on this crate reads compressed messages, so turn
//! compression on at publishers only once every peer on the bus reads it.
//!
//! # `Msg.channel` on Redis and the local bus
//!
//! Go psrpc v0.8 writes `Msg.channel` (field 3) on every bus; v0.7 writes it
//! only on NATS, where it routes messages. This port reads it on every bus
//! (and ignores it outside NATS routing), but writes it only on NATS, as
//! v0.7 does. Both are compatible with every Go reader, which ignore the
//! field outside NATS routing; leaving it out keeps the Redis and local bytes
//! identical to those of v0.7 peers, and a few bytes shorter. (The Redis
//! queue lock key, a hash of the bytes as received, is the same for every
//! server competing for one message in either form.)

use std::io::Read;

use bytes::{Buf, Bytes, BytesMut};
use flate2::read::MultiGzDecoder;

use crate::drops::DropReason;
use crate::wire::{self, Envelope, Msg, WireError};

/// Below this many payload bytes nothing is compressed, unless configured
/// otherwise (the value Go psrpc uses).
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;

/// The default cap on the size of a payload after decompression: 64 MiB.
///
/// Go psrpc has no cap by default; this port has one so that a few kilobytes
/// of gzip cannot make a reader allocate gigabytes. 64 MiB is the largest
/// payload a NATS server can be configured to carry at all, and far above
/// what an RPC message normally is; a bus whose peers send larger messages
/// compressed can raise it (or lift it with 0).
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 64 << 20;

/// The highest gzip level.
const BEST: u32 = 9;

/// How a bus encodes and decodes envelopes: compression when publishing,
/// and the decompression cap when reading.
///
/// The default writes plain messages, reads plain and gzip messages, and
/// caps decompressed payloads at [`DEFAULT_MAX_DECOMPRESSED_SIZE`]. See the
/// [module documentation](self) for the rules.
///
/// ```
/// use psrpc::codec::CompressionOptions;
/// let c = CompressionOptions::default().with_quality(6).with_threshold(2048);
/// assert_eq!(c.quality(), 6);
/// assert_eq!(c.threshold(), 2048);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressionOptions {
    quality: u32,
    threshold: usize,
    max_decompressed_size: usize,
}

impl Default for CompressionOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl CompressionOptions {
    /// Compression off, threshold 1024 bytes, cap 64 MiB.
    pub const DEFAULT: CompressionOptions = CompressionOptions {
        quality: 0,
        threshold: DEFAULT_COMPRESSION_THRESHOLD,
        max_decompressed_size: DEFAULT_MAX_DECOMPRESSED_SIZE,
    };

    /// Publishes payloads gzipped at level `quality`: 0 turns compression
    /// off (the default), 1 is fastest, 9 smallest; above 9 means 9.
    pub fn with_quality(mut self, quality: u32) -> Self {
        self.quality = quality.min(BEST);
        self
    }

    /// Compresses only payloads of at least `bytes` bytes (encoded size of
    /// the message, not of the envelope); 0 means the default, 1024.
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = if bytes == 0 {
            DEFAULT_COMPRESSION_THRESHOLD
        } else {
            bytes
        };
        self
    }

    /// Drops received messages whose payload inflates to more than `bytes`
    /// bytes; 0 means no cap.
    pub fn with_max_decompressed_size(mut self, bytes: usize) -> Self {
        self.max_decompressed_size = bytes;
        self
    }

    /// The gzip level used when publishing; 0 when compression is off.
    pub fn quality(&self) -> u32 {
        self.quality
    }

    /// The smallest payload that is compressed.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The cap on a decompressed payload; 0 when there is none.
    pub fn max_decompressed_size(&self) -> usize {
        self.max_decompressed_size
    }

    fn compresses(&self, len: usize) -> bool {
        self.quality > 0 && len >= self.threshold
    }

    /// Encodes an envelope message in `Msg`, compressing it if these options
    /// say so. With compression off this is exactly
    /// [`wire::encode_msg`].
    pub fn encode<M: Envelope>(&self, m: &M) -> Bytes {
        let len = m.go_encoded_len();
        if !self.compresses(len) {
            return wire::encode_msg(m);
        }
        let mut value = BytesMut::with_capacity(len);
        m.go_encode(&mut value);
        self.encode_raw(M::TYPE_URL, &value)
    }

    /// Wraps an already encoded payload (a subscription update) in `Msg`
    /// with `type_url`, compressing it if these options say so. With
    /// compression off this is exactly [`wire::encode_msg_raw`].
    pub fn encode_raw(&self, type_url: &str, value: &[u8]) -> Bytes {
        if self.compresses(value.len()) {
            if let Some(gz) = gzip(value, self.quality) {
                return wire::encode_msg_gzip(type_url, &gz);
            }
        }
        wire::encode_msg_raw(type_url, value)
    }

    /// [`encode_raw`](Self::encode_raw) of a user message whose type URL
    /// is `type_url`'s parts concatenated: encoded straight into the
    /// envelope when it is not compressed.
    pub(crate) fn encode_message(&self, type_url: &[&str], m: &impl prost::Message) -> Bytes {
        if self.compresses(m.encoded_len()) {
            return self.encode_raw(&type_url.concat(), &m.encode_to_vec());
        }
        wire::encode_msg_message(type_url, m)
    }

    /// Decodes a `Msg` envelope and returns its payload, inflated if it was
    /// compressed, after checking that its type is `type_url` (compared as
    /// Go does, by the part after the last `/`).
    pub fn decode_value(&self, mut bytes: Bytes, type_url: &str) -> Result<Bytes, WireError> {
        // The usual case, read in place: the expected type and a plain
        // envelope. The payload is a slice of `bytes`, taken without the
        // reference-counted copy of the buffer that slicing makes when the
        // payload ends the message (it always does but on NATS).
        if let Some(m) = wire::scan_msg(&bytes)
            && bytes[m.type_url] == *type_url.as_bytes()
        {
            let value = if m.value.is_empty() {
                Bytes::new()
            } else if m.value.end == bytes.len() {
                bytes.advance(m.value.start);
                bytes
            } else {
                bytes.slice(m.value)
            };
            return self.inflate(value, m.compression);
        }
        let msg = wire::decode_msg(bytes)?;
        wire::check_type(&msg.type_url, type_url)?;
        self.payload(msg)
    }

    /// The payload of a decoded `Msg`, inflated if it was compressed.
    pub fn payload(&self, msg: Msg) -> Result<Bytes, WireError> {
        self.inflate(msg.value, msg.compression)
    }

    fn inflate(&self, value: Bytes, compression: i32) -> Result<Bytes, WireError> {
        match compression {
            0 => Ok(value),
            1 => gunzip(&value, self.max_decompressed_size),
            n => Err(WireError::UnknownCompression(n)),
        }
    }
}

/// gzip of `value` as one member at `level`, if that is strictly smaller.
///
/// The deflate state (a few hundred KB, costly to set up for each message)
/// is kept per thread and reset between messages. Deflating stops as soon
/// as the output could no longer be smaller than `value`.
fn gzip(value: &[u8], level: u32) -> Option<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::Cell<Option<(u32, Compress)>> =
            const { std::cell::Cell::new(None) };
    }
    const HEADER: usize = 10;
    const TRAILER: usize = 8;
    // The whole member must be at most value.len() - 1 bytes.
    let room = value.len().checked_sub(HEADER + TRAILER + 1)?;
    let mut out = vec![0u8; HEADER + room + TRAILER];
    // Go's (and flate2's) default header: no name, no time, OS unknown;
    // XFL says "fastest" at level 1 and "best" at level 9.
    let xfl = match level {
        0 | 1 => 4,
        9.. => 2,
        _ => 0,
    };
    out[..HEADER].copy_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
    let n = DEFLATE.with(|cell| {
        // Only a state whose last stream ended is reused (a stream stopped
        // for want of room is dropped with its state).
        let cached = cell.take().filter(|(l, _)| *l == level);
        let mut c = match cached {
            Some((_, mut c)) => {
                c.reset();
                c
            }
            None => Compress::new(flate2::Compression::new(level), false),
        };
        match c.compress(
            value,
            &mut out[HEADER..HEADER + room],
            FlushCompress::Finish,
        ) {
            Ok(Status::StreamEnd) => {
                let n = c.total_out() as usize;
                cell.replace(Some((level, c)));
                Some(n)
            }
            // Out of room (not smaller), or failed.
            _ => None,
        }
    })?;
    let mut crc = flate2::Crc::new();
    crc.update(value);
    let end = HEADER + n;
    out[end..end + 4].copy_from_slice(&crc.sum().to_le_bytes());
    out[end + 4..end + TRAILER].copy_from_slice(&crc.amount().to_le_bytes());
    out.truncate(end + TRAILER);
    Some(out)
}

/// Inflates every gzip member of `data`; at most `cap` bytes (0: no cap).
fn gunzip(data: &[u8], cap: usize) -> Result<Bytes, WireError> {
    // Reading one byte past the cap tells "exactly the cap" from "more".
    let limit = if cap == 0 { u64::MAX } else { cap as u64 + 1 };
    // Room for a typical ratio, never more than the cap: a bomb does not
    // get to choose the allocation.
    let guess = data.len().saturating_mul(4);
    let mut out = Vec::with_capacity(if cap == 0 { guess } else { guess.min(cap + 1) });
    MultiGzDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(WireError::BadCompression)?;
    if cap != 0 && out.len() > cap {
        return Err(WireError::DecompressedTooLarge(cap));
    }
    Ok(Bytes::from(out))
}

/// Decodes a `Msg` carrying envelope type `M`, checking the type URL and
/// inflating a compressed payload with the default cap (tools and tests
/// that read raw bus messages; the runtime reads them with its bus's own
/// options).
pub fn decode_envelope<M: Envelope>(bytes: Bytes) -> Result<M, WireError> {
    let value = CompressionOptions::DEFAULT.decode_value(bytes, M::TYPE_URL)?;
    Ok(M::decode(value)?)
}

impl WireError {
    /// The drop reason this error is counted under.
    pub fn drop_reason(&self) -> DropReason {
        match self {
            WireError::UnknownCompression(_) => DropReason::UnknownCompression,
            WireError::BadCompression(_) => DropReason::BadCompression,
            WireError::DecompressedTooLarge(_) => DropReason::DecompressedTooLarge,
            _ => DropReason::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_clamps_and_defaults() {
        let c = CompressionOptions::default();
        assert_eq!(
            (c.quality(), c.threshold(), c.max_decompressed_size()),
            (0, 1024, 64 << 20)
        );
        let c = c
            .with_quality(12)
            .with_threshold(0)
            .with_max_decompressed_size(0);
        assert_eq!(
            (c.quality(), c.threshold(), c.max_decompressed_size()),
            (9, 1024, 0)
        );
    }

    #[test]
    fn reused_deflate_state_round_trips() {
        // Incompressible (stopped for want of room), then compressible, at
        // changing levels, many times on one thread.
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        let text: Vec<u8> = (0..3000u32)
            .flat_map(|i| (i % 50).to_string().into_bytes())
            .collect();
        for round in 0..50u32 {
            let level = 1 + round % 9;
            assert!(gzip(&noise, level).is_none());
            for _ in 0..2 {
                let gz = gzip(&text, level).unwrap();
                assert!(gz.len() < text.len());
                assert_eq!(gunzip(&gz, 0).unwrap(), text);
            }
        }
    }

    /// The in-place read of `Msg` gives what prost's decode gives (value or
    /// error kind), on plain envelopes and on every unusual one, which it
    /// leaves to prost.
    #[test]
    fn in_place_read_matches_prost() {
        use bytes::BufMut;
        let url = "type.googleapis.com/internal.Request";
        let by_prost = |b: Bytes| -> Result<Bytes, WireError> {
            let msg = wire::decode_msg(b)?;
            wire::check_type(&msg.type_url, url)?;
            CompressionOptions::DEFAULT.payload(msg)
        };
        let field = |tag: u8, v: &[u8]| {
            let mut b = vec![tag << 3 | 2, v.len() as u8];
            b.extend_from_slice(v);
            b
        };
        let gz = gzip(&[b'x'; 200], 6).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            wire::encode_msg_raw(url, b"payload").to_vec(),
            wire::encode_msg_raw(url, b"").to_vec(),
            wire::encode_msg_gzip(url, &gz).to_vec(),
            // NATS form: the payload does not end the message.
            wire::append_channel(&wire::encode_msg_raw(url, b"payload"), "ch").to_vec(),
            wire::append_channel(&wire::encode_msg_gzip(url, &gz), "ch").to_vec(),
            // Another prefix: same type by its last part.
            wire::encode_msg_raw("x.y/internal.Request", b"p").to_vec(),
            wire::encode_msg_raw("type.googleapis.com/internal.Response", b"p").to_vec(),
            Vec::new(),
        ];
        // Repeated fields: the last wins.
        let mut dup = field(1, b"wrong");
        dup.extend(field(2, b"first"));
        dup.extend(field(1, url.as_bytes()));
        dup.extend(field(2, b"second"));
        cases.push(dup);
        // Unknown fields (varint, fixed64, bytes, fixed32) are skipped.
        let mut unknown = field(1, url.as_bytes());
        unknown.extend([5 << 3, 7, 6 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        unknown.extend(field(15, b"?"));
        unknown.extend([7 << 3 | 5, 1, 2, 3, 4]);
        unknown.extend(field(2, b"v"));
        cases.push(unknown);
        // A group (wire types 3 and 4): prost's to read.
        let mut group = field(1, url.as_bytes());
        group.extend([9 << 3 | 3, 5 << 3, 1, 9 << 3 | 4]);
        group.extend(field(2, b"v"));
        cases.push(group);
        // Compression 7, and gzip flagged on plain bytes.
        let mut bad_comp = wire::encode_msg_raw(url, b"p").to_vec();
        bad_comp.extend([4 << 3, 7]);
        cases.push(bad_comp);
        let mut not_gzip = wire::encode_msg_raw(url, b"plain").to_vec();
        not_gzip.extend([4 << 3, 1]);
        cases.push(not_gzip);
        // A channel that is not UTF-8; a type URL that is not.
        let mut bad_channel = wire::encode_msg_raw(url, b"p").to_vec();
        bad_channel.extend(field(3, &[0xff, 0xfe]));
        cases.push(bad_channel);
        let mut bad_url = field(1, &[0xff]);
        bad_url.extend(field(2, b"p"));
        cases.push(bad_url);
        // Wrong wire types for known fields.
        let mut wrong = field(1, url.as_bytes());
        wrong.extend([2 << 3, 1]);
        cases.push(wrong);
        let mut wrong4 = wire::encode_msg_raw(url, b"p").to_vec();
        wrong4.extend(field(4, b"1"));
        cases.push(wrong4);
        // Truncated anywhere.
        let whole = wire::encode_msg_raw(url, b"payload");
        for n in 1..whole.len() {
            cases.push(whole[..n].to_vec());
        }
        // A tag of zero, the largest tag, one past it, and an overlong varint.
        cases.push(vec![0, 0]);
        for key in [((1u64 << 29) - 1) << 3, 1 << 32] {
            let mut b = wire::encode_msg_raw(url, b"p").to_vec();
            prost::encoding::encode_varint(key, &mut b);
            b.push(0);
            cases.push(b);
        }
        let mut overlong = vec![0x0a];
        overlong.put_slice(&[0xff; 11]);
        cases.push(overlong);
        for case in cases {
            let b = Bytes::from(case);
            let fast = CompressionOptions::DEFAULT.decode_value(b.clone(), url);
            let slow = by_prost(b.clone());
            match (&fast, &slow) {
                (Ok(f), Ok(s)) => assert_eq!(f, s, "{b:?}"),
                (Err(f), Err(s)) => assert_eq!(f.drop_reason(), s.drop_reason(), "{b:?}"),
                _ => panic!("{b:?}: in place {fast:?}, prost {slow:?}"),
            }
        }
    }

    /// A user message encoded straight into its envelope gives the bytes
    /// of encoding it first and wrapping the bytes, compressed or not.
    #[test]
    fn message_encoded_in_place_is_wrapped_alike() {
        let m = wire::Response {
            request_id: "r".repeat(3000),
            ..Default::default()
        };
        let parts = ["type.googleapis.com/", "pkg.Msg"];
        for c in [
            CompressionOptions::DEFAULT,
            CompressionOptions::DEFAULT.with_quality(6),
        ] {
            assert_eq!(
                c.encode_message(&parts, &m),
                c.encode_raw(
                    "type.googleapis.com/pkg.Msg",
                    &prost::Message::encode_to_vec(&m)
                )
            );
        }
        let empty = wire::Response::default();
        assert_eq!(
            CompressionOptions::DEFAULT.encode_message(&parts, &empty),
            wire::encode_msg_raw("type.googleapis.com/pkg.Msg", &[])
        );
    }

    #[test]
    fn gzip_header_is_gos() {
        let gz = gzip(&[b'a'; 4096], 6).unwrap();
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(gunzip(&gz, 4096).unwrap().len(), 4096);
        assert!(matches!(
            gunzip(&gz, 4095),
            Err(WireError::DecompressedTooLarge(4095))
        ));
    }
}
