//! Loop's reservation notifications (seed 000): a server-to-client stream of
//! reservation offers.
//!
//! psrpc streams are bidirectional; a server-streaming RPC maps onto one as
//! Loop's gRPC call does onto HTTP/2: the client opens the stream and sends
//! its [`ReservationNotificationRequest`] as the first message, then only
//! receives. The server checks the protocol version (a client speaking
//! `RESERVATION_NONE` is refused with `failed_precondition`, an unknown
//! version with `invalid_argument`, a client that says nothing within the
//! request timeout with `deadline_exceeded`) and pushes a
//! [`ServerReservationNotification`] every interval until either side closes
//! the stream. Each `send` waits for the client's acknowledgement, so a
//! client that stops reading slows its server down instead of losing offers.
//!
//! Several servers can serve the stream: each open is taken by exactly one
//! of them, the first to claim it (queue routing with the claim handshake),
//! so which server a client gets depends on who answers first.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc::{ClientStream, Error, ErrorCode, ServerStream};
use sha2::{Digest, Sha256};

use crate::proto::looprpc::{
    ReservationNotificationRequest, ReservationProtocolVersion, ReservationServiceClient,
    ReservationServiceServer, ReservationServiceServerImpl, ServerReservationNotification,
};
use crate::{BoxError, Narrator, ensure, expect_code, short_hex};

/// How a reservation server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Its name (its server key is derived from it).
    pub name: String,
    /// The time between two offers on a stream.
    pub interval: Duration,
    /// How long a new stream may take to send its request.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "loop-a".into(),
            interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Offer values cycle through these (satoshis).
const VALUES: [u64; 4] = [250_000, 500_000, 1_000_000, 2_000_000];
/// The simulated chain height of the first offer.
const START_HEIGHT: u32 = 840_000;
/// Offers expire this many blocks after they are made (four weeks).
const EXPIRY_BLOCKS: u32 = 4032;

/// A Loop server's reservation desk: pushes offers to every client that
/// opens a notification stream.
#[derive(Debug)]
pub struct LoopServer {
    config: ServerConfig,
    key: Vec<u8>,
    seq: AtomicU64,
    streams: AtomicU64,
    refused: AtomicU64,
    narrator: Narrator,
}

impl LoopServer {
    /// A server; what it does is told to `narrator`.
    pub fn new(config: ServerConfig, narrator: Narrator) -> Self {
        LoopServer {
            key: server_key(&config.name),
            config,
            seq: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            narrator,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its 33-byte server key.
    pub fn server_key(&self) -> &[u8] {
        &self.key
    }

    /// How many streams it accepted (protocol version checked).
    pub fn streams_served(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// How many streams it refused.
    pub fn streams_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How many offers it made.
    pub fn offers_made(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    fn next_offer(&self) -> ServerReservationNotification {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let height = START_HEIGHT + seq as u32;
        let mut id = Sha256::new();
        id.update(self.config.name.as_bytes());
        id.update(seq.to_be_bytes());
        id.update(crate::random_32());
        ServerReservationNotification {
            reservation_id: id.finalize().to_vec(),
            value: VALUES[seq as usize % VALUES.len()],
            server_key: self.key.clone(),
            expiry: height + EXPIRY_BLOCKS,
            protocol_version: ReservationProtocolVersion::ReservationServerNotify as i32,
        }
    }

    fn refuse(&self, e: Error) -> psrpc::Result<()> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.narrator.say(format!(
            "{}: refused a stream: {}: {}",
            self.config.name,
            e.code().as_str(),
            e.message()
        ));
        Err(e)
    }
}

/// The 33-byte (compressed-key shaped) server key of a server name.
pub fn server_key(name: &str) -> Vec<u8> {
    let mut key = vec![0x02];
    key.extend_from_slice(&Sha256::digest(name.as_bytes()));
    key
}

/// Checks the protocol version a client asked for.
pub fn check_version(version: i32) -> psrpc::Result<()> {
    match ReservationProtocolVersion::try_from(version) {
        Ok(ReservationProtocolVersion::ReservationServerNotify) => Ok(()),
        Ok(ReservationProtocolVersion::ReservationNone) => Err(Error::new(
            ErrorCode::FailedPrecondition,
            "the client speaks RESERVATION_NONE: reservation notifications need \
             RESERVATION_SERVER_NOTIFY",
        )),
        Err(_) => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("unknown reservation protocol version {version}"),
        )),
    }
}

#[psrpc::async_trait]
impl ReservationServiceServerImpl for LoopServer {
    async fn reservation_notification_stream(
        &self,
        mut stream: ServerStream<ServerReservationNotification, ReservationNotificationRequest>,
    ) -> psrpc::Result<()> {
        let from = stream
            .context()
            .incoming()
            .map(|h| h.remote_id.clone())
            .unwrap_or_default();
        let req = match tokio::time::timeout(self.config.request_timeout, stream.recv()).await {
            Ok(Ok(Some(req))) => req,
            // The client closed (or the stream ended) before asking for anything.
            Ok(Ok(None) | Err(_)) => return Ok(()),
            Err(_) => {
                return self.refuse(Error::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "no ReservationNotificationRequest within {:?}",
                        self.config.request_timeout
                    ),
                ));
            }
        };
        if let Err(e) = check_version(req.protocol_version) {
            return self.refuse(e);
        }
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.narrator.say(format!(
            "{}: {from} speaks RESERVATION_SERVER_NOTIFY, offering reservations every {:?}",
            self.config.name, self.config.interval
        ));
        let sender = stream.sender();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.recv() => match msg {
                    // The client closed the stream (or the server shuts down).
                    Ok(None) | Err(_) => return Ok(()),
                    Ok(Some(_)) => {
                        return Err(Error::new(
                            ErrorCode::InvalidArgument,
                            "a notification stream takes one ReservationNotificationRequest",
                        ));
                    }
                },
                _ = ticker.tick() => {
                    if let Err(e) = sender.send(self.next_offer()).await {
                        // Closed meanwhile: not an error of ours.
                        return if sender.is_closed() { Ok(()) } else { Err(e) };
                    }
                }
            }
        }
    }
}

