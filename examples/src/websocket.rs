//! Impervious' websocket feed (seed 004): asynchronous replies as events,
//! bridged from psrpc to a real WebSocket.
//!
//! Sending a message (`Messaging.Message`, a unary call) returns its message
//! id at once; the node "fires the message into the Lightning Network" and
//! returns without waiting. When the far end answers, the node publishes a
//! [`SubscribeResponse`] event whose `reply_to_id` is that id on the psrpc
//! fan-out subscription `Websocket.Subscribe`: every subscriber gets every
//! event.
//!
//! The [`Gateway`] is one such subscriber: a small HTTP server that serves a
//! page at `/` and a WebSocket at `GET /v1/subscribe`, and writes every
//! event to every connected WebSocket as a JSON text message with the
//! seed's fields, in proto3's JSON mapping (`data` in base64, the 64-bit
//! `amount` as a string):
//!
//! ```json
//! {"id":"…","reply_to_id":"…","from_pubkey":"02…","data":"aGVsbG8=","service_type":"message","amount":"0"}
//! ```
//!
//! As the seed says, what clients write into the WebSocket is ignored.
//!
//! The far ends are simulated peers of the node ([`PEERS`]): `bob` echoes a
//! message back after 150 ms, `carol` acknowledges it after 300 ms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use psrpc::bus::DynBus;
use psrpc::{CancellationToken, Error, ErrorCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::proto::messaging::{
    MessageRequest, MessageResponse, MessagingClient, MessagingServer, MessagingServerImpl,
};
use crate::proto::websocket::{
    SubscribeResponse, WebsocketClient, WebsocketServer, WebsocketServerImpl,
};
use crate::{BoxError, Narrator, ensure, expect_code};

/// The page the gateway serves at `/`: it connects to `/v1/subscribe` and
/// lists the events as they arrive.
pub const PAGE: &str = include_str!("../static/index.html");

/// The largest amount a message may carry (satoshis).
pub const MAX_AMOUNT: i64 = 4_294_967;

/// The simulated peers of the node: name, reply delay in milliseconds.
pub const PEERS: [(&str, u64); 2] = [("bob", 150), ("carol", 300)];

/// The public key (66 hex characters) of a simulated peer or node.
pub fn pubkey(name: &str) -> String {
    format!("02{}", hex::encode(Sha256::digest(name.as_bytes())))
}

/// What a simulated peer answers to `msg`.
pub fn reply_text(peer: &str, msg: &str) -> String {
    match peer {
        "bob" => format!("bob says: {msg}"),
        _ => format!("{peer} acknowledges \"{msg}\""),
    }
}

fn new_message_id() -> String {
    hex::encode(&crate::random_32()[..16])
}

fn check_pubkey(pk: &str) -> psrpc::Result<()> {
    let ok = pk.len() == 66
        && (pk.starts_with("02") || pk.starts_with("03"))
        && pk.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("pubkey `{pk}` is not a compressed public key (66 hex characters)"),
        ))
    }
}

/// The event feed's server side: nothing to serve, it only publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Feed;

impl WebsocketServerImpl for Feed {}

/// An Impervious node: sends messages for its user and publishes what comes
/// back on its event feed.
#[derive(Debug)]
pub struct ImpNode {
    pubkey: String,
    events: WebsocketServer,
    peers: HashMap<String, (String, Duration)>,
    sent: AtomicU64,
    narrator: Narrator,
}

impl ImpNode {
    /// Publishes an inbound message on the event feed.
    pub async fn deliver(&self, ev: &SubscribeResponse) -> psrpc::Result<()> {
        self.events.publish_subscribe(ev).await
    }

    /// The node's public key.
    pub fn pubkey(&self) -> &str {
        &self.pubkey
    }

    /// How many messages it sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[psrpc::async_trait]
impl MessagingServerImpl for ImpNode {
    async fn message(
        &self,
        _ctx: psrpc::Context,
        req: MessageRequest,
    ) -> psrpc::Result<MessageResponse> {
        check_pubkey(&req.pubkey)?;
        if req.msg.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the message is empty",
            ));
        }
        if !(0..=MAX_AMOUNT).contains(&req.amount) {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                format!("amount {} is outside 0..={MAX_AMOUNT} sat", req.amount),
            ));
        }
        let Some((peer, delay)) = self.peers.get(&req.pubkey).cloned() else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no route to node {}", req.pubkey),
            ));
        };
        let id = new_message_id();
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.narrator.say(format!(
            "node: message {id} to {peer} fired into the network, id returned at once"
        ));
        // The far end answers later; its reply becomes an event.
        let reply = SubscribeResponse {
            id: new_message_id(),
            reply_to_id: id.clone(),
            from_pubkey: req.pubkey.clone(),
            data: reply_text(&peer, &req.msg).into_bytes(),
            service_type: "message".into(),
            amount: 0,
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = events.publish_subscribe(&reply).await {
                tracing::warn!(error = %e, "websocket example: reply not published");
            }
        });
        Ok(MessageResponse { message_id: id })
    }
}

