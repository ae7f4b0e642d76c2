//! Call metrics: counts, latencies and sizes per service, method and
//! outcome, on the client and the server side.
//!
//! The middleware reports to a [`MetricsObserver`] (Go's observer
//! interface, with named byte counts: `request_bytes` is always the request's
//! encoded size and `response_bytes` the response's, on both sides, so they
//! are never swapped as in Go's client). With the `metrics` cargo
//! feature (on by default), [`MetricsFacade`] reports through the
//! [`metrics`](https://docs.rs/metrics) facade crate, so any exporter
//! (Prometheus, StatsD, ...) the application installs receives them:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `psrpc_requests_total` | counter | role, service, method, outcome (`ok` or the error code; for a multi call, `error` when some server answered with one) |
//! | `psrpc_request_duration_seconds` | histogram | role, service, method |
//! | `psrpc_request_bytes`, `psrpc_response_bytes` | histogram | role, service, method |
//! | `psrpc_multi_responses_total`, `psrpc_multi_errors_total` | counter | role, service, method |
//! | `psrpc_stream_opens_total` | counter | role, service, method |
//! | `psrpc_stream_closes_total` | counter | role, service, method, reason (what ended it: `closed`, `dropped`, `peer`, `context`, `malformed`, `peer_gone`, `shutdown`, `kill`, `deregistered`, `client_closed`), outcome (`ok` for a clean close, or the error code) |
//! | `psrpc_stream_messages_total` | counter | role, service, method, direction (`send`/`recv`), outcome |
//! | `psrpc_stream_message_bytes` | histogram | role, service, method, direction |
//! | `psrpc_stream_send_duration_seconds` | histogram | role, service, method |
//! | `psrpc_server_requests_received_total` | counter | service, method |
//! | `psrpc_server_requests_expired_total` | counter | service, method |
//! | `psrpc_server_request_expired_late_seconds` | histogram | service, method |
//! | `psrpc_server_claim_wait_seconds` | histogram | service, method, outcome (`granted`, `lost_to_peer`, `timed_out`, `skipped`) |
//!
//! The last four come from the server's bus events
//! ([`ServerInterceptor::request_received`] and the like), which the
//! server-side [`Metrics`] interceptor sees like every other.
//!
//! ```
//! use psrpc::middleware::metrics::{Metrics, MetricsFacade};
//! use psrpc::{ClientOptions, ServerOptions};
//!
//! let metrics = Metrics::new(MetricsFacade::shared());
//! let client = ClientOptions::default().interceptor(metrics.clone());
//! let server = ServerOptions::default().interceptor(metrics);
//! # let _ = (client, server);
//! ```
//!
//! Topics are not labels: they are often per-entity and would make the
//! series unbounded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::info::RpcInfo;
use crate::interceptor::{
    ClientCall, ClientInterceptor, ClientSend, Handle, Multi, Next, Replies, Role, ServerCall,
    ServerInterceptor, ServerSend, StreamMessage, Unary,
};
use crate::outcome::ClaimOutcome;
use crate::outcome::CloseReason;