/// A running reservation server.
#[derive(Debug)]
pub struct RunningServer {
    /// The psrpc server.
    pub server: ReservationServiceServer,
    /// Its implementation (for its counters).
    pub desk: Arc<LoopServer>,
}

/// Starts a reservation server on `bus`.
pub async fn serve(
    bus: DynBus,
    config: ServerConfig,
    narrator: Narrator,
) -> psrpc::Result<RunningServer> {
    let desk = Arc::new(LoopServer::new(config, narrator));
    let server = ReservationServiceServer::from_arc(desk.clone(), bus, Default::default()).await?;
    Ok(RunningServer { server, desk })
}

/// A client's notification stream.
#[derive(Debug)]
pub struct OfferStream {
    stream: ClientStream<ReservationNotificationRequest, ServerReservationNotification>,
}

impl OfferStream {
    /// Opens a notification stream speaking protocol `version` (a
    /// [`ReservationProtocolVersion`] as `i32`, so that unknown versions can
    /// be tried too).
    pub async fn open(client: &ReservationServiceClient, version: i32) -> psrpc::Result<Self> {
        let stream = client.reservation_notification_stream().await?;
        stream
            .send(ReservationNotificationRequest {
                protocol_version: version,
            })
            .await?;
        Ok(OfferStream { stream })
    }

    /// The next offer: `Ok(None)` when the stream was closed cleanly, the
    /// server's error when it refused or ended the stream.
    pub async fn next(&mut self) -> psrpc::Result<Option<ServerReservationNotification>> {
        self.stream.recv().await
    }

    /// Closes the stream: the server stops offering.
    pub async fn close(self) -> psrpc::Result<()> {
        self.stream.close().await
    }
}

/// What the client side of the scenario does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How many clients listen at once.
    pub clients: usize,
    /// How many offers each takes before closing its stream.
    pub offers: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            clients: 2,
            offers: 3,
        }
    }
}

/// The offers one client received.
#[derive(Debug, Clone)]
pub struct ClientOffers {
    /// The client's name.
    pub client: String,
    /// Its offers, in order.
    pub offers: Vec<ServerReservationNotification>,
}

/// What the client side saw.
#[derive(Debug)]
pub struct ClientReport {
    /// The offers of every client.
    pub clients: Vec<ClientOffers>,
    /// The error of a client speaking `RESERVATION_NONE`.
    pub refused_none: Error,
    /// The error of a client speaking an unknown version.
    pub refused_unknown: Error,
}