/// A running node.
#[derive(Debug)]
pub struct RunningNode {
    /// The messaging server.
    pub messaging: MessagingServer,
    /// The event publisher.
    pub events: WebsocketServer,
    /// The node.
    pub node: Arc<ImpNode>,
}

impl RunningNode {
    /// Stops serving.
    pub async fn shutdown(&self) {
        self.messaging.shutdown().await;
        self.events.shutdown().await;
    }
}

/// Starts a node on `bus`.
pub async fn serve_node(bus: DynBus, narrator: Narrator) -> psrpc::Result<RunningNode> {
    let events = WebsocketServer::new(Feed, bus.clone()).await?;
    let node = Arc::new(ImpNode {
        pubkey: pubkey("imp-node"),
        events: events.clone(),
        peers: PEERS
            .iter()
            .map(|(name, ms)| (pubkey(name), (name.to_string(), Duration::from_millis(*ms))))
            .collect(),
        sent: AtomicU64::new(0),
        narrator,
    });
    let messaging = MessagingServer::from_arc(node.clone(), bus, Default::default()).await?;
    Ok(RunningNode {
        messaging,
        events,
        node,
    })
}

/// An event as the gateway sends it: proto3 JSON with the proto field
/// names, in field order.
pub fn event_json(ev: &SubscribeResponse) -> String {
    use serde_json::Value;
    let s = |v: &str| Value::from(v).to_string();
    format!(
        "{{\"id\":{},\"reply_to_id\":{},\"from_pubkey\":{},\"data\":{},\"service_type\":{},\"amount\":{}}}",
        s(&ev.id),
        s(&ev.reply_to_id),
        s(&ev.from_pubkey),
        s(&base64::engine::general_purpose::STANDARD.encode(&ev.data)),
        s(&ev.service_type),
        s(&ev.amount.to_string()),
    )
}

