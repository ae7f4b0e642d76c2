//! The example nats-server authorization of the security docs
//! (`docs/security/nats-server.conf`) on a real nats-server: the client
//! user calls `Greeter`, and can neither serve it nor answer another
//! client's calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc::{Context, ErrorCode, RpcClient, RpcServer};
use psrpc_nats::NatsBus;
use psrpc_tests::Num;
use psrpc_tests::security;
use psrpc_tests::servers::NatsServer;

fn config() -> String {
    format!(
        "{}/../docs/security/nats-server.conf",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn url(nats: &NatsServer, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@127.0.0.1:{}", nats.port)
}

async fn connect(url: &str) -> DynBus {
    Arc::new(NatsBus::connect(url).await.expect("connect"))
}

/// A plain NATS connection as the client user that records the errors
/// the server sends it.
async fn spy(nats: &NatsServer) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(
        "greeter-client".into(),
        "client-secret".into(),
    )
    .event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                seen.lock().unwrap().push(e.to_string());
            }
        }
    })
    .connect(format!("127.0.0.1:{}", nats.port))
    .await
    .expect("the client user connects");
    (client, errors)
}

/// Waits until `errors` holds a permission violation naming `subject`.
async fn refused(errors: &Mutex<Vec<String>>, subject: &str) -> String {
    let find = || {
        errors
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.contains("Permissions Violation") && e.contains(subject))
            .cloned()
    };
    psrpc_tests::eventually(
        &format!("a permission violation for {subject}"),
        Duration::from_secs(20),
        || find().is_some(),
    )
    .await;
    find().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_user_calls_but_cannot_serve() {
    let nats = NatsServer::start(&["-c", &config()]);
    let server_url = url(&nats, "greeter-server", "server-secret");
    let client_url = url(&nats, "greeter-client", "client-secret");

    // Calls and streams work between the two users.
    let server = security::serve(connect(&server_url).await)
        .await
        .expect("the server user serves");
    security::call_and_chat(connect(&client_url).await).await;

    // The client user may not subscribe to the service's request subjects,
    // nor publish on another client's response subject: nats-server
    // refuses both with a permission violation.
    let (raw, errors) = spy(&nats).await;
    let _sub = raw.subscribe("SRV.Greeter.Q").await.unwrap();
    raw.publish("CLI.Greeter.CLI_other.RES", "forged".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    eprintln!("{}", refused(&errors, "SRV.Greeter.Q").await);
    eprintln!("{}", refused(&errors, "CLI.Greeter.CLI_other.RES").await);

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
        .topic(&["rogue".to_owned()])
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

    // No anonymous access.
    assert!(NatsBus::connect(&nats.url()).await.is_err());
    server.shutdown().await;
}