/// The client side: `config.clients` clients take `config.offers` offers
/// each (all at once) and close their streams;
/// a client speaking no notification protocol and one speaking an unknown
/// version are refused. Fails when any offer or error is not as expected.
pub async fn run_clients(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<ClientReport, BoxError> {
    let client = ReservationServiceClient::new(bus).await?;
    let listeners = (0..config.clients).map(|i| {
        let client = client.clone();
        let n = config.offers;
        let narrator = narrator.clone();
        async move {
            let name = format!("client-{}", i + 1);
            let mut stream = OfferStream::open(
                &client,
                ReservationProtocolVersion::ReservationServerNotify as i32,
            )
            .await?;
            let mut offers = Vec::new();
            while offers.len() < n {
                let Some(offer) = stream.next().await? else {
                    return Err(
                        format!("{name}: the stream ended after {} offers", offers.len()).into(),
                    );
                };
                narrator.say(format!(
                    "{name} <- offer {} of {} sat, expires at block {}, from server {}",
                    short_hex(&offer.reservation_id),
                    offer.value,
                    offer.expiry,
                    short_hex(&offer.server_key),
                ));
                offers.push(offer);
            }
            stream.close().await?;
            narrator.say(format!("{name} closed its stream after {n} offers"));
            Ok::<_, BoxError>(ClientOffers {
                client: name,
                offers,
            })
        }
    });
    let clients = futures::future::try_join_all(listeners).await?;

    let mut ids = HashSet::new();
    for c in &clients {
        ensure!(
            c.offers.len() == config.offers,
            "{}: {} offers",
            c.client,
            c.offers.len()
        );
        let servers: HashSet<_> = c.offers.iter().map(|o| o.server_key.clone()).collect();
        ensure!(
            servers.len() == 1,
            "{}: one stream, offers from {} servers",
            c.client,
            servers.len()
        );
        for o in &c.offers {
            ensure!(
                o.protocol_version == ReservationProtocolVersion::ReservationServerNotify as i32,
                "{}: offer with protocol version {}",
                c.client,
                o.protocol_version
            );
            ensure!(
                o.reservation_id.len() == 32,
                "reservation id of {} bytes",
                o.reservation_id.len()
            );
            ensure!(
                o.server_key.len() == 33,
                "server key of {} bytes",
                o.server_key.len()
            );
            ensure!(o.value > 0 && o.expiry > START_HEIGHT, "offer {o:?}");
            ensure!(
                ids.insert(o.reservation_id.clone()),
                "reservation id offered twice"
            );
        }
    }

    let mut none =
        OfferStream::open(&client, ReservationProtocolVersion::ReservationNone as i32).await?;
    let refused_none = expect_code(
        "RESERVATION_NONE client",
        none.next().await,
        ErrorCode::FailedPrecondition,
    )?;
    narrator.say(format!(
        "a client speaking RESERVATION_NONE is refused: {}: {}",
        refused_none.code().as_str(),
        refused_none.message()
    ));
    let mut unknown = OfferStream::open(&client, 7).await?;
    let refused_unknown = expect_code(
        "protocol version 7",
        unknown.next().await,
        ErrorCode::InvalidArgument,
    )?;
    narrator.say(format!(
        "a client speaking version 7 is refused: {}: {}",
        refused_unknown.code().as_str(),
        refused_unknown.message()
    ));
    Ok(ClientReport {
        clients,
        refused_none,
        refused_unknown,
    })
}

/// What the whole scenario saw.
#[derive(Debug)]
pub struct BothReport {
    /// The client side.
    pub client: ClientReport,
    /// Per server: name, streams accepted, streams refused.
    pub servers: Vec<(String, u64, u64)>,
    /// How a stream still open ended when the servers shut down.
    pub shutdown_close: Error,
}

/// The whole scenario on one bus: two servers, the client side, then a
/// stream still open while the servers shut down (it ends with
/// `unavailable`).
pub async fn run_both(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<BothReport, BoxError> {
    let mut servers = Vec::new();
    for name in ["loop-a", "loop-b"] {
        let config = ServerConfig {
            name: name.into(),
            interval: Duration::from_millis(50),
            ..Default::default()
        };
        let s = serve(bus.clone(), config, narrator.clone()).await?;
        narrator.say(format!(
            "server {name} (key {}) serves ReservationService",
            short_hex(s.desk.server_key())
        ));
        servers.push(s);
    }
    let client = run_clients(bus.clone(), config, narrator).await?;

    // A stream still open when the servers go: it ends with their close.
    let rsc = ReservationServiceClient::new(bus).await?;
    let mut open = OfferStream::open(
        &rsc,
        ReservationProtocolVersion::ReservationServerNotify as i32,
    )
    .await?;
    ensure!(open.next().await?.is_some(), "no offer on the last stream");
    for s in &servers {
        s.server.shutdown().await;
    }
    let mut shutdown_close = None;
    // Offers sent before the close may still be buffered.
    for _ in 0..100 {
        match open.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                shutdown_close = Some(e);
                break;
            }
        }
    }
    let shutdown_close = shutdown_close.ok_or("the last stream did not end with an error")?;
    ensure!(
        shutdown_close.code() == ErrorCode::Unavailable,
        "server shutdown closed the stream with {}",
        shutdown_close.code().as_str()
    );
    narrator.say(format!(
        "the servers shut down: a client still listening sees {}: {}",
        shutdown_close.code().as_str(),
        shutdown_close.message()
    ));
    let servers = servers
        .iter()
        .map(|s| {
            let d = &s.desk;
            narrator.say(format!(
                "server {}: {} streams served, {} refused, {} offers made",
                d.name(),
                d.streams_served(),
                d.streams_refused(),
                d.offers_made()
            ));
            (d.name().to_owned(), d.streams_served(), d.streams_refused())
        })
        .collect();
    Ok(BothReport {
        client,
        servers,
        shutdown_close,
    })
}
