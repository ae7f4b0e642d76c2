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
//! The [`Gateway`] is one such subscriber: an HTTP server (axum) that serves
//! a page at `/` and a WebSocket at `GET /v1/subscribe`, and writes every
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

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::{CancellationToken, Error, ErrorCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite;

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
/// names, in field order (`data` in base64, the 64-bit `amount` as a string).
pub fn event_json(ev: &SubscribeResponse) -> String {
    /// The proto3 JSON mapping of [`SubscribeResponse`].
    #[derive(Serialize)]
    struct EventJson<'a> {
        id: &'a str,
        reply_to_id: &'a str,
        from_pubkey: &'a str,
        data: String,
        service_type: &'a str,
        amount: String,
    }
    let json = EventJson {
        id: &ev.id,
        reply_to_id: &ev.reply_to_id,
        from_pubkey: &ev.from_pubkey,
        data: base64::engine::general_purpose::STANDARD.encode(&ev.data),
        service_type: &ev.service_type,
        amount: ev.amount.to_string(),
    };
    serde_json::to_string(&json).expect("a struct of strings serializes")
}

/// The HTTP/WebSocket gateway: a psrpc subscriber of the event feed that
/// writes every event to every WebSocket connected at `/v1/subscribe`, with
/// the page at `/`, served by axum.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    clients: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// What the gateway's handlers share.
#[derive(Clone)]
struct Shared {
    /// Every event from the feed, as JSON.
    events: broadcast::Sender<Utf8Bytes>,
    stop: CancellationToken,
    clients: Arc<AtomicUsize>,
    narrator: Narrator,
}

impl Gateway {
    /// Subscribes to the feed on `bus` and listens on `listen`
    /// (`127.0.0.1:0` for a free port); returns once both are in effect.
    pub async fn start(bus: DynBus, listen: &str, narrator: Narrator) -> Result<Gateway, BoxError> {
        let feed = WebsocketClient::new(bus).await?;
        let mut sub = feed.subscribe_subscribe().await?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, _) = broadcast::channel::<Utf8Bytes>(1024);
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
                                let _ = tx.send(Utf8Bytes::from(event_json(&ev)));
                            }
                            None => break,
                        },
                    }
                }
            });
        }
        let app = Router::new()
            .route("/", get(page))
            .route("/index.html", get(page))
            .route("/v1/subscribe", get(subscribe))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
            .with_state(Shared {
                events: tx,
                stop: stop.clone(),
                clients: clients.clone(),
                narrator,
            });
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "gateway: the HTTP server failed");
            }
        });
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

/// `GET /` and `GET /index.html`: the page.
async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

/// `GET /v1/subscribe`: upgrades to a WebSocket that gets every event; a
/// plain GET is answered `426 Upgrade Required`.
async fn subscribe(
    State(shared): State<Shared>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(
            WebSocketUpgradeRejection::InvalidConnectionHeader(_)
            | WebSocketUpgradeRejection::InvalidUpgradeHeader(_),
        ) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                "GET /v1/subscribe is a WebSocket: send Upgrade: websocket\n",
            )
                .into_response();
        }
        Err(other) => return other.into_response(),
    };
    // Subscribed before the upgrade completes: no event is missed between
    // the client's `onopen` and the socket's first read.
    let events = shared.events.subscribe();
    upgrade.on_upgrade(move |socket| async move {
        shared.clients.fetch_add(1, Ordering::Relaxed);
        let _connected = Connected(shared.clients.clone());
        shared
            .narrator
            .say("gateway: a WebSocket subscribed at /v1/subscribe");
        if let Err(e) = forward(socket, events, &shared.stop).await {
            tracing::debug!(error = %e, "gateway: a WebSocket ended");
        }
    })
}

/// Writes every event to `socket` until the client leaves or the gateway
/// stops (then it closes the socket). What the client writes is ignored.
async fn forward(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<Utf8Bytes>,
    stop: &CancellationToken,
) -> Result<(), axum::Error> {
    loop {
        tokio::select! {
            // Stopping wins over whatever else is ready.
            biased;
            _ = stop.cancelled() => {
                return socket.send(Message::Close(None)).await;
            }
            ev = events.recv() => match ev {
                Ok(json) => socket.send(Message::Text(json)).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "gateway: a slow WebSocket missed events");
                }
                // The feed's bridge and the server are gone: the gateway
                // stopped.
                Err(broadcast::error::RecvError::Closed) => {
                    return socket.send(Message::Close(None)).await;
                }
            },
            msg = socket.recv() => match msg {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Err(e)) => return Err(e),
                // Whatever the client writes is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Decrements the connected count when a WebSocket ends.
struct Connected(Arc<AtomicUsize>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
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
                let tungstenite::Message::Text(text) = msg else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
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
        let _ = ws.close(None).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact JSON of an event: proto field names in field order, `data`
    /// in base64, `amount` as a string, strings escaped.
    #[test]
    fn event_json_is_proto3_json() {
        let ev = SubscribeResponse {
            id: "e1".into(),
            reply_to_id: "m\"1".into(),
            from_pubkey: "02ab".into(),
            data: b"hello".to_vec(),
            service_type: "message".into(),
            amount: -9_007_199_254_740_993,
        };
        assert_eq!(
            event_json(&ev),
            r#"{"id":"e1","reply_to_id":"m\"1","from_pubkey":"02ab","data":"aGVsbG8=","service_type":"message","amount":"-9007199254740993"}"#
        );
        assert_eq!(
            event_json(&SubscribeResponse::default()),
            r#"{"id":"","reply_to_id":"","from_pubkey":"","data":"","service_type":"","amount":"0"}"#
        );
    }
}
