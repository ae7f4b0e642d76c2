//! The floor of psrpc-bench's `multi` rows on bare async-nats, without
//! psrpc-nats in between: how much of the NATS floor is the client library
//! itself.
//!
//! ```text
//! nats_floor URL [SECONDS] [CONC]
//! ```
//!
//! Four connections to the NATS server at `URL`, as psrpc-bench opens them:
//! one client and three echo peers. Each of `CONC` workers (64 by default;
//! the `seq` row is one worker) has a request subject, subscribed by every
//! peer, and a reply subject on the client connection. One operation
//! publishes a 16-byte payload on the request subject and waits for its
//! three echoes, as a `Multi` call with three servers does. Prints the
//! operations per second of `seq` and `concN`, each run for `SECONDS` (1 by
//! default), to set beside psrpc-bench's `floor ops/s` of the multi rows
//! run against the same server.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

/// Echo peers, as psrpc-bench's default three servers.
const PEERS: usize = 3;

/// Runs `conc` workers for `secs`; the operations per second.
async fn row(url: &str, conc: usize, secs: f64, tag: &str) -> Result<f64, async_nats::Error> {
    let client = async_nats::connect(url).await?;
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        peers.push(async_nats::connect(url).await?);
    }
    let mut echoes = Vec::new();
    let mut workers = Vec::new();
    for w in 0..conc {
        let req = format!("nats-floor.{tag}.{w}.req");
        let rep = format!("nats-floor.{tag}.{w}.rep");
        for p in &peers {
            let mut sub = p.subscribe(req.clone()).await?;
            let (p, rep) = (p.clone(), rep.clone());
            echoes.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if p.publish(rep.clone(), m.payload).await.is_err() {
                        break;
                    }
                }
            }));
        }
        let replies = client.subscribe(rep).await?;
        workers.push((req, replies));
    }
    // A flush only writes the SUBs out: one round trip per worker, retried
    // until its three echoes come back, proves every subscription is live
    // at the server before the clock starts.
    let payload = Bytes::from_static(b"psrpc-bench-0123");
    for (req, replies) in &mut workers {
        let live = Instant::now() + Duration::from_secs(10);
        while round(&client, req, replies, &payload, Duration::from_millis(200))
            .await
            .is_err()
        {
            if Instant::now() > live {
                return Err(format!("{req}: no echoes within 10 s").into());
            }
            // Late echoes of a failed round are read before the next.
            while tokio::time::timeout(Duration::from_millis(50), replies.next())
                .await
                .is_ok_and(|m| m.is_some())
            {}
        }
    }
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (req, mut replies) in workers {
        let (client, ops, payload) = (client.clone(), ops.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                round(
                    &client,
                    &req,
                    &mut replies,
                    &payload,
                    Duration::from_secs(5),
                )
                .await?;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(format!("worker: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    for e in echoes {
        e.abort();
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ops.load(Ordering::Relaxed) as f64 / elapsed),
    }
}

/// One operation: publishes `payload` on `req` and waits up to `wait` for
/// each of the [`PEERS`] echoes.
async fn round(
    client: &async_nats::Client,
    req: &str,
    replies: &mut async_nats::Subscriber,
    payload: &Bytes,
    wait: Duration,
) -> Result<(), String> {
    client
        .publish(req.to_owned(), payload.clone())
        .await
        .map_err(|e| format!("{req}: publish: {e}"))?;
    for got in 0..PEERS {
        match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(_)) => {}
            _ => return Err(format!("{req}: {got} of {PEERS} echoes within {wait:?}")),
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: nats_floor URL [SECONDS > 0] [CONC > 0]");
        ExitCode::from(2)
    };
    let Some(url) = args.first() else {
        return usage();
    };
    let secs = match args.get(1).map(|a| a.parse::<f64>()) {
        None => 1.0,
        Some(Ok(s)) if s > 0.0 && s.is_finite() => s,
        Some(_) => return usage(),
    };
    let conc = match args.get(2).map(|a| a.parse::<usize>()) {
        None => 64,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return usage(),
    };
    for (name, n) in [("seq".to_owned(), 1), (format!("conc{conc}"), conc)] {
        match row(url, n, secs, &name).await {
            Ok(ops) => println!("bare async-nats multi {name}: {ops:.0} ops/s"),
            Err(e) => {
                eprintln!("nats_floor: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
