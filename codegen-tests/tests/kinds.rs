//! Every method kind of `kinds.proto` through the generated API, on the local
//! bus: routing, topics (several parameters, typed, single server), topic
//! groups with rollback, subscriptions, the deprecated routing oneof, the
//! trait's unimplemented defaults and the method table.

use std::time::Duration;

use futures::StreamExt;
use psrpc::{ErrorCode, LocalBus, ServerStream};
use psrpc_codegen_tests::kinds::*;

/// Answers with its name; claims affinity calls with a fixed score.
struct Server {
    name: &'static str,
    affinity: f32,
}

impl Server {
    fn answer(&self, req: Request) -> psrpc::Result<Response> {
        Ok(Response {
            text: req.text,
            server: self.name.into(),
        })
    }
}

#[psrpc::async_trait]
impl KindsServerImpl for Server {
    async fn queue(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn affinity(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    fn affinity_affinity(&self, _req: &Request) -> f32 {
        self.affinity
    }
    async fn multi(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn direct(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn chat(
        &self,
        mut stream: ServerStream<ServerMessage, ClientMessage>,
    ) -> psrpc::Result<()> {
        while let Some(msg) = stream.recv().await? {
            if msg.text == "fail" {
                return Err(psrpc::Error::new(ErrorCode::Aborted, "asked to fail"));
            }
            stream
                .send(ServerMessage {
                    text: msg.text.to_uppercase(),
                })
                .await?;
        }
        Ok(())
    }
    async fn picky_chat(
        &self,
        mut stream: ServerStream<ServerMessage, ClientMessage>,
    ) -> psrpc::Result<()> {
        while let Some(msg) = stream.recv().await? {
            stream
                .send(ServerMessage {
                    text: format!("{} from {}", msg.text, self.name),
                })
                .await?;
        }
        Ok(())
    }
    fn picky_chat_affinity(&self, open: &psrpc::StreamOpen<'_>) -> f32 {
        // The open is scored on its topic.
        if open.topic().is_empty() {
            -1.0
        } else {
            self.affinity
        }
    }
    async fn node_queue(&self, ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        // The handler sees the call's topic.
        let topic = ctx.info().map(|i| i.topic.join("/")).unwrap_or_default();
        self.answer(Request {
            text: format!("{} {topic}", req.text),
        })
    }
    async fn node_multi(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn room_call(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn old_multi(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    async fn old_affinity(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
    fn old_affinity_affinity(&self, _req: &Request) -> f32 {
        self.affinity
    }
    async fn old_queue(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        self.answer(req)
    }
}

fn req(text: &str) -> Request {
    Request { text: text.into() }
}

async fn server(bus: &LocalBus, name: &'static str, affinity: f32) -> KindsServer {
    KindsServer::new(Server { name, affinity }, bus.clone())
        .await
        .unwrap()
}

async fn all<T>(mut s: impl futures::Stream<Item = psrpc::Result<T>> + Unpin) -> Vec<T> {
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        items.push(item.unwrap());
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_routing_kinds() {
    let bus = LocalBus::new();
    let low = server(&bus, "low", 0.2).await;
    let high = server(&bus, "high", 0.9).await;
    let client = KindsClient::new(bus.clone()).await.unwrap();

    let res = client.queue(req("q")).await.unwrap();
    assert_eq!(res.text, "q");
    assert!(["low", "high"].contains(&res.server.as_str()));

    // The best affinity wins.
    let res = client.affinity(req("a")).await.unwrap();
    assert_eq!(res.server, "high");

    // Single server: no claim handshake, and still exactly one answer per call.
    let res = client.direct(req("d")).await.unwrap();
    assert_eq!(res.text, "d");

    // Multi: one response from each server; the call's timeout ends the stream.
    let each = client
        .multi(req("m"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap();
    let mut servers: Vec<String> = all(each).await.into_iter().map(|r| r.server).collect();
    servers.sort();
    assert_eq!(servers, ["high", "low"]);

    // The deprecated oneof: `multi = false` is MULTI (as in Go), `affinity_func`
    // is AFFINITY and `queue` is QUEUE, whatever `type` says.
    assert_eq!(kinds_methods::OLD_MULTI.routing(), psrpc::Routing::Multi);
    assert_eq!(
        kinds_methods::OLD_AFFINITY.routing(),
        psrpc::Routing::Affinity
    );
    assert_eq!(kinds_methods::OLD_QUEUE.routing(), psrpc::Routing::Queue);
    let each = client
        .old_multi(req("om"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(all(each).await.len(), 2);
    assert_eq!(client.old_affinity(req("oa")).await.unwrap().server, "high");
    assert_eq!(client.old_queue(req("oq")).await.unwrap().text, "oq");

    low.shutdown().await;
    high.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams() {
    let bus = LocalBus::new();
    let low = server(&bus, "low", 0.2).await;
    let high = server(&bus, "high", 0.9).await;
    let client = KindsClient::new(bus.clone()).await.unwrap();

    // Queue routing: one server accepts; messages flow both ways.
    let mut chat = client.chat().await.unwrap();
    chat.send(ClientMessage { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(chat.recv().await.unwrap().unwrap().text, "HI");
    chat.close().await.unwrap();

    // The handler's error closes the stream, and the client sees it.
    let mut chat = client.chat().timeout(Duration::from_secs(1)).await.unwrap();
    chat.send(ClientMessage {
        text: "fail".into(),
    })
    .await
    .unwrap();
    let e = chat.recv().await.expect_err("a close cause");
    assert_eq!(e.code(), ErrorCode::Aborted);
    assert_eq!(e.message(), "asked to fail");

    // Affinity routing by topic: only registered servers compete, the best wins.
    low.register_picky_chat_topic("t").await.unwrap();
    high.register_picky_chat_topic("t").await.unwrap();
    let mut picky = client.picky_chat("t").await.unwrap();
    picky
        .send(ClientMessage { text: "x".into() })
        .await
        .unwrap();
    assert_eq!(picky.recv().await.unwrap().unwrap().text, "x from high");
    picky.close().await.unwrap();

    // Deregistered: nobody accepts.
    low.deregister_picky_chat_topic("t");
    high.deregister_picky_chat_topic("t");
    let Err(e) = client
        .picky_chat("t")
        .timeout(Duration::from_millis(300))
        .await
    else {
        panic!("a deregistered server accepted the stream");
    };
    assert_eq!(e.code(), ErrorCode::Unavailable);

    low.shutdown().await;
    high.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_with_several_parameters_and_groups() {
    let bus = LocalBus::new();
    let a = server(&bus, "a", 1.0).await;
    let b = server(&bus, "b", 1.0).await;
    let client = KindsClient::new(bus.clone()).await.unwrap();

    a.register_all_node_topics("eu", "n1").await.unwrap();
    b.register_node_multi_topic("eu", "n2").await.unwrap();

    // The parameters make the wire topic, in order.
    let res = client.node_queue("eu", "n1", req("hi")).await.unwrap();
    assert_eq!((res.text.as_str(), res.server.as_str()), ("hi eu/n1", "a"));
    let each = client
        .node_multi("eu", "n2", req("m"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap();
    let servers: Vec<String> = all(each).await.into_iter().map(|r| r.server).collect();
    assert_eq!(servers, ["b"]);

    // Nobody serves node_queue on eu/n2.
    let e = client
        .node_queue("eu", "n2", req("x"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);

    // Group registration is all or nothing: node_multi on eu/n2 is taken on
    // b, so b's group registration fails and undoes its node_queue.
    let e = b.register_all_node_topics("eu", "n2").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    b.register_node_queue_topic("eu", "n2").await.unwrap();
    b.deregister_node_queue_topic("eu", "n2");

    // Group deregistration stops every member.
    a.deregister_all_node_topics("eu", "n1");
    let e = client
        .node_queue("eu", "n1", req("x"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    // ... and they can be registered again.
    a.register_all_node_topics("eu", "n1").await.unwrap();
    assert_eq!(
        client
            .node_queue("eu", "n1", req("again"))
            .await
            .unwrap()
            .server,
        "a"
    );

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_topics() {
    let bus = LocalBus::new();
    let s = server(&bus, "s", 1.0).await;
    let client = KindsClient::new(bus.clone()).await.unwrap();

    let room = RoomTopicType::new("lobby");
    assert_eq!(room.as_str(), "lobby");
    assert_eq!(room.to_string(), "lobby");
    s.register_room_call_topic(room.clone()).await.unwrap();
    let res = client.room_call(room.clone(), req("t")).await.unwrap();
    assert_eq!(res.text, "t");

    // A typed subscription topic.
    let mut events = client.subscribe_room_events(room.clone()).await.unwrap();
    s.publish_room_events(room, &Update { text: "u".into() })
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(1), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(update.text, "u");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_queue_and_fan_out() {
    let bus = LocalBus::new();
    let s = server(&bus, "s", 1.0).await;
    let c1 = KindsClient::new(bus.clone()).await.unwrap();
    let c2 = KindsClient::new(bus.clone()).await.unwrap();

    // Queue: one of the subscribers gets each update.
    let mut j1 = c1.subscribe_jobs().await.unwrap();
    let mut j2 = c2.subscribe_jobs().await.unwrap();
    s.publish_jobs(&Update { text: "job".into() })
        .await
        .unwrap();
    let got = tokio::select! {
        u = j1.next() => u,
        u = j2.next() => u,
    };
    assert_eq!(got.unwrap().text, "job");
    let again = tokio::time::timeout(Duration::from_millis(200), async {
        tokio::select! {
            u = j1.next() => u,
            u = j2.next() => u,
        }
    })
    .await;
    assert!(again.is_err(), "a queue update reached two subscribers");

    // Fan-out: every subscriber of the topic gets each update.
    let room = RoomTopicType::new("r");
    let mut e1 = c1.subscribe_room_events(room.clone()).await.unwrap();
    let mut e2 = c2.subscribe_room_events(room.clone()).await.unwrap();
    s.publish_room_events(room, &Update { text: "all".into() })
        .await
        .unwrap();
    for e in [&mut e1, &mut e2] {
        let u = tokio::time::timeout(Duration::from_secs(1), e.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.text, "all");
    }
    s.shutdown().await;
}

/// Implements one method; the trait's defaults answer the others.
struct OnlyQueue;

#[psrpc::async_trait]
impl KindsServerImpl for OnlyQueue {
    async fn queue(&self, _ctx: psrpc::Context, req: Request) -> psrpc::Result<Response> {
        Ok(Response {
            text: req.text,
            server: "only-queue".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_methods_answer_unimplemented() {
    let bus = LocalBus::new();
    let s = KindsServer::new(OnlyQueue, bus.clone()).await.unwrap();
    s.register_all_node_topics("eu", "n1").await.unwrap();
    let client = KindsClient::new(bus.clone()).await.unwrap();

    // The one method implemented answers.
    assert_eq!(client.queue(req("x")).await.unwrap().server, "only-queue");

    // The others answer with the trait's default.
    for e in [
        client.direct(req("x")).await.unwrap_err(),
        client.old_queue(req("x")).await.unwrap_err(),
        client.node_queue("eu", "n1", req("x")).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::Unimplemented);
        assert_eq!(e.message(), "method is not implemented");
    }
    // A multi call gets the one server's `unimplemented`.
    let multi: Vec<_> = client
        .multi(req("x"))
        .timeout(Duration::from_secs(2))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(multi.len(), 1, "{multi:?}");
    assert_eq!(
        multi[0].as_ref().unwrap_err().code(),
        ErrorCode::Unimplemented
    );

    // Streams are opened, then closed with `unimplemented`.
    let mut chat = client.chat().await.unwrap();
    let e = chat.recv().await.expect_err("closed with unimplemented");
    assert_eq!(e.code(), ErrorCode::Unimplemented);

    // The default affinity is -1: it never claims, so nobody takes the call.
    let e = client
        .affinity(req("x"))
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    s.kill();
}

#[test]
fn the_method_table_lists_every_method() {
    use psrpc::service::{MethodKind as K, Routing as R, Service};

    let listed: Vec<(&str, K, R, bool, &[&str])> = kinds_methods::METHODS
        .iter()
        .map(|m| {
            (
                m.name(),
                m.kind,
                m.routing(),
                m.single_server(),
                m.topic_params,
            )
        })
        .collect();
    let expected: Vec<(&str, K, R, bool, &[&str])> = vec![
        ("Queue", K::Unary, R::Queue, false, &[]),
        ("Affinity", K::Unary, R::Affinity, false, &[]),
        ("Multi", K::Multi, R::Multi, false, &[]),
        ("Direct", K::Unary, R::Queue, true, &[]),
        ("Chat", K::Stream, R::Queue, false, &[]),
        ("PickyChat", K::Stream, R::Affinity, false, &["topic"]),
        (
            "NodeQueue",
            K::Unary,
            R::Queue,
            false,
            &["region", "node_id"],
        ),
        (
            "NodeMulti",
            K::Multi,
            R::Multi,
            false,
            &["region", "node_id"],
        ),
        ("RoomCall", K::Unary, R::Queue, true, &["room"]),
        ("Jobs", K::Subscription, R::Queue, false, &[]),
        ("RoomEvents", K::Subscription, R::Multi, false, &["room"]),
        ("OldMulti", K::Multi, R::Multi, false, &[]),
        ("OldAffinity", K::Unary, R::Affinity, false, &[]),
        ("OldQueue", K::Unary, R::Queue, false, &[]),
    ];
    assert_eq!(listed, expected);

    // Each entry describes its method's static; only subscriptions have no
    // handler, and only methods with topic parameters are served per topic.
    let m = &kinds_methods::METHODS;
    assert_eq!(m[6].name(), kinds_methods::NODE_QUEUE.name());
    assert_eq!(m[6].routing(), kinds_methods::NODE_QUEUE.routing());
    assert_eq!(m.iter().filter(|m| !m.has_handler()).count(), 2);
    assert_eq!(
        m.iter()
            .filter(|m| m.has_topics())
            .map(|m| m.name())
            .collect::<Vec<_>>(),
        [
            "PickyChat",
            "NodeQueue",
            "NodeMulti",
            "RoomCall",
            "RoomEvents"
        ]
    );

    // The runtime reaches the same table through the implementation trait.
    assert_eq!(<dyn KindsServerImpl as Service>::NAME, "Kinds");
    assert_eq!(<dyn KindsServerImpl as Service>::METHODS.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_what_cannot_be_registered_fails_clearly() {
    // The runtime entry point checks the method against the table.
    let bus = LocalBus::new();
    let s = KindsServer::new(OnlyQueue, bus.clone()).await.unwrap();
    let inner = psrpc::service::ServiceServer::<dyn KindsServerImpl>::start(
        std::sync::Arc::new(OnlyQueue),
        bus.clone(),
        psrpc::ServerOptions::default(),
    )
    .await
    .unwrap();
    let e = inner.register(&kinds_methods::JOBS, &[]).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let e = inner
        .register(&psrpc::Method::<Request, Response>::queue("Nope"), ())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    // A method without topics is served already.
    let e = inner
        .register(&kinds_methods::QUEUE, &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    inner.kill();
    s.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_api_through_the_method_statics() {
    // The statics let the generic runtime API call generated services.
    let bus = LocalBus::new();
    let s = server(&bus, "s", 1.0).await;
    let rpc = psrpc::RpcClient::new(bus.clone(), kinds_methods::SERVICE, Default::default())
        .await
        .unwrap();
    let res: Response = rpc
        .unary(&kinds_methods::QUEUE, (), req("generic"))
        .await
        .unwrap();
    assert_eq!(res.text, "generic");
    assert_eq!(kinds_methods::SERVICE, "Kinds");
    assert_eq!(kinds_methods::NODE_QUEUE.name(), "NodeQueue");
    assert!(kinds_methods::DIRECT.is_single_server());
    assert!(kinds_methods::ROOM_CALL.is_single_server());
    assert!(!kinds_methods::QUEUE.is_single_server());
    s.shutdown().await;
}
