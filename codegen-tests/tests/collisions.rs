//! The names `collisions.proto` would clash on are generated distinct, and each
//! reaches its own method on the wire.

use psrpc::{Context, LocalBus};
use psrpc_codegen_tests::collisions::*;

struct Impl;

fn res(method: &str) -> psrpc::Result<Res> {
    Ok(Res {
        method: method.into(),
    })
}

#[psrpc::async_trait]
impl PingServerImpl for Impl {
    async fn ping(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("Ping")
    }
    async fn ping_2(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("PING")
    }
    async fn r#type(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("type")
    }
    async fn self_(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("self")
    }
    async fn close_2(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("Close")
    }
    async fn shutdown(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("Shutdown")
    }
    async fn weigh(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("Weigh")
    }
    fn weigh_affinity(&self, _req: &Req) -> f32 {
        1.0
    }
    async fn weigh_affinity_2(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("WeighAffinity")
    }
    async fn subscribe_news_2(&self, _ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res("SubscribeNews")
    }
    async fn tagged(&self, ctx: Context, _req: Req) -> psrpc::Result<Res> {
        res(&ctx.info().unwrap().topic.join("/"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_reaches_its_own_method() {
    let bus = LocalBus::new();
    let server = PingServer::new(Impl, bus.clone()).await.unwrap();
    let client = PingClient::new(bus.clone()).await.unwrap();
    let req = Req::default;

    assert_eq!(client.ping(req()).await.unwrap().method, "Ping");
    assert_eq!(client.ping_2(req()).await.unwrap().method, "PING");
    assert_eq!(client.r#type(req()).await.unwrap().method, "type");
    assert_eq!(client.self_(req()).await.unwrap().method, "self");
    assert_eq!(client.close_2(req()).await.unwrap().method, "Close");
    assert_eq!(client.shutdown(req()).await.unwrap().method, "Shutdown");
    assert_eq!(client.weigh(req()).await.unwrap().method, "Weigh");
    assert_eq!(
        client.weigh_affinity_2(req()).await.unwrap().method,
        "WeighAffinity"
    );
    assert_eq!(
        client.subscribe_news_2(req()).await.unwrap().method,
        "SubscribeNews"
    );
    // Topic parameters named `req` and `type` keep their order on the wire.
    assert_eq!(
        client
            .tagged("r", "t", req())
            .timeout(std::time::Duration::from_millis(300))
            .await
            .unwrap_err()
            .code(),
        psrpc::ErrorCode::Unavailable
    );
    server.register_tagged_topic("r", "t").await.unwrap();
    assert_eq!(client.tagged("r", "t", req()).await.unwrap().method, "r/t");

    // The subscription keeps `subscribe_news`; the generated API keeps its names.
    let mut news = client.subscribe_news().await.unwrap();
    server
        .publish_news(&Res {
            method: "news".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        futures::StreamExt::next(&mut news).await.unwrap().method,
        "news"
    );

    // Wire names are Go's, whatever the Rust names became.
    assert_eq!(ping_methods::SERVICE, "Ping");
    assert_eq!(ping_methods::PING_2.name(), "PING");
    assert_eq!(ping_methods::TYPE.name(), "Type");
    assert_eq!(ping_methods::SELF.name(), "Self");
    assert_eq!(ping_methods::CLOSE_2.name(), "Close");
    assert_eq!(ping_methods::WEIGH_AFFINITY_2.name(), "WeighAffinity");

    client.close();
    server.shutdown().await;
}
