//! The HTLC events example (LND's SubscribeHtlcEvents) as server, client or
//! both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use psrpc_examples::cli::{self, Role};
use psrpc_examples::htlc::{self, ClientConfig, Router};
use psrpc_examples::{BoxError, Narrator, bus};

/// LND's HTLC events: a router node publishes its HTLC events on a psrpc
/// fan-out subscription; every subscriber sees every event and aggregates
/// them.
#[derive(Debug, Parser)]
#[command(name = "htlc", mut_arg("role", |a| cli::role_arg(a, cli::SERVICE_ROLES, ROLE_HELP)))]
struct Args {
    #[command(flatten)]
    common: cli::Common,
    /// The router node.
    #[arg(long, value_name = "NAME", default_value = "alice")]
    node: String,
    #[command(flatten, next_help_heading = "Server options")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Client options")]
    client: ClientArgs,
}

/// What the router node does.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Time between rounds of traffic.
    #[arg(long, value_name = "TIME", value_parser = cli::parse_duration, default_value = "200ms")]
    interval: Duration,
    /// Stop publishing after N rounds [default: never].
    #[arg(long, value_name = "N")]
    rounds: Option<u64>,
}

/// What the subscribers do.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Subscribers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    subscribers: usize,
    /// HTLCs each follows to the end, a multiple of 5.
    #[arg(long, value_name = "N", default_value_t = 2 * htlc::HTLCS_PER_ROUND)]
    htlcs: u64,
    /// How long to wait for them.
    #[arg(long, value_name = "TIME", value_parser = cli::parse_duration, default_value = "20s")]
    timeout: Duration,
}

const ROLE_HELP: &str = "\
server: a router node publishing traffic until Ctrl-C;
client: subscribers that aggregate, check and exit;
both: routers alice and bob and the subscribers";

async fn run(args: Args) -> Result<(), BoxError> {
    let role = args.common.role;
    cli::check_role_bus(role, args.common.bus())?;
    let bus = bus::connect(args.common.bus()).await?;
    let n = Narrator::new("htlc");
    let client = ClientConfig {
        node: args.node,
        subscribers: args.client.subscribers,
        htlcs: args.client.htlcs,
        timeout: args.client.timeout,
    };
    match role {
        Role::Server => {
            let ServerArgs { interval, rounds } = args.server;
            let router = Router::start(bus, &client.node).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let traffic = router.spawn_traffic(interval, rounds, stop.clone());
            n.say(format!(
                "READY router {} publishes a round of {} HTLCs every {interval:?} on {}",
                router.name(),
                htlc::HTLCS_PER_ROUND,
                args.common.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            traffic.await??;
            n.say(format!(
                "router {} published {} rounds",
                router.name(),
                router.rounds()
            ));
            router.shutdown().await;
        }
        Role::Client => {
            let r = htlc::run_clients(bus, &client, &n).await?;
            n.say(format!("ok: {} subscribers agree", r.stats.len()));
        }
        Role::Both => {
            htlc::run_both(bus, &client, &n).await?;
            n.say("ok");
        }
        Role::Gateway => return Err("htlc has no gateway role".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    cli::run(run)
}
