//! The scheduler example (Greenlight's scheduler) as server, client or both.
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;

use psrpc_examples::cli::{self, Role};
use psrpc_examples::scheduler::{self, ClientConfig, InstanceConfig};
use psrpc_examples::{BoxError, Narrator, bus};

const USAGE: &str = "\
Greenlight's scheduler: one instance owns the network's registry, every
instance runs nodes; Schedule places a node on the instance with the most
free capacity (affinity routing); signers attach with a bidirectional stream.

usage: scheduler [--bus URL] [--role server|client|both] [options]

  --bus URL          local (default; --role both only), redis://host:port, nats://host:port
  --role ROLE        server: one scheduler instance, until Ctrl-C;
                     client: the user scenario (needs 3 free slots), then exit;
                     both (default): three instances and the scenario
  --network NAME     the network (default regtest)
server options:
  --instance NAME    instance name (default sched-a)
  --capacity N       how many nodes it runs (default 2)
  --registry         this instance owns the network's registry (start exactly one)
client options:
  --instances N      how many instances to expect (default: those answering in 500ms)";

async fn run(args: cli::Args) -> Result<(), BoxError> {
    let role = args.role()?;
    cli::check_role_bus(role, args.bus())?;
    let bus = bus::connect(args.bus()).await?;
    let n = Narrator::new("scheduler");
    let network: String = args.value("network", "regtest".to_owned())?;
    match role {
        Role::Server => {
            let config = InstanceConfig {
                name: args.value("instance", "sched-a".to_owned())?,
                network,
                capacity: args.value("capacity", 2)?,
                registry: args.flag("registry"),
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
                args.bus()
            ));
            psrpc_examples::until_ctrl_c().await;
            i.shutdown().await;
        }
        Role::Client => {
            let config = ClientConfig {
                network,
                instances: args.value("instances", 0)?,
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
    cli::run(
        USAGE,
        &["network", "instance", "capacity", "instances"],
        &["registry"],
        run,
    )
}
