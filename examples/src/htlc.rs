//! LND's HTLC events (seed 001): a psrpc fan-out subscription.
//!
//! A simulated router node publishes the HTLC events of its node on the
//! topic of its name (`SubscribeHtlcEvents` is a `MULTI` subscription with
//! the topic parameter `node`), so every subscriber of that node receives
//! every event, and the subscribers of another node none of them. Each
//! round of traffic is realistic: a forward that settles, a forward that the
//! next hop fails, two HTLCs failed on our link (with a wire failure code of
//! `lnrpc.Failure.FailureCode` and a failure detail) and a payment we
//! receive; every HTLC ends with its final event.
//!
//! LND sends `subscribed_event` once to each new subscriber. A psrpc
//! subscription is in effect when `subscribe` returns, and the publisher does
//! not know its subscribers, so the router publishes `subscribed_event` at
//! the start of each round instead: a subscriber that joins while a round is
//! under way starts counting at the next one, and its totals are exact.
//!
//! Subscribers aggregate the events ([`Aggregator`]): HTLCs are tracked by
//! incoming channel and HTLC id from their first event to their final one,
//! giving the settled amount, the fees earned and the failures by reason.
//! The node also answers `LookupHtlcResolution` (unary, on its topic) for
//! the HTLCs it resolved.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::{Error, ErrorCode};

use crate::proto::lnrpc::failure::FailureCode;
use crate::proto::lnrpc::{LookupHtlcResolutionRequest, LookupHtlcResolutionResponse};
use crate::proto::routerrpc::htlc_event::{Event, EventType};
use crate::proto::routerrpc::{
    FailureDetail, FinalHtlcEvent, ForwardEvent, ForwardFailEvent, HtlcEvent, HtlcInfo,
    LinkFailEvent, RouterClient, RouterServer, RouterServerImpl, SettleEvent, SubscribedEvent,
};
use crate::{BoxError, Narrator, ensure, expect_code};

/// How many HTLCs one round of simulated traffic has.
pub const HTLCS_PER_ROUND: u64 = 5;

/// A short channel id from its block height, transaction index and output.
pub const fn scid(block: u64, tx: u64, output: u64) -> u64 {
    (block << 40) | (tx << 16) | output
}

/// Our channel with the peer that sends us HTLCs.
pub const CHANNEL_IN: u64 = scid(800_000, 1, 0);
/// Our channel to the next hop.
pub const CHANNEL_OUT: u64 = scid(800_123, 7, 1);

const SETTLED_IN_MSAT: u64 = 1_000_500;
const SETTLED_OUT_MSAT: u64 = 1_000_000;

/// A failure reason as aggregated: `WIRE_FAILURE/FAILURE_DETAIL`.
pub fn failure_reason(wire: i32, detail: i32) -> String {
    let wire = FailureCode::try_from(wire).map_or("?", |c| c.as_str_name());
    let detail = FailureDetail::try_from(detail).map_or("?", |d| d.as_str_name());
    format!("{wire}/{detail}")
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A router node's state: the HTLCs it resolved.
#[derive(Debug, Default)]
pub struct RouterNode {
    next_htlc: AtomicU64,
    rounds: AtomicU64,
    resolutions: Mutex<HashMap<(u64, u64), (bool, bool)>>,
}

#[psrpc::async_trait]
impl RouterServerImpl for RouterNode {
    async fn lookup_htlc_resolution(
        &self,
        _ctx: psrpc::Context,
        req: LookupHtlcResolutionRequest,
    ) -> psrpc::Result<LookupHtlcResolutionResponse> {
        if req.chan_id == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "chan_id must be set",
            ));
        }
        let found = self
            .resolutions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(req.chan_id, req.htlc_index))
            .copied();
        match found {
            Some((settled, offchain)) => Ok(LookupHtlcResolutionResponse { settled, offchain }),
            None => Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "htlc {} on channel {} has no final resolution",
                    req.htlc_index, req.chan_id
                ),
            )),
        }
    }
}