/// Receives the measurements of calls. Every method is called synchronously,
/// on the call's task, the bus's delivery path (the server's bus events) or
/// wherever a multi call's results are dropped: keep them quick.
pub trait MetricsObserver: Send + Sync + 'static {
    /// One unary call ended (client), or one unary request was served (server).
    fn on_unary_request(
        &self,
        role: Role,
        info: &RpcInfo,
        duration: Duration,
        error: Option<&Error>,
        request_bytes: usize,
        response_bytes: usize,
    );
    /// One multi call ended (client: every response counted; server: one
    /// request served, with one response or one error).
    #[allow(clippy::too_many_arguments)]
    fn on_multi_request(
        &self,
        role: Role,
        info: &RpcInfo,
        duration: Duration,
        responses: usize,
        errors: usize,
        request_bytes: usize,
        response_bytes: usize,
    );
    /// One stream send ended.
    fn on_stream_send(
        &self,
        role: Role,
        info: &RpcInfo,
        duration: Duration,
        error: Option<&Error>,
        bytes: usize,
    );
    /// One stream message arrived (before it is delivered).
    fn on_stream_recv(&self, role: Role, info: &RpcInfo, bytes: usize);
    /// A stream was opened (client) or accepted (server).
    fn on_stream_open(&self, role: Role, info: &RpcInfo);
    /// A stream ended, whatever ended it: once for every stream reported
    /// by [`on_stream_open`](Self::on_stream_open). `cause` is `canceled`
    /// "stream closed" for a clean close.
    fn on_stream_close(&self, role: Role, info: &RpcInfo, reason: CloseReason, cause: &Error);
    /// Server: a request (or stream open) was read off the bus.
    fn on_request_received(&self, _info: &RpcInfo) {}
    /// Server: a request arrived `late_by` after its expiry and was dropped.
    fn on_request_expired(&self, _info: &RpcInfo, _late_by: Duration) {}
    /// Server: its claim for a request settled with `outcome` after `wait`.
    fn on_claim(&self, _info: &RpcInfo, _outcome: ClaimOutcome, _wait: Duration) {}
}

/// The metrics interceptor, for every call kind on either side: the same
/// value can be installed on clients (as a [`ClientInterceptor`], role
/// `client`) and servers (as a [`ServerInterceptor`], role `server`).
#[derive(Clone)]
pub struct Metrics {
    observer: Arc<dyn MetricsObserver>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Reports the calls of the side it is installed on to `observer`.
    pub fn new(observer: Arc<dyn MetricsObserver>) -> Self {
        Metrics { observer }
    }
}

/// The stream methods of both sides: opens, sends (timed), receives and ends.
macro_rules! stream_metrics {
    ($send:ident, $role:expr) => {
        fn stream_open(&self, info: &RpcInfo) {
            self.observer.on_stream_open($role, info);
        }

        fn stream_send<'a>(
            &'a self,
            msg: StreamMessage,
            next: Next<$send>,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                let info = msg.info().clone();
                let bytes = msg.message().len();
                let start = Instant::now();
                let res = next.run(msg).await;
                let (elapsed, error) = (start.elapsed(), res.as_ref().err());
                self.observer
                    .on_stream_send($role, &info, elapsed, error, bytes);
                res
            })
        }

        fn stream_recv(&self, info: &RpcInfo, msg: &Bytes) -> Result<()> {
            self.observer.on_stream_recv($role, info, msg.len());
            Ok(())
        }

        fn stream_close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
            self.observer.on_stream_close($role, info, reason, cause);
        }
    };
}

impl ServerInterceptor for Metrics {
    fn handle<'a>(&'a self, call: ServerCall, next: Next<Handle>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let info = call.info().clone();
            let request_bytes = call.request().len();
            let start = Instant::now();
            let res = next.run(call).await;
            let response_bytes = res.as_ref().map_or(0, |r| r.len());
            if info.multi {
                let (ok, err) = if res.is_ok() { (1, 0) } else { (0, 1) };
                self.observer.on_multi_request(
                    Role::Server,
                    &info,
                    start.elapsed(),
                    ok,
                    err,
                    request_bytes,
                    response_bytes,
                );
            } else {
                self.observer.on_unary_request(
                    Role::Server,
                    &info,
                    start.elapsed(),
                    res.as_ref().err(),
                    request_bytes,
                    response_bytes,
                );
            }
            res
        })
    }

    stream_metrics!(ServerSend, Role::Server);

    fn request_received(&self, info: &RpcInfo) {
        self.observer.on_request_received(info);
    }

    fn request_expired(&self, info: &RpcInfo, late_by: Duration) {
        self.observer.on_request_expired(info, late_by);
    }

    fn claim_settled(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
        self.observer.on_claim(info, outcome, wait);
    }
}

