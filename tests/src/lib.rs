//! The psrpc conformance suite: every behaviour written once in [`suite`]
//! and run against each bus through a [`BusFactory`].
//!
//! A bus crate runs the whole suite with one line in a test file:
//!
//! ```ignore
//! psrpc_tests::conformance!(psrpc_tests::LocalFactory::new());
//! ```

use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc::{LocalBus, Method, ServerOptions};

pub mod claim_skip;
pub mod compression;
pub mod liveness;
pub mod measure;
pub mod middleware;
pub mod outage;
pub mod security;
pub mod servers;
pub mod stream_ends;
pub mod streams;
pub mod suite;

/// Makes bus connections for a test.
///
/// For the local bus every connection is the same bus; for a networked bus
/// every call opens a new connection, as separate processes would.
///
/// Each factory value must be its own namespace: the suite's tests run at
/// once and reuse service and method names, so a factory over a shared server
/// gives each instance its own channel prefix (a `LocalFactory` gets the same
/// from a fresh bus).
#[psrpc::async_trait]
pub trait BusFactory: Send + Sync {
    /// A short name of the bus, for messages.
    fn name(&self) -> &str;
    /// A connection to the bus under test.
    async fn connect(&self) -> DynBus;
    /// Waits, after subscribing, until a message sent by another connection
    /// is sure to be heard: it returns once that is so, never after a set
    /// time (at once where subscribe awaits readiness, as on one broker).
    async fn settle(&self) {}
    /// The options the suite's servers start from.
    fn server_options(&self) -> ServerOptions {
        ServerOptions::default()
    }
}

/// Another factory whose servers opt in to claim skip on every request:
/// the suite run through it checks that announcing instead of bidding
/// changes nothing a caller can see.
pub struct SkipClaim<F>(pub F);

#[psrpc::async_trait]
impl<F: BusFactory> BusFactory for SkipClaim<F> {
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn connect(&self) -> DynBus {
        self.0.connect().await
    }
    async fn settle(&self) {
        self.0.settle().await
    }
    fn server_options(&self) -> ServerOptions {
        self.0.server_options().skip_claim(|| true)
    }
}

/// The factory of the in-process bus: one `LocalBus` shared by every connection.
#[derive(Clone, Default)]
pub struct LocalFactory {
    bus: LocalBus,
}

impl LocalFactory {
    /// A factory around a new local bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[psrpc::async_trait]
impl BusFactory for LocalFactory {
    fn name(&self) -> &str {
        "local"
    }
    async fn connect(&self) -> DynBus {
        std::sync::Arc::new(self.bus.clone())
    }
}

/// `MyRequest` of Go psrpc's test service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MyRequest {
    /// 0: succeed; 1: psrpc error with a detail; 2: gRPC-status error.
    #[prost(int32, tag = "1")]
    pub return_error: i32,
}

impl prost::Name for MyRequest {
    const NAME: &'static str = "MyRequest";
    const PACKAGE: &'static str = "psrpc.internal.test.customservice";
}

/// `MyResponse` of Go psrpc's test service (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MyResponse {}

/// `MyUpdate` of Go psrpc's test service (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MyUpdate {}

impl prost::Name for MyUpdate {
    const NAME: &'static str = "MyUpdate";
    const PACKAGE: &'static str = "psrpc.internal.test.customservice";
}

/// A request that carries a number and a text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    /// A number.
    #[prost(int64, tag = "1")]
    pub n: i64,
    /// A text.
    #[prost(string, tag = "2")]
    pub text: String,
}

impl prost::Name for Num {
    const NAME: &'static str = "Num";
    const PACKAGE: &'static str = "psrpctest";
}

/// `MyService` methods (the service of Go psrpc's own tests).
pub mod my_service {
    use super::{Method, MyRequest, MyResponse, MyUpdate, Num};
    /// The service name on the wire.
    pub const SERVICE: &str = "MyService";
    /// Queue-routed unary.
    pub static NORMAL_RPC: Method<Num, Num> = Method::queue("NormalRPC");
    /// `NormalRPC` with the request and response types of Go's tests.
    pub static NORMAL_RPC_MY: Method<MyRequest, MyResponse> = Method::queue("NormalRPC");
    /// Affinity-routed unary.
    pub static INTENSIVE_RPC: Method<Num, Num> = Method::affinity("IntensiveRPC");
    /// Multi.
    pub static GET_STATS: Method<Num, Num> = Method::multi("GetStats");
    /// Multi with topics.
    pub static GET_REGION_STATS: Method<Num, Num> = Method::multi("GetRegionStats");
    /// Queue subscription.
    pub static PROCESS_UPDATE: Method<Num, Num> = Method::queue("ProcessUpdate");
    /// `ProcessUpdate` with the update type of Go's tests.
    pub static PROCESS_UPDATE_MY: Method<MyRequest, MyUpdate> = Method::queue("ProcessUpdate");
    /// Multi subscription with topics.
    pub static UPDATE_REGION_STATE: Method<MyRequest, MyUpdate> =
        Method::multi("UpdateRegionState");
}