/// A running router node.
#[derive(Debug, Clone)]
pub struct Router {
    name: String,
    server: RouterServer,
    node: Arc<RouterNode>,
}

impl Router {
    /// Starts the node `name` on `bus`: it serves `LookupHtlcResolution` on
    /// its topic and publishes on it.
    pub async fn start(bus: DynBus, name: &str) -> psrpc::Result<Router> {
        let node = Arc::new(RouterNode::default());
        let server = RouterServer::from_arc(node.clone(), bus, Default::default()).await?;
        server.register_lookup_htlc_resolution_topic(name).await?;
        Ok(Router {
            name: name.to_owned(),
            server,
            node,
        })
    }

    /// The node's name (its topic).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many rounds it published.
    pub fn rounds(&self) -> u64 {
        self.node.rounds.load(Ordering::Relaxed)
    }

    async fn publish(&self, mut ev: HtlcEvent) -> psrpc::Result<()> {
        ev.timestamp_ns = now_ns();
        self.server
            .publish_subscribe_htlc_events(self.name.as_str(), &ev)
            .await
    }

    fn resolve(&self, htlc: u64, settled: bool) {
        self.node
            .resolutions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((CHANNEL_IN, htlc), (settled, true));
    }

    /// Publishes one round of traffic: the `subscribed_event` marker, then
    /// [`HTLCS_PER_ROUND`] HTLCs from first event to final event.
    pub async fn publish_round(&self) -> psrpc::Result<()> {
        let ev = |htlc: u64, out: u64, kind: EventType, event: Event| HtlcEvent {
            incoming_channel_id: CHANNEL_IN,
            outgoing_channel_id: if out == 0 { 0 } else { CHANNEL_OUT },
            incoming_htlc_id: htlc,
            outgoing_htlc_id: out,
            timestamp_ns: 0,
            event_type: kind as i32,
            event: Some(event),
        };
        let info = |in_msat: u64, out_msat: u64| HtlcInfo {
            incoming_timelock: 800_184,
            outgoing_timelock: 800_144,
            incoming_amt_msat: in_msat,
            outgoing_amt_msat: out_msat,
        };
        let fin = |settled| {
            Event::FinalHtlcEvent(FinalHtlcEvent {
                settled,
                offchain: true,
            })
        };
        let preimage = || {
            Event::SettleEvent(SettleEvent {
                preimage: crate::random_32().to_vec(),
            })
        };
        let fwd = EventType::Forward;
        let ids: Vec<u64> = (0..HTLCS_PER_ROUND)
            .map(|_| self.node.next_htlc.fetch_add(1, Ordering::Relaxed) + 1)
            .collect();

        self.publish(HtlcEvent {
            event: Some(Event::SubscribedEvent(SubscribedEvent {})),
            ..Default::default()
        })
        .await?;

        // A forward that settles: we earn 500 msat.
        let h = ids[0];
        let forward = Event::ForwardEvent(ForwardEvent {
            info: Some(info(SETTLED_IN_MSAT, SETTLED_OUT_MSAT)),
        });
        self.publish(ev(h, h, fwd, forward)).await?;
        self.publish(ev(h, h, fwd, preimage())).await?;
        self.resolve(h, true);
        self.publish(ev(h, h, fwd, fin(true))).await?;

        // A forward the next hop fails.
        let h = ids[1];
        let forward = Event::ForwardEvent(ForwardEvent {
            info: Some(info(250_250, 250_000)),
        });
        self.publish(ev(h, h, fwd, forward)).await?;
        let failed = Event::ForwardFailEvent(ForwardFailEvent {});
        self.publish(ev(h, h, fwd, failed)).await?;
        self.resolve(h, false);
        self.publish(ev(h, h, fwd, fin(false))).await?;

        // Two HTLCs we fail on our link, for different reasons.
        for (h, in_msat, wire, detail, text) in [
            (
                ids[2],
                5_000_500,
                FailureCode::TemporaryChannelFailure,
                FailureDetail::InsufficientBalance,
                "insufficient bandwidth to route htlc",
            ),
            (
                ids[3],
                100_010,
                FailureCode::FeeInsufficient,
                FailureDetail::NoDetail,
                "fee insufficient: got 10 msat, need 1000 msat",
            ),
        ] {
            let link_fail = Event::LinkFailEvent(LinkFailEvent {
                info: Some(info(in_msat, in_msat - 10)),
                wire_failure: wire as i32,
                failure_detail: detail as i32,
                failure_string: text.into(),
            });
            self.publish(ev(h, 0, fwd, link_fail)).await?;
            self.resolve(h, false);
            self.publish(ev(h, 0, fwd, fin(false))).await?;
        }

        // A payment to us.
        let h = ids[4];
        self.publish(ev(h, 0, EventType::Receive, preimage()))
            .await?;
        self.resolve(h, true);
        self.publish(ev(h, 0, EventType::Receive, fin(true)))
            .await?;

        self.node.rounds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes a round every `interval` (at most `rounds` when given)
    /// until `stop` is set.
    pub fn spawn_traffic(
        &self,
        interval: Duration,
        rounds: Option<u64>,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<psrpc::Result<()>> {
        let router = self.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|r| n < r) {
                router.publish_round().await?;
                n += 1;
                tokio::time::sleep(interval).await;
            }
            Ok(())
        })
    }

    /// Stops serving (draining in-flight lookups).
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