/// The HTTP/WebSocket gateway: a psrpc subscriber of the event feed that
/// writes every event to every WebSocket connected at `/v1/subscribe`.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    clients: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Gateway {
    /// Subscribes to the feed on `bus` and listens on `listen`
    /// (`127.0.0.1:0` for a free port); returns once both are in effect.
    pub async fn start(bus: DynBus, listen: &str, narrator: Narrator) -> Result<Gateway, BoxError> {
        let feed = WebsocketClient::new(bus).await?;
        let mut sub = feed.subscribe_subscribe().await?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, _) = broadcast::channel::<Arc<str>>(1024);
        let stop = CancellationToken::new();
        let forwarded = Arc::new(AtomicU64::new(0));
        let clients = Arc::new(AtomicUsize::new(0));
        {
            let (tx, stop, forwarded) = (tx.clone(), stop.clone(), forwarded.clone());
            tokio::spawn(async move {
                let _feed = feed; // the subscription's client lives as long as the bridge
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        ev = sub.next() => match ev {
                            Some(ev) => {
                                forwarded.fetch_add(1, Ordering::Relaxed);
                                let _ = tx.send(Arc::from(event_json(&ev)));
                            }
                            None => break,
                        },
                    }
                }
            });
        }
        {
            let (stop, clients) = (stop.clone(), clients.clone());
            tokio::spawn(async move {
                loop {
                    let conn = tokio::select! {
                        _ = stop.cancelled() => break,
                        c = listener.accept() => c,
                    };
                    match conn {
                        Ok((stream, peer)) => {
                            // Subscribed before the upgrade: no event is
                            // missed between `onopen` and the first read.
                            let events = tx.subscribe();
                            let (stop, clients, narrator) =
                                (stop.clone(), clients.clone(), narrator.clone());
                            tokio::spawn(async move {
                                if let Err(e) =
                                    serve_http(stream, events, stop, clients, &narrator).await
                                {
                                    tracing::debug!(%peer, error = %e, "gateway connection ended");
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "gateway: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        Ok(Gateway {
            addr,
            clients,
            forwarded,
            stop,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The WebSocket's URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/subscribe", self.addr)
    }

    /// How many WebSockets are connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// How many events it received from the feed.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` WebSockets are connected; false on timeout.
    pub async fn wait_for_clients(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.clients() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops listening and closes every WebSocket.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Decrements the connected count when a WebSocket ends.
struct Connected(Arc<AtomicUsize>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

const MAX_HEAD: usize = 16 * 1024;

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

async fn serve_http(
    mut stream: TcpStream,
    mut events: broadcast::Receiver<Arc<str>>,
    stop: CancellationToken,
    clients: Arc<AtomicUsize>,
    narrator: &Narrator,
) -> Result<(), BoxError> {
    // Read the request head (everything read is replayed to the WebSocket
    // handshake below).
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(i);
            }
            if buf.len() > MAX_HEAD {
                return Err("request head too large");
            }
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err("connection closed"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .map_err(|_| "request head timed out")??;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let upgrade = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("websocket")
        })
    });
    let text = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/" | "/index.html") => {
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", "", PAGE).await?;
        }
        ("GET", "/v1/subscribe") if upgrade => {
            let (rd, wr) = stream.into_split();
            let io = tokio::io::join(std::io::Cursor::new(buf).chain(rd), wr);
            let (_req, mut ws) = tokio_websockets::ServerBuilder::new().accept(io).await?;
            clients.fetch_add(1, Ordering::Relaxed);
            let _connected = Connected(clients);
            narrator.say("gateway: a WebSocket subscribed at /v1/subscribe");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = ws.close().await;
                        break;
                    }
                    ev = events.recv() => match ev {
                        Ok(json) => ws.send(Message::text(json.to_string())).await?,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "gateway: a slow WebSocket missed events");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    msg = ws.next() => match msg {
                        None | Some(Err(_)) => break,
                        Some(Ok(m)) if m.is_close() => break,
                        // Whatever the client writes is ignored.
                        Some(Ok(_)) => {}
                    },
                }
            }
        }
        ("GET", "/v1/subscribe") => {
            let body = "GET /v1/subscribe is a WebSocket: send Upgrade: websocket\n";
            respond(
                &mut stream,
                "426 Upgrade Required",
                text,
                "Upgrade: websocket\r\n",
                body,
            )
            .await?;
        }
        (_, "/" | "/index.html" | "/v1/subscribe") => {
            let body = "only GET is allowed here\n";
            respond(
                &mut stream,
                "405 Method Not Allowed",
                text,
                "Allow: GET\r\n",
                body,
            )
            .await?;
        }
        _ => {
            respond(&mut stream, "404 Not Found", text, "", "not found\n").await?;
        }
    }
    Ok(())
}

/// What the client side does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's WebSocket URL, to also read the replies there.
    pub gateway: Option<String>,
    /// How long to wait for the replies.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            gateway: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One message sent and its reply.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The peer's name.
    pub peer: String,
    /// The message id the call returned.
    pub message_id: String,
    /// How long the call took.
    pub returned_in: Duration,
    /// The reply event, from the psrpc subscription.
    pub reply: SubscribeResponse,
    /// How long after the send the reply arrived.
    pub replied_in: Duration,
    /// The reply event as the gateway's WebSocket delivered it (when a
    /// gateway was given).
    pub ws_reply: Option<serde_json::Value>,
}

/// What the client side saw.
#[derive(Debug)]
pub struct ClientReport {
    /// The exchanges, one per peer.
    pub exchanges: Vec<Exchange>,
    /// The errors of the bad sends, by case.
    pub errors: Vec<(String, Error)>,
}

