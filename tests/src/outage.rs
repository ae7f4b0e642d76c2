//! The outage check both networked buses run: the bus's server goes away
//! and comes back while calls keep coming.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use psrpc::{ErrorCode, Method, RpcClient};

use crate::Num;
use crate::servers::Restart;

/// When a call started, how long it took and how it ended.
type Outcome = (Instant, Duration, Result<(), ErrorCode>);

/// Calls `method` (an echo of [`Num`]) from 16 tasks with a 1 s timeout,
/// stops `server` once calls are flowing, restarts it once a call has failed,
/// and keeps calling until 20 calls started after the restart succeeded.
/// Asserts that every call ended by its deadline (plus seconds of scheduling
/// slack) with success, `unavailable` or `deadline_exceeded`; that some call
/// failed during the outage; and that calls started after the restart
/// succeeded, without rebuilding anything.
pub async fn calls_through_restart(
    client: Arc<RpcClient>,
    method: &Method<Num, Num>,
    server: &mut impl Restart,
) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let halt = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let method = Arc::new(method.clone());
    let mut workers = Vec::new();
    for w in 0..16i64 {
        let (c, halt, method, counts) =
            (client.clone(), halt.clone(), method.clone(), counts.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes: Vec<Outcome> = Vec::new();
            let mut n = 0;
            while !halt.load(Ordering::Relaxed) {
                let after_restart = counts.restarted.load(Ordering::SeqCst);
                let t = Instant::now();
                let r = c
                    .unary(
                        &*method,
                        (),
                        Num {
                            n: w * 1_000_000 + n,
                            text: String::new(),
                        },
                    )
                    .timeout(TIMEOUT)
                    .await;
                n += 1;
                let failed = r.is_err();
                if failed {
                    counts.failed.fetch_add(1, Ordering::SeqCst);
                } else {
                    counts.succeeded.fetch_add(1, Ordering::SeqCst);
                    if after_restart {
                        counts.recovered.fetch_add(1, Ordering::SeqCst);
                    }
                }
                outcomes.push((t, t.elapsed(), r.map(|_| ()).map_err(|e| e.code())));
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            outcomes
        }));
    }
    crate::eventually("calls succeed before the outage", PATIENCE, || {
        counts.succeeded.load(Ordering::SeqCst) >= 16
    })
    .await;
    server.stop();
    crate::eventually("a call fails during the outage", PATIENCE, || {
        counts.failed.load(Ordering::SeqCst) > 0
    })
    .await;
    server.restart();
    let up = Instant::now();
    counts.restarted.store(true, Ordering::SeqCst);
    crate::eventually("calls succeed after the restart", PATIENCE, || {
        counts.recovered.load(Ordering::SeqCst) >= 20
    })
    .await;
    halt.store(true, Ordering::Relaxed);
    let mut all: Vec<Outcome> = Vec::new();
    for w in workers {
        all.extend(w.await.expect("caller task"));
    }
    check_outcomes(&all, TIMEOUT, up);
}

/// What the callers of [`calls_through_restart`] saw so far.
#[derive(Default)]
struct Counts {
    succeeded: AtomicUsize,
    failed: AtomicUsize,
    restarted: AtomicBool,
    /// Successes of calls started after the restart.
    recovered: AtomicUsize,
}

fn check_outcomes(all: &[Outcome], timeout: Duration, up: Instant) {
    // Scheduling slack on a loaded machine: a bound in seconds, which still
    // tells a call that ended at its deadline from one that hung.
    let slack = Duration::from_secs(2);
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
    let recovered = all.iter().filter(|(t, _, r)| *t >= up && r.is_ok()).count();
    assert!(recovered > 0, "no call succeeded after the restart");
    let first = all
        .iter()
        .filter(|(t, _, r)| *t >= up && r.is_ok())
        .map(|(t, took, _)| (*t + *took).duration_since(up))
        .min();
    eprintln!("first success {first:?} after the restart");
}

/// The broker goes away: a call fails with a code the default retry policy
/// retries (`unavailable` for a bus that knows it lost its connection,
/// `deadline_exceeded` for one that buffers while reconnecting), and
/// [`Retry::default`](psrpc::middleware::retry::Retry) tries
/// it [`DEFAULT_MAX_ATTEMPTS`](psrpc::middleware::retry::DEFAULT_MAX_ATTEMPTS)
/// times, counted by an interceptor inside the retry; once the broker is
/// back, the same client's calls succeed again.
pub async fn default_retry_policy_retries_an_outage(
    server_bus: psrpc::bus::DynBus,
    client_bus: psrpc::bus::DynBus,
    server: &mut impl Restart,
) {
    use psrpc::interceptor::{self, ClientCall, Next, Unary};
    use psrpc::middleware::retry::{DEFAULT_MAX_ATTEMPTS, Retry};

    let srv = crate::echo_server(server_bus, "retried", &[])
        .await
        .expect("echo server");
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let opts = psrpc::ClientOptions::default()
        .timeout(Duration::from_millis(500))
        .interceptor(Retry::default())
        .interceptor(interceptor::unary_fn(
            move |call: ClientCall, next: Next<Unary>| {
                counted.fetch_add(1, Ordering::SeqCst);
                next.run(call)
            },
        ));
    let client = RpcClient::new(client_bus, crate::my_service::SERVICE, opts)
        .await
        .expect("client");
    let call = |n| {
        client.unary(
            &crate::my_service::NORMAL_RPC,
            (),
            Num {
                n,
                text: String::new(),
            },
        )
    };
    assert_eq!(call(1).await.expect("a call before the outage").n, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    server.stop();
    let mut failed = None;
    crate::eventually_async("a call fails during the outage", PATIENCE, async || {
        attempts.store(0, Ordering::SeqCst);
        match call(2).await {
            Ok(_) => false,
            Err(e) => {
                failed = Some((e, attempts.load(Ordering::SeqCst)));
                true
            }
        }
    })
    .await;
    let (e, tried) = failed.expect("a failed call");
    assert!(
        matches!(
            e.code(),
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded
        ),
        "a bus outage must be retryable: {e:?}"
    );
    assert_eq!(tried, DEFAULT_MAX_ATTEMPTS as usize, "attempts for {e}");

    server.restart();
    crate::eventually_async("calls succeed after the restart", PATIENCE, async || {
        call(3).await.is_ok()
    })
    .await;
    drop(srv);
}

/// How long the outage checks wait for the bus to notice a change.
const PATIENCE: Duration = Duration::from_secs(30);
