//! The server's side of the claim handshake: the table of
//! claims waiting for the caller's decision, and the check of a request's
//! times on arrival.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::Core;
use crate::bus::MessageBus;
use crate::channels::Channel;
use crate::drops::{DropReason, Truncated};
use crate::id;
use crate::info::RpcInfo;
use crate::outcome::ClaimOutcome;
use crate::stream;
use crate::wire::{self, ClaimRequest, ClaimResponse, Envelope};

/// How far a request may look off (arrived this long after its expiry, or
/// sent this long in the future) before the clocks are suspected rather
/// than the bus: no bus delivers a message this late and still works.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(1);

/// Requests whose times only a skewed clock explains: counted, and warned
/// about at most once per [`crate::drops::LOG_INTERVAL`].
#[derive(Default)]
pub(super) struct ClockCheck {
    pub(super) suspected: AtomicU64,
    pub(super) warned: crate::drops::Throttle,
}

impl ClockCheck {
    pub(super) fn suspect(&self, channel: &str, what: std::fmt::Arguments<'_>) {
        let total = self.suspected.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(since) = self.warned.due(total) else {
            return;
        };
        tracing::warn!(
            channel = %Truncated(channel),
            suspected_since_last_warning = since,
            suspected_total = total,
            "psrpc server: {what}: this server's clock or the caller's is off; \
             psrpc needs the clocks of all peers synchronised (NTP)"
        );
    }
}

/// How often expired claims and old decisions are given up while any
/// are held: what a request holds is released at most this long after its
/// expiry, whether or not anything else arrives.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a claim response that found no waiter is remembered.
pub(super) const DECIDED_TTL: Duration = Duration::from_secs(1);

/// The server's side of the claim handshake.
///
/// When every server hears a request (affinity methods), the client may pick
/// a winner before a slower server has even registered its claim. Go's server
/// then waits for a claim response that already passed, until the request
/// expires, holding the request the whole time. Here the claim-response loop
/// remembers, for a short while, the decisions nobody here waited for, and a
/// late server reads the decision instead of waiting.
///
/// Everything here is released on time: a sweeper task runs while the table
/// holds anything and gives up each waiter at its request's expiry and each
/// remembered decision after [`DECIDED_TTL`]. It scans the undecided claims
/// (normally a handful: a claim is decided within a round trip), so a claim
/// costs nothing beyond its entry while it is pending.
#[derive(Default)]
pub(super) struct ClaimTable {
    pub(super) waiters: id::IdBytesMap<ClaimWaiter>,
    pub(super) decided: id::IdBytesMap<String>,
    pub(super) order: VecDeque<(Instant, id::IdKey)>,
    /// Whether the sweeper task is running.
    pub(super) sweeping: bool,
}

/// A claim made and not yet decided: what to run if this server wins. No
/// task waits for the decision: the claim-response handler runs `then`.
pub(super) struct ClaimWaiter {
    pub(super) then: Box<dyn FnOnce() + Send>,
    /// When the request expires: the claim is given up then.
    pub(super) deadline: Instant,
    /// When the bid was made, for the interceptors' wait.
    pub(super) bid_at: Instant,
    pub(super) info: Arc<RpcInfo>,
    /// Counts as in flight for `shutdown`, which drains claims too.
    pub(super) _token: TaskTrackerToken,
}

