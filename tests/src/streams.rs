//! Stream behaviours (docs/PROTOCOL.md, "Streams"), each a function
//! over a [`BusFactory`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use psrpc::{Context, Error, ErrorCode, Method, RpcServer, ServerOptions, ServerStream};
use tokio::sync::mpsc;

use crate::suite::{client, settle, topic};
use crate::{BusFactory, Num};

const WAIT: Duration = Duration::from_secs(3);

/// The deadline of a wait for a condition.
const DEADLINE: Duration = Duration::from_secs(20);

/// A queue-flagged stream method (the default kind: claimed by one server).
pub static PING_PONG: Method<Num, Num> = Method::queue("PingPong");
/// An affinity stream method.
pub static AFFINITY_STREAM: Method<Num, Num> = Method::affinity("AffinityStream");

async fn server(f: &dyn BusFactory, service: &str, opts: ServerOptions) -> RpcServer {
    RpcServer::new(f.connect().await, service, opts)
        .await
        .unwrap()
}

pub(crate) fn num(n: i64, text: &str) -> Num {
    Num {
        n,
        text: text.into(),
    }
}

/// Registers an echo handler: every `Num` comes back with `text` "PONG";
/// reports on `done` when its stream ends, with the stream's error (`None`
/// for a clean close).
async fn echo(
    s: &RpcServer,
    m: &Method<Num, Num>,
    t: &[String],
    done: mpsc::UnboundedSender<Option<Error>>,
) {
    s.stream_route(m)
        .topic(t)
        .handle(move |mut st: ServerStream<Num, Num>| {
            let done = done.clone();
            async move {
                loop {
                    match st.recv().await {
                        Ok(Some(msg)) => {
                            if let Err(e) = st.send(num(msg.n, "PONG")).await {
                                let _ = done.send(Some(e.clone()));
                                return Err(e);
                            }
                        }
                        Ok(None) => {
                            let _ = done.send(None);
                            return Ok(());
                        }
                        Err(e) => {
                            let _ = done.send(Some(e));
                            return Ok(());
                        }
                    }
                }
            }
        })
        .await
        .expect("register stream handler");
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("a value")
}

/// As Go's stream test: open, three ping-pongs, close; the server's receive
/// channel closes and its handler returns.
pub async fn stream_ping_pong(f: &dyn BusFactory) {
    let s = server(f, "test_stream", f.server_options()).await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    echo(&s, &PING_PONG, &[], done_tx).await;
    let c = client(f, "test_stream").await;
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.expect("open");
    for i in 0..3 {
        st.send(num(i, "PING")).await.expect("send acked");
        let got = tokio::time::timeout(WAIT, st.recv())
            .await
            .expect("pong in time")
            .expect("pong")
            .expect("a message");
        assert_eq!((got.n, got.text.as_str()), (i, "PONG"));
    }
    st.close().await.expect("close");
    let server_err = recv(&mut done).await;
    assert!(
        server_err.is_none(),
        "the server sees a clean end: {server_err:?}"
    );
    // A second close returns the first cause and sends nothing.
    let again = st.close().await.expect_err("closed already");
    assert_eq!(again.message(), "stream closed");
    s.shutdown().await;
}

