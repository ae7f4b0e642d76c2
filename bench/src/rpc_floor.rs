//! The minimal RPC floor of the unary rows: what any RPC over a pub/sub bus
//! must do, and nothing more.
//!
//! One call: the caller encodes a psrpc wire `Request` envelope (the
//! `Req` inside, as `raw_request`) with the run's compression, registers a
//! oneshot under the request id, and publishes the bytes on a request
//! channel. One of the servers (each a task reading its own queue
//! subscription of that channel) decodes the envelope and the `Req`,
//! encodes the `Res` in a `Response` envelope and publishes it on the
//! caller's response channel. The caller's response handler (installed
//! with `subscribe_inline`, as the runtime installs its own, so that on
//! Redis and NATS the broker's reader calls it) decodes the envelope and
//! hands it to the waiting caller through the map of request id to
//! oneshot; the caller wakes and decodes the `Res`.
//!
//! Two bus hops, no claim handshake, no deadline, no middleware, no
//! per-request task on the server: the ratio of a row to this floor is
//! what the rest of the runtime costs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use psrpc::bus::{DynBus, Handler, HandlerSubscription};
use psrpc::protocol::wire::{self, Request, Response};
use psrpc::{CompressionOptions, MessageBus};
use tokio::sync::oneshot;

use crate::CALL_TIMEOUT;
use crate::bus_floors::{AbortOnDrop, floor_channel};
use crate::pb::{Req, Res};
use crate::stats::{Stats, join_workers};

/// Callers waiting for their response, by request id.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Response>>>>;

/// What the RPC floor's calls carry.
pub(crate) struct RpcFloor {
    /// The `Req` payload.
    pub(crate) payload: Bytes,
    /// `Request.client_id`.
    pub(crate) client_id: String,
    /// How both sides encode their envelopes.
    pub(crate) compression: CompressionOptions,
}

/// Runs `conc` callers on `client` against one server on each of `servers`
/// for `duration`. Subscriptions are set up before the clock starts.
pub(crate) async fn measure_rpc_floor(
    opts: &RpcFloor,
    conc: usize,
    duration: Duration,
    client: &DynBus,
    servers: &[DynBus],
) -> Stats {
    let tag = psrpc::protocol::id::new_id("");
    let req_ch = floor_channel(format!("psrpc-bench.rpc-floor.{tag}.req"));
    let res_ch = floor_channel(format!("psrpc-bench.rpc-floor.{tag}.res"));
    let size = psrpc::client::DEFAULT_CHANNEL_SIZE;

    let mut server_tasks = Vec::with_capacity(servers.len());
    for (i, bus) in servers.iter().enumerate() {
        let mut sub = match bus.subscribe_queue(&req_ch, size).await {
            Ok(s) => s,
            Err(e) => return Stats::failed(format!("rpc floor: server subscribe: {e}")),
        };
        let (bus, res_ch, c) = (bus.clone(), res_ch.clone(), opts.compression);
        let server_id = format!("rpc-floor-server-{i}");
        server_tasks.push(AbortOnDrop(tokio::spawn(async move {
            while let Some(bytes) = sub.recv().await {
                // A message that does not decode gets no answer: its
                // caller times out and counts the error.
                if let Some(res) = serve(bytes, &server_id, c) {
                    let _ = bus.publish(&res_ch, res).await;
                }
            }
        })));
    }

    let pending: Pending = Arc::default();
    let router: Handler = {
        let pending = pending.clone();
        Arc::new(move |bytes| {
            let Ok(res) = psrpc::codec::decode_envelope::<Response>(bytes) else {
                return;
            };
            let waiter = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&res.request_id);
            if let Some(tx) = waiter {
                let _ = tx.send(res);
            }
        })
    };
    let _responses: HandlerSubscription = match client.subscribe_inline(&res_ch, size, router).await
    {
        Ok(s) => s,
        Err(e) => return Stats::failed(format!("rpc floor: client subscribe: {e}")),
    };

    let start = Instant::now();
    let end = start + duration;
    let tasks = (0..conc)
        .map(|w| {
            let call = Call {
                client: client.clone(),
                req_ch: req_ch.clone(),
                pending: pending.clone(),
                payload: opts.payload.clone(),
                client_id: opts.client_id.clone(),
                compression: opts.compression,
            };
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut seq = (w as i64) << 32;
                while Instant::now() < end {
                    seq += 1;
                    stats.record(call.once(seq).await);
                }
                stats
            })
        })
        .collect();
    let stats = join_workers(tasks, start, "rpc floor").await;
    drop(server_tasks);
    stats
}

