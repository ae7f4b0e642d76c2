//! Go psrpc's `TestGeneratedService` (steps G1–G8) through
//! the code psrpc-build generates from Go's `my_service.proto`, on the local bus.
//!
//! What differs from Go, and why:
//! - G7 asserts the gRPC view of the error through `Error::grpc_code()`: the
//!   runtime maps codes to gRPC codes and carries the details itself; there
//!   is no separate gRPC status object to convert to.
//! - G8: a Go handler returns a *gRPC status* error and the server turns it
//!   into a psrpc error. Rust handlers return `psrpc::Error`; the equivalent
//!   is `Error::from_grpc_status`, and the client must see the same code,
//!   message and detail as in Go.
//! - G4 waits for the count instead of sleeping; every wait here has a
//!   generous deadline (Go's one second is too tight for a loaded machine).
//! - Go sleeps after topic registration and subscription; here registration
//!   and subscription return once they are in effect, so the test does not
//!   sleep (a sleep would hide a broken promise).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use psrpc::{
    ClientOptions, Context, Error, ErrorCode, GrpcCode, LocalBus, SelectionOptions, ServerStream,
};
use psrpc_codegen_tests::proto::psrpc::internal::test::customservice::*;

/// Counts calls per method name, as the Go test service does.
#[derive(Default)]
struct MyService {
    counts: Mutex<HashMap<&'static str, usize>>,
}

impl MyService {
    fn count(&self, method: &'static str) {
        *self.counts.lock().unwrap().entry(method).or_default() += 1;
    }

