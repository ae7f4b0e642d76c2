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
    for p in &peers {
        p.flush().await?;
    }
    client.flush().await?;
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (req, mut replies) in workers {
        let (client, ops) = (client.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from_static(b"psrpc-bench-0123");
            while Instant::now() < end {
                if client.publish(req.clone(), payload.clone()).await.is_err() {
                    return;
                }
                for _ in 0..PEERS {
                    let r = tokio::time::timeout(Duration::from_secs(5), replies.next()).await;
                    if !matches!(r, Ok(Some(_))) {
                        return;
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    for e in echoes {
        e.abort();
    }
    Ok(ops.load(Ordering::Relaxed) as f64 / elapsed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        eprintln!("usage: nats_floor URL [SECONDS] [CONC]");
        return ExitCode::from(2);
    };
    let secs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let conc = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
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
