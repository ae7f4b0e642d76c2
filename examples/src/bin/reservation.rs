//! The reservation example (Loop's reservation notification stream) as
//! server, client or both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use psrpc_examples::cli::{self, Role};
use psrpc_examples::reservation::{self, ClientConfig, ServerConfig};
use psrpc_examples::{BoxError, Narrator, bus};

/// Loop's reservation notifications: servers push reservation offers to the
/// clients that open a notification stream.
#[derive(Debug, Parser)]
#[command(name = "reservation", mut_arg("role", |a| cli::role_arg(a, cli::SERVICE_ROLES, ROLE_HELP)))]
struct Args {
    #[command(flatten)]
    common: cli::Common,
    #[command(flatten, next_help_heading = "Server options")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Client options")]
    client: ClientArgs,
}

/// What a server does.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Server name.
    #[arg(long, value_name = "NAME", default_value = "loop-a")]
    name: String,
    /// Time between offers.
    #[arg(long, value_name = "TIME", value_parser = cli::parse_duration, default_value = "100ms")]
    interval: Duration,
}

/// What the clients do.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Clients listening at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    clients: usize,
    /// Offers each client takes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    offers: usize,
}

const ROLE_HELP: &str = "\
server: serve until Ctrl-C;
client: run the clients and exit;
both: two servers and the clients in this process";

async fn run(args: Args) -> Result<(), BoxError> {
    let role = args.common.role;
    cli::check_role_bus(role, args.common.bus())?;
    let bus = bus::connect(args.common.bus()).await?;
    let n = Narrator::new("reservation");
    let client = ClientConfig {
        clients: args.client.clients,
        offers: args.client.offers,
    };
    match role {
        Role::Server => {
            let config = ServerConfig {
                name: args.server.name,
                interval: args.server.interval,
                ..Default::default()
            };
            let s = reservation::serve(bus, config, n.clone()).await?;
            n.say(format!(
                "READY server {} (key {}) serves ReservationService on {}",
                s.desk.name(),
                hex::encode(&s.desk.server_key()[..4]),
                args.common.bus()
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
    cli::run(run)
}