/// G4: with two servers, exactly one accepts the stream and sees every message.
pub async fn stream_claimed_by_one_of_two(f: &dyn BusFactory) {
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let events = Arc::new(crate::claim_skip::Events::default());
    let mut servers = Vec::new();
    for count in &counts {
        let opts = f.server_options().interceptor(events.clone());
        let s = server(f, "stream_two", opts).await;
        let count = count.clone();
        s.stream_route(&PING_PONG)
            .handle(move |mut st: ServerStream<Num, Num>| {
                let count = count.clone();
                async move {
                    while let Ok(Some(_)) = st.recv().await {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                }
            })
            .await
            .unwrap();
        servers.push(s);
    }
    let c = client(f, "stream_two").await;
    settle(f).await;
    let st = c.stream(&PING_PONG, ()).await.unwrap();
    st.send(num(1, "")).await.unwrap();
    st.send(num(2, "")).await.unwrap();
    st.close().await.unwrap();
    // Both were acknowledged: the handler reads them even after the close.
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    // Every server that heard the open knows how its claim ended: only
    // the winner has a stream to read from.
    crate::eventually("both messages read, every claim settled", DEADLINE, || {
        total() == 2 && events.decided() == events.received_any()
    })
    .await;
    let mut got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    got.sort();
    assert_eq!(got, vec![0, 2], "one server got both messages");
    for s in servers {
        s.shutdown().await;
    }
}

/// A handler's error closes the stream with it; the client's `recv` and
/// its sends report it. A client's close cause reaches the server.
pub async fn stream_close_causes_cross(f: &dyn BusFactory) {
    let s = server(f, "stream_causes", f.server_options()).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    s.stream_route(&PING_PONG)
        .handle(move |mut st: ServerStream<Num, Num>| {
            let seen = seen_tx.clone();
            async move {
                let first = st.recv().await;
                match first {
                    Ok(Some(m)) if m.text == "fail" => {
                        Err(Error::new(ErrorCode::FailedPrecondition, "handler refused"))
                    }
                    _ => {
                        // Wait for the client's close and report its cause.
                        let end = loop {
                            match st.recv().await {
                                Ok(Some(_)) => {}
                                Ok(None) => break None,
                                Err(e) => break Some(e),
                            }
                        };
                        let _ = seen.send(end);
                        Ok(())
                    }
                }
            }
        })
        .await
        .unwrap();
    let c = client(f, "stream_causes").await;
    settle(f).await;

    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    st.send(num(0, "fail")).await.unwrap();
    let err = tokio::time::timeout(WAIT, st.recv())
        .await
        .unwrap()
        .expect_err("closed with the handler's error");
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert_eq!(err.message(), "handler refused");
    let send_err = st.send(num(1, "")).await.expect_err("closed");
    assert_eq!(send_err.message(), "handler refused");
    assert!(st.is_closed());

    let st = c.stream(&PING_PONG, ()).await.unwrap();
    st.send(num(0, "hello")).await.unwrap();
    st.close_with(Error::new(ErrorCode::ResourceExhausted, "client is done"))
        .await
        .unwrap();
    let cause = recv(&mut seen).await.expect("server sees a cause");
    assert_eq!(cause.code(), ErrorCode::ResourceExhausted);
    assert_eq!(cause.message(), "client is done");
    s.shutdown().await;
}

/// A receiver that does not read: its buffer fills, then messages are not
/// acknowledged and the sender's `send` fails with `deadline_exceeded`.
pub async fn stream_slow_receiver_times_out_sender(f: &dyn BusFactory) {
    const BUFFER: usize = 4;
    let s = server(f, "stream_slow", f.server_options().channel_size(BUFFER)).await;
    let (release_tx, release) = tokio::sync::watch::channel(false);
    s.stream_route(&PING_PONG)
        .handle(move |mut st: ServerStream<Num, Num>| {
            let mut release = release.clone();
            async move {
                // Do not read until told.
                let _ = release.wait_for(|r| *r).await;
                let mut n = 0;
                while let Ok(Ok(Some(_))) =
                    tokio::time::timeout(Duration::from_millis(200), st.recv()).await
                {
                    n += 1;
                }
                st.send(num(n, "read")).await?;
                Ok(())
            }
        })
        .await
        .unwrap();
    let c = client(f, "stream_slow").await;
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    // Exactly the buffer is accepted (each acknowledged in its own time:
    // a generous deadline), and the next send fails at its timeout.
    for i in 0..BUFFER as i64 {
        st.send_timeout(num(i, ""), DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("send {i} within the buffer: {e}"));
    }
    let e = st
        .send_timeout(num(BUFFER as i64, ""), Duration::from_millis(300))
        .await
        .expect_err("a send past the buffer fails");
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    assert!(!st.is_closed(), "a slow receiver does not close the stream");
    release_tx.send(true).unwrap();
    let read = tokio::time::timeout(WAIT, st.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        read.n, BUFFER as i64,
        "the receiver got exactly what was acked"
    );
    s.shutdown().await;
}

/// 1,000 messages each way on one stream, in order, none lost: each side
/// sends from one task while it receives in another.
pub async fn stream_thousand_each_way_in_order(f: &dyn BusFactory) {
    const N: i64 = 1000;
    let s = server(f, "stream_thousand", f.server_options()).await;
    s.stream_route(&PING_PONG)
        .handle(move |mut st: ServerStream<Num, Num>| async move {
            let tx = st.sender();
            let sending = tokio::spawn(async move {
                for i in 0..N {
                    tx.send(num(i, "down")).await?;
                }
                Ok::<_, Error>(())
            });
            for expected in 0..N {
                let m = st
                    .recv()
                    .await?
                    .ok_or_else(|| Error::new(ErrorCode::DataLoss, "closed early"))?;
                if m.n != expected {
                    return Err(Error::new(
                        ErrorCode::DataLoss,
                        format!("got {} expected {expected}", m.n),
                    ));
                }
            }
            sending
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))??;
            st.send(num(-1, "server got all")).await?;
            while st.recv().await?.is_some() {}
            Ok(())
        })
        .await
        .unwrap();
    let c = client(f, "stream_thousand").await;
    settle(f).await;
    let mut st = c
        .stream(&PING_PONG, ())
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let tx = st.sender();
    let sending = tokio::spawn(async move {
        for i in 0..N {
            tx.send(num(i, "up")).await.expect("send");
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        let mut got = Vec::new();
        loop {
            match st.recv().await {
                Ok(Some(m)) if m.n == -1 => return got,
                Ok(Some(m)) => got.push(m.n),
                end => panic!("stream closed early: {end:?}"),
            }
        }
    })
    .await
    .expect("1000 each way in time");
    sending.await.unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "in order, none lost");
    st.close().await.unwrap();
    s.shutdown().await;
}

