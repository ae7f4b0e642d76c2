//! Compression on every bus: a factory whose connections compress (to run
//! the whole suite compressed), and the bus-level compression behaviours
//! (mixed peers, gzip published by hand, decompression bombs).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use psrpc::bus::{DynBus, Handler, HandlerSubscription, RawSubscription};
use psrpc::codec::CompressionOptions;
use psrpc::drops::{DropReason, Drops};
use psrpc::protocol::channels::{self, Channel};
use psrpc::protocol::wire::{self, Envelope, Request, Response};
use psrpc::{
    ClientOptions, Context, MessageBus, Method, RpcClient, RpcServer, ServerOptions, async_trait,
};

use crate::my_service::*;
use crate::{BusFactory, Num};

/// `UpdateRegionState` carrying `Num` updates.
static UPDATES: Method<Num, Num> = Method::multi("UpdateRegionState");

/// How long a condition is waited for before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A bus whose runtime encodes and decodes with given [`CompressionOptions`],
/// and that counts the compressed messages published through it.
pub struct CompressedBus {
    inner: DynBus,
    compression: CompressionOptions,
    compressed: Arc<AtomicU64>,
}

impl CompressedBus {
    /// `inner` with `compression`.
    pub fn new(inner: DynBus, compression: CompressionOptions) -> Self {
        CompressedBus {
            inner,
            compression,
            compressed: Arc::default(),
        }
    }

    /// The count of gzip-flagged messages published through this bus.
    pub fn compressed(&self) -> Arc<AtomicU64> {
        self.compressed.clone()
    }
}

#[async_trait]
impl MessageBus for CompressedBus {
    async fn publish(&self, channel: &Channel, msg: Bytes) -> psrpc::Result<()> {
        if wire::decode_msg(msg.clone()).is_ok_and(|m| m.compression == 1) {
            self.compressed.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.publish(channel, msg).await
    }
    async fn subscribe(&self, channel: &Channel, size: usize) -> psrpc::Result<RawSubscription> {
        self.inner.subscribe(channel, size).await
    }
    async fn subscribe_queue(
        &self,
        channel: &Channel,
        size: usize,
    ) -> psrpc::Result<RawSubscription> {
        self.inner.subscribe_queue(channel, size).await
    }
    async fn subscribe_handler(
        &self,
        channel: &Channel,
        size: usize,
        queue: bool,
        handler: Handler,
    ) -> psrpc::Result<HandlerSubscription> {
        self.inner
            .subscribe_handler(channel, size, queue, handler)
            .await
    }
    async fn subscribe_inline(
        &self,
        channel: &Channel,
        size: usize,
        handler: Handler,
    ) -> psrpc::Result<HandlerSubscription> {
        self.inner.subscribe_inline(channel, size, handler).await
    }
    fn drops(&self) -> &Drops {
        self.inner.drops()
    }
    fn compression(&self) -> &CompressionOptions {
        &self.compression
    }
}

/// A factory whose connections are those of another, with compression
/// options of their own; every connection counts into [`compressed`](Self::compressed).
pub struct Compressed<F> {
    inner: F,
    compression: CompressionOptions,
    compressed: Arc<AtomicU64>,
}

impl<F: BusFactory> Compressed<F> {
    /// Connections of `inner` that compress every message they can
    /// (level 1, threshold 1 byte).
    pub fn every_message(inner: F) -> Self {
        Self::with(
            inner,
            CompressionOptions::default()
                .with_quality(1)
                .with_threshold(1),
        )
    }

    /// Connections of `inner` with `compression`.
    pub fn with(inner: F, compression: CompressionOptions) -> Self {
        Compressed {
            inner,
            compression,
            compressed: Arc::default(),
        }
    }

    /// How many gzip-flagged messages the connections published.
    pub fn compressed(&self) -> u64 {
        self.compressed.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl<F: BusFactory> BusFactory for Compressed<F> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn connect(&self) -> DynBus {
        let mut bus = CompressedBus::new(self.inner.connect().await, self.compression);
        bus.compressed = self.compressed.clone();
        Arc::new(bus)
    }
    async fn settle(&self) {
        self.inner.settle().await
    }
    fn server_options(&self) -> psrpc::ServerOptions {
        self.inner.server_options()
    }
}

/// One gzip member of `data` at level 6.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A gzip `Msg` of type `type_url` whose payload inflates to `size` zero bytes.
pub fn bomb(type_url: &str, size: usize) -> Bytes {
    wire::encode_msg_gzip(type_url, &gzip(&vec![0; size]))
}

async fn echo_server(
    bus: DynBus,
    id: &str,
    m: &Method<Num, Num>,
    count: Arc<AtomicUsize>,
) -> RpcServer {
    let s = RpcServer::new(bus, SERVICE, ServerOptions::default().server_id(id))
        .await
        .unwrap();
    let id = id.to_owned();
    s.route(m)
        .handle(move |_ctx: Context, req: Num| {
            count.fetch_add(1, Ordering::SeqCst);
            let id = id.clone();
            async move {
                Ok(Num {
                    n: req.n,
                    text: format!("{id}:{}", req.text),
                })
            }
        })
        .await
        .expect("register");
    s
}

fn text(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 7) as u8) as char).collect()
}