impl ClientInterceptor for Metrics {
    fn unary<'a>(&'a self, call: ClientCall, next: Next<Unary>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let info = call.info().clone();
            let request_bytes = call.request().len();
            let start = Instant::now();
            let res = next.run(call).await;
            self.observer.on_unary_request(
                Role::Client,
                &info,
                start.elapsed(),
                res.as_ref().err(),
                request_bytes,
                res.as_ref().map_or(0, |r| r.len()),
            );
            res
        })
    }

    fn multi<'a>(&'a self, call: ClientCall, next: Next<Multi>) -> BoxFuture<'a, Result<Replies>> {
        Box::pin(async move {
            let mut counts = MultiCounts {
                m: self.clone(),
                info: call.info().clone(),
                start: Instant::now(),
                request_bytes: call.request().len(),
                responses: 0,
                errors: 0,
                response_bytes: 0,
            };
            match next.run(call).await {
                Ok(replies) => Ok(Replies::new(Counted {
                    replies,
                    counts: Some(counts),
                })),
                Err(e) => {
                    counts.errors = 1;
                    counts.report();
                    Err(e)
                }
            }
        })
    }

    stream_metrics!(ClientSend, Role::Client);
}

/// One multi call's counts, reported once when its results end (or are
/// dropped).
struct MultiCounts {
    m: Metrics,
    info: Arc<RpcInfo>,
    start: Instant,
    request_bytes: usize,
    responses: usize,
    errors: usize,
    response_bytes: usize,
}

impl MultiCounts {
    fn report(&self) {
        self.m.observer.on_multi_request(
            Role::Client,
            &self.info,
            self.start.elapsed(),
            self.responses,
            self.errors,
            self.request_bytes,
            self.response_bytes,
        );
    }
}

/// A multi call's replies, counted as they pass.
struct Counted {
    replies: Replies,
    counts: Option<MultiCounts>,
}

impl Stream for Counted {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(Pin::new(&mut self.replies).poll_next(cx));
        match (&item, self.counts.as_mut()) {
            (Some(Ok(r)), Some(c)) => {
                c.responses += 1;
                c.response_bytes += r.len();
            }
            (Some(Err(_)), Some(c)) => c.errors += 1,
            (None, _) => {
                if let Some(c) = self.counts.take() {
                    c.report();
                }
            }
            (Some(_), None) => {}
        }
        Poll::Ready(item)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = self.counts.take() {
            c.report();
        }
    }
}

#[cfg(feature = "metrics")]
pub use facade::MetricsFacade;

#[cfg(feature = "metrics")]
mod facade {
    use super::*;

    /// A [`MetricsObserver`] that reports through the `metrics` facade
    /// crate (see the [module docs](super) for names and labels).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct MetricsFacade;

    impl MetricsFacade {
        /// The observer, ready to pass to [`Metrics::new`].
        pub fn shared() -> Arc<dyn MetricsObserver> {
            Arc::new(MetricsFacade)
        }
    }

