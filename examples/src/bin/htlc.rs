//! The HTLC events example (LND's SubscribeHtlcEvents) as server, client or
//! both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use psrpc_examples::cli::{self, Role};
use psrpc_examples::htlc::{self, ClientConfig, Router};
use psrpc_examples::{BoxError, Narrator, bus};

const USAGE: &str = "\
LND's HTLC events: a router node publishes its HTLC events on a psrpc fan-out
subscription; every subscriber sees every event and aggregates them.

usage: htlc [--bus URL] [--role server|client|both] [options]

  --bus URL          local (default; --role both only), redis://host:port, nats://host:port
  --role ROLE        server: a router node publishing traffic until Ctrl-C;
                     client: subscribers that aggregate, check and exit;
                     both (default): routers alice and bob and the subscribers
  --node NAME        the router node (default alice)
server options:
  --interval TIME    time between rounds of traffic (default 200ms)
  --rounds N         stop publishing after N rounds (default: never)
client options:
  --subscribers N    subscribers (default 2)
  --htlcs N          HTLCs each follows to the end, a multiple of 5 (default 10)
  --timeout TIME     how long to wait for them (default 20s)";

async fn run(args: cli::Args) -> Result<(), BoxError> {
    let role = args.role()?;
    cli::check_role_bus(role, args.bus())?;
    let bus = bus::connect(args.bus()).await?;
    let n = Narrator::new("htlc");
    let client = ClientConfig {
        node: args.value("node", "alice".to_owned())?,
        subscribers: args.value("subscribers", 2)?,
        htlcs: args.value("htlcs", 2 * htlc::HTLCS_PER_ROUND)?,
        timeout: args.duration("timeout", Duration::from_secs(20))?,
    };
    match role {
        Role::Server => {
            let interval = args.duration("interval", Duration::from_millis(200))?;
            let rounds = match args.get("rounds") {
                Some(_) => Some(args.value("rounds", 0u64)?),
                None => None,
            };
            let router = Router::start(bus, &client.node).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let traffic = router.spawn_traffic(interval, rounds, stop.clone());
            n.say(format!(
                "READY router {} publishes a round of {} HTLCs every {interval:?} on {}",
                router.name(),
                htlc::HTLCS_PER_ROUND,
                args.bus()
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
    cli::run(
        USAGE,
        &[
            "node",
            "interval",
            "rounds",
            "subscribers",
            "htlcs",
            "timeout",
        ],
        &[],
        run,
    )
}
