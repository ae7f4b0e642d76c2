//! A stream peer that dies without closing, on the in-process bus: the peer
//! runs on a runtime of its own that is dropped (no close is ever sent).

use std::sync::Arc;

use psrpc::LocalBus;
use psrpc_tests::liveness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_learns_that_its_server_died() {
    let took = liveness::local_server_killed(Arc::new(LocalBus::new())).await;
    eprintln!("local bus: the client learnt of the dead server in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_learns_that_its_client_died() {
    let took = liveness::local_client_killed(Arc::new(LocalBus::new())).await;
    eprintln!("local bus: the server learnt of the dead client in {took:?}");
}

/// A young stream has subscribed no presence channel; an older one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_streams_subscribe_no_presence() {
    liveness::young_streams_subscribe_no_presence(Arc::new(LocalBus::new())).await;
}
