//! Byte-level interop of the psrpc wire format with Go psrpc.
//!
//! * Every interop test vector of the Go wire (V0 channel names, V1..V10 and
//!   the compact V11 list) is built from its fields, encoded with
//!   `psrpc::protocol::wire`, compared byte for byte, and decoded back.
//! * Every message of the golden Redis and NATS captures in `golden/` (what Go
//!   psrpc put on a real bus) is decoded, checked against the channel names
//!   `psrpc::protocol::channels` computes, and re-encoded to exactly the captured bytes.
//!   The Redis queue lock keys are checked against the captured `MONITOR` log.
//! * Malformed input (truncated, corrupted and random bytes) never panics the
//!   decoders and is rejected where it cannot be a valid message.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use bytes::Bytes;
use prost::Message;
use psrpc::protocol::channels::{self, Channel};
use psrpc::protocol::wire::{
    self, ClaimRequest, ClaimResponse, Envelope, Request, Response, Stream, StreamAck, StreamBody,
    StreamClose, StreamMessage, StreamOpen,
};
use sha2::Digest as _;

// ------------------------------------------------------------------------------------------------
// Hand-written user messages.

/// `MyUpdate` of Go psrpc's test service (empty).
#[derive(Clone, PartialEq, prost::Message)]
struct MyUpdate {}

impl prost::Name for MyUpdate {
    const NAME: &'static str = "MyUpdate";
    const PACKAGE: &'static str = "psrpc.internal.test.customservice";
}

/// `MyRequest` of Go psrpc's test service.
#[derive(Clone, PartialEq, prost::Message)]
struct MyRequest {
    #[prost(int32, tag = "1")]
    return_error: i32,
}

impl prost::Name for MyRequest {
    const NAME: &'static str = "MyRequest";
    const PACKAGE: &'static str = "psrpc.internal.test.customservice";
}

/// `psrpcbench.Req` of `proto/bench.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct BenchReq {
    #[prost(int64, tag = "1")]
    seq: i64,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(bytes = "bytes", tag = "3")]
    payload: Bytes,
    #[prost(int32, tag = "4")]
    count: i32,
}

/// `psrpcbench.Res` of `proto/bench.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct BenchRes {
    #[prost(int64, tag = "1")]
    seq: i64,
    #[prost(string, tag = "2")]
    server_id: String,
    #[prost(bytes = "bytes", tag = "3")]
    payload: Bytes,
}

/// `psrpcbench.Msg` of `proto/bench.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct BenchMsg {
    #[prost(int64, tag = "1")]
    seq: i64,
    #[prost(bytes = "bytes", tag = "2")]
    payload: Bytes,
}

/// `psrpcbench.Event` of `proto/bench.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct BenchEvent {
    #[prost(int64, tag = "1")]
    seq: i64,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(string, tag = "3")]
    server_id: String,
}

impl prost::Name for BenchEvent {
    const NAME: &'static str = "Event";
    const PACKAGE: &'static str = "psrpcbench";
}

// ------------------------------------------------------------------------------------------------
// Section 19 vectors.

/// V11, the compact list of vectors, verbatim.
const V11: &str = "\
V1 Request                                59 0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b12017642020801
V1 Msg redis/local                        99 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123b0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b12017642020801
V1 Msg nats IntensiveRPC.REQ             117 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123b0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b120176420208011a10496e74656e736976655250432e524551
V1b Request multi, empty payload          49 0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb172801
V2 Response ok (empty MyResponse)         37 0a105245515f6162636465666768696a6b6c12075352565f78797a1880cadd9fe59fe7cb17
V2 Msg                                    78 0a25747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e526573706f6e736512250a105245515f6162636465666768696a6b6c12075352565f78797a1880cadd9fe59fe7cb17
V3 Response error+details                146 0a105245515f6162636465666768696a6b6c12075352565f78797a1880cadd9fe59fe7cb172a0f726571756573746564206572726f7232136661696c65645f707265636f6e646974696f6e42450a3f747970652e676f6f676c65617069732e636f6d2f70737270632e696e7465726e616c2e746573742e637573746f6d736572766963652e4d795265717565737412020801
V4 ClaimRequest                           32 0a105245515f6162636465666768696a6b6c12075352565f78797a1d0000003f
V4 Msg                                    77 0a29747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e436c61696d5265717565737412200a105245515f6162636465666768696a6b6c12075352565f78797a1d0000003f
V5 ClaimResponse                          27 0a105245515f6162636465666768696a6b6c12075352565f78797a
V5 Msg nats IntensiveRPC.RCLAIM           94 0a2a747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e436c61696d526573706f6e7365121b0a105245515f6162636465666768696a6b6c12075352565f78797a1a13496e74656e736976655250432e52434c41494d
V6 Stream open                            67 0a105354525f6162636465666768696a6b6c12105245515f6162636465666768696a6b6c188080a8b1e39fe7cb172080bce9c7ee9fe7cb1732090a07434c495f616263
V6 Msg nats ExchangeUpdates.STR          127 0a23747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e53747265616d12430a105354525f6162636465666768696a6b6c12105245515f6162636465666768696a6b6c188080a8b1e39fe7cb172080bce9c7ee9fe7cb1732090a07434c495f6162631a1345786368616e6765557064617465732e535452
V7 Stream message (empty payload)         58 0a105354525f6162636465666768696a6b6c12105245515f6d6e6f7071727374757677781880cadd9fe59fe7cb172080869fb6f09fe7cb173a00
V7b Stream message raw 08 01              62 0a105354525f6162636465666768696a6b6c12105245515f6d6e6f7071727374757677781880cadd9fe59fe7cb172080869fb6f09fe7cb173a0412020801
V8 Stream ack                             58 0a105354525f6162636465666768696a6b6c12105245515f6d6e6f7071727374757677781880cadd9fe59fe7cb172080869fb6f09fe7cb174200
V9 Stream close EOF                       76 0a105354525f6162636465666768696a6b6c12105245515f636c6f7365636c6f736531321880a8feeaea9fe7cb172080e4bf81f69fe7cb174a120a03454f46120b756e617661696c61626c65
V10 Msg MyUpdate redis                    64 0a3e747970652e676f6f676c65617069732e636f6d2f70737270632e696e7465726e616c2e746573742e637573746f6d736572766963652e4d79557064617465
V10 Msg MyUpdate nats                     87 0a3e747970652e676f6f676c65617069732e636f6d2f70737270632e696e7465726e616c2e746573742e637573746f6d736572766963652e4d795570646174651a15557064617465526567696f6e53746174652e524551
V6 ack of open                            58 0a105354525f6162636465666768696a6b6c12105245515f6162636465666768696a6b6c188080a8b1e39fe7cb172080bce9c7ee9fe7cb174200
";

const REQ_ID: &str = "REQ_abcdefghijkl";
const CLI_ID: &str = "CLI_abc";
const SRV_ID: &str = "SRV_xyz";
const STR_ID: &str = "STR_abcdefghijkl";
const MSG_REQ_ID: &str = "REQ_mnopqrstuvwx";
const CLOSE_REQ_ID: &str = "REQ_closeclose12";
const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000_000_000_000;
const T1: i64 = T0 + SEC / 2;
const T2: i64 = T0 + 2 * SEC;

/// The V11 list as name -> bytes, with each line's stated length checked.
fn v11() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for line in V11.lines().filter(|l| !l.trim().is_empty()) {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let hex_bytes = words.pop().expect("hex");
        let len: usize = words.pop().expect("len").parse().expect("len is a number");
        let name = words.join(" ");
        let bytes = hex::decode(hex_bytes).expect("valid hex");
        assert_eq!(bytes.len(), len, "stated length of V11 {name}");
        assert!(
            out.insert(name.clone(), bytes).is_none(),
            "duplicate {name}"
        );
    }
    assert_eq!(out.len(), 20);
    out
}

/// The V11 vector `name` as hex.
fn vec_hex(all: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    hex::encode(
        all.get(name)
            .unwrap_or_else(|| panic!("no V11 vector {name:?}")),
    )
}

/// Spaced hex of the long-form vectors (`0a 10 52 ...`) to bytes.
fn spaced(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("valid hex")
}