/// A subscriber's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtlcStats {
    /// HTLCs followed from their first event to their final event.
    pub resolved: u64,
    /// Forwards that settled.
    pub forwards_settled: u64,
    /// The amount those forwards carried out (msat).
    pub forwarded_msat: u64,
    /// The fees those forwards earned (msat).
    pub fees_earned_msat: u64,
    /// Forwards the next hop failed.
    pub forwards_failed: u64,
    /// HTLCs failed on our link, by `WIRE_FAILURE/FAILURE_DETAIL`.
    pub link_failures: BTreeMap<String, u64>,
    /// Payments we received.
    pub received: u64,
}

impl HtlcStats {
    /// The totals of `htlcs` HTLCs of whole rounds of the simulated traffic.
    pub fn expected(htlcs: u64) -> HtlcStats {
        let rounds = htlcs / HTLCS_PER_ROUND;
        HtlcStats {
            resolved: rounds * HTLCS_PER_ROUND,
            forwards_settled: rounds,
            forwarded_msat: rounds * SETTLED_OUT_MSAT,
            fees_earned_msat: rounds * (SETTLED_IN_MSAT - SETTLED_OUT_MSAT),
            forwards_failed: rounds,
            link_failures: [
                (
                    failure_reason(
                        FailureCode::TemporaryChannelFailure as i32,
                        FailureDetail::InsufficientBalance as i32,
                    ),
                    rounds,
                ),
                (
                    failure_reason(
                        FailureCode::FeeInsufficient as i32,
                        FailureDetail::NoDetail as i32,
                    ),
                    rounds,
                ),
            ]
            .into_iter()
            .collect(),
            received: rounds,
        }
    }
}

#[derive(Debug, Clone)]
enum Open {
    Forward(HtlcInfo),
    ForwardSettled(HtlcInfo),
    ForwardFailed,
    LinkFailed(String),
    Received,
}

/// Follows HTLCs through their events and adds up what they did.
#[derive(Debug, Default)]
pub struct Aggregator {
    started: bool,
    open: HashMap<(u64, u64), Open>,
    /// The totals so far.
    pub stats: HtlcStats,
    /// Events received (all of them, counted or not).
    pub events: u64,
    /// Settled forwards seen, as (incoming channel, htlc id).
    pub settled_forwards: Vec<(u64, u64)>,
}