/// A compressing client and a plain server, then a plain client and a
/// compressing server: unary calls (claimed queue and multi) and
/// subscription updates pass both ways, and compressed messages did cross
/// the bus.
pub async fn compression_mixed_peers(f: &dyn BusFactory) {
    let on = CompressionOptions::default()
        .with_quality(6)
        .with_threshold(64);
    for server_compresses in [false, true] {
        let plain: DynBus = f.connect().await;
        let zipped = Arc::new(CompressedBus::new(f.connect().await, on));
        let compressed = zipped.compressed();
        let zipped: DynBus = zipped;
        let (server_bus, client_bus) = if server_compresses {
            (zipped.clone(), plain.clone())
        } else {
            (plain.clone(), zipped.clone())
        };
        let count = Arc::new(AtomicUsize::new(0));
        let s = echo_server(server_bus, "srv", &NORMAL_RPC, count.clone()).await;
        s.route(&GET_STATS)
            .handle(|_c: Context, r: Num| async move {
                Ok(Num {
                    n: r.n + 1,
                    text: r.text,
                })
            })
            .await
            .unwrap();
        let c = RpcClient::new(client_bus, SERVICE, ClientOptions::default())
            .await
            .unwrap();
        let mut sub = c.subscribe(&UPDATES, &updates_topic()).await.unwrap();
        crate::suite::settle(f).await;
        let big = text(5000);
        let r: Num = c
            .unary(
                &NORMAL_RPC,
                (),
                Num {
                    n: 7,
                    text: big.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!((r.n, r.text), (7, format!("srv:{big}")));
        let items: Vec<_> = c
            .multi(
                &GET_STATS,
                (),
                Num {
                    n: 1,
                    text: big.clone(),
                },
            )
            .timeout(Duration::from_secs(2))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap().n, 2);
        s.publish(
            &UPDATES,
            &updates_topic(),
            &Num {
                n: 9,
                text: big.clone(),
            },
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(DEADLINE, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.n, got.text), (9, big.clone()));
        assert!(
            compressed.load(Ordering::Relaxed) >= 2,
            "server compresses: {server_compresses}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        s.shutdown().await;
    }
}

/// A v0.8-style request published by hand: gzip in two members, with
/// `Msg.channel` stamped (as Go v0.8 does on every bus), to a server with
/// default options: it is read and answered.
pub async fn compression_raw_gzip_request_answered(f: &dyn BusFactory) {
    let m = Method::queue("Gzipped").single_server();
    let count = Arc::new(AtomicUsize::new(0));
    let server_bus: DynBus = f.connect().await;
    let s = echo_server(server_bus.clone(), "plain", &m, count.clone()).await;
    let bus: DynBus = f.connect().await;
    let client_id = psrpc::protocol::id::new_id("CLI_");
    let mut responses = bus
        .subscribe(&channels::response_channel(SERVICE, &client_id), 10)
        .await
        .unwrap();
    crate::suite::settle(f).await;
    let payload = Num {
        n: 42,
        text: text(3000),
    };
    let now = wire::now_ns();
    let req = Request {
        request_id: "REQ_gzipgzipgzip".into(),
        client_id: client_id.clone(),
        sent_at: now,
        expiry: now + 10_000_000_000,
        raw_request: payload.encode_to_vec().into(),
        skip_claim: true,
        ..Default::default()
    };
    let value = wire::encode(&req);
    let (a, b) = value.split_at(value.len() / 3);
    let gz = [gzip(a), gzip(b)].concat();
    assert!(gz.len() < value.len() / 4);
    let ch = channels::rpc_channel(SERVICE, m.name(), &[], true);
    // Msg.channel written into the bytes on every bus; the channel handed to
    // the bus has none, so no bus adds a second one.
    let bytes = wire::append_channel(&wire::encode_msg_gzip(Request::TYPE_URL, &gz), &ch.local);
    let stamped = Channel {
        local: String::new(),
        ..ch.clone()
    };
    bus.publish(&stamped, bytes).await.unwrap();
    let raw = tokio::time::timeout(DEADLINE, responses.recv())
        .await
        .expect("a response")
        .unwrap();
    let res: Response = psrpc::codec::decode_envelope(raw).unwrap();
    assert_eq!(res.request_id, "REQ_gzipgzipgzip");
    assert!(res.error.is_empty(), "{}", res.error);
    let back = Num::decode(res.raw_response).unwrap();
    assert_eq!(back.n, 42);
    assert_eq!(back.text, format!("plain:{}", payload.text));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(server_bus.drops().total(), 0, "{:?}", server_bus.drops());
    s.shutdown().await;
}

/// A decompression bomb (a few KB of gzip that inflate past the readers'
/// cap) published by hand on a server's request and claim channels, a
/// client's response and claim channels and a subscription: each is
/// dropped and counted as too large, nothing is delivered, and the server
/// and the subscription keep working.
pub async fn compression_bomb_dropped_everywhere(f: &dyn BusFactory) {
    const CAP: usize = 256 << 10;
    let capped = Compressed::with(
        Forward(f),
        CompressionOptions::default().with_max_decompressed_size(CAP),
    );
    let count = Arc::new(AtomicUsize::new(0));
    let server_bus = capped.connect().await;
    let s = echo_server(server_bus.clone(), "srv", &NORMAL_RPC, count.clone()).await;
    let client_bus = capped.connect().await;
    let c = RpcClient::new(client_bus.clone(), SERVICE, ClientOptions::default())
        .await
        .unwrap();
    let mut sub = c.subscribe(&UPDATES, &updates_topic()).await.unwrap();
    // Updates are decoded as they are read: read them all the time.
    let (tx, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(n) = sub.recv().await {
            let _ = tx.send(n);
        }
    });
    crate::suite::settle(f).await;

    let num_url = wire::type_url_of::<Num>();
    let targets = [
        (
            channels::rpc_channel(SERVICE, NORMAL_RPC.name(), &[], true),
            Request::TYPE_URL,
            true,
        ),
        (
            channels::claim_response_channel(SERVICE, NORMAL_RPC.name(), &[]),
            wire::ClaimResponse::TYPE_URL,
            true,
        ),
        (
            channels::response_channel(SERVICE, c.id()),
            Response::TYPE_URL,
            false,
        ),
        (
            channels::claim_request_channel(SERVICE, c.id()),
            wire::ClaimRequest::TYPE_URL,
            false,
        ),
        (
            channels::rpc_channel(SERVICE, UPDATES.name(), &updates_topic(), false),
            num_url.as_str(),
            false,
        ),
    ];
    let too_large = |b: &DynBus| b.drops().count(DropReason::DecompressedTooLarge);
    let (server_before, client_before) = (too_large(&server_bus), too_large(&client_bus));
    let publisher: DynBus = f.connect().await;
    for (ch, url, _) in &targets {
        let b = bomb(url, 2 * CAP);
        assert!(b.len() < 4096, "a bomb of {} bytes", b.len());
        publisher.publish(ch, b).await.unwrap();
    }
    let shared = std::ptr::eq(server_bus.drops(), client_bus.drops());
    let want_server = targets.iter().filter(|t| t.2).count() as u64;
    let want_client = targets.len() as u64 - want_server;
    crate::eventually("the bombs to be dropped", DEADLINE, || {
        if shared {
            too_large(&server_bus) - server_before == want_server + want_client
        } else {
            too_large(&server_bus) - server_before == want_server
                && too_large(&client_bus) - client_before == want_client
        }
    })
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "no request was delivered");
    assert!(updates.try_recv().is_err(), "no update was delivered");

    // Serving goes on, compressed payloads under the cap included.
    let r: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 5,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.n, 5);
    s.publish(
        &UPDATES,
        &updates_topic(),
        &Num {
            n: 6,
            text: String::new(),
        },
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(DEADLINE, updates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.n, 6);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    reader.abort();
    s.shutdown().await;
}

/// A borrowed factory as a factory.
struct Forward<'a>(&'a dyn BusFactory);

#[async_trait]
impl BusFactory for Forward<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn connect(&self) -> DynBus {
        self.0.connect().await
    }
    async fn settle(&self) {
        self.0.settle().await
    }
}

/// The topic of the updates these tests subscribe. A fan-out subscription
/// on a topic of its own: on NATS a queue subscription shares its subject
/// with the service's queue methods, and an update that NATS hands to a
/// server process is lost there (it is not a request, so it is not handed
/// back), which would make these tests depend on NATS's pick.
fn updates_topic() -> Vec<String> {
    vec!["compressed-updates".to_owned()]
}
