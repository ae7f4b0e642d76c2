//! Runs the four example services, servers and clients, on one bus (the
//! in-process local bus by default) and prints what happens in each.
//!
//! ```text
//! cargo run -p psrpc-examples [-- --bus local|redis://host:port|nats://host:port] [--hold]
//! ```
// The scenario futures nest deeply (bus connection, scenario, calls):
// the default limit of the trait solver is too low for their Send check.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;

use psrpc_examples::{BoxError, Narrator, bus, cli, htlc, reservation, scheduler, websocket};

/// Runs the four example services (reservation, htlc, scheduler, websocket),
/// servers and clients, on one bus, and prints what happens in each.
#[derive(Debug, Parser)]
#[command(name = "psrpc-examples", mut_arg("bus", |a| a.help(BUS_HELP)))]
struct Args {
    #[command(flatten)]
    bus: cli::Bus,
    /// Where the websocket gateway listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Keep the websocket node and gateway running at the end, to open the
    /// page in a browser (until Ctrl-C).
    #[arg(long)]
    hold: bool,
}

const BUS_HELP: &str = "local, redis://host:port or nats://host:port";

fn heading(n: usize, title: &str) {
    println!("\n== {n}. {title} ==");
}

async fn run(args: Args) -> Result<(), BoxError> {
    let url = args.bus.url;
    let bus = bus::connect(&url).await?;
    println!("psrpc examples on the {url} bus");

    heading(
        1,
        "reservation: Loop servers push reservation offers over psrpc streams",
    );
    let n = Narrator::new("reservation");
    let r = reservation::run_both(bus.clone(), &Default::default(), &n).await?;
    n.say(format!(
        "ok: {} clients got {} offers each; RESERVATION_NONE -> {}, version 7 -> {}",
        r.client.clients.len(),
        r.client.clients[0].offers.len(),
        r.client.refused_none.code().as_str(),
        r.client.refused_unknown.code().as_str()
    ));

    heading(
        2,
        "htlc: router nodes publish HTLC events, every subscriber sees every event",
    );
    let n = Narrator::new("htlc");
    let h = htlc::run_both(bus.clone(), &Default::default(), &n).await?;
    n.say(format!(
        "ok: {} subscribers agree on {} HTLCs: {} msat fees earned",
        h.stats.len(),
        h.htlcs,
        h.stats[0].fees_earned_msat
    ));

    heading(
        3,
        "scheduler: registry, challenges, affinity placement and the signer stream",
    );
    let n = Narrator::new("scheduler");
    let s = scheduler::run_both(bus.clone(), &n).await?;
    n.say(format!(
        "ok: {} nodes placed by affinity, {} bad calls rejected with the right code",
        s.placements.len(),
        s.errors.len()
    ));

    heading(
        4,
        "websocket: replies arrive later as events, bridged to a WebSocket",
    );
    let n = Narrator::new("websocket");
    let (w, gateway, node) = websocket::run_both(bus.clone(), &args.listen, &n).await?;
    n.say(format!(
        "ok: {} messages answered, each reply seen on psrpc and on the WebSocket; {} bad sends rejected",
        w.exchanges.len(),
        w.errors.len()
    ));
    println!("\nall four scenarios passed");
    if args.hold {
        println!(
            "the websocket page is at {} (Ctrl-C to stop)",
            gateway.url()
        );
        if !bus::is_local(&url) {
            println!(
                "send messages from another process with\n  \
                 cargo run -p psrpc-examples --bin websocket -- --bus {url} --role client"
            );
        }
        psrpc_examples::until_ctrl_c().await;
    }
    gateway.stop();
    node.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    cli::run(run)
}