fn redis_lock_key(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(payload))
}

fn topic(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Encodes `m` alone and as `Msg`, compares both with the vectors, and decodes
/// the `Msg` form back through `decode_envelope`.
fn check_envelope<M: Envelope + PartialEq + std::fmt::Debug>(m: &M, alone: &str, msg: &str) -> M {
    assert_eq!(hex::encode(wire::encode(m)), alone, "message alone");
    let enc = wire::encode_msg(m);
    assert_eq!(hex::encode(&enc), msg, "Msg envelope");
    let back: M = psrpc::codec::decode_envelope(enc.clone()).expect("decode_envelope");
    assert_eq!(&back, m, "decoded fields");
    let env = wire::decode_msg(enc.clone()).expect("decode_msg");
    assert_eq!(env.type_url, M::TYPE_URL);
    assert_eq!(hex::encode(&env.value), alone);
    assert_eq!(env.channel, "");
    assert_eq!(wire::read_channel(&enc).expect("read_channel"), "");
    back
}

/// Checks the NATS form of an envelope vector: `append_channel` gives the
/// bytes, `read_channel` gives back `local`, and the `Any` view is unchanged.
fn check_nats<M: Envelope + PartialEq + std::fmt::Debug>(m: &M, local: &str, nats: &str) {
    let plain = wire::encode_msg(m);
    let out = wire::append_channel(&plain, local);
    assert_eq!(hex::encode(&out), nats, "NATS form with {local}");
    assert_eq!(wire::read_channel(&out).expect("read_channel"), local);
    let env = wire::decode_msg(out.clone()).expect("decode_msg");
    assert_eq!(env.type_url, M::TYPE_URL);
    assert_eq!(env.channel, local);
    assert_eq!(env.value, wire::encode(m));
    let back: M = psrpc::codec::decode_envelope(out).expect("decode_envelope");
    assert_eq!(&back, m);
}

#[test]
fn v0_channel_names() {
    let t = topic(&["us-east", "room/1"]);
    let ch = |legacy: &str, server: &str, local: &str| Channel {
        legacy: legacy.into(),
        server: server.into(),
        local: local.into(),
    };
    assert_eq!(
        channels::rpc_channel("MyService", "IntensiveRPC", &t, false),
        ch(
            "MyService|IntensiveRPC|usu+002deast|roomu+002f1|REQ",
            "SRV.MyService.usu+002deast.roomu+002f1",
            "IntensiveRPC.REQ"
        )
    );
    assert_eq!(
        channels::claim_response_channel("MyService", "IntensiveRPC", &t),
        ch(
            "MyService|IntensiveRPC|usu+002deast|roomu+002f1|RCLAIM",
            "SRV.MyService.usu+002deast.roomu+002f1",
            "IntensiveRPC.RCLAIM"
        )
    );
    assert_eq!(
        channels::stream_server_channel("MyService", "IntensiveRPC", &t),
        ch(
            "MyService|IntensiveRPC|usu+002deast|roomu+002f1|STR",
            "SRV.MyService.usu+002deast.roomu+002f1",
            "IntensiveRPC.STR"
        )
    );
    assert_eq!(
        channels::response_channel("MyService", CLI_ID),
        ch("MyService|CLI_abc|RES", "CLI.MyService.CLI_abc.RES", "")
    );
    assert_eq!(
        channels::claim_request_channel("MyService", CLI_ID),
        ch("MyService|CLI_abc|CLAIM", "CLI.MyService.CLI_abc.CLAIM", "")
    );
    assert_eq!(
        channels::stream_channel("MyService", CLI_ID),
        ch("MyService|CLI_abc|STR", "CLI.MyService.CLI_abc.STR", "")
    );
    assert_eq!(
        channels::handler_key("IntensiveRPC", &t),
        "IntensiveRPC.usu+002deast.roomu+002f1"
    );
    assert_eq!(
        channels::rpc_channel("MyService", "NormalRPC", &t, true),
        ch(
            "MyService|NormalRPC|usu+002deast|roomu+002f1|REQ",
            "SRV.MyService.usu+002deast.roomu+002f1.Q",
            "NormalRPC.REQ"
        )
    );
    assert_eq!(
        channels::rpc_channel("MyService", "IntensiveRPC", &[], false),
        ch(
            "MyService|IntensiveRPC|REQ",
            "SRV.MyService",
            "IntensiveRPC.REQ"
        )
    );
    assert_eq!(
        channels::rpc_channel("MyService", "NormalRPC", &[], true),
        ch(
            "MyService|NormalRPC|REQ",
            "SRV.MyService.Q",
            "NormalRPC.REQ"
        )
    );
    assert_eq!(
        channels::sanitize("a.b*c>d e"),
        "au+002ebu+002acu+003edu+0020e"
    );
}

#[test]
fn v1_unary_request() {
    let all = v11();
    let req = Request {
        request_id: REQ_ID.into(),
        client_id: CLI_ID.into(),
        sent_at: T0,
        expiry: T0 + 3 * SEC,
        multi: false,
        metadata: [("k".to_owned(), "v".to_owned())].into(),
        raw_request: Bytes::from_static(&[0x08, 0x01]),
        ..Default::default()
    };
    // The long form of section 19 agrees with the compact list.
    let long = spaced(
        "0a 10 52 45 51 5f 61 62 63 64 65 66 67 68 69 6a 6b 6c
         12 07 43 4c 49 5f 61 62 63
         18 80 80 a8 b1 e3 9f e7 cb 17
         20 80 bc e9 c7 ee 9f e7 cb 17
         3a 06 0a 01 6b 12 01 76
         42 02 08 01",
    );
    assert_eq!(hex::encode(&long), vec_hex(&all, "V1 Request"));
    let back = check_envelope(
        &req,
        &vec_hex(&all, "V1 Request"),
        &vec_hex(&all, "V1 Msg redis/local"),
    );
    assert_eq!(
        MyRequest::decode(back.raw_request).unwrap(),
        MyRequest { return_error: 1 }
    );

    let ch = channels::rpc_channel(
        "MyService",
        "IntensiveRPC",
        &topic(&["us-east", "room/1"]),
        false,
    );
    assert_eq!(ch.server, "SRV.MyService.usu+002deast.roomu+002f1");
    assert_eq!(ch.local, "IntensiveRPC.REQ");
    check_nats(
        &req,
        &ch.local,
        &vec_hex(&all, "V1 Msg nats IntensiveRPC.REQ"),
    );
    let tail = hex::encode(spaced(
        "1a 10 49 6e 74 65 6e 73 69 76 65 52 50 43 2e 52 45 51",
    ));
    assert_eq!(
        vec_hex(&all, "V1 Msg nats IntensiveRPC.REQ"),
        vec_hex(&all, "V1 Msg redis/local") + &tail
    );

    // Redis queue lock key of the 99-byte payload.
    assert_eq!(
        redis_lock_key(&wire::encode_msg(&req)),
        "gxD41bmACXisb9BJekLLTIFV6OPM1gqtLAk0vUm78Ps="
    );
}

#[test]
fn v1b_multi_request() {
    let all = v11();
    let req = Request {
        request_id: REQ_ID.into(),
        client_id: CLI_ID.into(),
        sent_at: T0,
        expiry: T0 + 3 * SEC,
        multi: true,
        ..Default::default()
    };
    let b = wire::encode(&req);
    assert_eq!(
        hex::encode(&b),
        vec_hex(&all, "V1b Request multi, empty payload")
    );
    assert_eq!(Request::decode(b).unwrap(), req);
    let back: Request = psrpc::codec::decode_envelope(wire::encode_msg(&req)).unwrap();
    assert_eq!(back, req);
}

#[test]
fn v2_ok_response() {
    let all = v11();
    let res = Response {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
        sent_at: T1,
        ..Default::default()
    };
    let back = check_envelope(
        &res,
        &vec_hex(&all, "V2 Response ok (empty MyResponse)"),
        &vec_hex(&all, "V2 Msg"),
    );
    assert!(back.raw_response.is_empty());
    assert!(back.error.is_empty());
    // Client channels have no Local name: the NATS form is the same bytes.
    let ch = channels::response_channel("MyService", CLI_ID);
    assert_eq!(ch.local, "");
    check_nats(&res, &ch.local, &vec_hex(&all, "V2 Msg"));
}

#[test]
fn v3_error_response() {
    let all = v11();
    let mut res = Response {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
        sent_at: T1,
        error: "requested error".into(),
        code: "failed_precondition".into(),
        ..Default::default()
    };
    res.error_details.push(Default::default());
    res.error_details[0].type_url = wire::type_url_of::<MyRequest>();
    res.error_details[0].value = MyRequest { return_error: 1 }.encode_to_vec();
    assert_eq!(
        res.error_details[0].type_url,
        "type.googleapis.com/psrpc.internal.test.customservice.MyRequest"
    );
    let b = wire::encode(&res);
    assert_eq!(hex::encode(&b), vec_hex(&all, "V3 Response error+details"));
    let back: Response = psrpc::codec::decode_envelope(wire::encode_msg(&res)).unwrap();
    assert_eq!(back, res);
    assert_eq!(back.code, "failed_precondition");
    assert_eq!(
        MyRequest::decode(back.error_details[0].value.as_slice()).unwrap(),
        MyRequest { return_error: 1 }
    );
}

#[test]
fn v4_claim_request() {
    let all = v11();
    let claim = ClaimRequest {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
        affinity: 0.5,
        handling: false,
    };
    let back = check_envelope(
        &claim,
        &vec_hex(&all, "V4 ClaimRequest"),
        &vec_hex(&all, "V4 Msg"),
    );
    assert_eq!(back.affinity, 0.5);
    let ch = channels::claim_request_channel("MyService", CLI_ID);
    assert_eq!(
        (ch.legacy.as_str(), ch.server.as_str()),
        ("MyService|CLI_abc|CLAIM", "CLI.MyService.CLI_abc.CLAIM")
    );
    check_nats(&claim, &ch.local, &vec_hex(&all, "V4 Msg"));

    // Affinity 1.0 ends in 1d 00 00 80 3f; affinity 0.0 is left out.
    let base = "0a105245515f6162636465666768696a6b6c12075352565f78797a";
    let one = ClaimRequest {
        affinity: 1.0,
        ..claim.clone()
    };
    assert_eq!(hex::encode(wire::encode(&one)), format!("{base}1d0000803f"));
    let zero = ClaimRequest {
        affinity: 0.0,
        ..claim
    };
    assert_eq!(hex::encode(wire::encode(&zero)), base);
    assert_eq!(
        psrpc::codec::decode_envelope::<ClaimRequest>(wire::encode_msg(&one))
            .unwrap()
            .affinity,
        1.0
    );
}

#[test]
fn v5_claim_response() {
    let all = v11();
    let claim = ClaimResponse {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
    };
    let b = wire::encode(&claim);
    assert_eq!(hex::encode(&b), vec_hex(&all, "V5 ClaimResponse"));
    assert_eq!(ClaimResponse::decode(b).unwrap(), claim);
    let ch = channels::claim_response_channel(
        "MyService",
        "IntensiveRPC",
        &topic(&["us-east", "room/1"]),
    );
    assert_eq!(ch.server, "SRV.MyService.usu+002deast.roomu+002f1");
    assert_eq!(ch.local, "IntensiveRPC.RCLAIM");
    check_nats(
        &claim,
        &ch.local,
        &vec_hex(&all, "V5 Msg nats IntensiveRPC.RCLAIM"),
    );
}

fn v6_open() -> Stream {
    Stream {
        stream_id: STR_ID.into(),
        request_id: REQ_ID.into(),
        sent_at: T0,
        expiry: T0 + 3 * SEC,
        body: Some(StreamBody::Open(StreamOpen {
            node_id: CLI_ID.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn v6_stream_open_and_ack() {
    let all = v11();
    let open = v6_open();
    let b = wire::encode(&open);
    assert_eq!(hex::encode(&b), vec_hex(&all, "V6 Stream open"));
    assert_eq!(Stream::decode(b.clone()).unwrap(), open);
    let ch = channels::stream_server_channel("MyService", "ExchangeUpdates", &[]);
    assert_eq!(ch.server, "SRV.MyService");
    assert_eq!(ch.local, "ExchangeUpdates.STR");
    check_nats(
        &open,
        &ch.local,
        &vec_hex(&all, "V6 Msg nats ExchangeUpdates.STR"),
    );

    let ack = Stream {
        body: Some(StreamBody::Ack(StreamAck {})),
        ..open
    };
    let ab = wire::encode(&ack);
    assert_eq!(hex::encode(&ab), vec_hex(&all, "V6 ack of open"));
    // "the same 67 bytes with the last 11 bytes replaced by 42 00"
    let mut expect = b[..b.len() - 11].to_vec();
    expect.extend_from_slice(&[0x42, 0x00]);
    assert_eq!(ab.as_ref(), expect.as_slice());
    let back: Stream = psrpc::codec::decode_envelope(wire::encode_msg(&ack)).unwrap();
    assert_eq!(back, ack);
}

fn v7_message(raw: &'static [u8]) -> Stream {
    Stream {
        stream_id: STR_ID.into(),
        request_id: MSG_REQ_ID.into(),
        sent_at: T1,
        expiry: T1 + 3 * SEC,
        body: Some(StreamBody::Message(StreamMessage {
            raw_message: Bytes::from_static(raw),
            ..Default::default()
        })),
    }
}

#[test]
fn v7_v8_stream_message_and_ack() {
    let all = v11();
    for (m, name) in [
        (v7_message(&[]), "V7 Stream message (empty payload)"),
        (v7_message(&[0x08, 0x01]), "V7b Stream message raw 08 01"),
    ] {
        let b = wire::encode(&m);
        assert_eq!(hex::encode(&b), vec_hex(&all, name));
        let back: Stream = psrpc::codec::decode_envelope(wire::encode_msg(&m)).unwrap();
        assert_eq!(back, m);
    }
    let ack = Stream {
        body: Some(StreamBody::Ack(StreamAck {})),
        ..v7_message(&[])
    };
    let b = wire::encode(&ack);
    assert_eq!(hex::encode(&b), vec_hex(&all, "V8 Stream ack"));
    let v7 = all["V7 Stream message (empty payload)"].clone();
    assert_eq!(b[..56], v7[..56]);
    let back: Stream = psrpc::codec::decode_envelope(wire::encode_msg(&ack)).unwrap();
    assert_eq!(back, ack);
}

#[test]
fn v9_stream_close() {
    let all = v11();
    let close = Stream {
        stream_id: STR_ID.into(),
        request_id: CLOSE_REQ_ID.into(),
        sent_at: T2,
        expiry: T2 + 3 * SEC,
        body: Some(StreamBody::Close(StreamClose {
            error: "EOF".into(),
            code: "unavailable".into(),
        })),
    };
    let b = wire::encode(&close);
    assert_eq!(hex::encode(&b), vec_hex(&all, "V9 Stream close EOF"));
    let back: Stream = psrpc::codec::decode_envelope(wire::encode_msg(&close)).unwrap();
    assert_eq!(back, close);
}

#[test]
fn v10_subscription_publish() {
    let all = v11();
    let url = wire::type_url_of::<MyUpdate>();
    assert_eq!(
        url,
        "type.googleapis.com/psrpc.internal.test.customservice.MyUpdate"
    );
    let payload = MyUpdate {}.encode_to_vec();
    assert!(payload.is_empty());
    let redis = wire::encode_msg_raw(&url, &payload);
    assert_eq!(hex::encode(&redis), vec_hex(&all, "V10 Msg MyUpdate redis"));

    let ch = channels::rpc_channel(
        "MyService",
        "UpdateRegionState",
        &topic(&["regionA"]),
        false,
    );
    assert_eq!(ch.legacy, "MyService|UpdateRegionState|regionA|REQ");
    assert_eq!(ch.server, "SRV.MyService.regionA");
    assert_eq!(ch.local, "UpdateRegionState.REQ");
    let nats = wire::append_channel(&redis, &ch.local);
    assert_eq!(hex::encode(&nats), vec_hex(&all, "V10 Msg MyUpdate nats"));
    assert_eq!(wire::read_channel(&nats).unwrap(), ch.local);

    for bytes in [redis.clone(), nats] {
        let env = wire::decode_msg(bytes).unwrap();
        assert_eq!(env.type_url, url);
        assert!(env.value.is_empty());
        assert_eq!(MyUpdate::decode(env.value).unwrap(), MyUpdate {});
    }
    assert_eq!(
        redis_lock_key(&redis),
        "lKmHtg8/cISOhpp/QT+X1ck4aNuZamHQ9YhikDVciQg="
    );
}

#[test]
fn v11_every_line_is_covered() {
    // Each V11 vector decodes back and re-encodes to itself.
    let all = v11();
    for (name, bytes) in &all {
        let b = Bytes::copy_from_slice(bytes);
        let again = if name.contains("Msg") {
            let env = wire::decode_msg(b).unwrap();
            let plain = match env.type_url.rsplit('.').next().unwrap() {
                "Request" => wire::encode_msg(
                    &psrpc::codec::decode_envelope::<Request>(Bytes::copy_from_slice(bytes))
                        .unwrap(),
                ),
                "Response" => wire::encode_msg(
                    &psrpc::codec::decode_envelope::<Response>(Bytes::copy_from_slice(bytes))
                        .unwrap(),
                ),
                "ClaimRequest" => wire::encode_msg(
                    &psrpc::codec::decode_envelope::<ClaimRequest>(Bytes::copy_from_slice(bytes))
                        .unwrap(),
                ),
                "ClaimResponse" => wire::encode_msg(
                    &psrpc::codec::decode_envelope::<ClaimResponse>(Bytes::copy_from_slice(bytes))
                        .unwrap(),
                ),
                "Stream" => wire::encode_msg(
                    &psrpc::codec::decode_envelope::<Stream>(Bytes::copy_from_slice(bytes))
                        .unwrap(),
                ),
                _ => wire::encode_msg_raw(&env.type_url, &env.value),
            };
            wire::append_channel(&plain, &env.channel)
        } else if name.contains("Request") && !name.contains("ClaimRequest") {
            wire::encode(&Request::decode(b).unwrap())
        } else if name.contains("ClaimRequest") {
            wire::encode(&ClaimRequest::decode(b).unwrap())
        } else if name.contains("ClaimResponse") {
            wire::encode(&ClaimResponse::decode(b).unwrap())
        } else if name.contains("Response") {
            wire::encode(&Response::decode(b).unwrap())
        } else {
            assert!(
                name.contains("Stream") || name == "V6 ack of open",
                "{name}"
            );
            wire::encode(&Stream::decode(b).unwrap())
        };
        assert_eq!(hex::encode(again), hex::encode(bytes), "{name}");
    }
}

/// Go writes both key and value of every map entry, also in `StreamOpen.metadata`
/// (as Go writes it). psrpc encodes `Stream` with prost, which leaves out an empty
/// value: receivers decode the same map, but the bytes differ from Go's.
#[test]
fn stream_open_metadata_empty_value_written_like_go() {
    let mut open = StreamOpen {
        node_id: "C".into(),
        ..Default::default()
    };
    open.metadata.insert("k".into(), String::new());
    let s = Stream {
        body: Some(StreamBody::Open(open)),
        ..Default::default()
    };
    // 32 0a {0a 01 43} {3a 05 0a 01 6b 12 00}
    assert_eq!(hex::encode(wire::encode(&s)), "320a0a01433a050a016b1200");
}

// ------------------------------------------------------------------------------------------------
// Golden captures.

#[derive(Debug)]
struct Captured {
    /// Redis channel or NATS subject.
    channel: String,
    bytes: Vec<u8>,
    /// `type_url` of the capture's envelope annotation.
    type_url: String,
    /// `channel(local)` of the capture's envelope annotation.
    local: String,
}

fn quoted_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// Parses a capture file: `[ 1702.457ms] channel "X"  105 bytes`, hexdump
/// lines `  00000000  0a 24 ...  |...|`, and the `envelope internal.Msg:` line.
fn parse_capture(text: &str) -> Vec<Captured> {
    let mut out: Vec<(Captured, usize)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            let channel = quoted_after(line, "] channel \"").expect("channel name in header");
            let after = &line[line.rfind('"').unwrap() + 1..];
            let mut words = after.split_whitespace();
            let len: usize = words.next().unwrap().parse().expect("length in header");
            assert_eq!(words.next(), Some("bytes"), "{line}");
            out.push((
                Captured {
                    channel: channel.to_owned(),
                    bytes: Vec::new(),
                    type_url: String::new(),
                    local: String::new(),
                },
                len,
            ));
            continue;
        }
        let Some((cur, _)) = out.last_mut() else {
            continue;
        };
        let is_hexdump = line.len() > 12
            && line.starts_with("  ")
            && line[2..10].bytes().all(|b| b.is_ascii_hexdigit())
            && &line[10..12] == "  ";
        if is_hexdump {
            let offset = usize::from_str_radix(&line[2..10], 16).unwrap();
            assert_eq!(offset, cur.bytes.len(), "hexdump offset in {line}");
            let hex_part = &line[12..line.find('|').expect("ascii column")];
            for word in hex_part.split_whitespace() {
                cur.bytes
                    .push(u8::from_str_radix(word, 16).expect("hex byte"));
            }
        } else if line.trim_start().starts_with("envelope internal.Msg:") {
            cur.type_url = quoted_after(line, "type_url=\"").unwrap().to_owned();
            cur.local = quoted_after(line, "channel(local)=\"").unwrap().to_owned();
        }
    }
    out.into_iter()
        .map(|(c, len)| {
            assert_eq!(c.bytes.len(), len, "byte count of message on {}", c.channel);
            assert!(
                !c.type_url.is_empty(),
                "envelope line of message on {}",
                c.channel
            );
            c
        })
        .filter(|c| c.channel != "MARK")
        .collect()
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden");

/// The per-step capture files and the minimum number of messages each holds.
const FILES: &[(&str, usize)] = &[
    ("01-unary", 4),
    ("02-affinity", 5),
    ("03-multi", 3),
    ("04-topic-unary", 4),
    ("05-stream-open", 5),
    ("06-stream-message", 4),
    ("07-stream-close", 1),
    ("08-subscribe", 0),
    ("09-publish", 6),
    ("10-unsubscribe", 0),
    ("11-end", 0),
];

fn load(bus: &str, step: &str) -> Vec<Captured> {
    let path = format!("{GOLDEN}/{bus}-{step}.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_capture(&text)
}

/// What a channel carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Request,
    ClaimResponse,
    StreamServer,
    Response,
    ClaimRequest,
    StreamClient,
    Event,
}

/// Every channel of the captured run, as `psrpc::protocol::channels` computes it.
fn expected_channels() -> Vec<(Channel, Kind, bool)> {
    let t1 = topic(&["t1"]);
    let none: &[String] = &[];
    let mut v = Vec::new();
    // (method, topic, queue)
    for (m, t, q) in [
        ("Unary", none, true),
        ("Affinity", none, false),
        ("Multi", none, false),
        ("TopicUnary", t1.as_slice(), true),
        ("Trigger", none, true),
    ] {
        v.push((channels::rpc_channel("Bench", m, t, q), Kind::Request, q));
        v.push((
            channels::claim_response_channel("Bench", m, t),
            Kind::ClaimResponse,
            false,
        ));
    }
    v.push((
        channels::claim_response_channel("Bench", "Echo", none),
        Kind::ClaimResponse,
        false,
    ));
    v.push((
        channels::stream_server_channel("Bench", "Echo", none),
        Kind::StreamServer,
        false,
    ));
    v.push((
        channels::rpc_channel("Bench", "Broadcast", &t1, false),
        Kind::Event,
        false,
    ));
    v.push((
        channels::rpc_channel("BenchEvents", "Events", none, true),
        Kind::Event,
        true,
    ));
    v.push((
        channels::response_channel("Bench", "CLI_wire"),
        Kind::Response,
        false,
    ));
    v.push((
        channels::claim_request_channel("Bench", "CLI_wire"),
        Kind::ClaimRequest,
        false,
    ));
    v.push((
        channels::stream_channel("Bench", "CLI_wire"),
        Kind::StreamClient,
        false,
    ));
    v
}

/// Decodes one captured message by its kind, checks its user payload, and
/// re-encodes it the way psrpc publishes it (without the channel field).
fn reencode(kind: Kind, bytes: &Bytes, type_url: &str) -> Bytes {
    match kind {
        Kind::Request => {
            let r: Request = psrpc::codec::decode_envelope(bytes.clone()).expect("Request");
            assert!(r.request_id.starts_with("REQ_") && r.client_id == "CLI_wire");
            assert!(r.expiry > r.sent_at);
            let user = BenchReq::decode(r.raw_request.clone()).expect("psrpcbench.Req");
            assert_eq!(user.encode_to_vec(), r.raw_request);
            wire::encode_msg(&r)
        }
        Kind::Response => {
            let r: Response = psrpc::codec::decode_envelope(bytes.clone()).expect("Response");
            assert!(r.server_id.starts_with("SRV_wire"));
            assert!(r.error.is_empty(), "{r:?}");
            let user = BenchRes::decode(r.raw_response.clone()).expect("psrpcbench.Res");
            assert_eq!(user.encode_to_vec(), r.raw_response);
            assert_eq!(user.server_id, r.server_id);
            wire::encode_msg(&r)
        }
        Kind::ClaimRequest => {
            let c: ClaimRequest =
                psrpc::codec::decode_envelope(bytes.clone()).expect("ClaimRequest");
            assert!(c.affinity == 1.0 || c.affinity == 0.75, "{c:?}");
            wire::encode_msg(&c)
        }
        Kind::ClaimResponse => {
            let c: ClaimResponse =
                psrpc::codec::decode_envelope(bytes.clone()).expect("ClaimResponse");
            assert!(c.server_id.starts_with("SRV_wire"));
            wire::encode_msg(&c)
        }
        Kind::StreamServer | Kind::StreamClient => {
            let s: Stream = psrpc::codec::decode_envelope(bytes.clone()).expect("Stream");
            assert!(s.stream_id.starts_with("STR_"));
            match &s.body {
                Some(StreamBody::Open(o)) => {
                    assert_eq!(kind, Kind::StreamServer);
                    assert_eq!(o.node_id, "CLI_wire");
                }
                Some(StreamBody::Message(m)) => {
                    let user = BenchMsg::decode(m.raw_message.clone()).expect("psrpcbench.Msg");
                    assert_eq!(user.encode_to_vec(), m.raw_message);
                }
                Some(StreamBody::Ack(_)) => {}
                Some(StreamBody::Close(c)) => {
                    assert_eq!(kind, Kind::StreamServer);
                    assert_eq!(
                        (c.error.as_str(), c.code.as_str()),
                        ("stream closed", "canceled")
                    );
                }
                None => panic!("stream without body: {s:?}"),
            }
            wire::encode_msg(&s)
        }
        Kind::Event => {
            assert_eq!(type_url, wire::type_url_of::<BenchEvent>());
            let env = wire::decode_msg(bytes.clone()).unwrap();
            let ev = BenchEvent::decode(env.value.clone()).expect("psrpcbench.Event");
            assert!(ev.server_id.starts_with("SRV_wire"));
            let user = ev.encode_to_vec();
            assert_eq!(user, env.value);
            wire::encode_msg_raw(&wire::type_url_of::<BenchEvent>(), &user)
        }
    }
}

fn expected_type_url(kind: Kind) -> String {
    match kind {
        Kind::Request => Request::TYPE_URL.to_owned(),
        Kind::Response => Response::TYPE_URL.to_owned(),
        Kind::ClaimRequest => ClaimRequest::TYPE_URL.to_owned(),
        Kind::ClaimResponse => ClaimResponse::TYPE_URL.to_owned(),
        Kind::StreamServer | Kind::StreamClient => Stream::TYPE_URL.to_owned(),
        Kind::Event => wire::type_url_of::<BenchEvent>(),
    }
}

/// Checks every message of one bus's captures; returns them with the
/// channel entry each was sent on.
fn check_bus(bus: &str) -> Vec<(Captured, Channel, Kind, bool)> {
    let table = expected_channels();
    let mut all = Vec::new();
    for (step, min) in FILES {
        let msgs = load(bus, step);
        assert!(
            msgs.len() >= *min,
            "{bus}-{step}: {} messages, expected at least {min}",
            msgs.len()
        );
        for m in msgs {
            let (ch, kind, queue) = table
                .iter()
                .find(|(ch, _, _)| match bus {
                    "redis" => ch.legacy == m.channel,
                    _ => ch.server == m.channel && ch.local == m.local,
                })
                .cloned()
                .unwrap_or_else(|| panic!("{bus}-{step}: unexpected channel {m:?}"));
            let bytes = Bytes::from(m.bytes.clone());
            let env = wire::decode_msg(bytes.clone()).expect("decode_msg");
            assert_eq!(env.type_url, m.type_url, "{bus}-{step} {}", m.channel);
            assert_eq!(
                env.type_url,
                expected_type_url(kind),
                "{bus}-{step} {}",
                m.channel
            );
            assert_eq!(env.channel, m.local);
            assert_eq!(wire::read_channel(&bytes).unwrap(), env.channel);
            if bus == "redis" {
                assert_eq!(env.channel, "", "Redis messages carry no channel field");
            } else if m.channel.starts_with("SRV.") {
                assert_eq!(env.channel, ch.local);
                let kind_suffix = ch.legacy.rsplit('|').next().unwrap();
                let method = ch.legacy.split('|').nth(1).unwrap();
                assert_eq!(env.channel, format!("{method}.{kind_suffix}"));
            } else {
                assert!(m.channel.starts_with("CLI."), "{}", m.channel);
                assert_eq!(env.channel, "", "client subjects carry no channel field");
            }
            let plain = reencode(kind, &bytes, &env.type_url);
            let out = if bus == "redis" {
                plain
            } else {
                wire::append_channel(&plain, &ch.local)
            };
            assert_eq!(
                hex::encode(&out),
                hex::encode(&m.bytes),
                "{bus}-{step}: re-encoded message on {} differs",
                m.channel
            );
            all.push((m, ch, kind, queue));
        }
    }
    all
}

#[test]
fn golden_redis_reencodes_byte_for_byte() {
    let msgs = check_bus("redis");
    assert_eq!(msgs.len(), 32);

    // Every queue message was locked by each queue subscriber with
    // SET base64(sha256(payload)) <n> EX 5 NX, as the MONITOR log shows.
    let monitor = std::fs::read_to_string(format!("{GOLDEN}/redis-monitor.txt")).unwrap();
    let set_keys: BTreeSet<String> = monitor
        .lines()
        .filter_map(|l| {
            let i = l.find("] \"set\" \"")?;
            let rest = &l[i + 9..];
            assert!(l.ends_with("\"ex\" \"5\" \"nx\""), "{l}");
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect();
    let queue_keys: BTreeSet<String> = msgs
        .iter()
        .filter(|(_, _, _, queue)| *queue)
        .map(|(m, _, _, _)| redis_lock_key(&m.bytes))
        .collect();
    assert_eq!(
        queue_keys.len(),
        4,
        "queue messages: Unary, TopicUnary, Trigger, Events"
    );
    assert_eq!(queue_keys, set_keys);
    for k in &set_keys {
        assert_eq!(k.len(), 44);
    }
}

#[test]
fn golden_nats_reencodes_byte_for_byte() {
    let msgs = check_bus("nats");
    assert_eq!(msgs.len(), 32);
    let with_local = msgs
        .iter()
        .filter(|(m, _, _, _)| !m.local.is_empty())
        .count();
    let client = msgs
        .iter()
        .filter(|(m, _, _, _)| m.channel.starts_with("CLI."))
        .count();
    assert_eq!(with_local + client, msgs.len());
    assert!(with_local >= 10 && client >= 10, "{with_local} {client}");
    // Queue methods of a service share one subject.
    for (m, ch, _, queue) in &msgs {
        if *queue {
            assert!(ch.server.ends_with(".Q"), "{}", m.channel);
        }
    }
}

/// The same exchange produces the same envelope shapes on both buses: only
/// ids, times and the NATS channel field differ.
#[test]
fn golden_buses_agree_on_message_sequence() {
    let table = expected_channels();
    for (step, _) in FILES {
        let r = load("redis", step);
        let n = load("nats", step);
        assert_eq!(r.len(), n.len(), "{step}");
        let kinds = |msgs: &[Captured], bus: &str| -> Vec<String> {
            let mut v: Vec<String> = msgs
                .iter()
                .map(|m| {
                    let (ch, _, _) = table
                        .iter()
                        .find(|(ch, _, _)| {
                            if bus == "redis" {
                                ch.legacy == m.channel
                            } else {
                                ch.server == m.channel && ch.local == m.local
                            }
                        })
                        .unwrap();
                    format!("{} {}", ch.legacy, m.type_url)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(kinds(&r, "redis"), kinds(&n, "nats"), "{step}");
    }
}

// ------------------------------------------------------------------------------------------------
// Malformed input.

fn all_golden() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for bus in ["redis", "nats"] {
        for (step, _) in FILES {
            v.extend(load(bus, step).into_iter().map(|m| m.bytes));
        }
    }
    v.extend(
        v11()
            .into_values()
            .filter(|b| b.first() == Some(&0x0a) && b[1] >= 0x23),
    );
    v
}

/// Tries every decoder on `b`; returns whether `decode_msg` accepted it.
fn try_all(b: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(b);
    let _ = wire::read_channel(b);
    let _ = psrpc::codec::decode_envelope::<Request>(bytes.clone());
    let _ = psrpc::codec::decode_envelope::<Response>(bytes.clone());
    let _ = psrpc::codec::decode_envelope::<ClaimRequest>(bytes.clone());
    let _ = psrpc::codec::decode_envelope::<ClaimResponse>(bytes.clone());
    let _ = psrpc::codec::decode_envelope::<Stream>(bytes.clone());
    wire::decode_msg(bytes).is_ok()
}

/// Decodes `msg` as the envelope type its URL names; `None` for user types.
fn decode_by_url(msg: Bytes) -> Option<Result<Bytes, wire::WireError>> {
    let url = wire::decode_msg(msg.clone()).ok()?.type_url;
    Some(match url.rsplit('/').next().unwrap() {
        "internal.Request" => {
            psrpc::codec::decode_envelope::<Request>(msg).map(|m| wire::encode(&m))
        }
        "internal.Response" => {
            psrpc::codec::decode_envelope::<Response>(msg).map(|m| wire::encode(&m))
        }
        "internal.ClaimRequest" => {
            psrpc::codec::decode_envelope::<ClaimRequest>(msg).map(|m| wire::encode(&m))
        }
        "internal.ClaimResponse" => {
            psrpc::codec::decode_envelope::<ClaimResponse>(msg).map(|m| wire::encode(&m))
        }
        "internal.Stream" => psrpc::codec::decode_envelope::<Stream>(msg).map(|m| wire::encode(&m)),
        _ => return None,
    })
}

/// The lengths at which a `Msg` ends on a field boundary (0, after each field).
fn msg_boundaries(b: &[u8]) -> Vec<usize> {
    let mut out = vec![0];
    let mut i = 0;
    while i < b.len() {
        // Keys and lengths in these envelopes are single bytes (< 128).
        assert!(b[i] < 0x80 && b[i + 1] < 0x80);
        i += 2 + b[i + 1] as usize;
        out.push(i);
    }
    assert_eq!(i, b.len());
    out
}

#[test]
fn truncated_messages_are_rejected_unless_on_a_field_boundary() {
    let mut checked = 0;
    let mut rejected = 0;
    for full in all_golden() {
        let bounds = msg_boundaries(&full);
        for len in 0..full.len() {
            let cut = &full[..len];
            let ok = try_all(cut);
            assert_eq!(
                ok,
                bounds.contains(&len),
                "decode_msg of {len} of {} bytes",
                full.len()
            );
            checked += 1;
            if !ok {
                rejected += 1;
            }
        }
        // Truncate the inner message inside an intact envelope.
        let env = wire::decode_msg(Bytes::from(full.clone())).unwrap();
        for len in 0..env.value.len() {
            let prefix = &env.value[..len];
            let msg = wire::encode_msg_raw(&env.type_url, prefix);
            match decode_by_url(msg) {
                // A prefix that decodes ends on a top-level field boundary,
                // so it re-encodes to exactly itself.
                Some(Ok(again)) => assert_eq!(hex::encode(again), hex::encode(prefix)),
                Some(Err(_)) => rejected += 1,
                None => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 5000, "{checked}");
    assert!(rejected > checked / 2, "{rejected} of {checked}");
}

#[test]
fn corrupted_messages_never_panic() {
    let mut checked = 0;
    for full in all_golden() {
        let url_end = 2 + full[1] as usize;
        for i in 0..full.len() {
            for f in [0xff_u8, 0x80, 0x01, 0x7f] {
                let mut b = full.clone();
                b[i] ^= f;
                try_all(&b);
                checked += 1;
            }
            // A high bit in the type URL makes it invalid UTF-8: rejected.
            if (2..url_end).contains(&i) {
                let mut b = full.clone();
                b[i] |= 0x80;
                assert!(!try_all(&b), "invalid UTF-8 type URL accepted at {i}");
            }
        }
        // A wrong type URL is rejected by decode_envelope.
        let env = wire::decode_msg(Bytes::from(full.clone())).unwrap();
        let wrong = wire::encode_msg_raw("type.googleapis.com/internal.Nope", &env.value);
        assert!(psrpc::codec::decode_envelope::<Request>(wrong.clone()).is_err());
        assert!(psrpc::codec::decode_envelope::<Stream>(wrong).is_err());
    }
    assert!(checked > 10000, "{checked}");
}

#[test]
fn random_bytes_never_panic() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let len = (next() % 160) as usize;
        let b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        try_all(&b);
        if len > 0 {
            let bytes = Bytes::from(b);
            assert!(
                psrpc::codec::decode_envelope::<Request>(bytes.clone()).is_err(),
                "random round {round} accepted as Request"
            );
            assert!(psrpc::codec::decode_envelope::<Stream>(bytes).is_err());
        }
        // Random bytes as the payload of a well-formed envelope.
        let inner: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        for url in [
            Request::TYPE_URL,
            Response::TYPE_URL,
            ClaimRequest::TYPE_URL,
            ClaimResponse::TYPE_URL,
            Stream::TYPE_URL,
        ] {
            let _ = decode_by_url(wire::encode_msg_raw(url, &inner));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Compression (Go psrpc v0.7.6+): gzip of `Msg.value`, flagged by `Msg.compression` (field 4),
// and `Msg.channel` on every bus (v0.8). Compressed envelopes are compared by round trip, not
// bytes: Go's deflate output differs from zlib's.

use psrpc::codec::CompressionOptions;
use psrpc::drops::DropReason;

/// The compact vectors of the compressed and must-drop envelopes (name, length, hex).
const COMPRESSION_VECTORS: &str = "\
V12 Msg nats / redis+local v0.8       116 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123d0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b1201764202080150011a0d4e6f726d616c5250432e524551
V14 gzip member (python zlib L6)       78 1f8b0800000000000003e31208720d8c4f4c4a4e494d4bcfc8cccace116277f6f10489483434acd8f878fef3d3e20a0d7b5e1e7f0762399de1481c05a360148c022a8000460053bf799880040000
V14 Msg gzip nats / v0.8              135 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374124e1f8b0800000000000003e31208720d8c4f4c4a4e494d4bcfc8cccace116277f6f10489483434acd8f878fef3d3e20a0d7b5e1e7f0762399de1481c05a360148c022a8000460053bf7998800400001a0d4e6f726d616c5250432e5245512001
V14 Msg gzip redis/local v0.7.6       120 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374124e1f8b0800000000000003e31208720d8c4f4c4a4e494d4bcfc8cccace116277f6f10489483434acd8f878fef3d3e20a0d7b5e1e7f0762399de1481c05a360148c022a8000460053bf7998800400002001
V15 Msg compression=2 (drop)          103 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123d0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b1201764202080150012002
V16 Msg gzip flag, not gzip (drop)     57 0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374120f6e6f7420677a697020617420616c6c2001
";

fn compressed_vector(name: &str) -> Bytes {
    for line in COMPRESSION_VECTORS.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            let mut parts = rest.split_whitespace();
            let len: usize = parts.next().unwrap().parse().unwrap();
            let b = hex::decode(parts.next().unwrap()).unwrap();
            assert_eq!(b.len(), len, "{name}");
            return Bytes::from(b);
        }
    }
    panic!("no vector {name}")
}

/// The V14 request with `n` bytes of `a` as its payload.
fn v14_request(n: usize) -> Request {
    Request {
        request_id: REQ_ID.into(),
        client_id: CLI_ID.into(),
        sent_at: T0,
        expiry: T0 + 3 * SEC,
        raw_request: Bytes::from(vec![0x61; n]),
        skip_claim: true,
        ..Default::default()
    }
}

const REQUEST_URL: &str = "type.googleapis.com/internal.Request";

fn decode(opts: &CompressionOptions, b: Bytes) -> Result<Bytes, wire::WireError> {
    opts.decode_value(b, REQUEST_URL)
}

/// A `Msg` around `value` flagged gzip, as any publisher could write it.
fn gzip_msg(value: &[u8]) -> Bytes {
    wire::encode_msg_gzip(REQUEST_URL, value)
}

#[test]
fn v14_compressed_request_decodes_on_every_form() {
    let value = wire::encode(&v14_request(1100));
    assert_eq!(value.len(), 1152);
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&value)),
        "eab95c7bb6cbd7a6152973337c8464295b1d967c062e41e6d05a7a740675c60f"
    );
    let default = CompressionOptions::default();
    for form in [
        "V14 Msg gzip nats / v0.8",
        "V14 Msg gzip redis/local v0.7.6",
    ] {
        let b = compressed_vector(form);
        let msg = wire::decode_msg(b.clone()).unwrap();
        assert_eq!(msg.compression, 1, "{form}");
        assert_eq!(decode(&default, b.clone()).unwrap(), value, "{form}");
        let req: Request = default
            .decode_value(b.clone(), REQUEST_URL)
            .map(|v| Request::decode(v).unwrap())
            .unwrap();
        assert_eq!(req, v14_request(1100));
        // The cap's boundary: exactly the size is accepted, one byte less is not.
        let cap = |n| default.with_max_decompressed_size(n);
        assert_eq!(decode(&cap(1152), b.clone()).unwrap(), value);
        let e = decode(&cap(1151), b.clone()).unwrap_err();
        assert_eq!(e.drop_reason(), DropReason::DecompressedTooLarge, "{e}");
        assert_eq!(decode(&cap(0), b).unwrap(), value);
    }
    let nats = compressed_vector("V14 Msg gzip nats / v0.8");
    assert_eq!(wire::read_channel(&nats).unwrap(), "NormalRPC.REQ");
    // The NATS bus adds field 3 before field 4, where Go writes it.
    assert_eq!(
        wire::append_channel(
            &compressed_vector("V14 Msg gzip redis/local v0.7.6"),
            "NormalRPC.REQ"
        ),
        nats
    );
}

#[test]
fn v14_member_twice_is_one_payload_and_trailing_bytes_are_rejected() {
    let member = compressed_vector("V14 gzip member (python zlib L6)");
    let value = wire::encode(&v14_request(1100));
    let twice = [&member[..], &member[..]].concat();
    let default = CompressionOptions::default();
    let out = decode(&default, gzip_msg(&twice)).unwrap();
    assert_eq!(out.len(), 2304);
    assert_eq!(&out[..1152], &value[..]);
    assert_eq!(&out[1152..], &value[..]);
    let cap = |n| default.with_max_decompressed_size(n);
    assert_eq!(decode(&cap(2304), gzip_msg(&twice)).unwrap().len(), 2304);
    let e = decode(&cap(2303), gzip_msg(&twice)).unwrap_err();
    assert_eq!(e.drop_reason(), DropReason::DecompressedTooLarge);

    let trailing = [&member[..], &[0u8][..]].concat();
    let e = decode(&default, gzip_msg(&trailing)).unwrap_err();
    assert_eq!(e.drop_reason(), DropReason::BadCompression, "{e}");
    // A corrupt CRC and a wrong ISIZE are rejected too.
    for at in [member.len() - 8, member.len() - 1] {
        let mut bad = member.to_vec();
        bad[at] ^= 0x01;
        let e = decode(&default, gzip_msg(&bad)).unwrap_err();
        assert_eq!(
            e.drop_reason(),
            DropReason::BadCompression,
            "byte {at}: {e}"
        );
    }
    // A truncated member too.
    let e = decode(&default, gzip_msg(&member[..member.len() - 4])).unwrap_err();
    assert_eq!(e.drop_reason(), DropReason::BadCompression, "{e}");
}

#[test]
fn v15_unknown_compression_and_v16_not_gzip_are_dropped() {
    let default = CompressionOptions::default();
    let v15 = compressed_vector("V15 Msg compression=2 (drop)");
    let e = decode(&default, v15).unwrap_err();
    assert!(matches!(e, wire::WireError::UnknownCompression(2)), "{e}");
    assert_eq!(e.drop_reason(), DropReason::UnknownCompression);
    let v16 = compressed_vector("V16 Msg gzip flag, not gzip (drop)");
    let e = decode(&default, v16).unwrap_err();
    assert_eq!(e.drop_reason(), DropReason::BadCompression, "{e}");
}

#[test]
fn v12_channel_field_is_accepted_on_every_bus() {
    // The v0.8 Redis/local form carries Msg.channel: it decodes like the v0.7 one.
    let b = compressed_vector("V12 Msg nats / redis+local v0.8");
    let v = decode(&CompressionOptions::default(), b).unwrap();
    let req = Request::decode(v).unwrap();
    assert_eq!(req.request_id, REQ_ID);
    assert!(req.skip_claim);
    // And the runtime does not stamp it on Redis and local: the plain encoding stays v0.7's.
    let plain = CompressionOptions::default().encode(&req);
    assert_eq!(plain, wire::encode_msg(&req));
    assert!(wire::read_channel(&plain).unwrap().is_empty());
}

#[test]
fn threshold_is_compared_on_the_encoded_value() {
    let on = CompressionOptions::default().with_quality(6);
    // 972 bytes of payload: a 1024-byte value, compressed with the default threshold.
    let req = v14_request(972);
    assert_eq!(wire::encode(&req).len(), 1024);
    let b = on.encode(&req);
    let msg = wire::decode_msg(b.clone()).unwrap();
    assert_eq!(msg.compression, 1);
    assert!(b.len() < wire::encode_msg(&req).len());
    // Go's gzip header (level 6: XFL 0, OS unknown).
    assert_eq!(&msg.value[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    assert_eq!(
        Request::decode(decode(&CompressionOptions::default(), b).unwrap()).unwrap(),
        req
    );
    // 971 bytes: a 1023-byte value, sent plain, byte for byte as without compression.
    let req = v14_request(971);
    assert_eq!(wire::encode(&req).len(), 1023);
    assert_eq!(on.encode(&req), wire::encode_msg(&req));
    // A raised threshold is compared the same way.
    let high = on.with_threshold(1025);
    assert_eq!(
        high.encode(&v14_request(972)),
        wire::encode_msg(&v14_request(972))
    );
    assert_eq!(
        wire::decode_msg(high.encode(&v14_request(973)))
            .unwrap()
            .compression,
        1
    );
    // Off (the default) never compresses.
    let big = v14_request(100_000);
    assert_eq!(
        CompressionOptions::default().encode(&big),
        wire::encode_msg(&big)
    );
}

#[test]
fn compressed_envelopes_round_trip_at_every_level() {
    let value: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("line {} of some text\n", i % 97).into_bytes())
        .collect();
    for level in 1..=12 {
        let on = CompressionOptions::default().with_quality(level);
        let b = on.encode_raw(REQUEST_URL, &value);
        let msg = wire::decode_msg(b.clone()).unwrap();
        assert_eq!(msg.compression, 1, "level {level}");
        assert_eq!(msg.type_url, REQUEST_URL);
        assert!(msg.channel.is_empty());
        // Exactly one gzip member, nothing after it.
        let mut one = flate2::bufread::GzDecoder::new(&msg.value[..]);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut one, &mut out).unwrap();
        assert_eq!(out, value, "level {level}");
        assert!(
            one.into_inner().is_empty(),
            "level {level}: bytes after the member"
        );
        assert_eq!(decode(&on, b).unwrap(), value);
    }
    // Envelope messages too, and the NATS form.
    let on = CompressionOptions::default()
        .with_quality(1)
        .with_threshold(1);
    let res = Response {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
        sent_at: T1,
        raw_response: Bytes::from(vec![7; 300]),
        ..Default::default()
    };
    let b = on.encode(&res);
    assert_eq!(wire::decode_msg(b.clone()).unwrap().compression, 1);
    let nats = wire::append_channel(&b, "Some.RES");
    let m = wire::decode_msg(nats.clone()).unwrap();
    assert_eq!((m.channel.as_str(), m.compression), ("Some.RES", 1));
    assert_eq!(&nats[nats.len() - 2..], &[0x20, 0x01]);
    let back = on
        .decode_value(nats, Response::TYPE_URL)
        .map(|v| Response::decode(v).unwrap())
        .unwrap();
    assert_eq!(back, res);
}

#[test]
fn incompressible_values_are_sent_plain() {
    // Not strictly smaller once gzipped: sent as it is.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let on = CompressionOptions::default()
        .with_quality(9)
        .with_threshold(1);
    assert_eq!(
        on.encode_raw(REQUEST_URL, &noise),
        wire::encode_msg_raw(REQUEST_URL, &noise)
    );
    // A tiny value above a threshold of 1 does not shrink either (a gzip member is 20+ bytes).
    assert_eq!(
        on.encode_raw(REQUEST_URL, b"ab"),
        wire::encode_msg_raw(REQUEST_URL, b"ab")
    );
}

#[test]
fn default_cap_stops_a_bomb_at_64_mib() {
    // 64 members of 1 MiB of zeros and one of a single zero: 64 MiB + 1
    // byte from about 66 KB of gzip.
    let cap = CompressionOptions::default().max_decompressed_size();
    assert_eq!(cap, 64 << 20);
    let mib = gzip_member(&vec![0u8; 1 << 20]);
    let mut gz = mib.repeat(64);
    gz.extend(gzip_member(&[0]));
    assert!(gz.len() < 100_000, "{}", gz.len());
    let e = decode(&CompressionOptions::default(), gzip_msg(&gz)).unwrap_err();
    assert!(
        matches!(e, wire::WireError::DecompressedTooLarge(n) if n == cap),
        "{e}"
    );
    // One byte less is accepted.
    gz.truncate(64 * mib.len());
    assert_eq!(
        decode(&CompressionOptions::default(), gzip_msg(&gz))
            .unwrap()
            .len(),
        cap
    );
}

fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

// ------------------------------------------------------------------------------------------------
// Claim skip vectors (V12, V13): the advertisement on a queue request and the
// server's announcement. This block is separate from the compression vectors.

/// V12: a queue `Request` that advertises claim skip is V1 plus `50 01`
/// (field 10, never field 9), in every envelope form.
#[test]
fn v12_queue_request_advertises_skip_claim() {
    let v12 = "0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b120176420208015001";
    let v12_msg = "0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123d0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b120176420208015001";
    let v12_nats = "0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374123d0a105245515f6162636465666768696a6b6c1207434c495f616263188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b1201764202080150011a0d4e6f726d616c5250432e524551";
    assert_eq!(v12.len() / 2, 61);
    assert_eq!(v12_msg.len() / 2, 101);
    assert_eq!(v12_nats.len() / 2, 116);
    let long = spaced(
        "0a 10 52 45 51 5f 61 62 63 64 65 66 67 68 69 6a 6b 6c 12 07 43 4c 49 5f 61 62 63 18 80 80 a8 b1
         e3 9f e7 cb 17 20 80 bc e9 c7 ee 9f e7 cb 17 3a 06 0a 01 6b 12 01 76 42 02 08 01 50 01",
    );
    assert_eq!(hex::encode(&long), v12);
    let req = Request {
        request_id: REQ_ID.into(),
        client_id: CLI_ID.into(),
        sent_at: T0,
        expiry: T0 + 3 * SEC,
        multi: false,
        metadata: [("k".to_owned(), "v".to_owned())].into(),
        raw_request: Bytes::from_static(&[0x08, 0x01]),
        skip_claim: true,
        ..Default::default()
    };
    let back = check_envelope(&req, v12, v12_msg);
    assert!(back.skip_claim);
    // V1 plus the pair.
    assert_eq!(
        v12,
        format!("{}5001", vec_hex(&v11(), "V1 Request")),
        "V12 = V1 + 50 01"
    );
    let ch = channels::rpc_channel(
        "MyService",
        "NormalRPC",
        &topic(&["us-east", "room/1"]),
        true,
    );
    assert_eq!(ch.server, "SRV.MyService.usu+002deast.roomu+002f1.Q");
    assert_eq!(ch.local, "NormalRPC.REQ");
    check_nats(&req, &ch.local, v12_nats);
    assert_eq!(
        redis_lock_key(&wire::encode_msg(&req)),
        "pY3Kaq+HuzZyIGoI0nXrWpxWuM5oYpw5hPJLq1MasuQ="
    );
    assert_eq!(
        redis_lock_key(&hex::decode(v12_nats).unwrap()),
        "1GRZDTg/AAzo/gJ8y2HmlaOFFxfqnHX9RqpIk09Bi2Y="
    );
    // A request without the advertisement decodes as not advertising, and
    // field 9 (the retired caller-elected skip) is not read as field 10.
    let v1: Request = psrpc::codec::decode_envelope(Bytes::from(
        hex::decode(vec_hex(&v11(), "V1 Msg redis/local")).unwrap(),
    ))
    .unwrap();
    assert!(!v1.skip_claim);
    let mut field9 = hex::decode(vec_hex(&v11(), "V1 Request")).unwrap();
    field9.extend_from_slice(&[0x48, 0x01]);
    let r = Request::decode(Bytes::from(field9)).unwrap();
    assert!(!r.skip_claim, "field 9 is not the advertisement");
}

/// V13: the announcement (`handling`, field 4) is the bid plus `20 01`, and
/// its envelope is the same on every bus.
#[test]
fn v13_claim_announcement() {
    let v13 = "0a105245515f6162636465666768696a6b6c12075352565f78797a1d0000803f2001";
    let v13_msg = "0a29747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e436c61696d5265717565737412220a105245515f6162636465666768696a6b6c12075352565f78797a1d0000803f2001";
    assert_eq!(v13.len() / 2, 34);
    assert_eq!(v13_msg.len() / 2, 79);
    let long = spaced(
        "0a 29 74 79 70 65 2e 67 6f 6f 67 6c 65 61 70 69 73 2e 63 6f 6d 2f 69 6e 74 65 72 6e 61 6c 2e 43
         6c 61 69 6d 52 65 71 75 65 73 74 12 22 0a 10 52 45 51 5f 61 62 63 64 65 66 67 68 69 6a 6b 6c 12
         07 53 52 56 5f 78 79 7a 1d 00 00 80 3f 20 01",
    );
    assert_eq!(hex::encode(&long), v13_msg);
    let ann = ClaimRequest {
        request_id: REQ_ID.into(),
        server_id: SRV_ID.into(),
        affinity: 1.0,
        handling: true,
    };
    let back = check_envelope(&ann, v13, v13_msg);
    assert!(back.handling);
    // The normal bid of the same server is the first 32 bytes.
    let bid = ClaimRequest {
        handling: false,
        ..ann.clone()
    };
    assert_eq!(hex::encode(wire::encode(&bid)), v13[..64]);
    // Sent to the caller's claim channel; on NATS that channel has no
    // Local, so the envelope is the same on every bus.
    let ch = channels::claim_request_channel("MyService", CLI_ID);
    assert_eq!(
        (ch.legacy.as_str(), ch.server.as_str()),
        ("MyService|CLI_abc|CLAIM", "CLI.MyService.CLI_abc.CLAIM")
    );
    check_nats(&ann, &ch.local, v13_msg);
}
