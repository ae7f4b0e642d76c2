//! Step 4 of psrpc-build's crate docs (README.md), run as written there.

use futures::StreamExt;
use psrpc_codegen_tests::proto::hello::*;

struct Greeter;

#[psrpc::async_trait]
impl GreeterServerImpl for Greeter {
    async fn say_hello(
        &self,
        _ctx: psrpc::Context,
        req: HelloRequest,
    ) -> psrpc::Result<HelloReply> {
        Ok(HelloReply {
            message: format!("hello {}", req.name),
        })
    }
    async fn count_greetings(
        &self,
        _ctx: psrpc::Context,
        _req: HelloRequest,
    ) -> psrpc::Result<HelloReply> {
        Ok(HelloReply {
            message: "1".into(),
        })
    }
}

#[tokio::test]
async fn main() -> psrpc::Result<()> {
    let bus = psrpc::LocalBus::new();
    let server = GreeterServer::new(Greeter, bus.clone()).await?;
    server.register_count_greetings_topic("eu").await?;
    let client = GreeterClient::new(bus).await?;

    let reply = client
        .say_hello(HelloRequest { name: "ana".into() })
        .await?;
    assert_eq!(reply.message, "hello ana");

    let mut replies = client
        .count_greetings("eu", HelloRequest::default())
        .timeout(std::time::Duration::from_millis(200))
        .await?;
    while let Some(reply) = replies.next().await {
        println!("{}", reply?.message);
    }

    // The method table, for tools: wire name, kind, routing, topic parameters.
    for m in greeter_methods::METHODS {
        println!(
            "{} {:?} {:?} {:?}",
            m.name(),
            m.kind,
            m.routing(),
            m.topic_params
        );
    }
    assert_eq!(greeter_methods::METHODS[1].topic_params, ["region"]);
    server.shutdown().await;
    Ok(())
}
