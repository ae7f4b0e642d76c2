//! The outage check both networked buses run: the bus's server goes away
//! and comes back while calls keep coming.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use psrpc::{ErrorCode, MethodInfo, RpcClient};

use crate::Num;
use crate::servers::Restart;

/// When a call started, how long it took and how it ended.
type Outcome = (Instant, Duration, Result<(), ErrorCode>);

/// Calls `method` (an echo of [`Num`]) from 16 tasks with a 1 s timeout,
/// stops `server` 300 ms in and restarts it 300 ms later, and keeps calling
/// for 3 s. Asserts that every call ended by its deadline (plus scheduling
/// slack) with success, `unavailable` or `deadline_exceeded`; that some
/// call failed during the outage; and that a call started after the restart
/// succeeded within 2 s of it, without rebuilding anything.
pub async fn calls_through_restart(
    client: Arc<RpcClient>,
    method: &MethodInfo,
    server: &mut impl Restart,
) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let halt = Arc::new(AtomicBool::new(false));
    let method = Arc::new(method.clone());
    let mut workers = Vec::new();
    for w in 0..16i64 {
        let (c, halt, method) = (client.clone(), halt.clone(), method.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes: Vec<Outcome> = Vec::new();
            let mut n = 0;
            while !halt.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .unary::<Num, Num>(
                        &method,
                        vec![],
                        Num {
                            n: w * 1_000_000 + n,
                            text: String::new(),
                        },
                    )
                    .timeout(TIMEOUT)
                    .await;
                n += 1;
                let failed = r.is_err();
                outcomes.push((t, t.elapsed(), r.map(|_| ()).map_err(|e| e.code().clone())));
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    halt.store(true, Ordering::Relaxed);
    let mut all: Vec<Outcome> = Vec::new();
    for w in workers {
        all.extend(w.await.expect("caller task"));
    }
    check_outcomes(&all, TIMEOUT, up);
}

fn check_outcomes(all: &[Outcome], timeout: Duration, up: Instant) {
    let slack = Duration::from_millis(300);
    let mut codes = std::collections::BTreeMap::new();
    for (_, took, r) in all {
        assert!(*took <= timeout + slack, "a call took {took:?}");
        if let Err(code) = r {
            assert!(
                matches!(code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded),
                "unexpected error {code:?}"
            );
        }
        *codes.entry(format!("{:?}", r.as_ref().err())).or_insert(0) += 1;
    }
    eprintln!("outcomes: {codes:?}");
    assert!(all.iter().any(|(_, _, r)| r.is_err()), "no call failed");
    let recovered = all
        .iter()
        .filter(|(t, took, r)| *t >= up && r.is_ok() && *t + *took <= up + Duration::from_secs(2))
        .count();
    assert!(recovered > 0, "no call succeeded within 2 s of the restart");
    let first = all
        .iter()
        .filter(|(t, _, r)| *t >= up && r.is_ok())
        .map(|(t, took, _)| (*t + *took).duration_since(up))
        .min();
    eprintln!("first success {first:?} after the restart");
}
