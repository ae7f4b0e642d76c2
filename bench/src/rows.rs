//! The client's operations: unary calls of every routing, multi calls,
//! stream opens and stream round trips, each row run by `conc` workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use psrpc::{RpcClient, SelectionOptions};

use crate::pb::{Msg, Req, Res};
use crate::stats::{Stats, join_workers};
use crate::{AFFINITY, CALL_TIMEOUT, ECHO, MULTI, TOPIC_UNARY, UNARY};

/// One kind of client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `Unary`: queue routing with the claim handshake.
    Unary,
    /// `TopicUnary` on `--topic`.
    TopicUnary,
    /// `Affinity`, selection ending at affinity 1.0.
    Affinity,
    /// `Affinity` with the default selection options.
    AffinityDefault,
    /// `Multi`, complete when `--expect` servers answered.
    Multi,
    /// Open an `Echo` stream and close it.
    StreamOpenClose,
}

/// What every client worker shares.
pub(crate) struct Bench {
    /// The `Bench` service client.
    pub(crate) client: RpcClient,
    /// The topic of `TopicUnary`.
    pub(crate) topic: Vec<String>,
    /// Every request's payload.
    pub(crate) payload: Bytes,
    /// How many servers answer a multi call.
    pub(crate) expect: usize,
}

impl Bench {
    /// One operation of kind `op`; its latency, or what went wrong.
    async fn op(&self, op: Op, seq: i64) -> Result<Duration, String> {
        let req = Req {
            seq,
            text: String::new(),
            payload: self.payload.clone(),
            count: 0,
        };
        let c = &self.client;
        let t0 = Instant::now();
        let res: psrpc::Result<Res> = match op {
            Op::StreamOpenClose => {
                let st = c
                    .stream(&ECHO, ())
                    .timeout(CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                st.close().await.map_err(|e| e.to_string())?;
                return Ok(t0.elapsed());
            }
            Op::Unary => c.unary(&UNARY, (), req).timeout(CALL_TIMEOUT).await,
            Op::TopicUnary => {
                c.unary(&TOPIC_UNARY, self.topic.clone(), req)
                    .timeout(CALL_TIMEOUT)
                    .await
            }
            Op::Affinity => {
                c.unary(&AFFINITY, (), req)
                    .selection(SelectionOptions {
                        maximum_affinity: 1.0,
                        ..Default::default()
                    })
                    .timeout(CALL_TIMEOUT)
                    .await
            }
            Op::AffinityDefault => c.unary(&AFFINITY, (), req).timeout(CALL_TIMEOUT).await,
            Op::Multi => {
                let mut s = c
                    .multi(&MULTI, (), req)
                    .timeout(CALL_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut got = 0;
                while got < self.expect {
                    match s.next().await {
                        Some(Ok(r)) if r.seq == seq => got += 1,
                        Some(Ok(r)) => return Err(format!("multi: seq {} for {seq}", r.seq)),
                        Some(Err(e)) => return Err(e.to_string()),
                        None => {
                            return Err(format!(
                                "multi: {got} of {} responses before the timeout",
                                self.expect
                            ));
                        }
                    }
                }
                let d = t0.elapsed();
                drop(s);
                return Ok(d);
            }
        };
        let d = t0.elapsed();
        match res {
            Ok(r) if r.seq == seq => Ok(d),
            Ok(r) => Err(format!("response seq {} for {seq}", r.seq)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Runs `conc` workers, each doing `op` one at a time until `duration` ends.
pub(crate) async fn run_op(bench: &Arc<Bench>, op: Op, conc: usize, duration: Duration) -> Stats {
    run_workers(
        bench,
        conc,
        duration,
        "row",
        move |bench, w, end| async move {
            let mut stats = Stats::default();
            let mut seq = (w as i64) << 32;
            while Instant::now() < end {
                seq += 1;
                stats.record(bench.op(op, seq).await);
            }
            stats
        },
    )
    .await
}

/// Runs `worker(bench, w, end)` for `w` in `0..conc` as tasks and joins their stats.
async fn run_workers<F, Fut>(
    bench: &Arc<Bench>,
    conc: usize,
    duration: Duration,
    what: &str,
    worker: F,
) -> Stats
where
    F: Fn(Arc<Bench>, usize, Instant) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let start = Instant::now();
    let end = start + duration;
    let tasks = (0..conc)
        .map(|w| tokio::spawn(worker(bench.clone(), w, end)))
        .collect();
    join_workers(tasks, start, what).await
}

/// How long a worker waits before reopening a lost stream or subscription
/// whose reopening failed, so that an outage shows as a dip, not a spin.
pub(crate) const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Sleeps [`REOPEN_BACKOFF`], at most until `end`.
async fn backoff(end: Instant) {
    tokio::time::sleep_until(end.min(Instant::now() + REOPEN_BACKOFF).into()).await;
}

/// `stream msg round-trip`: `conc` workers, each on its own `Echo` stream,
/// send one `Msg` and wait for its echo, one at a time. A worker whose
/// stream ends (a fault, a server restart) counts an error and opens a
/// new one, so a fault shows as a dip, not as the end of the row.
pub(crate) async fn run_stream_rt(bench: &Arc<Bench>, conc: usize, duration: Duration) -> Stats {
    run_workers(
        bench,
        conc,
        duration,
        "stream row",
        |bench, w, end| async move {
            let mut stats = Stats::default();
            let mut stream: Option<psrpc::ClientStream<Msg, Msg>> = None;
            let mut seq = (w as i64) << 32;
            while Instant::now() < end {
                let st = match &mut stream {
                    Some(st) => st,
                    None => match bench.client.stream(&ECHO, ()).timeout(CALL_TIMEOUT).await {
                        Ok(st) => stream.insert(st),
                        Err(e) => {
                            stats.record(Err(format!("open: {e}")));
                            backoff(end).await;
                            continue;
                        }
                    },
                };
                seq += 1;
                let t0 = Instant::now();
                let r = async {
                    st.send(Msg {
                        seq,
                        payload: bench.payload.clone(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    match tokio::time::timeout(CALL_TIMEOUT, st.recv()).await {
                        Ok(Ok(Some(m))) if m.seq == seq => Ok(t0.elapsed()),
                        Ok(Ok(Some(m))) => Err(format!("echo seq {} for {seq}", m.seq)),
                        Ok(Ok(None)) => Err("stream closed".to_owned()),
                        Ok(Err(e)) => Err(format!("stream closed: {e}")),
                        Err(_) => Err("no echo in time".to_owned()),
                    }
                }
                .await;
                let ok = r.is_ok();
                stats.record(r);
                if st.is_closed() {
                    if ok {
                        // Lost after this round trip: count the loss itself.
                        let why = match st.recv().await {
                            Err(e) => e.to_string(),
                            Ok(_) => "closed".to_owned(),
                        };
                        stats.record(Err(format!("stream lost: {why}")));
                    }
                    stream = None;
                }
            }
            if let Some(st) = stream {
                let _ = st.close().await;
            }
            stats
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use psrpc::bus::DynBus;
    use psrpc::{ClientOptions, LocalBus, RpcServer, ServerOptions, ServerStream};

    /// A stream row whose streams are lost (the server ends each one after
    /// three echoes) keeps running: each worker reopens its stream and the
    /// losses count as errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_row_reopens_lost_streams() {
        let bus: DynBus = Arc::new(LocalBus::new());
        let server = RpcServer::new(bus.clone(), "Bench", ServerOptions::default())
            .await
            .unwrap();
        server
            .stream_route(&ECHO)
            .handle(|mut st: ServerStream<Msg, Msg>| async move {
                for _ in 0..3 {
                    match st.recv().await? {
                        Some(m) => st.send(m).await?,
                        None => return Ok(()),
                    }
                }
                Err(psrpc::Error::new(psrpc::ErrorCode::Unavailable, "lost"))
            })
            .await
            .unwrap();
        let client = RpcClient::new(bus, "Bench", ClientOptions::default())
            .await
            .unwrap();
        let bench = Arc::new(Bench {
            client,
            topic: Vec::new(),
            payload: Bytes::new(),
            expect: 1,
        });
        let s = run_stream_rt(&bench, 2, Duration::from_secs(1)).await;
        assert!(s.errors >= 2, "each loss counted: {} errors", s.errors);
        assert!(s.n > 2 * 3, "the workers kept going: {} ops", s.n);
        server.shutdown().await;
    }
}