/// The client side: sends a message to each peer (each call returns its id
/// before the reply exists), waits for every reply on the psrpc feed (and
/// on the gateway's WebSocket when one is given), then checks bad input:
/// a malformed pubkey and an empty message (`invalid_argument`), a
/// negative amount (`out_of_range`), an unknown node (`not_found`).
pub async fn run_client(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<ClientReport, BoxError> {
    let messaging = MessagingClient::new(bus.clone()).await?;
    let feed_client = WebsocketClient::new(bus).await?;
    let mut feed = feed_client.subscribe_subscribe().await?;
    let mut ws = match &config.gateway {
        Some(url) => {
            let (ws, _) = tokio_websockets::ClientBuilder::new()
                .uri(url)?
                .connect()
                .await?;
            narrator.say(format!("client: WebSocket connected to {url}"));
            Some(ws)
        }
        None => None,
    };

    let mut sent = Vec::new();
    for (i, (peer, _)) in PEERS.iter().enumerate() {
        let msg = format!("hello {peer}, message {}", i + 1);
        let started = Instant::now();
        let res = messaging
            .message(MessageRequest {
                pubkey: pubkey(peer),
                msg: msg.clone(),
                amount: 10 * i as i64,
                reply_to_id: String::new(),
            })
            .await?;
        let returned_in = started.elapsed();
        narrator.say(format!(
            "client: sent \"{msg}\" to {peer}: message id {} returned in {:?}",
            res.message_id, returned_in
        ));
        sent.push((peer.to_string(), msg, res.message_id, started, returned_in));
    }

    // The replies, from the psrpc subscription...
    let mut replies: HashMap<String, (SubscribeResponse, Duration)> = HashMap::new();
    let wanted: HashMap<String, Instant> = sent
        .iter()
        .map(|(_, _, id, started, _)| (id.clone(), *started))
        .collect();
    tokio::time::timeout(config.timeout, async {
        while replies.len() < wanted.len() {
            let Some(ev) = feed.next().await else { break };
            if let Some(started) = wanted.get(&ev.reply_to_id) {
                let at = started.elapsed();
                narrator.say(format!(
                    "client: event {} replies to {} after {:?}: \"{}\"",
                    ev.id,
                    ev.reply_to_id,
                    at,
                    String::from_utf8_lossy(&ev.data)
                ));
                replies.insert(ev.reply_to_id.clone(), (ev, at));
            }
        }
    })
    .await
    .map_err(|_| format!("only {} of {} replies arrived", replies.len(), wanted.len()))?;

    // ...and from the gateway's WebSocket.
    let mut ws_replies: HashMap<String, serde_json::Value> = HashMap::new();
    if let Some(ws) = ws.as_mut() {
        tokio::time::timeout(config.timeout, async {
            while ws_replies.len() < wanted.len() {
                let Some(Ok(msg)) = ws.next().await else {
                    break;
                };
                let Some(text) = msg.as_text() else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    continue;
                };
                let reply_to = v["reply_to_id"].as_str().unwrap_or_default().to_owned();
                if wanted.contains_key(&reply_to) {
                    narrator.say(format!("client: the WebSocket delivered {text}"));
                    ws_replies.insert(reply_to, v);
                }
            }
        })
        .await
        .map_err(|_| {
            format!(
                "only {} of {} replies arrived on the WebSocket",
                ws_replies.len(),
                wanted.len()
            )
        })?;
        let _ = ws.close().await;
    }

    let mut exchanges = Vec::new();
    for (peer, msg, id, _, returned_in) in sent {
        let (reply, replied_in) = replies.remove(&id).ok_or("a reply is missing")?;
        ensure!(
            returned_in < replied_in,
            "the call for {id} returned after its reply arrived"
        );
        ensure!(
            reply.from_pubkey == pubkey(&peer)
                && reply.data == reply_text(&peer, &msg).into_bytes(),
            "unexpected reply {reply:?}"
        );
        let ws_reply = ws_replies.remove(&id);
        if let Some(v) = &ws_reply {
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap_or_default())?;
            ensure!(
                v["id"] == reply.id.as_str()
                    && v["from_pubkey"] == reply.from_pubkey.as_str()
                    && v["service_type"] == "message"
                    && v["amount"] == "0"
                    && data == reply.data,
                "the WebSocket event {v} differs from the psrpc event {reply:?}"
            );
        }
        exchanges.push(Exchange {
            peer,
            message_id: id,
            returned_in,
            reply,
            replied_in,
            ws_reply,
        });
    }

    let base = MessageRequest {
        pubkey: pubkey("bob"),
        msg: "hi".into(),
        amount: 0,
        reply_to_id: String::new(),
    };
    let mut errors = Vec::new();
    for (case, req, code) in [
        (
            "malformed pubkey",
            MessageRequest {
                pubkey: "bob".into(),
                ..base.clone()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "empty message",
            MessageRequest {
                msg: String::new(),
                ..base.clone()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "negative amount",
            MessageRequest {
                amount: -5,
                ..base.clone()
            },
            ErrorCode::OutOfRange,
        ),
        (
            "unknown node",
            MessageRequest {
                pubkey: pubkey("mallory"),
                ..base.clone()
            },
            ErrorCode::NotFound,
        ),
    ] {
        let e = expect_code(case, messaging.message(req).await, code)?;
        narrator.say(format!(
            "client: {case} -> {}: {}",
            e.code().as_str(),
            e.message()
        ));
        errors.push((case.to_owned(), e));
    }
    Ok(ClientReport { exchanges, errors })
}

/// The whole scenario on one bus: a node, a gateway on `listen`, and the
/// client side reading the replies from both the feed and the gateway.
/// Returns the report and the gateway (still running, with the node, until
/// dropped).
pub async fn run_both(
    bus: DynBus,
    listen: &str,
    narrator: &Narrator,
) -> Result<(ClientReport, Gateway, RunningNode), BoxError> {
    let node = serve_node(bus.clone(), narrator.clone()).await?;
    let gateway = Gateway::start(bus.clone(), listen, narrator.clone()).await?;
    narrator.say(format!(
        "node {}… serves Messaging; gateway at {} (WebSocket {})",
        &node.node.pubkey()[..12],
        gateway.url(),
        gateway.ws_url()
    ));
    let config = ClientConfig {
        gateway: Some(gateway.ws_url()),
        ..Default::default()
    };
    let report = run_client(bus, &config, narrator).await?;
    Ok((report, gateway, node))
}
