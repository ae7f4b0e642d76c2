//! Retries of client calls and stream sends.
//!
//! A call that fails with a retryable error (by default `deadline_exceeded`
//! and `unavailable`: the server was busy, gone or slow) is sent again, up to
//! [`RetryOptions::max_attempts`] attempts in all. With
//! [`RetryOptions::timeout`] set, attempt *n* gets the timeout
//! `timeout + (n - 1) * backoff`; with it zero (the default), every attempt
//! has the call's own timeout. A custom [`RetryOptions::retry_parameters`]
//! decides instead. Between attempts the
//! caller's context is checked: a canceled call stops with `canceled`.
//!
//! Unlike the Go library, `max_attempts = 0` does not mean "forever": it
//! means the default bound ([`DEFAULT_MAX_ATTEMPTS`]). Unlimited retries need
//! an explicit `u32::MAX`.
//!
//! Retrying a call can run it twice on the server (the first attempt may
//! have been served and only its answer lost): retry only what is safe to
//! repeat.
//!
//! ```
//! use std::time::Duration;
//!
//! use psrpc::ClientOptions;
//! use psrpc::middleware::retry::{Retry, RetryOptions};
//!
//! let opts = ClientOptions::default().interceptor(Retry::new(RetryOptions {
//!     backoff: Duration::from_millis(200),
//!     ..RetryOptions::default()
//! }));
//! # let _ = opts;
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::{Error, ErrorCode, Result};
use crate::interceptor::{ClientCall, ClientInterceptor, ClientSend, Next, StreamMessage, Unary};

/// Attempts in all when `max_attempts` is 0.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What the next attempt looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryStep {
    /// The next attempt's timeout (zero: the call's own).
    pub timeout: Duration,
    /// How long to wait before it.
    pub wait: Duration,
}

/// Decides, after attempt `attempt` (from 1) failed with the error, whether
/// to try again and how; `None` stops.
pub type RetryParametersFn = Arc<dyn Fn(&Error, u32) -> Option<RetryStep> + Send + Sync>;

/// Whether an error is worth another attempt.
pub type RecoverableFn = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// How to retry (Go `RetryOptions`).
#[derive(Clone)]
pub struct RetryOptions {
    /// Attempts in all, the first included; 0 means [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// The first attempt's timeout; zero leaves the call's own.
    pub timeout: Duration,
    /// Added to the timeout at every retry.
    pub backoff: Duration,
    /// Which errors are retried ([`is_retryable`] by default).
    pub is_recoverable: RecoverableFn,
    /// Replaces the default schedule (and `max_attempts`, `backoff`,
    /// `is_recoverable`, unless it uses them) when set.
    pub retry_parameters: Option<RetryParametersFn>,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: Duration::ZERO,
            backoff: Duration::ZERO,
            is_recoverable: Arc::new(is_retryable),
            retry_parameters: None,
        }
    }
}

impl std::fmt::Debug for RetryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryOptions")
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("retry_parameters", &self.retry_parameters.is_some())
            .finish()
    }
}

/// The default retry predicate: `deadline_exceeded` and `unavailable` (the
/// codes gRPC's DeadlineExceeded and Unavailable map to) are retried;
/// every other code is an answer, not a transport failure. In particular a
/// message over the bus's size limit (`resource_exhausted`) or a name over
/// its limits (`invalid_argument`) is not retried: it would fail again.
pub fn is_retryable(e: &Error) -> bool {
    matches!(
        e.code(),
        ErrorCode::DeadlineExceeded | ErrorCode::Unavailable
    )
}

impl RetryOptions {
    fn attempts(&self) -> u32 {
        if self.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            self.max_attempts
        }
    }

    /// What follows attempt `attempt` that ran with `timeout` and failed with `e`.
    fn next_step(&self, e: &Error, attempt: u32, timeout: Duration) -> Option<RetryStep> {
        if let Some(f) = &self.retry_parameters {
            return f(e, attempt);
        }
        if !(self.is_recoverable)(e) || attempt >= self.attempts() {
            return None;
        }
        // Zero stays zero: the call's own timeout, which does not grow.
        let timeout = if timeout.is_zero() {
            Duration::ZERO
        } else {
            timeout + self.backoff
        };
        Some(RetryStep {
            timeout,
            wait: Duration::ZERO,
        })
    }
}