    fn labels(role: Role, info: &RpcInfo) -> [(&'static str, String); 3] {
        [
            ("role", role.as_str().to_owned()),
            ("service", info.service.clone()),
            ("method", info.method.clone()),
        ]
    }

    /// Counts one stream message and records its size.
    fn stream_message(
        role: Role,
        info: &RpcInfo,
        direction: &'static str,
        outcome: String,
        bytes: usize,
    ) {
        let [a, b, c] = labels(role, info);
        let d = ("direction", direction.to_owned());
        metrics::counter!(
            "psrpc_stream_messages_total",
            &[
                a.clone(),
                b.clone(),
                c.clone(),
                d.clone(),
                ("outcome", outcome)
            ]
        )
        .increment(1);
        metrics::histogram!("psrpc_stream_message_bytes", &[a, b, c, d]).record(bytes as f64);
    }

    fn outcome(error: Option<&Error>) -> String {
        error.map_or_else(|| "ok".to_owned(), |e| e.wire_code().to_owned())
    }

    impl MetricsObserver for MetricsFacade {
        fn on_unary_request(
            &self,
            role: Role,
            info: &RpcInfo,
            duration: Duration,
            error: Option<&Error>,
            request_bytes: usize,
            response_bytes: usize,
        ) {
            let l = labels(role, info);
            let [a, b, c] = l.clone();
            metrics::counter!(
                "psrpc_requests_total",
                &[a, b, c, ("outcome", outcome(error))]
            )
            .increment(1);
            metrics::histogram!("psrpc_request_duration_seconds", &l)
                .record(duration.as_secs_f64());
            metrics::histogram!("psrpc_request_bytes", &l).record(request_bytes as f64);
            metrics::histogram!("psrpc_response_bytes", &l).record(response_bytes as f64);
        }

        fn on_multi_request(
            &self,
            role: Role,
            info: &RpcInfo,
            duration: Duration,
            responses: usize,
            errors: usize,
            request_bytes: usize,
            response_bytes: usize,
        ) {
            let l = labels(role, info);
            let [a, b, c] = l.clone();
            let out = if errors > 0 && responses == 0 {
                "error"
            } else {
                "ok"
            };
            metrics::counter!(
                "psrpc_requests_total",
                &[a, b, c, ("outcome", out.to_owned())]
            )
            .increment(1);
            metrics::counter!("psrpc_multi_responses_total", &l).increment(responses as u64);
            metrics::counter!("psrpc_multi_errors_total", &l).increment(errors as u64);
            metrics::histogram!("psrpc_request_duration_seconds", &l)
                .record(duration.as_secs_f64());
            metrics::histogram!("psrpc_request_bytes", &l).record(request_bytes as f64);
            metrics::histogram!("psrpc_response_bytes", &l).record(response_bytes as f64);
        }

        fn on_stream_send(
            &self,
            role: Role,
            info: &RpcInfo,
            duration: Duration,
            error: Option<&Error>,
            bytes: usize,
        ) {
            stream_message(role, info, "send", outcome(error), bytes);
            metrics::histogram!("psrpc_stream_send_duration_seconds", &labels(role, info))
                .record(duration.as_secs_f64());
        }

        fn on_stream_recv(&self, role: Role, info: &RpcInfo, bytes: usize) {
            stream_message(role, info, "recv", "ok".to_owned(), bytes);
        }

        fn on_stream_open(&self, role: Role, info: &RpcInfo) {
            metrics::counter!("psrpc_stream_opens_total", &labels(role, info)).increment(1);
        }

        fn on_stream_close(&self, role: Role, info: &RpcInfo, reason: CloseReason, cause: &Error) {
            let [a, b, c] = labels(role, info);
            let outcome = if crate::stream::is_clean(cause) {
                "ok".to_owned()
            } else {
                cause.wire_code().to_owned()
            };
            let labels = [
                a,
                b,
                c,
                ("reason", reason.as_str().to_owned()),
                ("outcome", outcome),
            ];
            metrics::counter!("psrpc_stream_closes_total", &labels).increment(1);
        }

        fn on_request_received(&self, info: &RpcInfo) {
            metrics::counter!("psrpc_server_requests_received_total", &server_labels(info))
                .increment(1);
        }

        fn on_request_expired(&self, info: &RpcInfo, late_by: Duration) {
            let l = server_labels(info);
            metrics::counter!("psrpc_server_requests_expired_total", &l).increment(1);
            metrics::histogram!("psrpc_server_request_expired_late_seconds", &l)
                .record(late_by.as_secs_f64());
        }

        fn on_claim(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
            let [a, b] = server_labels(info);
            metrics::histogram!(
                "psrpc_server_claim_wait_seconds",
                &[a, b, ("outcome", outcome.as_str().to_owned())]
            )
            .record(wait.as_secs_f64());
        }
    }

    fn server_labels(info: &RpcInfo) -> [(&'static str, String); 2] {
        [
            ("service", info.service.clone()),
            ("method", info.method.clone()),
        ]
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;
    use crate::error::ErrorCode;

    /// Remembers every metric registered, with its labels.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Seen {
        fn note(&self, key: &Key) {
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            self.0
                .lock()
                .unwrap()
                .push(format!("{}{{{}}}", key.name(), labels.join(",")));
        }
    }

    impl Recorder for Seen {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.note(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.note(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.note(key);
            Histogram::noop()
        }
    }

    #[test]
    fn facade_reports_names_and_labels() {
        let seen = Seen::default();
        let info = RpcInfo {
            service: "Svc".into(),
            method: "Do".into(),
            topic: vec!["per-entity".into()],
            multi: false,
        };
        metrics::with_local_recorder(&seen, || {
            let f = MetricsFacade;
            f.on_unary_request(Role::Client, &info, Duration::from_millis(1), None, 3, 7);
            let e = Error::new(ErrorCode::NotFound, "x");
            f.on_unary_request(Role::Server, &info, Duration::ZERO, Some(&e), 3, 0);
            f.on_stream_recv(Role::Server, &info, 5);
            f.on_stream_open(Role::Client, &info);
            let clean = Error::stream_closed();
            f.on_stream_close(Role::Client, &info, CloseReason::Dropped, &clean);
            let eof = Error::stream_eof();
            f.on_stream_close(Role::Server, &info, CloseReason::Shutdown, &eof);
            f.on_request_received(&info);
            f.on_request_expired(&info, Duration::from_secs(2));
            for o in [
                ClaimOutcome::Granted,
                ClaimOutcome::LostToPeer,
                ClaimOutcome::TimedOut,
                ClaimOutcome::Skipped,
            ] {
                f.on_claim(&info, o, Duration::from_millis(3));
            }
        });
        let seen = seen.0.into_inner().unwrap();
        let base = "method=Do,role=client,service=Svc";
        for want in [
            "psrpc_requests_total{method=Do,outcome=ok,role=client,service=Svc}".to_owned(),
            format!("psrpc_request_duration_seconds{{{base}}}"),
            format!("psrpc_request_bytes{{{base}}}"),
            format!("psrpc_response_bytes{{{base}}}"),
            "psrpc_requests_total{method=Do,outcome=not_found,role=server,service=Svc}".to_owned(),
            "psrpc_stream_messages_total{direction=recv,method=Do,outcome=ok,role=server,service=Svc}"
                .to_owned(),
            "psrpc_stream_message_bytes{direction=recv,method=Do,role=server,service=Svc}"
                .to_owned(),
            format!("psrpc_stream_opens_total{{{base}}}"),
            "psrpc_stream_closes_total{method=Do,outcome=ok,reason=dropped,role=client,service=Svc}"
                .to_owned(),
            "psrpc_stream_closes_total{method=Do,outcome=unavailable,reason=shutdown,role=server,service=Svc}"
                .to_owned(),
            "psrpc_server_requests_received_total{method=Do,service=Svc}".to_owned(),
            "psrpc_server_requests_expired_total{method=Do,service=Svc}".to_owned(),
            "psrpc_server_request_expired_late_seconds{method=Do,service=Svc}".to_owned(),
            "psrpc_server_claim_wait_seconds{method=Do,outcome=granted,service=Svc}".to_owned(),
            "psrpc_server_claim_wait_seconds{method=Do,outcome=lost_to_peer,service=Svc}"
                .to_owned(),
            "psrpc_server_claim_wait_seconds{method=Do,outcome=timed_out,service=Svc}".to_owned(),
            "psrpc_server_claim_wait_seconds{method=Do,outcome=skipped,service=Svc}".to_owned(),
        ] {
            assert!(seen.contains(&want), "{want} not in {seen:#?}");
        }
        assert!(
            seen.iter().all(|m| !m.contains("per-entity")),
            "topics are not labels"
        );
    }
}