impl ClaimTable {
    /// Gives up the claims whose requests expired (returned, to be dropped
    /// and reported outside the lock) and forgets old decisions.
    pub(super) fn sweep(&mut self, now: Instant) -> Vec<ClaimWaiter> {
        let ids: Vec<id::IdKey> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let expired = ids
            .iter()
            .filter_map(|id| self.waiters.remove(id.as_bytes()))
            .collect();
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= DECIDED_TTL)
        {
            if let Some((_, id)) = self.order.pop_front() {
                self.decided.remove(id.as_bytes());
            }
        }
        expired
    }

    /// Whether nothing is held (the sweeper may stop).
    pub(super) fn is_idle(&self) -> bool {
        self.waiters.is_empty() && self.order.is_empty()
    }

    /// Every entry held, in every structure.
    pub(super) fn entries(&self) -> usize {
        self.waiters.len() + self.decided.len() + self.order.len()
    }

    pub(super) fn insert(&mut self, request_id: &str, waiter: ClaimWaiter) {
        self.waiters.insert(request_id.into(), waiter);
    }

    pub(super) fn remember(&mut self, request_id: &str, winner: String) {
        let key = id::IdKey::from(request_id);
        self.order.push_back((Instant::now(), key.clone()));
        self.decided.insert(key, winner);
    }
}

impl Core {
    pub(super) fn lock_claims(&self) -> std::sync::MutexGuard<'_, ClaimTable> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports and drops claims given up (outside the table lock: they own
    /// the request and its handler).
    pub(super) fn timed_out(&self, given_up: Vec<ClaimWaiter>) {
        if given_up.is_empty() {
            return;
        }
        if !self.interceptors.is_empty() {
            let now = Instant::now();
            for w in &given_up {
                let wait = now.saturating_duration_since(w.bid_at);
                self.observe(|o| o.claim_settled(&w.info, ClaimOutcome::TimedOut, wait));
            }
        }
        drop(given_up);
    }