    fn get(&self, method: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

#[psrpc::async_trait]
impl MyServiceServerImpl for MyService {
    async fn normal_rpc(&self, _ctx: Context, req: MyRequest) -> psrpc::Result<MyResponse> {
        self.count("NormalRPC");
        match req.return_error {
            0 => Ok(MyResponse {}),
            1 => {
                Err(Error::new(ErrorCode::FailedPrecondition, "requested error").with_detail(&req))
            }
            _ => Err(Error::from_grpc_status(
                GrpcCode::FailedPrecondition,
                "requested error",
                vec![psrpc::protocol::wire::pack_any(&req)],
            )),
        }
    }

    async fn intensive_rpc(&self, _ctx: Context, _req: MyRequest) -> psrpc::Result<MyResponse> {
        self.count("IntensiveRPC");
        Ok(MyResponse {})
    }

    fn intensive_rpc_affinity(&self, _req: &MyRequest) -> f32 {
        self.count("IntensiveRPCAffinity");
        // Uniform in [0, 1), like Go's rand.Float32; only needs to be valid.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        (nanos % 1000) as f32 / 1000.0
    }

    async fn get_stats(&self, _ctx: Context, _req: MyRequest) -> psrpc::Result<MyResponse> {
        self.count("GetStats");
        Ok(MyResponse {})
    }

    async fn exchange_updates(
        &self,
        mut stream: ServerStream<MyServerMessage, MyClientMessage>,
    ) -> psrpc::Result<()> {
        while stream.recv().await?.is_some() {
            self.count("ExchangeUpdates");
        }
        Ok(())
    }

    async fn get_region_stats(&self, _ctx: Context, _req: MyRequest) -> psrpc::Result<MyResponse> {
        self.count("GetRegionStats");
        Ok(MyResponse {})
    }
}

/// The deadline of every wait: it bounds how long a failing test takes.
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, d: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {d:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_service() {
    let bus = LocalBus::new();
    let (a, b) = (
        Arc::new(MyService::default()),
        Arc::new(MyService::default()),
    );
    let s_a = MyServiceServer::from_arc(a.clone(), bus.clone(), Default::default())
        .await
        .unwrap();
    let s_b = MyServiceServer::from_arc(b.clone(), bus.clone(), Default::default())
        .await
        .unwrap();

    // Counts what Go's request and response hooks would see.
    let counter = psrpc::testing::CallCounter::new();
    let options = ClientOptions::default().interceptor(counter.clone());
    let c_a = MyServiceClient::with_options(bus.clone(), options)
        .await
        .unwrap();
    let c_b = MyServiceClient::new(bus.clone()).await.unwrap();
    let req = MyRequest::default();
    let sum = |m: &str| a.get(m) + b.get(m);

    // G1: a queue call is handled once, and the counter sees one request and one response.
    c_a.normal_rpc(req).await.unwrap();
    assert_eq!(sum("NormalRPC"), 1);
    assert_eq!((counter.requests(), counter.responses()), (1, 1));

    // G2: an affinity call asks every server for its affinity, one handles it.
    c_b.intensive_rpc(req)
        .selection(SelectionOptions {
            affinity_timeout: Duration::from_millis(250),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sum("IntensiveRPC"), 1);
    assert_eq!(a.get("IntensiveRPCAffinity"), 1);
    assert_eq!(b.get("IntensiveRPCAffinity"), 1);

    // G3: a multi call gets one response per server; one response counted per item.
    let mut each = c_a.get_stats(req).await.unwrap();
    for _ in 0..2 {
        let item = within("GetStats item", DEADLINE, each.next()).await;
        item.expect("an item").expect("a response, not an error");
    }
    drop(each);
    assert_eq!(a.get("GetStats"), 1);
    assert_eq!(b.get("GetStats"), 1);
    assert_eq!((counter.requests(), counter.responses()), (2, 3));

    // G4: a stream: two sends (each acknowledged), then a close; the one
    // server that accepted it counts both messages.
    let stream = c_a.exchange_updates().await.unwrap();
    stream.send(MyClientMessage {}).await.unwrap();
    stream.send(MyClientMessage {}).await.unwrap();
    stream.close().await.unwrap();
    within("ExchangeUpdates count", DEADLINE, async {
        while a.get("ExchangeUpdates") != 2 && b.get("ExchangeUpdates") != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(sum("ExchangeUpdates"), 2, "one server got both messages");

    // G5: topics isolate servers; deregistration works.
    s_a.register_get_region_stats_topic("regionA")
        .await
        .unwrap();
    s_a.register_get_region_stats_topic("regionB")
        .await
        .unwrap();
    s_a.deregister_get_region_stats_topic("regionB");
    s_b.register_get_region_stats_topic("regionB")
        .await
        .unwrap();
    let mut each = c_b.get_region_stats("regionB", req).await.unwrap();
    let first = within("GetRegionStats item", DEADLINE, each.next()).await;
    first.expect("an item").expect("a response, not an error");
    drop(each);
    assert_eq!(a.get("GetRegionStats"), 0);
    assert_eq!(b.get("GetRegionStats"), 1);

    // G6: a multi subscription fans out to every subscriber of the topic.
    let mut sub_a = c_a.subscribe_update_region_state("regionA").await.unwrap();
    let mut sub_b = c_b.subscribe_update_region_state("regionA").await.unwrap();
    s_b.publish_update_region_state("regionA", &MyUpdate {})
        .await
        .unwrap();
    within("subscriber A", DEADLINE, sub_a.next())
        .await
        .expect("an update for A");
    within("subscriber B", DEADLINE, sub_b.next())
        .await
        .expect("an update for B");
    sub_a.close();
    sub_b.close();

    // G7: a psrpc error travels with its code, message and detail.
    let req1 = MyRequest { return_error: 1 };
    let e = c_a.normal_rpc(req1).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    assert_eq!(e.message(), "requested error");
    assert_eq!(e.details().len(), 1);
    assert_eq!(e.detail::<MyRequest>(), Some(req1));
    assert_eq!(e.grpc_code(), GrpcCode::FailedPrecondition);

    // G8: an error built from a gRPC status reads back as that status.
    let req2 = MyRequest { return_error: 2 };
    let e = c_a.normal_rpc(req2).await.unwrap_err();
    assert_eq!(e.grpc_code(), GrpcCode::FailedPrecondition);
    assert_eq!(e.message(), "requested error");
    assert_eq!(e.details().len(), 1);
    assert_eq!(e.detail::<MyRequest>(), Some(req2));

    // Cleanup: shutdown returns.
    within("shutdown A", DEADLINE, s_a.shutdown()).await;
    within("shutdown B", DEADLINE, s_b.shutdown()).await;
}
