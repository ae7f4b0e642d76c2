//! The scheduler example (Greenlight's scheduler) as server, client or both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;
use psrpc_examples::cli::{self, Role};
use psrpc_examples::scheduler::{self, ClientConfig, InstanceConfig};
use psrpc_examples::{BoxError, Narrator, bus};

/// Greenlight's scheduler: one instance owns the network's registry, every
/// instance runs nodes; Schedule places a node on the instance with the most
/// free capacity (affinity routing); signers attach with a bidirectional
/// stream.
#[derive(Debug, Parser)]
#[command(name = "scheduler", mut_arg("role", |a| cli::role_arg(a, cli::SERVICE_ROLES, ROLE_HELP)))]
struct Args {
    #[command(flatten)]
    common: cli::Common,
    /// The network.
    #[arg(long, value_name = "NAME", default_value = "regtest")]
    network: String,
    #[command(flatten, next_help_heading = "Server options")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Client options")]
    client: ClientArgs,
}

/// What a scheduler instance does.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Instance name.
    #[arg(long, value_name = "NAME", default_value = "sched-a")]
    instance: String,
    /// How many nodes it runs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    capacity: u32,
    /// This instance owns the network's registry (start exactly one).
    #[arg(long)]
    registry: bool,
}

/// What the user scenario expects.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// How many instances to expect [default: those answering in 500ms].
    #[arg(long, value_name = "N")]
    instances: Option<usize>,
}

const ROLE_HELP: &str = "\
server: one scheduler instance, until Ctrl-C;
client: the user scenario (needs 3 free slots), then exit;
both: three instances and the scenario";

async fn run(args: Args) -> Result<(), BoxError> {
    let role = args.common.role;
    cli::check_role_bus(role, args.common.bus())?;
    let bus = bus::connect(args.common.bus()).await?;
    let n = Narrator::new("scheduler");
    let network = args.network;
    match role {
        Role::Server => {
            let config = InstanceConfig {
                name: args.server.instance,
                network,
                capacity: args.server.capacity,
                registry: args.server.registry,
            };
            let (name, capacity, registry) =
                (config.name.clone(), config.capacity, config.registry);
            let i = scheduler::start_instance(bus, config.clone(), n.clone()).await?;
            n.say(format!(
                "READY instance {name} serves {} with {capacity} slots{} on {}",
                config.network,
                if registry {
                    " and owns its registry"
                } else {
                    ""
                },
                args.common.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            i.shutdown().await;
        }
        Role::Client => {
            let config = ClientConfig {
                network,
                instances: args.client.instances.unwrap_or(0),
            };
            let r = scheduler::run_client(bus, &config, &n).await?;
            n.say(format!(
                "ok: {} placements, {} bad calls rejected",
                r.placements.len(),
                r.errors.len()
            ));
        }
        Role::Both => {
            scheduler::run_both(bus, &n).await?;
            n.say("ok");
        }
        Role::Gateway => return Err("scheduler has no gateway role".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    cli::run(run)
}