impl Aggregator {
    /// Takes one event. Nothing counts before the first `subscribed_event`.
    pub fn add(&mut self, ev: &HtlcEvent) {
        self.events += 1;
        let Some(event) = &ev.event else { return };
        if let Event::SubscribedEvent(_) = event {
            self.started = true;
            return;
        }
        if !self.started {
            return;
        }
        let key = (ev.incoming_channel_id, ev.incoming_htlc_id);
        match event {
            Event::ForwardEvent(f) => {
                self.open
                    .insert(key, Open::Forward(f.info.unwrap_or_default()));
            }
            Event::SettleEvent(_) => match self.open.get(&key).cloned() {
                Some(Open::Forward(info)) => {
                    self.open.insert(key, Open::ForwardSettled(info));
                }
                None if ev.event_type == EventType::Receive as i32 => {
                    self.open.insert(key, Open::Received);
                }
                _ => {}
            },
            Event::ForwardFailEvent(_) => {
                if let Some(Open::Forward(_)) = self.open.get(&key) {
                    self.open.insert(key, Open::ForwardFailed);
                }
            }
            Event::LinkFailEvent(l) => {
                let reason = failure_reason(l.wire_failure, l.failure_detail);
                self.open.insert(key, Open::LinkFailed(reason));
            }
            Event::FinalHtlcEvent(f) => {
                let Some(open) = self.open.remove(&key) else {
                    return;
                };
                let s = &mut self.stats;
                s.resolved += 1;
                match (open, f.settled) {
                    (Open::ForwardSettled(info), true) => {
                        s.forwards_settled += 1;
                        s.forwarded_msat += info.outgoing_amt_msat;
                        s.fees_earned_msat += info
                            .incoming_amt_msat
                            .saturating_sub(info.outgoing_amt_msat);
                        self.settled_forwards.push(key);
                    }
                    (Open::ForwardFailed, false) => s.forwards_failed += 1,
                    (Open::LinkFailed(reason), false) => {
                        *s.link_failures.entry(reason).or_default() += 1;
                    }
                    (Open::Received, true) => s.received += 1,
                    _ => {}
                }
            }
            Event::SubscribedEvent(_) => {}
        }
    }
}

/// What the client side does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node whose events to follow.
    pub node: String,
    /// How many subscribers.
    pub subscribers: usize,
    /// How many HTLCs each follows to their end (whole rounds: a multiple
    /// of [`HTLCS_PER_ROUND`]).
    pub htlcs: u64,
    /// How long to wait for them.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            node: "alice".into(),
            subscribers: 2,
            htlcs: 2 * HTLCS_PER_ROUND,
            timeout: Duration::from_secs(20),
        }
    }
}

/// What the client side saw.
#[derive(Debug)]
pub struct ClientReport {
    /// How many HTLCs each subscriber followed.
    pub htlcs: u64,
    /// The totals of each subscriber.
    pub stats: Vec<HtlcStats>,
    /// The resolution of a settled forward, looked up.
    pub lookup: LookupHtlcResolutionResponse,
    /// Looking up channel 0.
    pub invalid_lookup: Error,
    /// Looking up an HTLC the node never saw.
    pub unknown_lookup: Error,
}