/// A hijacked server stream stays open after its handler returns; the
/// application keeps using it.
pub async fn stream_hijack_keeps_stream(f: &dyn BusFactory) {
    let s = server(f, "stream_hijack", f.server_options()).await;
    let (keep_tx, mut keep) = mpsc::unbounded_channel();
    s.stream_route(&PING_PONG)
        .handle(move |st: ServerStream<Num, Num>| {
            let keep = keep_tx.clone();
            async move {
                st.hijack();
                let _ = keep.send(st);
                Ok(())
            }
        })
        .await
        .unwrap();
    let c = client(f, "stream_hijack").await;
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    let mut kept = recv(&mut keep).await;
    // The handler has returned; the stream is still open both ways (had
    // its return closed the stream, the send below would fail).
    assert!(!st.is_closed());
    st.send(num(7, "to hijacked"))
        .await
        .expect("acked by the kept stream");
    let m = tokio::time::timeout(WAIT, kept.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.n, 7);
    kept.send(num(8, "from hijacked")).await.unwrap();
    assert_eq!(st.recv().await.unwrap().unwrap().n, 8);
    kept.close().await.unwrap();
    let end = tokio::time::timeout(WAIT, st.recv()).await.unwrap();
    assert!(matches!(end, Ok(None)), "a clean end: {end:?}");
    s.shutdown().await;
}

/// Server shutdown, and kill, close open streams with `unavailable` "EOF"
/// (and shutdown still returns: the handlers see their streams end).
pub async fn stream_server_shutdown_and_kill_close_streams(f: &dyn BusFactory) {
    for kill in [false, true] {
        let s = server(f, "stream_shutdown", f.server_options()).await;
        let (done_tx, mut done) = mpsc::unbounded_channel();
        echo(&s, &PING_PONG, &[], done_tx).await;
        let c = client(f, "stream_shutdown").await;
        settle(f).await;
        let mut a = c.stream(&PING_PONG, ()).await.unwrap();
        let mut b = c.stream(&PING_PONG, ()).await.unwrap();
        a.send(num(1, "")).await.unwrap();
        assert_eq!(a.recv().await.unwrap().unwrap().n, 1);
        let started = Instant::now();
        if kill {
            s.kill();
        } else {
            tokio::time::timeout(WAIT, s.shutdown())
                .await
                .expect("shutdown returns");
        }
        for st in [&mut a, &mut b] {
            let e = tokio::time::timeout(WAIT, st.recv())
                .await
                .unwrap()
                .expect_err("stream ends with an error");
            assert_eq!((e.code(), e.message()), (ErrorCode::Unavailable, "EOF"));
        }
        for _ in 0..2 {
            let e = recv(&mut done).await.expect("handler stream ended");
            assert_eq!(e.message(), "EOF");
        }
        assert!(started.elapsed() < WAIT);
        let e = a.send(num(2, "")).await.unwrap_err();
        assert_eq!(e.message(), "EOF");
        // The server takes no new streams.
        let e = c.stream(&PING_PONG, ()).await.expect_err("no server");
        assert_eq!(e.code(), ErrorCode::Unavailable);
    }
}

