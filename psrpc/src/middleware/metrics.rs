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
//! | `psrpc_requests_total` | counter | role, service, method, outcome (`ok` or the error code) |
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
//! The last four come from the server's [`RequestObserver`] events, which
//! [`ServerOptions::metrics`] installs along with the interceptors.
//!
//! Topics are not labels: they are often per-entity and would make the
//! series unbounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::client::{CallOptions, ClientOptions};
use crate::error::{Error, Result};
use crate::info::{BoxMessage, Context, DynMessage, RpcInfo};
use crate::interceptor::{
    ClientInterceptor, ClientNext, MultiCallInterceptor, MultiInterceptor, MultiSendNext, Role,
    ServerInterceptor, ServerNext, StreamInterceptor, StreamSendNext,
};
use crate::server::{ClaimOutcome, RequestObserver, ServerOptions};
use crate::stream::CloseReason;

/// Receives the measurements of calls (all calls are synchronous, made on
/// the call's task: keep them quick).
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

/// Forwards a server's request events to a [`MetricsObserver`].
struct ObserverEvents(Arc<dyn MetricsObserver>);

impl RequestObserver for ObserverEvents {
    fn on_request_received(&self, info: &RpcInfo) {
        self.0.on_request_received(info);
    }
    fn on_request_expired(&self, info: &RpcInfo, late_by: Duration) {
        self.0.on_request_expired(info, late_by);
    }
    fn on_claim(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
        self.0.on_claim(info, outcome, wait);
    }
}

/// The metrics interceptor of one side, for every call kind.
#[derive(Clone)]
pub struct Metrics {
    role: Role,
    observer: Arc<dyn MetricsObserver>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("role", &self.role).finish()
    }
}

impl Metrics {
    /// Reports the calls of `role` to `observer`.
    pub fn new(role: Role, observer: Arc<dyn MetricsObserver>) -> Self {
        Metrics { role, observer }
    }
}

impl ServerInterceptor for Metrics {
    fn intercept<'a>(
        &'a self,
        ctx: Context,
        req: BoxMessage,
        next: ServerNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        Box::pin(async move {
            let info = ctx.info().cloned().unwrap_or_default();
            let request_bytes = req.encoded_size();
            let start = Instant::now();
            let res = next.run(ctx, req).await;
            let response_bytes = res.as_ref().map_or(0, |r| r.encoded_size());
            if info.multi {
                let (ok, err) = if res.is_ok() { (1, 0) } else { (0, 1) };
                self.observer.on_multi_request(
                    self.role,
                    &info,
                    start.elapsed(),
                    ok,
                    err,
                    request_bytes,
                    response_bytes,
                );
            } else {
                self.observer.on_unary_request(
                    self.role,
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
}

impl ClientInterceptor for Metrics {
    fn intercept<'a>(
        &'a self,
        req: BoxMessage,
        opts: CallOptions,
        next: ClientNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        Box::pin(async move {
            let info = next.info().clone();
            let request_bytes = req.encoded_size();
            let start = Instant::now();
            let res = next.run(req, opts).await;
            self.observer.on_unary_request(
                self.role,
                &info,
                start.elapsed(),
                res.as_ref().err(),
                request_bytes,
                res.as_ref().map_or(0, |r| r.encoded_size()),
            );
            res
        })
    }
}

/// One multi call's counts.
struct MultiCall {
    m: Metrics,
    info: RpcInfo,
    start: Instant,
    request_bytes: usize,
    responses: usize,
    errors: usize,
    response_bytes: usize,
}

impl MultiInterceptor for Metrics {
    fn begin(&self, info: &RpcInfo) -> Box<dyn MultiCallInterceptor> {
        Box::new(MultiCall {
            m: self.clone(),
            info: info.clone(),
            start: Instant::now(),
            request_bytes: 0,
            responses: 0,
            errors: 0,
            response_bytes: 0,
        })
    }
}

impl MultiCallInterceptor for MultiCall {
    fn send<'a>(
        &'a mut self,
        req: BoxMessage,
        opts: CallOptions,
        next: MultiSendNext<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        self.request_bytes = req.encoded_size();
        self.start = Instant::now();
        next.run(req, opts)
    }

    fn recv(&mut self, item: Result<BoxMessage>, next: &mut dyn FnMut(Result<BoxMessage>)) {
        match &item {
            Ok(r) => {
                self.responses += 1;
                self.response_bytes += r.encoded_size();
            }
            Err(_) => self.errors += 1,
        }
        next(item)
    }

    fn close(&mut self) {
        self.m.observer.on_multi_request(
            self.m.role,
            &self.info,
            self.start.elapsed(),
            self.responses,
            self.errors,
            self.request_bytes,
            self.response_bytes,
        );
    }
}

impl StreamInterceptor for Metrics {
    fn open(&self, info: &RpcInfo) {
        self.observer.on_stream_open(self.role, info);
    }

    fn send<'a>(
        &'a self,
        info: &'a RpcInfo,
        msg: BoxMessage,
        timeout: Option<Duration>,
        next: StreamSendNext,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bytes = msg.encoded_size();
            let start = Instant::now();
            let res = next.run(msg, timeout).await;
            self.observer.on_stream_send(
                self.role,
                info,
                start.elapsed(),
                res.as_ref().err(),
                bytes,
            );
            res
        })
    }

    fn recv(&self, info: &RpcInfo, msg: &dyn DynMessage) -> Result<()> {
        self.observer
            .on_stream_recv(self.role, info, msg.encoded_size());
        Ok(())
    }

    fn close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
        self.observer
            .on_stream_close(self.role, info, reason, cause);
    }
}

impl ClientOptions {
    /// Reports every unary call, multi call and stream to `observer`.
    pub fn metrics(self, observer: Arc<dyn MetricsObserver>) -> Self {
        let m = Metrics::new(Role::Client, observer);
        self.interceptor(m.clone())
            .multi_interceptor(m.clone())
            .stream_interceptor(m)
    }
}

impl ServerOptions {
    /// Reports every request served and every stream to `observer`, and
    /// every request received, expired and claimed (as a
    /// [`RequestObserver`]).
    pub fn metrics(self, observer: Arc<dyn MetricsObserver>) -> Self {
        let events: Arc<dyn RequestObserver> = Arc::new(ObserverEvents(observer.clone()));
        let m = Metrics::new(Role::Server, observer);
        self.interceptor(m.clone())
            .stream_interceptor(m)
            .observer(events)
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
        /// The observer, ready to pass to `ClientOptions::metrics` or
        /// `ServerOptions::metrics`.
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
