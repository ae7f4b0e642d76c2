//! The websocket example (Impervious' websocket feed) as node, gateway,
//! client or all of them.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::time::Duration;

use psrpc_examples::cli::{self, Role};
use psrpc_examples::websocket::{self, ClientConfig, Gateway};
use psrpc_examples::{BoxError, Narrator, bus};

const USAGE: &str = "\
Impervious' websocket feed: sending a message returns its id at once; the reply
arrives later as an event on a psrpc subscription, which a gateway bridges to
a WebSocket (GET /v1/subscribe) and a page listing the events (GET /).

usage: websocket [--bus URL] [--role server|gateway|client|both] [options]

  --bus URL          local (default; --role both only), redis://host:port, nats://host:port
  --role ROLE        server: the node (Messaging, publishes events) until Ctrl-C;
                     gateway: the HTTP/WebSocket gateway until Ctrl-C;
                     client: send messages, wait for the replies, exit;
                     both (default): node, gateway and client in this process
  --listen ADDR      gateway address (default 127.0.0.1:8080; 127.0.0.1:0 with both)
  --gateway URL      client: also read the replies from this WebSocket
                     (e.g. ws://127.0.0.1:8080/v1/subscribe)
  --timeout TIME     client: how long to wait for the replies (default 10s)
  --hold             both: keep the node and gateway running after the client";

async fn run(args: cli::Args) -> Result<(), BoxError> {
    let role = args.role()?;
    cli::check_role_bus(role, args.bus())?;
    let bus = bus::connect(args.bus()).await?;
    let n = Narrator::new("websocket");
    match role {
        Role::Server => {
            let node = websocket::serve_node(bus, n.clone()).await?;
            n.say(format!(
                "READY node {}… serves Messaging and publishes its events on {}",
                &node.node.pubkey()[..12],
                args.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            node.shutdown().await;
        }
        Role::Gateway => {
            let listen = args.get("listen").unwrap_or("127.0.0.1:8080");
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
                gateway: args.get("gateway").map(str::to_owned),
                timeout: args.duration("timeout", Duration::from_secs(10))?,
            };
            let r = websocket::run_client(bus, &config, &n).await?;
            n.say(format!("ok: {} replies", r.exchanges.len()));
        }
        Role::Both => {
            let listen = args.get("listen").unwrap_or("127.0.0.1:0");
            let (_, gateway, node) = websocket::run_both(bus, listen, &n).await?;
            n.say("ok");
            if args.flag("hold") {
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
    cli::run(USAGE, &["listen", "gateway", "timeout"], &["hold"], run)
}
