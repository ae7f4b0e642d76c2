//! The Go generator's compile fixtures (those Go psrpc's generator tests compile), generated here
//! and called: a method named like its service, snake_case names, no package,
//! messages from another file and package, well-known types, several services
//! per file and per package, a service without methods.

use std::time::Duration;

use futures::StreamExt;
use psrpc::{Context, LocalBus};
use psrpc_codegen_tests::proto;
use psrpc_codegen_tests::proto::psrpc::internal::test as t;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_named_like_its_method() {
    use t::service_method_same_name::*;
    struct E;
    #[psrpc::async_trait]
    impl EchoServerImpl for E {
        async fn echo(&self, _ctx: Context, req: Msg) -> psrpc::Result<Msg> {
            Ok(req)
        }
    }
    let bus = LocalBus::new();
    let s = EchoServer::new(E, bus.clone()).await.unwrap();
    let c = EchoClient::new(bus).await.unwrap();
    c.echo(Msg {}).await.unwrap();
    assert_eq!(echo_methods::ECHO.name(), "Echo");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snake_case_names() {
    use t::snake_case_names::*;
    struct H;
    #[psrpc::async_trait]
    impl HaberdasherV1ServerImpl for H {
        async fn make_hat_v1(
            &self,
            _ctx: Context,
            req: make_hat_args_v1::SizeV1,
        ) -> psrpc::Result<make_hat_args_v1::HatV1> {
            Ok(make_hat_args_v1::HatV1 {
                size: req.inches,
                color: "red".into(),
                name: "fedora".into(),
            })
        }
    }
    let bus = LocalBus::new();
    let s = HaberdasherV1Server::new(H, bus.clone()).await.unwrap();
    let c = HaberdasherV1Client::new(bus).await.unwrap();
    let hat = c
        .make_hat_v1(make_hat_args_v1::SizeV1 { inches: 7 })
        .await
        .unwrap();
    assert_eq!((hat.size, hat.name.as_str()), (7, "fedora"));
    // The wire names are protoc-gen-go's CamelCase.
    assert_eq!(haberdasher_v1_methods::SERVICE, "HaberdasherV1");
    assert_eq!(haberdasher_v1_methods::MAKE_HAT_V1.name(), "MakeHatV1");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_package_and_its_importer() {
    // Both files have no package: their code lands at the include's root.
    struct S;
    #[psrpc::async_trait]
    impl proto::SvcServerImpl for S {
        async fn method(&self, _ctx: Context, req: proto::Msg) -> psrpc::Result<proto::Msg> {
            Ok(req)
        }
    }
    #[psrpc::async_trait]
    impl proto::Svc2ServerImpl for S {
        async fn method(&self, _ctx: Context, req: proto::Msg) -> psrpc::Result<proto::Msg> {
            Ok(req)
        }
    }
    let bus = LocalBus::new();
    let s1 = proto::SvcServer::new(S, bus.clone()).await.unwrap();
    let s2 = proto::Svc2Server::new(S, bus.clone()).await.unwrap();
    proto::SvcClient::new(bus.clone())
        .await
        .unwrap()
        .method(proto::Msg {})
        .await
        .unwrap();
    proto::Svc2Client::new(bus.clone())
        .await
        .unwrap()
        .method(proto::Msg {})
        .await
        .unwrap();
    s1.shutdown().await;
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_another_package() {
    use t::importable::Msg;
    use t::importer::*;
    struct S;
    #[psrpc::async_trait]
    impl Svc2ServerImpl for S {
        async fn send(&self, _ctx: Context, req: Msg) -> psrpc::Result<Msg> {
            Ok(req)
        }
    }
    let bus = LocalBus::new();
    let s = Svc2Server::new(S, bus.clone()).await.unwrap();
    let c = Svc2Client::new(bus).await.unwrap();
    c.send(Msg {}).await.unwrap();
    // A subscription of a message from the other package.
    let mut updates = c.subscribe_updates().await.unwrap();
    s.publish_updates(&Msg {}).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), updates.next())
        .await
        .unwrap()
        .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_types() {
    use t::use_empty::*;
    struct S;
    #[psrpc::async_trait]
    impl SvcServerImpl for S {
        async fn send(&self, _ctx: Context, req: String) -> psrpc::Result<()> {
            assert_eq!(req, "hello");
            Ok(())
        }
        async fn clock(&self, _ctx: Context, _req: ()) -> psrpc::Result<prost_types::Timestamp> {
            Ok(prost_types::Timestamp {
                seconds: 42,
                nanos: 0,
            })
        }
    }
    let bus = LocalBus::new();
    let s = SvcServer::new(S, bus.clone()).await.unwrap();
    let c = SvcClient::new(bus).await.unwrap();
    // prost maps StringValue to String and Empty to ().
    c.send("hello".to_owned()).await.unwrap();
    let mut clocks = c
        .clock(())
        .timeout(Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(clocks.next().await.unwrap().unwrap().seconds, 42);
    let mut ticks = c.subscribe_ticks().await.unwrap();
    s.publish_ticks(&prost_types::Timestamp {
        seconds: 7,
        nanos: 0,
    })
    .await
    .unwrap();
    let tick = tokio::time::timeout(Duration::from_secs(1), ticks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tick.seconds, 7);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_services_per_file_and_package() {
    use t::multiple::*;
    struct S;
    #[psrpc::async_trait]
    impl Svc1ServerImpl for S {
        async fn send(&self, _ctx: Context, req: Msg1) -> psrpc::Result<Msg1> {
            Ok(req)
        }
    }
    #[psrpc::async_trait]
    impl Svc2ServerImpl for S {
        async fn send(&self, _ctx: Context, req: Msg2) -> psrpc::Result<Msg2> {
            Ok(req)
        }
        async fn same_package_proto_import(&self, _ctx: Context, req: Msg1) -> psrpc::Result<Msg1> {
            Ok(req)
        }
    }
    #[psrpc::async_trait]
    impl Svc3ServerImpl for S {
        async fn send(&self, _ctx: Context, _req: Msg2) -> psrpc::Result<Msg1> {
            Ok(Msg1 {})
        }
    }
    let bus = LocalBus::new();
    let s1 = Svc1Server::new(S, bus.clone()).await.unwrap();
    let s2 = Svc2Server::new(S, bus.clone()).await.unwrap();
    let s3 = Svc3Server::new(S, bus.clone()).await.unwrap();
    Svc1Client::new(bus.clone())
        .await
        .unwrap()
        .send(Msg1 {})
        .await
        .unwrap();
    let c2 = Svc2Client::new(bus.clone()).await.unwrap();
    c2.send(Msg2 {}).await.unwrap();
    c2.same_package_proto_import(Msg1 {}).await.unwrap();
    Svc3Client::new(bus.clone())
        .await
        .unwrap()
        .send(Msg2 {})
        .await
        .unwrap();
    for s in [s1.rpc_server(), s2.rpc_server(), s3.rpc_server()] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_methods() {
    use t::empty_service::*;
    struct S;
    impl EmptyServerImpl for S {}
    let bus = LocalBus::new();
    let s = EmptyServer::new(S, bus.clone()).await.unwrap();
    let c = EmptyClient::new(bus).await.unwrap();
    assert_eq!(empty_methods::SERVICE, "Empty");
    c.close();
    s.kill();
}
