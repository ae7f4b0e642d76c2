//! The psrpc conformance suite over Redis: one shared `redis-server`, a new
//! `RedisBus` per connection (as separate processes would have).
//!
//! The suite's tests run concurrently and several use the same service and
//! method names; as the local bus (a fresh `LocalBus` per test), each test
//! gets its own namespace, here a channel prefix per factory.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use psrpc::bus::DynBus;
use psrpc_redis::RedisBus;
use psrpc_tests::BusFactory;

use common::RedisServer;

struct RedisFactory {
    url: String,
    prefix: String,
}

impl RedisFactory {
    fn new() -> Self {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        Self::on(&SERVER)
    }

    /// A factory on `server` (started at first use). Two runs of the suite
    /// in one process need a server each: their tests publish the same bytes
    /// at once, and Redis queue locks are keyed by the bytes alone.
    fn on(server: &'static OnceLock<RedisServer>) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        RedisFactory {
            url: server.get_or_init(RedisServer::start).url(),
            prefix: format!("t{}:", NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

#[psrpc::async_trait]
impl BusFactory for RedisFactory {
    fn name(&self) -> &str {
        "redis"
    }

    async fn connect(&self) -> DynBus {
        let bus = RedisBus::builder()
            .prefix(self.prefix.clone())
            .connect(&self.url)
            .await
            .expect("connect");
        Arc::new(bus)
    }
}

psrpc_tests::conformance!(RedisFactory::new());

/// The whole suite again with every message compressed.
mod compressed {
    use super::*;

    fn factory() -> psrpc_tests::compression::Compressed<RedisFactory> {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        psrpc_tests::compression::Compressed::every_message(RedisFactory::on(&SERVER))
    }

    psrpc_tests::conformance!(factory());
}

/// The same suite with every server opted in to claim skip.
mod skip_claim {
    #[allow(unused_imports)]
    use super::*;

    psrpc_tests::conformance!(psrpc_tests::SkipClaim(RedisFactory::new()));
}