/// The retry interceptor of unary calls and stream sends: install it on a
/// client with `interceptor(Retry::new(..))`, or on one call with the call
/// builder's `.interceptor(..)`.
#[derive(Debug, Clone, Default)]
pub struct Retry(pub RetryOptions);

impl Retry {
    /// Retries as `opts` says.
    pub fn new(opts: RetryOptions) -> Self {
        Retry(opts)
    }
}

impl ClientInterceptor for Retry {
    fn unary<'a>(&'a self, call: ClientCall, next: Next<Unary>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let mut timeout = self.0.timeout;
            let mut attempt = 1;
            loop {
                let mut c = call.clone();
                if !timeout.is_zero() {
                    c.options_mut().timeout = Some(timeout);
                }
                let e = match next.clone().run(c).await {
                    Ok(r) => return Ok(r),
                    Err(e) => e,
                };
                let Some(step) = self.0.next_step(&e, attempt, timeout) else {
                    return Err(e);
                };
                tracing::debug!(attempt, error = %e, "psrpc retry: trying again");
                if step.wait.is_zero() {
                    if call.options().context.is_canceled() {
                        return Err(Error::request_canceled());
                    }
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(step.wait) => {}
                        _ = call.options().context.canceled() => return Err(Error::request_canceled()),
                    }
                }
                timeout = step.timeout;
                attempt += 1;
            }
        })
    }

    fn stream_send<'a>(
        &'a self,
        msg: StreamMessage,
        next: Next<ClientSend>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // `None`: the stream's own timeout, which does not grow.
            let mut t = if self.0.timeout.is_zero() {
                msg.timeout()
            } else {
                Some(self.0.timeout)
            };
            let mut attempt = 1;
            loop {
                let mut m = msg.clone();
                m.set_timeout(t);
                let e = match next.clone().run(m).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                // Only an unacknowledged send is worth repeating; any other
                // error is the cause of a closed stream, which stays closed.
                if e != Error::request_timed_out() {
                    return Err(e);
                }
                let Some(step) = self.0.next_step(&e, attempt, t.unwrap_or_default()) else {
                    return Err(e);
                };
                if !step.wait.is_zero() {
                    tokio::time::sleep(step.wait).await;
                }
                t = t.map(|_| step.timeout);
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::call::CallOptions;
    use crate::info::RpcInfo;
    use crate::interceptor::{Terminal, to_chain};

    /// Runs the retry interceptor over a terminal that records the timeout
    /// of every attempt and fails with the scripted errors.
    async fn run(opts: RetryOptions, script: Vec<Option<Error>>) -> (Vec<Duration>, Result<Bytes>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let terminal: Terminal<Unary> = {
            let seen = seen.clone();
            Arc::new(move |call: ClientCall| {
                seen.lock()
                    .unwrap()
                    .push(call.options().timeout.unwrap_or_default());
                let next = script.lock().unwrap().next().flatten();
                Box::pin(async move {
                    match next {
                        Some(e) => Err(e),
                        None => Ok(call.request().clone()),
                    }
                })
            })
        };
        let chain = to_chain::<dyn ClientInterceptor>(&[Arc::new(Retry(opts))]);
        let call = ClientCall::new(
            Arc::new(RpcInfo::default()),
            Bytes::from_static(b"request"),
            CallOptions::default(),
        );
        let res = Next::<Unary>::new(chain, terminal).run(call).await;
        let seen = seen.lock().unwrap().clone();
        (seen, res)
    }

    fn opts(recoverable: bool) -> RetryOptions {
        RetryOptions {
            max_attempts: 3,
            timeout: Duration::from_millis(100),
            backoff: Duration::from_millis(200),
            is_recoverable: Arc::new(move |_| recoverable),
            retry_parameters: None,
        }
    }

    fn err() -> Option<Error> {
        Some(Error::new(ErrorCode::Unavailable, "boom"))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test]
    async fn success_takes_one_attempt() {
        let (seen, res) = run(opts(true), vec![None]).await;
        assert!(res.is_ok());
        assert_eq!(seen, vec![MS(100)]);
    }

    #[tokio::test]
    async fn retryable_errors_back_off_until_the_bound() {
        let (seen, res) = run(opts(true), vec![err(), err(), err(), None]).await;
        assert_eq!(res.unwrap_err().message(), "boom");
        assert_eq!(seen, vec![MS(100), MS(300), MS(500)]);
    }

    #[tokio::test]
    async fn without_a_timeout_every_attempt_has_the_calls_own() {
        let mut o = opts(true);
        o.timeout = Duration::ZERO;
        let (seen, res) = run(o, vec![err(), err(), err(), None]).await;
        assert!(res.is_err());
        assert_eq!(seen, vec![Duration::ZERO; 3], "none set, none grown");
    }

    #[tokio::test]
    async fn unretryable_error_stops_at_once() {
        let (seen, res) = run(opts(false), vec![err(), None]).await;
        assert!(res.is_err());
        assert_eq!(seen, vec![MS(100)]);
    }

    #[tokio::test]
    async fn zero_attempts_is_bounded() {
        let mut o = opts(true);
        o.max_attempts = 0;
        let (seen, res) = run(o, (0..10).map(|_| err()).collect()).await;
        assert!(res.is_err());
        assert_eq!(seen.len(), DEFAULT_MAX_ATTEMPTS as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn custom_parameters_replace_the_schedule() {
        let mut o = opts(true);
        o.retry_parameters = Some(Arc::new(|_, attempt| {
            (attempt < 3).then_some(RetryStep {
                timeout: MS(100),
                wait: MS(500),
            })
        }));
        let started = tokio::time::Instant::now();
        let (seen, res) = run(o, vec![err(), err(), err(), None]).await;
        assert!(res.is_err());
        assert_eq!(seen, vec![MS(100), MS(100), MS(100)]);
        // Paused time: exactly two waits of 500 ms.
        assert_eq!(started.elapsed(), MS(1000));
    }

    /// Stream sends: an unacknowledged send is retried with a growing
    /// timeout up to the bound; a closed stream's cause is returned at once.
    #[tokio::test]
    async fn stream_sends_retry_only_timeouts() {
        async fn run_stream(script: Vec<Option<Error>>) -> (Vec<Option<Duration>>, Result<()>) {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(script.into_iter()));
            let terminal: Terminal<ClientSend> = {
                let seen = seen.clone();
                Arc::new(move |msg: StreamMessage| {
                    seen.lock().unwrap().push(msg.timeout());
                    let next = script.lock().unwrap().next().flatten();
                    Box::pin(async move { next.map_or(Ok(()), Err) })
                })
            };
            let chain = to_chain::<dyn ClientInterceptor>(&[Arc::new(Retry(opts(true)))]);
            let msg = StreamMessage::new(Arc::new(RpcInfo::default()), Bytes::new(), None);
            let res = Next::<ClientSend>::new(chain, terminal).run(msg).await;
            let seen = seen.lock().unwrap().clone();
            (seen, res)
        }
        let timeout = || Some(Error::request_timed_out());
        let (seen, res) = run_stream(vec![timeout(), timeout(), None]).await;
        assert!(res.is_ok());
        assert_eq!(seen, vec![Some(MS(100)), Some(MS(300)), Some(MS(500))]);
        let (seen, res) = run_stream(vec![timeout(), timeout(), timeout(), None]).await;
        assert_eq!(res.unwrap_err().code(), ErrorCode::DeadlineExceeded);
        assert_eq!(seen.len(), 3, "bounded");
        let (seen, res) = run_stream(vec![Some(Error::stream_eof()), None]).await;
        assert_eq!(res.unwrap_err().message(), "EOF");
        assert_eq!(seen.len(), 1, "a closed stream is not retried");
    }

    #[test]
    fn default_predicate_matches_go() {
        for (code, retry) in [
            (ErrorCode::DeadlineExceeded, true),
            (ErrorCode::Unavailable, true),
            (ErrorCode::Internal, false),
            (ErrorCode::Unknown, false),
            (ErrorCode::ResourceExhausted, false),
            (ErrorCode::InvalidArgument, false),
        ] {
            assert_eq!(is_retryable(&Error::new(code, "x")), retry, "{code:?}");
        }
        for (grpc, retry) in [
            (crate::GrpcCode::DeadlineExceeded, true),
            (crate::GrpcCode::Unavailable, true),
            (crate::GrpcCode::Internal, false),
            (crate::GrpcCode::Unknown, false),
        ] {
            let e = Error::from_grpc_status(grpc, "x", Vec::new());
            assert_eq!(is_retryable(&e), retry, "{grpc:?}");
        }
    }
}