/// The server side of one call: the response envelope to publish, or
/// `None` when the request does not decode.
fn serve(bytes: Bytes, server_id: &str, c: CompressionOptions) -> Option<Bytes> {
    let req = psrpc::codec::decode_envelope::<Request>(bytes).ok()?;
    let msg = Req::decode(req.raw_request).ok()?;
    let res = Res {
        seq: msg.seq,
        server_id: server_id.to_owned(),
        payload: msg.payload,
    };
    let envelope = Response {
        request_id: req.request_id,
        server_id: server_id.to_owned(),
        sent_at: wire::now_ns(),
        raw_response: res.encode_to_vec().into(),
        ..Default::default()
    };
    Some(c.encode(&envelope))
}

/// What one caller needs to make calls.
struct Call {
    client: DynBus,
    req_ch: psrpc::Channel,
    pending: Pending,
    payload: Bytes,
    client_id: String,
    compression: CompressionOptions,
}

impl Call {
    /// One call with sequence number `seq`: its latency, or what went wrong.
    async fn once(&self, seq: i64) -> Result<Duration, String> {
        let t0 = Instant::now();
        let request_id = psrpc::protocol::id::new_request_id();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request_id.clone(), tx);
        let now = wire::now_ns();
        let req = Request {
            request_id: request_id.clone(),
            client_id: self.client_id.clone(),
            sent_at: now,
            expiry: now + CALL_TIMEOUT.as_nanos() as i64,
            raw_request: Req {
                seq,
                payload: self.payload.clone(),
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
            ..Default::default()
        };
        let sent = self
            .client
            .publish(&self.req_ch, self.compression.encode(&req))
            .await;
        let got = match sent {
            Ok(()) => tokio::time::timeout(CALL_TIMEOUT, rx).await,
            Err(e) => {
                self.forget(&request_id);
                return Err(format!("rpc floor publish: {e}"));
            }
        };
        let res = match got {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => return Err("rpc floor: response router gone".into()),
            Err(_) => {
                self.forget(&request_id);
                return Err(format!("rpc floor: no response within {CALL_TIMEOUT:?}"));
            }
        };
        let res = Res::decode(res.raw_response).map_err(|e| format!("rpc floor: {e}"))?;
        if res.seq == seq {
            Ok(t0.elapsed())
        } else {
            Err(format!("rpc floor: response seq {} for {seq}", res.seq))
        }
    }

    /// Removes the waiter of a call that will get no response.
    fn forget(&self, request_id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psrpc::LocalBus;

    /// The floor makes real round trips: every call gets its own response
    /// (the seq check), from any of the servers, sequentially and
    /// concurrently, plain and compressed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_round_trip() {
        let bus: DynBus = Arc::new(LocalBus::new());
        let servers = vec![bus.clone(); 3];
        for (conc, quality) in [(1, 0), (8, 0), (8, 6)] {
            let opts = RpcFloor {
                payload: crate::payload::text_payload(4096),
                client_id: "c".into(),
                compression: CompressionOptions::default().with_quality(quality),
            };
            let d = Duration::from_millis(300);
            let s = measure_rpc_floor(&opts, conc, d, &bus, &servers).await;
            assert_eq!(s.errors, 0, "{:?}", s.first_error);
            assert!(s.n > 0, "{} calls", s.n);
        }
    }

    /// A request that does not decode gets no answer (its caller times out
    /// and counts an error); a good one is answered under its request id.
    #[test]
    fn garbage_gets_no_answer() {
        let c = CompressionOptions::default();
        assert!(serve(Bytes::from_static(b"\xff\xff"), "s", c).is_none());
        let req = Request {
            request_id: "r1".into(),
            raw_request: Req {
                seq: 7,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
            ..Default::default()
        };
        let res = psrpc::codec::decode_envelope::<Response>(serve(c.encode(&req), "s", c).unwrap())
            .unwrap();
        assert_eq!(res.request_id, "r1");
        assert_eq!(Res::decode(res.raw_response).unwrap().seq, 7);
    }
}
