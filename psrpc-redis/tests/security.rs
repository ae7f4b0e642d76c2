//! The example Redis ACL of the security docs (`docs/security/redis-users.acl`)
//! on a real redis-server: the client user calls `Greeter`, and can neither
//! serve it nor answer another client's calls.

use std::sync::Arc;

use std::io::{Read, Write};

use psrpc::bus::DynBus;
use psrpc::{Context, ErrorCode, RpcClient, RpcServer};
use psrpc_redis::RedisBus;
use psrpc_tests::Num;
use psrpc_tests::security;
use psrpc_tests::servers::RedisServer;

fn acl_file() -> String {
    format!(
        "{}/../docs/security/redis-users.acl",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn url(redis: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}", redis.port)
}

async fn connect(url: &str) -> DynBus {
    Arc::new(RedisBus::connect(url).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_user_calls_but_cannot_serve() {
    let redis = RedisServer::start_with(&["--aclfile", &acl_file()]);
    let server_url = url(&redis, "greeter-server", "server-secret");
    let client_url = url(&redis, "greeter-client", "client-secret");

    // Calls and streams work between the two users.
    let server = security::serve(connect(&server_url).await)
        .await
        .expect("the server user serves");
    security::call_and_chat(connect(&client_url).await).await;

    // Nor answer, or listen to, another client's calls: Redis refuses the
    // commands themselves.
    let raw = redis::Client::open(client_url.as_str()).unwrap();
    let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
    let forged: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg("Greeter|CLI_other|RES")
        .arg("forged")
        .query_async(&mut conn)
        .await;
    let e = forged.expect_err("a client user must not publish responses");
    assert!(e.to_string().contains("no permissions"), "{e}");
    // redis-rs's pub/sub connection reports a refused SUBSCRIBE as a
    // success, so ask Redis in its own protocol.
    let reply = raw_command(
        redis.port,
        &["AUTH", "greeter-client", "client-secret"],
        &["SUBSCRIBE", "Greeter|SayHello|REQ"],
    );
    assert!(reply.starts_with("-NOPERM"), "{reply}");

    // So the client user cannot serve: a server it runs on a topic nobody
    // else serves hears no request, and calls to it fail.
    let rogue = RpcServer::new(
        connect(&client_url).await,
        security::SERVICE,
        Default::default(),
    )
    .await
    .unwrap();
    let registered = rogue
        .route(&security::SAY_HELLO)
        .topic("rogue")
        .handle(|_c: Context, _r: Num| async move { Ok(Num::default()) })
        .await;
    eprintln!("registering as the client user: {registered:?}");
    let c = RpcClient::new(
        connect(&client_url).await,
        security::SERVICE,
        Default::default(),
    )
    .await
    .unwrap();
    let err = c
        .unary(&security::SAY_HELLO, vec!["rogue".into()], Num::default())
        .await
        .expect_err("nobody may serve as the client user");
    eprintln!("a call to the client user's server: {err}");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");

    // The unauthenticated default user is off.
    assert!(
        RedisBus::connect(&redis.url()).await.is_err(),
        "no anonymous access"
    );
    server.shutdown().await;
}

/// Sends `auth` then `cmd` on a fresh connection; returns the reply line to `cmd`.
fn raw_command(port: u16, auth: &[&str], cmd: &[&str]) -> String {
    fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
        out
    }
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    c.write_all(&encode(auth)).unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n", "AUTH");
    c.write_all(&encode(cmd)).unwrap();
    let n = c.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
