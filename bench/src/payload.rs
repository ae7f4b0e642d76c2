//! The request payload of a run, and its size on the bus.

use std::fmt::Write as _;

use bytes::Bytes;
use psrpc::CompressionOptions;

use crate::args::Args;
use crate::pb::Req;

/// Text-like request payload of `n` bytes: JSON-like records of a small
/// vocabulary and small numbers, about as compressible as service logs or
/// API payloads (gzip level 6 shrinks it about 7 times).
pub(crate) fn text_payload(n: usize) -> Bytes {
    const WORDS: [&str; 32] = [
        "room",
        "participant",
        "track",
        "audio",
        "video",
        "publish",
        "subscribe",
        "region",
        "us-east",
        "eu-west",
        "state",
        "active",
        "muted",
        "joined",
        "left",
        "node",
        "egress",
        "ingress",
        "codec",
        "opus",
        "vp8",
        "h264",
        "bitrate",
        "layer",
        "simulcast",
        "quality",
        "high",
        "low",
        "medium",
        "error",
        "ok",
        "timeout",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = String::with_capacity(n + 160);
    while s.len() < n {
        let r = next();
        let _ = writeln!(
            s,
            "{{\"room\":\"{}-{}\",\"participant\":\"PA_{}{}\",\"track\":\"{}\",\"state\":\"{}\",\"bitrate\":{}}}",
            WORDS[(r & 7) as usize],
            (r >> 3) % 100,
            WORDS[((r >> 10) & 31) as usize],
            (r >> 15) % 1000,
            WORDS[((r >> 25) & 15) as usize],
            WORDS[((r >> 29) & 7) as usize],
            ((r >> 32) % 50) * 100
        );
    }
    s.truncate(n);
    Bytes::from(s)
}

/// The size of a unary request of this run on the bus: uncompressed, and
/// as the connections send it.
pub(crate) fn request_bytes(args: &Args) -> (usize, usize) {
    use prost::Message as _;
    let req = psrpc::protocol::wire::Request {
        request_id: psrpc::protocol::id::new_request_id(),
        client_id: args.client_id.clone(),
        sent_at: psrpc::protocol::wire::now_ns(),
        expiry: psrpc::protocol::wire::now_ns() + 3_000_000_000,
        raw_request: Req {
            seq: 1,
            payload: text_payload(args.payload),
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
        ..Default::default()
    };
    let c = CompressionOptions::default().with_quality(args.compress);
    (
        psrpc::protocol::wire::encode_msg(&req).len(),
        c.encode(&req).len(),
    )
}
