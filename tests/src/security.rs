//! The example lock-down of a shared bus (the workspace's
//! `docs/security/` configurations): a client user may call service
//! `Greeter` but not serve it.

use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc::{Context, Method, RpcClient, RpcServer, ServerOptions, ServerStream};

use crate::Num;

/// The service the example configurations protect.
pub const SERVICE: &str = "Greeter";
/// Its unary method.
pub static SAY_HELLO: Method<Num, Num> = Method::queue("SayHello");
/// Its stream method.
pub static CHAT: Method<Num, Num> = Method::queue("Chat");

const WAIT: Duration = Duration::from_secs(20);

/// Serves `Greeter` on `bus` (SayHello answers `n + 1`, Chat echoes).
pub async fn serve(bus: DynBus) -> psrpc::Result<RpcServer> {
    let s = RpcServer::new(bus, SERVICE, ServerOptions::default()).await?;
    s.route(&SAY_HELLO)
        .handle(|_c: Context, r: Num| async move {
            Ok(Num {
                n: r.n + 1,
                text: "hello".into(),
            })
        })
        .await?;
    s.stream_route(&CHAT)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while let Some(m) = st.recv().await? {
                st.send(m).await?;
            }
            Ok(())
        })
        .await?;
    Ok(s)
}

/// A client on `bus` calls SayHello and chats over a stream.
pub async fn call_and_chat(bus: DynBus) {
    let c = RpcClient::new(bus, SERVICE, Default::default())
        .await
        .expect("the client user connects a client");
    let start = std::time::Instant::now();
    let res: Num = loop {
        match c
            .unary(
                &SAY_HELLO,
                (),
                Num {
                    n: 41,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => break r,
            Err(e) => assert!(start.elapsed() < WAIT, "the call fails: {e}"),
        }
    };
    assert_eq!(res.n, 42);
    let mut st = c
        .stream(&CHAT, ())
        .await
        .expect("the client user opens a stream");
    st.send(Num {
        n: 7,
        ..Default::default()
    })
    .await
    .expect("send");
    let echo = tokio::time::timeout(WAIT, st.recv())
        .await
        .expect("echo in time")
        .expect("echo")
        .expect("a message");
    assert_eq!(echo.n, 7);
    st.close().await.expect("close");
}