    /// Starts the sweeper if the table holds anything and none runs. It
    /// stops once the table is empty, and with the server.
    pub(super) fn ensure_sweeper(self: &Arc<Self>, table: &mut ClaimTable) {
        if table.sweeping || table.is_idle() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Not in a runtime (requests are read off a bus inside one):
            // the next claim made from a runtime starts it.
            return;
        };
        table.sweeping = true;
        let core = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(core) = core.upgrade() else {
                    return;
                };
                let (expired, idle) = {
                    let mut t = core.lock_claims();
                    let expired = t.sweep(Instant::now());
                    let idle = t.is_idle();
                    if idle {
                        t.sweeping = false;
                    }
                    (expired, idle)
                };
                core.timed_out(expired);
                if idle {
                    return;
                }
            }
        });
    }

    pub(super) fn on_claim_response(
        self: &Arc<Self>,
        channel: impl Fn() -> String,
        bytes: Bytes,
        remember: bool,
    ) {
        let bus = &*self.bus;
        let Some(payload) =
            crate::bus::receive_payload(bus, &channel, ClaimResponse::TYPE_URL, bytes)
        else {
            return;
        };
        // Read in place: every server of the method hears every claim
        // response, and most find no claim of theirs. The ids are compared
        // as bytes; one that is not UTF-8 (prost would refuse the message)
        // is counted as malformed before anything is done with it.
        let decoded: ClaimResponse;
        let (request_id, server_id) = match wire::peek_claim_response(&payload) {
            Some(ids) => ids,
            None => {
                let Some(c) = crate::bus::decode_payload(bus, &channel, payload.clone()) else {
                    return;
                };
                decoded = c;
                (decoded.request_id.as_bytes(), decoded.server_id.as_bytes())
            }
        };
        let malformed = || {
            // Counted and logged as malformed, as prost refuses it.
            let _ = crate::bus::decode_payload::<ClaimResponse>(bus, &channel, payload.clone());
        };
        let ours = server_id == self.id.as_bytes();
        if !ours && std::str::from_utf8(server_id).is_err() {
            return malformed();
        }
        let mut table = self.lock_claims();
        // A waiter's key is UTF-8: finding one checks the request id.
        match table.waiters.remove(request_id) {
            Some(w) => {
                drop(table);
                let wait = w.bid_at.elapsed();
                if ours {
                    self.observe(|o| o.claim_settled(&w.info, ClaimOutcome::Granted, wait));
                    (w.then)();
                } else {
                    self.observe(|o| o.claim_settled(&w.info, ClaimOutcome::LostToPeer, wait));
                }
            }
            None => {
                let Ok(request_id) = std::str::from_utf8(request_id) else {
                    drop(table);
                    return malformed();
                };
                if remember {
                    // `server_id` was checked above (or is ours).
                    let winner = String::from_utf8_lossy(server_id).into_owned();
                    table.remember(request_id, winner);
                    self.ensure_sweeper(&mut table);
                }
            }
        }
    }

    /// Checks a request's times on arrival (after reporting it received):
    /// `None` when it expired (dropped, counted, reported), else how long
    /// its handler may take: until the expiry, and never longer than the
    /// caller asked for (`expiry - sent_at`), whatever our clock says.
    pub(super) fn arrived(
        &self,
        info: &RpcInfo,
        channel: &str,
        id: &str,
        sent_at: i64,
        expiry: i64,
    ) -> Option<Duration> {
        self.observe(|o| o.request_received(info));
        let now = wire::now_ns();
        let tolerance = CLOCK_SKEW_TOLERANCE.as_nanos() as i64;
        if expiry <= now {
            let late = Duration::from_nanos(now.saturating_sub(expiry) as u64);
            self.observe(|o| o.request_expired(info, late));
            self.bus.drops().record(
                DropReason::Expired,
                channel,
                &format_args!(
                    "request {} arrived {late:?} after its expiry",
                    Truncated(id)
                ),
            );
            if late.as_nanos() as i64 > tolerance {
                self.clock.suspect(
                    channel,
                    format_args!("a request arrived {late:?} after its expiry"),
                );
            }
            return None;
        }
        if sent_at.saturating_sub(now) > tolerance {
            let ahead = Duration::from_nanos((sent_at - now) as u64);
            self.clock.suspect(
                channel,
                format_args!("a request was sent {ahead:?} in the future"),
            );
        }
        let mut budget = expiry - now;
        if sent_at > 0 && expiry > sent_at {
            budget = budget.min(expiry - sent_at);
        }
        Some(Duration::from_nanos(budget as u64))
    }

    /// The server's side of the claim handshake for `request_id`: claims
    /// with `affinity` on `claim_channel` and, if this server is chosen
    /// before `deadline`, runs `then` (where the request's work starts).
    /// Nothing waits meanwhile; a lost or expired claim just goes away.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim_then(
        self: &Arc<Self>,
        info: &Arc<RpcInfo>,
        request_id: String,
        claim_channel: &Arc<Channel>,
        affinity: f32,
        deadline: Instant,
        token: TaskTrackerToken,
        then: impl FnOnce() + Send + 'static,
    ) {
        // Negative (or NaN): this server does not want the request.
        if affinity.is_nan() || affinity < 0.0 {
            return;
        }
        {
            let mut table = self.lock_claims();
            if let Some(winner) = table.decided.remove(request_id.as_bytes()) {
                // Decided before we could claim: it was not us.
                drop(table);
                tracing::trace!(%request_id, %winner, "psrpc server: claim already decided");
                self.observe(|o| o.claim_settled(info, ClaimOutcome::LostToPeer, Duration::ZERO));
                return;
            }
            table.insert(
                &request_id,
                ClaimWaiter {
                    then: Box::new(then),
                    deadline,
                    bid_at: Instant::now(),
                    info: info.clone(),
                    _token: token,
                },
            );
            self.ensure_sweeper(&mut table);
        }
        let claim = ClaimRequest {
            request_id,
            server_id: self.id.clone(),
            affinity,
            handling: false,
        };
        stream::publish_detached(
            &self.bus,
            claim_channel,
            self.bus.compression().encode(&claim),
        );
    }

    /// Gives up expired claims until the future is dropped (shutdown runs it
    /// while it waits, so a claim nobody answers cannot hold it up).
    pub(super) async fn sweep_claims(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let expired = self.lock_claims().sweep(Instant::now());
            self.timed_out(expired);
        }
    }
}
