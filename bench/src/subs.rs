//! The subscription rows: a trigger answered by an event and a broadcast,
//! and bursts of events, on subscriptions that reopen when lost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use psrpc::{Method, RpcClient};

use crate::pb::{Event, Ignored, Req};
use crate::rows::REOPEN_BACKOFF;
use crate::stats::Stats;
use crate::{CALL_TIMEOUT, TRIGGER};

/// A subscription that reopens itself when it is lost.
pub(crate) struct Resub<T: prost::Message + prost::Name + Default + 'static> {
    client: RpcClient,
    method: &'static Method<Ignored, T>,
    topic: Vec<String>,
    sub: Option<psrpc::Subscription<T>>,
}

impl<T: prost::Message + prost::Name + Default + 'static> Resub<T> {
    /// Subscribes `method` on `topic`.
    pub(crate) async fn open(
        client: &RpcClient,
        method: &'static Method<Ignored, T>,
        topic: &[String],
    ) -> Result<Self, String> {
        let sub = client
            .subscribe(method, topic)
            .await
            .map_err(|e| format!("subscribe {}: {e}", method.name()))?;
        Ok(Resub {
            client: client.clone(),
            method,
            topic: topic.to_vec(),
            sub: Some(sub),
        })
    }

    /// The subscription, subscribing again first if it was lost.
    async fn get(&mut self) -> Result<&mut psrpc::Subscription<T>, String> {
        if self.sub.is_none() {
            let sub = self
                .client
                .subscribe(self.method, &self.topic)
                .await
                .map_err(|e| format!("resubscribe {}: {e}", self.method.name()))?;
            self.sub = Some(sub);
        }
        Ok(self.sub.as_mut().expect("just set"))
    }
}

/// Readies `sub` for the next operation: drops stale updates, and
/// subscribes again if the subscription was lost, which is an error to
/// count (the operation is skipped: its updates could be missed).
async fn ready<T: prost::Message + prost::Name + Default>(
    sub: &mut Resub<T>,
    what: &str,
) -> Result<(), String> {
    let mut lost = sub.sub.is_none();
    if let Some(s) = &mut sub.sub {
        loop {
            match s.recv().now_or_never() {
                Some(Some(_)) => {}
                Some(None) => {
                    sub.sub = None;
                    lost = true;
                    break;
                }
                None => break,
            }
        }
    }
    if !lost {
        return Ok(());
    }
    if let Err(e) = sub.get().await {
        tokio::time::sleep(REOPEN_BACKOFF).await;
        return Err(e);
    }
    Err(format!("{what} subscription lost (reopened)"))
}

/// Waits up to [`CALL_TIMEOUT`] for the next update of `sub`; a lost
/// subscription is an error, and is reopened by the next call.
async fn next_update<T: prost::Message + prost::Name + Default>(
    sub: &mut Resub<T>,
    what: &str,
) -> Result<T, String> {
    let s = match sub.get().await {
        Ok(s) => s,
        Err(e) => {
            tokio::time::sleep(REOPEN_BACKOFF).await;
            return Err(e);
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, s.recv()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => {
            sub.sub = None;
            Err(format!("{what} subscription lost (reopening)"))
        }
        Err(_) => Err(format!("no {what} within {CALL_TIMEOUT:?}")),
    }
}

/// `sub trigger->event+bcast seq`: one Trigger with count 1 and text
/// `--topic`, complete when its response, the event and the broadcast arrived.
pub(crate) async fn run_sub_trigger(
    client: &RpcClient,
    events: &mut Resub<Event>,
    bcast: &mut Resub<Event>,
    topic: &str,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let end = start + duration;
    let mut seq = 0;
    while Instant::now() < end {
        seq += 1;
        let lost = match ready(events, "event").await {
            Ok(()) => ready(bcast, "broadcast").await,
            Err(e) => Err(e),
        };
        if let Err(e) = lost {
            stats.record(Err(e));
            continue;
        }
        let t0 = Instant::now();
        let r: Result<Duration, String> = async {
            let req = Req {
                seq,
                text: topic.to_owned(),
                payload: Bytes::new(),
                count: 1,
            };
            client
                .unary(&TRIGGER, (), req)
                .timeout(CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            next_update(events, "event").await?;
            let b = next_update(bcast, "broadcast").await?;
            if b.text != topic {
                return Err(format!("broadcast text {:?}", b.text));
            }
            Ok(t0.elapsed())
        }
        .await;
        stats.record(r);
    }
    stats.elapsed = start.elapsed();
    stats
}

/// `sub burst`: Triggers with count `--burst` (no broadcast) until the
/// duration ends (at least one); every delivered event is one operation,
/// its latency measured from the moment the Trigger was sent.
pub(crate) async fn run_sub_burst(
    client: &RpcClient,
    events: &mut Resub<Event>,
    burst: usize,
    duration: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let end = start + duration;
    let mut seq = 0;
    loop {
        seq += 1;
        if let Err(e) = ready(events, "event").await {
            stats.record(Err(e));
            if Instant::now() >= end {
                break;
            }
            continue;
        }
        let t0 = Instant::now();
        let req = Req {
            seq,
            text: String::new(),
            payload: Bytes::new(),
            count: burst as i32,
        };
        let call = client
            .unary(&TRIGGER, (), req)
            .timeout(CALL_TIMEOUT + duration);
        let read = async {
            let mut s = Stats::default();
            for _ in 0..burst {
                match next_update(events, "event").await {
                    Ok(_) => s.record(Ok(t0.elapsed())),
                    Err(e) => {
                        s.record(Err(e));
                        break;
                    }
                }
            }
            s
        };
        let (res, s) = tokio::join!(call, read);
        stats.merge(s);
        if let Err(e) = res {
            stats.record(Err(format!("trigger: {e}")));
        }
        if Instant::now() >= end {
            break;
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use psrpc::bus::DynBus;
    use psrpc::{ClientOptions, LocalBus};
    use std::sync::Arc;

    use crate::args::Args;
    use crate::server::{shutdown_servers, start_server};
    use crate::{BROADCAST, EVENTS};

    /// A subscription row whose subscriptions are lost keeps running: the
    /// read that finds one closed counts an error and subscribes again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sub_row_reopens_lost_subscriptions() {
        let args = Args::parse_from(["psrpc-bench"]);
        let bus: DynBus = Arc::new(LocalBus::new());
        let server = start_server(bus.clone(), 0, &args).await.unwrap();
        let client = RpcClient::new(bus.clone(), "Bench", ClientOptions::default())
            .await
            .unwrap();
        let events_client = RpcClient::new(bus, "BenchEvents", ClientOptions::default())
            .await
            .unwrap();
        let mut events = Resub::open(&events_client, &EVENTS, &[]).await.unwrap();
        let topic = std::slice::from_ref(&args.topic);
        let mut bcast = Resub::open(&client, &BROADCAST, topic).await.unwrap();
        // Lost before the row starts.
        events.sub.as_mut().unwrap().close();
        bcast.sub.as_mut().unwrap().close();
        let d = Duration::from_millis(500);
        let s = run_sub_trigger(&client, &mut events, &mut bcast, &args.topic, d).await;
        assert!(s.errors >= 1, "the loss counted: {} errors", s.errors);
        assert!(s.n > 0, "the row kept going: {} ops", s.n);
        events.sub.as_mut().unwrap().close();
        let s = run_sub_burst(&client, &mut events, 10, d).await;
        assert!(s.errors >= 1, "the loss counted: {} errors", s.errors);
        assert!(s.n > 0, "the row kept going: {} ops", s.n);
        shutdown_servers(&[server]).await;
    }
}