/// The client side: `subscribers` subscribers of `node` each follow
/// `htlcs` HTLCs (from the next round on) and must agree on the totals,
/// which must be those of the simulated traffic; then resolutions are
/// looked up, a known one, channel 0 (`invalid_argument`) and an unknown
/// HTLC (`not_found`).
pub async fn run_clients(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<ClientReport, BoxError> {
    ensure!(
        config.htlcs > 0 && config.htlcs % HTLCS_PER_ROUND == 0,
        "--htlcs must be a positive multiple of {HTLCS_PER_ROUND}"
    );
    let client = RouterClient::new(bus).await?;
    let mut subs = Vec::new();
    for _ in 0..config.subscribers {
        subs.push(
            client
                .subscribe_subscribe_htlc_events(config.node.as_str())
                .await?,
        );
    }
    narrator.say(format!(
        "{} subscribers follow {}'s HTLC events",
        config.subscribers, config.node
    ));
    let followers = subs.into_iter().enumerate().map(|(i, mut sub)| {
        let (htlcs, timeout) = (config.htlcs, config.timeout);
        async move {
            let mut agg = Aggregator::default();
            let done = tokio::time::timeout(timeout, async {
                while agg.stats.resolved < htlcs {
                    match sub.next().await {
                        Some(ev) => agg.add(&ev),
                        None => break,
                    }
                }
            })
            .await;
            ensure!(
                done.is_ok() && agg.stats.resolved == htlcs,
                "subscriber {}: {} of {htlcs} HTLCs resolved after {} events",
                i + 1,
                agg.stats.resolved,
                agg.events
            );
            Ok::<_, BoxError>(agg)
        }
    });
    let aggs = futures::future::try_join_all(followers).await?;
    for (i, a) in aggs.iter().enumerate() {
        let s = &a.stats;
        narrator.say(format!(
            "subscriber {}: {} events, {} HTLCs: {} forwards settled ({} msat out, {} msat fees), \
             {} failed downstream, {} received, link failures {:?}",
            i + 1,
            a.events,
            s.resolved,
            s.forwards_settled,
            s.forwarded_msat,
            s.fees_earned_msat,
            s.forwards_failed,
            s.received,
            s.link_failures
        ));
    }
    let stats: Vec<HtlcStats> = aggs.iter().map(|a| a.stats.clone()).collect();
    let want = HtlcStats::expected(config.htlcs);
    for (i, s) in stats.iter().enumerate() {
        ensure!(*s == want, "subscriber {}: {s:?}, expected {want:?}", i + 1);
    }
    narrator.say("every subscriber saw every event: the totals agree");

    let (chan_id, htlc_index) = *aggs[0]
        .settled_forwards
        .first()
        .ok_or("no settled forward seen")?;
    let lookup = client
        .lookup_htlc_resolution(
            config.node.as_str(),
            LookupHtlcResolutionRequest {
                chan_id,
                htlc_index,
            },
        )
        .await?;
    ensure!(
        lookup.settled && lookup.offchain,
        "lookup of a settled forward: {lookup:?}"
    );
    narrator.say(format!(
        "LookupHtlcResolution(htlc {htlc_index}) -> settled={}, offchain={}",
        lookup.settled, lookup.offchain
    ));
    let invalid_lookup = expect_code(
        "lookup on channel 0",
        client
            .lookup_htlc_resolution(
                config.node.as_str(),
                LookupHtlcResolutionRequest {
                    chan_id: 0,
                    htlc_index: 1,
                },
            )
            .await,
        ErrorCode::InvalidArgument,
    )?;
    let unknown_lookup = expect_code(
        "lookup of an unknown htlc",
        client
            .lookup_htlc_resolution(
                config.node.as_str(),
                LookupHtlcResolutionRequest {
                    chan_id: CHANNEL_IN,
                    htlc_index: u64::MAX,
                },
            )
            .await,
        ErrorCode::NotFound,
    )?;
    for e in [&invalid_lookup, &unknown_lookup] {
        narrator.say(format!(
            "bad lookup -> {}: {}",
            e.code().as_str(),
            e.message()
        ));
    }
    Ok(ClientReport {
        htlcs: config.htlcs,
        stats,
        lookup,
        invalid_lookup,
        unknown_lookup,
    })
}

/// The whole scenario on one bus: routers `alice` and `bob` publish traffic
/// on their topics; the client side follows `config.node` (alice by
/// default) and must see only that node's events.
pub async fn run_both(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<ClientReport, BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut routers = Vec::new();
    let mut traffic = Vec::new();
    for name in ["alice", "bob"] {
        let r = Router::start(bus.clone(), name).await?;
        traffic.push(r.spawn_traffic(Duration::from_millis(20), None, stop.clone()));
        narrator.say(format!(
            "router {name} publishes its HTLC events on topic `{name}`"
        ));
        routers.push(r);
    }
    let report = run_clients(bus, config, narrator).await;
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await??;
    }
    for r in &routers {
        narrator.say(format!(
            "router {} published {} rounds",
            r.name(),
            r.rounds()
        ));
        r.shutdown().await;
    }
    report
}
