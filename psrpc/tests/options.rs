//! `RpcClient::new` and `RpcServer::new` refuse options that cannot work
//! with `invalid_argument`, and take the defaults.

use std::time::Duration;

use psrpc::{ClientOptions, ErrorCode, LocalBus, RpcClient, RpcServer, ServerOptions};

async fn server_error(service: &str, opts: ServerOptions) -> psrpc::Error {
    RpcServer::new(LocalBus::new(), service, opts)
        .await
        .expect_err("the server is refused")
}

async fn client_error(service: &str, opts: ClientOptions) -> psrpc::Error {
    RpcClient::new(LocalBus::new(), service, opts)
        .await
        .expect_err("the client is refused")
}

#[tokio::test]
async fn server_refuses_bad_options() {
    let cases = [
        (
            "",
            ServerOptions::default(),
            "service name must not be empty",
        ),
        ("a*b", ServerOptions::default(), "'*'"),
        ("a b", ServerOptions::default(), "' '"),
        (
            "S",
            ServerOptions::default().server_id(""),
            "server id must not be empty",
        ),
        ("S", ServerOptions::default().server_id("a.b"), "'.'"),
        ("S", ServerOptions::default().server_id("a>"), "'>'"),
        (
            "S",
            ServerOptions::default().channel_size(0),
            "channel_size",
        ),
        (
            "S",
            ServerOptions::default().timeout(Duration::ZERO),
            "timeout",
        ),
    ];
    for (service, opts, says) in cases {
        let what = format!("{service:?} {opts:?}");
        let e = server_error(service, opts).await;
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{what}: {e}");
        assert!(e.message().contains(says), "{what}: {e}");
    }
}

#[tokio::test]
async fn client_refuses_bad_options() {
    let cases = [
        (
            "",
            ClientOptions::default(),
            "service name must not be empty",
        ),
        ("a>", ClientOptions::default(), "'>'"),
        (
            "S",
            ClientOptions::default().client_id(""),
            "client id must not be empty",
        ),
        ("S", ClientOptions::default().client_id("a.b"), "'.'"),
        (
            "S",
            ClientOptions::default().channel_size(0),
            "channel_size",
        ),
        (
            "S",
            ClientOptions::default().timeout(Duration::ZERO),
            "timeout",
        ),
        (
            "S",
            ClientOptions::default().selection_timeout(Duration::ZERO),
            "selection_timeout",
        ),
    ];
    for (service, opts, says) in cases {
        let what = format!("{service:?} {opts:?}");
        let e = client_error(service, opts).await;
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{what}: {e}");
        assert!(e.message().contains(says), "{what}: {e}");
    }
}

#[tokio::test]
async fn defaults_and_dotted_service_names_are_taken() {
    for service in ["S", "pkg.Service"] {
        let s = RpcServer::new(LocalBus::new(), service, ServerOptions::default())
            .await
            .expect("default server options");
        assert_eq!(s.service(), service);
        let c = RpcClient::new(LocalBus::new(), service, ClientOptions::default())
            .await
            .expect("default client options");
        assert_eq!(c.service(), service);
    }
    let server = RpcServer::new(
        LocalBus::new(),
        "S",
        ServerOptions::default().server_id("srv-1").channel_size(1),
    )
    .await
    .expect("a one-slot server");
    assert_eq!(server.id(), "srv-1");
    let client = RpcClient::new(
        LocalBus::new(),
        "S",
        ClientOptions::default()
            .client_id("cli-1")
            .channel_size(1)
            .timeout(Duration::from_millis(1)),
    )
    .await
    .expect("a one-slot client");
    assert_eq!(client.id(), "cli-1");
}
