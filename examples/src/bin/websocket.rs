//! The websocket example (Impervious' websocket feed) as node, gateway,
//! client or all of them.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use psrpc_examples::cli::{self, Role};
use psrpc_examples::websocket::{self, ClientConfig, Gateway};
use psrpc_examples::{BoxError, Narrator, bus};

/// Impervious' websocket feed: sending a message returns its id at once; the
/// reply arrives later as an event on a psrpc subscription, which a gateway
/// bridges to a WebSocket (GET /v1/subscribe) and a page listing the events
/// (GET /).
#[derive(Debug, Parser)]
#[command(name = "websocket", mut_arg("role", |a| cli::role_arg(a, ROLES, ROLE_HELP)))]
struct Args {
    #[command(flatten)]
    common: cli::Common,
    /// Gateway address [default: 127.0.0.1:8080; 127.0.0.1:0 with both].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Client: also read the replies from this WebSocket
    /// (e.g. ws://127.0.0.1:8080/v1/subscribe).
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// Client: how long to wait for the replies.
    #[arg(long, value_name = "TIME", value_parser = cli::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Both: keep the node and gateway running after the client.
    #[arg(long)]
    hold: bool,
}

const ROLES: &[Role] = &[Role::Server, Role::Gateway, Role::Client, Role::Both];

const ROLE_HELP: &str = "\
server: the node (Messaging, publishes events) until Ctrl-C;
gateway: the HTTP/WebSocket gateway until Ctrl-C;
client: send messages, wait for the replies, exit;
both: node, gateway and client in this process";

async fn run(args: Args) -> Result<(), BoxError> {
    let role = args.common.role;
    cli::check_role_bus(role, args.common.bus())?;
    let bus = bus::connect(args.common.bus()).await?;
    let n = Narrator::new("websocket");
    match role {
        Role::Server => {
            let node = websocket::serve_node(bus, n.clone()).await?;
            n.say(format!(
                "READY node {}… serves Messaging and publishes its events on {}",
                &node.node.pubkey()[..12],
                args.common.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            node.shutdown().await;
        }
        Role::Gateway => {
            let listen = args.listen.as_deref().unwrap_or("127.0.0.1:8080");
            let g = Gateway::start(bus, listen, n.clone()).await?;
            n.say(format!(
                "READY gateway: page {} WebSocket {}",
                g.url(),
                g.ws_url()
            ));
            psrpc_examples::until_ctrl_c().await;
            g.stop();
        }
        Role::Client => {
            let config = ClientConfig {
                gateway: args.gateway,
                timeout: args.timeout,
            };
            let r = websocket::run_client(bus, &config, &n).await?;
            n.say(format!("ok: {} replies", r.exchanges.len()));
        }
        Role::Both => {
            let listen = args.listen.as_deref().unwrap_or("127.0.0.1:0");
            let (_, gateway, node) = websocket::run_both(bus, listen, &n).await?;
            n.say("ok");
            if args.hold {
                n.say(format!("open {} (Ctrl-C to stop)", gateway.url()));
                psrpc_examples::until_ctrl_c().await;
            }
            gateway.stop();
            node.shutdown().await;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    cli::run(run)
}