/// Opening with no server fails with `unavailable` after the selection
/// timeout; topics isolate stream handlers.
pub async fn stream_no_server_and_topics(f: &dyn BusFactory) {
    let c = client(f, "stream_topics").await;
    let started = Instant::now();
    let e = c.stream(&PING_PONG, ()).await.expect_err("no server");
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(5));

    let s = server(f, "stream_topics", f.server_options()).await;
    let (done_tx, _done) = mpsc::unbounded_channel();
    echo(&s, &PING_PONG, &topic(&["region", "a"]), done_tx).await;
    settle(f).await;
    let mut st = c
        .stream(&PING_PONG, topic(&["region", "a"]))
        .await
        .expect("topic a is served");
    st.send(num(5, "")).await.unwrap();
    assert_eq!(st.recv().await.unwrap().unwrap().n, 5);
    let e = c
        .stream(&PING_PONG, topic(&["region", "b"]))
        .timeout(Duration::from_millis(500))
        .await
        .expect_err("topic b is not served");
    assert!(
        matches!(
            e.code(),
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded
        ),
        "{e}"
    );
    s.shutdown().await;
}

/// A stream affinity function sees the open: the opening client, the
/// metadata it opened with and the topic. Two servers on one topic score
/// by a metadata entry, so the open's metadata picks the server.
pub async fn stream_affinity_sees_open(f: &dyn BusFactory) {
    type Seen = (String, Option<String>, Vec<String>);
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    let mut servers = Vec::new();
    for id in ["gold", "basic"] {
        let s = server(f, "stream_open", f.server_options().server_id(id)).await;
        let (me, seen_tx) = (id.to_string(), seen_tx.clone());
        s.stream_route(&AFFINITY_STREAM)
            .topic(["region", "a"])
            .affinity(move |open| {
                let tier = open.metadata().get("tier").cloned();
                let _ = seen_tx.send((
                    open.remote_id().to_owned(),
                    tier.clone(),
                    open.topic().to_vec(),
                ));
                match (me.as_str(), tier.as_deref()) {
                    ("gold", Some("gold")) | ("basic", Some("basic")) => 0.9,
                    _ => 0.1,
                }
            })
            .handle(move |st: ServerStream<Num, Num>| {
                let me = id.to_string();
                async move {
                    st.send(num(0, &me)).await?;
                    st.closed().await;
                    Ok(())
                }
            })
            .await
            .unwrap();
        servers.push(s);
    }
    let c = client(f, "stream_open").await;
    settle(f).await;
    for tier in ["gold", "basic", "gold"] {
        let mut st = c
            .stream(&AFFINITY_STREAM, ["region", "a"])
            .metadata_entry("tier", tier)
            .await
            .unwrap();
        let hello = tokio::time::timeout(WAIT, st.recv())
            .await
            .unwrap()
            .unwrap()
            .expect("a message");
        assert_eq!(hello.text, tier, "the open's metadata picks the server");
        st.close().await.unwrap();
    }
    // Both servers scored every open, and saw it whole.
    let mut tiers = Vec::new();
    for _ in 0..6 {
        let (remote, tier, topic) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("every server scores every open")
            .unwrap();
        assert_eq!(remote, c.id());
        assert_eq!(topic, ["region", "a"]);
        tiers.push(tier.unwrap_or_default());
    }
    tiers.sort();
    assert_eq!(tiers, ["basic", "basic", "gold", "gold", "gold", "gold"]);
    for s in servers {
        s.shutdown().await;
    }
}