/// Waits until `cond` holds, checking every 10 ms; panics with `what` if it
/// still does not after `within` (give it seconds: this is a deadline for a
/// failure, not a measurement).
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits `d`, to show that something does *not* happen by giving it time
/// to. This is the one wait in the suite that is not for a condition: use
/// it only where no later event can prove the absence (for example that no
/// second member of a bus queue group also gets a message: the bus tells
/// the others nothing), and say at the call why. Everything else waits for
/// what it asserts with [`eventually`].
pub async fn quiet_for(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A server of `MyService` on `bus` whose `NormalRPC` answers with the
/// request's number and the server's id as text.
pub async fn echo_server(
    bus: DynBus,
    id: &str,
    topic: &[String],
) -> psrpc::Result<psrpc::RpcServer> {
    use my_service::{NORMAL_RPC, SERVICE};
    let s = psrpc::RpcServer::new(bus, SERVICE, ServerOptions::default().server_id(id)).await?;
    let sid = id.to_owned();
    s.route(&NORMAL_RPC)
        .topic(topic)
        .handle(move |_c: psrpc::Context, r: Num| {
            let sid = sid.clone();
            async move { Ok(Num { n: r.n, text: sid }) }
        })
        .await?;
    Ok(s)
}

/// One `MyService.NormalRPC` call with a 2 s timeout.
pub async fn call_normal(
    c: &psrpc::RpcClient,
    topic: Vec<String>,
    n: i64,
    text: String,
) -> psrpc::Result<Num> {
    c.unary(&my_service::NORMAL_RPC, topic, Num { n, text })
        .timeout(Duration::from_secs(2))
        .await
}

/// Waits until the asynchronous condition `f` holds, checking every 20 ms;
/// panics with `what` after `within`.
pub async fn eventually_async(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a `tracing` subscriber for test output (once).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "psrpc=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Expands to one `#[tokio::test]` per behaviour of [`suite`], each run
/// against the bus the factory expression makes.
#[macro_export]
macro_rules! conformance {
    ($factory:expr) => {
        $crate::conformance!(@tests $factory;
            bus_fanout_every_subscriber,
            bus_queue_exactly_one,
            bus_closed_subscription_reads_closed,
            rpc_queue_claimed_by_one_of_two,
            rpc_queue_routing_exactly_one_handles,
            rpc_multi_three_servers_with_error,
            rpc_affinity_picks_best_and_asks_everyone,
            rpc_affinity_max_and_min_and_custom_selection,
            rpc_late_claimer_lets_go,
            rpc_negative_affinity_never_claims,
            rpc_no_server_unavailable,
            rpc_single_server_no_server_deadline,
            rpc_single_server_without_claim,
            rpc_multi_no_server_closes_empty,
            rpc_errors_code_message_details,
            rpc_timeout_and_deadline_clamp,
            rpc_context_cancel,
            rpc_metadata_round_trip,
            rpc_hooks,
            rpc_topics_isolate_and_deregister,
            rpc_registration_errors,
            rpc_malformed_request_and_result,
            rpc_expired_request_ignored,
            server_shutdown_waits_kill_does_not,
            client_close_fails_pending,
            subscription_multi_topic_fanout,
            subscription_queue_one_subscriber,
            malformed_bytes_on_every_channel,
            stream_ping_pong,
            stream_claimed_by_one_of_two,
            stream_close_causes_cross,
            stream_slow_receiver_times_out_sender,
            stream_thousand_each_way_in_order,
            stream_hijack_keeps_stream,
            stream_server_shutdown_and_kill_close_streams,
            stream_no_server_and_topics,
            stream_affinity_picks_best,
            stream_affinity_sees_open,
            stream_client_close_and_context,
            stream_metadata_and_header,
            stream_malformed_message_closes,
            stream_many_concurrent,
            stream_end_explicit_close,
            stream_end_close_with_error,
            stream_end_handler_error,
            stream_end_client_drop,
            stream_end_split_halves_drop,
            stream_end_hijacked_drop,
            stream_end_server_shutdown,
            stream_end_server_kill,
            stream_end_deregister,
            stream_end_server_dropped,
            stream_end_context,
            stream_end_malformed,
            stream_end_client_close,
            interceptors_server_order_and_recovery,
            interceptors_client_order,
            interceptors_multi_order,
            interceptors_modify_and_short_circuit,
            interceptors_on_streams,
            middleware_retry_bound,
            middleware_metrics_labels,
            middleware_trace_crosses_call,
            stream_over_laggy_bus,
            stream_over_unreliable_bus,
            compression_mixed_peers,
            compression_raw_gzip_request_answered,
            compression_bomb_dropped_everywhere,
            claim_skip_mixed_peers,
            claim_skip_response_first_and_timeout,
            observer_claim_outcomes,
            queue_rejects_affinity,
            claims_released_at_expiry,
            clock_skew_counted_and_deadline_bounded,
            stuck_subscriber_harms_only_itself,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::init_tracing();
                let factory = $factory;
                $crate::suite::$name(&factory).await;
            }
        )*
    };
}

/// The workspace README; its example runs as a doctest.
#[doc = include_str!("../../README.md")]
mod readme {}
