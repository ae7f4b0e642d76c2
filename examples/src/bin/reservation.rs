//! The reservation example (Loop's reservation notification stream) as
//! server, client or both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::time::Duration;

use psrpc_examples::cli::{self, Role};
use psrpc_examples::reservation::{self, ClientConfig, ServerConfig};
use psrpc_examples::{BoxError, Narrator, bus};

const USAGE: &str = "\
Loop's reservation notifications: servers push reservation offers to the
clients that open a notification stream.

usage: reservation [--bus URL] [--role server|client|both] [options]

  --bus URL          local (default; --role both only), redis://host:port, nats://host:port
  --role ROLE        server: serve until Ctrl-C; client: run the clients and exit;
                     both (default): two servers and the clients in this process
server options:
  --name NAME        server name (default loop-a)
  --interval TIME    time between offers (default 100ms)
client options:
  --clients N        clients listening at once (default 2)
  --offers N         offers each client takes (default 3)";

async fn run(args: cli::Args) -> Result<(), BoxError> {
    let role = args.role()?;
    cli::check_role_bus(role, args.bus())?;
    let bus = bus::connect(args.bus()).await?;
    let n = Narrator::new("reservation");
    let client = ClientConfig {
        clients: args.value("clients", 2)?,
        offers: args.value("offers", 3)?,
    };
    match role {
        Role::Server => {
            let config = ServerConfig {
                name: args.value("name", "loop-a".to_owned())?,
                interval: args.duration("interval", Duration::from_millis(100))?,
                ..Default::default()
            };
            let s = reservation::serve(bus, config, n.clone()).await?;
            n.say(format!(
                "READY server {} (key {}) serves ReservationService on {}",
                s.desk.name(),
                hex::encode(&s.desk.server_key()[..4]),
                args.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            s.server.shutdown().await;
        }
        Role::Client => {
            let r = reservation::run_clients(bus, &client, &n).await?;
            n.say(format!("ok: {} clients served", r.clients.len()));
        }
        Role::Both => {
            reservation::run_both(bus, &client, &n).await?;
            n.say("ok");
        }
        Role::Gateway => return Err("reservation has no gateway role".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    cli::run(USAGE, &["name", "interval", "clients", "offers"], &[], run)
}