/// Affinity streams: the best-scoring server accepts; a negative score
/// never claims.
pub async fn stream_affinity_picks_best(f: &dyn BusFactory) {
    let mut servers = Vec::new();
    for (id, score) in [("low", 0.2f32), ("high", 0.9), ("never", -1.0)] {
        let s = server(f, "stream_aff", f.server_options().server_id(id)).await;
        let me = id.to_string();
        s.stream_route(&AFFINITY_STREAM)
            .affinity(move |_open| score)
            .handle(move |st: ServerStream<Num, Num>| {
                let me = me.clone();
                async move {
                    st.send(num(0, &me)).await?;
                    st.closed().await;
                    Ok(())
                }
            })
            .await
            .unwrap();
        servers.push(s);
    }
    let c = client(f, "stream_aff").await;
    settle(f).await;
    let mut st = c.stream(&AFFINITY_STREAM, ()).await.unwrap();
    let hello = tokio::time::timeout(WAIT, st.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(hello.text, "high");
    st.close().await.unwrap();
    for s in servers {
        s.shutdown().await;
    }
}

/// Closing the client closes its streams ("stream closed"), and the server
/// is told; a stream whose context is canceled closes with "context canceled".
pub async fn stream_client_close_and_context(f: &dyn BusFactory) {
    let s = server(f, "stream_ctx", f.server_options()).await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    echo(&s, &PING_PONG, &[], done_tx).await;
    let c = client(f, "stream_ctx").await;
    settle(f).await;

    let token = psrpc::CancellationToken::new();
    let ctx = Context::new().with_cancel(token.clone());
    let mut st = c.stream(&PING_PONG, ()).context(&ctx).await.unwrap();
    token.cancel();
    let e = tokio::time::timeout(WAIT, st.recv())
        .await
        .unwrap()
        .expect_err("ended by its context");
    assert_eq!(e.message(), "context canceled");
    let server_side = recv(&mut done).await.unwrap();
    assert_eq!(server_side.message(), "context canceled");

    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    c.close();
    let end = tokio::time::timeout(WAIT, st.recv()).await.unwrap();
    assert!(matches!(end, Ok(None)), "a clean end: {end:?}");
    let server_side = recv(&mut done).await;
    assert!(server_side.is_none(), "a clean end: {server_side:?}");
    let e = c.stream(&PING_PONG, ()).await.expect_err("closed client");
    assert_eq!(e.message(), "client is closed");
    s.shutdown().await;
}

/// Open metadata reaches the server's stream context with the client's id.
pub async fn stream_metadata_and_header(f: &dyn BusFactory) {
    let s = server(f, "stream_md", f.server_options()).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    s.stream_route(&PING_PONG)
        .handle(move |st: ServerStream<Num, Num>| {
            let seen = seen_tx.clone();
            async move {
                let ctx = st.context();
                let h = ctx.incoming().expect("incoming header");
                let _ = seen.send((
                    h.remote_id.clone(),
                    ctx.metadata().get("k").cloned(),
                    ctx.info().map(|i| i.method.clone()),
                    ctx.deadline(),
                ));
                Ok(())
            }
        })
        .await
        .unwrap();
    let c = client(f, "stream_md").await;
    settle(f).await;
    let _st = c
        .stream(&PING_PONG, ())
        .metadata_entry("k", "v")
        .await
        .unwrap();
    let (remote, value, method, deadline) = recv(&mut seen).await;
    assert_eq!(remote, c.id());
    assert_eq!(value.as_deref(), Some("v"));
    assert_eq!(method.as_deref(), Some("PingPong"));
    assert_eq!(deadline, None, "a server stream has no deadline");
    s.shutdown().await;
}

/// A message that does not decode as the receiver's type closes the stream
/// with `malformed_request` (and is not acknowledged).
pub async fn stream_malformed_message_closes(f: &dyn BusFactory) {
    /// Field 2 as a number: a `Num`'s text (a string) does not decode as it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Wrong {
        #[prost(int64, tag = "2")]
        x: i64,
    }
    /// `PingPong` as a server that expects `Wrong` sees it.
    static WRONG: Method<Wrong, Num> = Method::queue("PingPong");
    let s = server(f, "stream_bad", f.server_options()).await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    s.stream_route(&WRONG)
        .handle(move |mut st: ServerStream<Num, Wrong>| {
            let done = done_tx.clone();
            async move {
                let end = loop {
                    match st.recv().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                };
                let _ = done.send(end);
                Ok(())
            }
        })
        .await
        .unwrap();
    let c = client(f, "stream_bad").await;
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    let e = st
        .send_timeout(num(1, "not a number"), Duration::from_secs(2))
        .await
        .expect_err("not acknowledged");
    assert_eq!(e.code(), ErrorCode::MalformedRequest, "{e}");
    let server_side = recv(&mut done).await.unwrap();
    assert_eq!(server_side.code(), ErrorCode::MalformedRequest);
    let e = tokio::time::timeout(WAIT, st.recv())
        .await
        .unwrap()
        .expect_err("ended by the malformed message");
    assert_eq!(e.code(), ErrorCode::MalformedRequest);
    s.shutdown().await;
}

/// Many streams at once on one client and server, each with its own traffic.
pub async fn stream_many_concurrent(f: &dyn BusFactory) {
    let s = server(f, "stream_many", f.server_options()).await;
    let (done_tx, _done) = mpsc::unbounded_channel();
    echo(&s, &PING_PONG, &[], done_tx).await;
    let c = client(f, "stream_many").await;
    settle(f).await;
    let tasks: Vec<_> = (0..32)
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut st = c.stream(&PING_PONG, ()).await?;
                for i in 0..20 {
                    st.send(num(k * 100 + i, "")).await?;
                    let m = st
                        .next()
                        .await
                        .unwrap_or_else(|| Err(Error::new(ErrorCode::DataLoss, "ended")))?;
                    assert_eq!(m.n, k * 100 + i);
                }
                st.close().await
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("in time")
            .expect("task")
            .expect("stream");
    }
    s.shutdown().await;
}
