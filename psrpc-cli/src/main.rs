//! `psrpc`: the command line for a psrpc bus (Redis or NATS). Call any
//! method, subscribe to and publish updates, open streams, watch all psrpc
//! traffic live, and list and describe the services on the bus.
//!
//! See the crate README for a session against the example services.

// The bus crates' futures nest deeply.
#![recursion_limit = "256"]
// A binary: `pub` marks what its modules share.
#![allow(unreachable_pub)]

mod commands;
mod discovery;
mod error;
mod json;
mod rt;
mod schema;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::{CliError, EXIT_CODES_HELP};

/// The command line for a psrpc bus: call, subscribe, publish, stream, watch,
/// list and describe services on Redis or NATS.
#[derive(Debug, Parser)]
#[command(name = "psrpc", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options of every subcommand.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The bus: redis://HOST:PORT, rediss://..., nats://HOST:PORT.
    #[arg(long, env = "PSRPC_BUS", global = true)]
    pub bus: Option<String>,
    /// A channel prefix shared with the services (the bus's `with_prefix`).
    #[arg(long, env = "PSRPC_PREFIX", default_value = "", global = true)]
    pub prefix: String,
    /// Proto files describing the services (repeatable). Without it, the
    /// services' own description is asked for (discovery).
    #[arg(long, global = true)]
    pub proto: Vec<PathBuf>,
    /// Import directories for --proto (repeatable; default: each file's own
    /// directory). psrpc's options.proto is built in.
    #[arg(short = 'I', long = "import-path", global = true)]
    pub import_path: Vec<PathBuf>,
    /// How long to wait for the bus to answer at connect.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// Say more: request ids, answering servers, times.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Calls a unary or multi method with a JSON request (argument or stdin).
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --bus redis://127.0.0.1:6379 --proto bench.proto call Bench.Unary '{\"seq\":1,\"text\":\"hi\"}'\n",
        "  echo '{}' | psrpc call Bench.Multi --timeout 500ms        # one line per answering server\n",
        "  psrpc call Bench.TopicUnary --topic t1 '{\"seq\":2}'\n",
        "  psrpc call Rooms.Join --topic region=eu --topic room=42 '{}'\n\n",
        "Exit codes: 0 ok, 2 bad input, 3 bad proto, 4 bus unreachable, 5 timeout,\n",
        "6 no server (unavailable), 7 error from the server, 8 canceled."
    ))]
    Call(commands::CallArgs),
    /// Prints the updates of a subscription method, one JSON line each.
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --proto bench.proto subscribe Bench.Broadcast --topic t1\n",
        "  psrpc subscribe BenchEvents.Events            # watches, takes nothing from the queue\n",
        "  psrpc subscribe BenchEvents.Events --queue    # joins the queue as a consumer"
    ))]
    Subscribe(commands::SubscribeArgs),
    /// Publishes one update (JSON argument or stdin lines) of a subscription method.
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --proto bench.proto publish Bench.Broadcast --topic t1 '{\"seq\":1,\"text\":\"hello\"}'\n",
        "  cat events.jsonl | psrpc publish BenchEvents.Events"
    ))]
    Publish(commands::PublishArgs),
    /// Opens a stream: JSON lines from stdin are sent, received messages
    /// printed; EOF closes the stream.
    #[command(after_help = concat!(
        "Example:\n",
        "  printf '{\"seq\":1}\\n{\"seq\":2}\\n' | psrpc --proto bench.proto stream Bench.Echo\n\n",
        "A close from the server is printed on stderr with its code; the exit code\n",
        "follows it (6 unavailable, 7 other errors, 8 canceled)."
    ))]
    Stream(commands::StreamArgs),
    /// Taps all psrpc traffic on the bus and decodes every message (never publishes).
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --bus nats://127.0.0.1:4222 --proto bench.proto watch\n",
        "  psrpc watch --service Bench --errors-only\n",
        "  psrpc watch --summary       # calls, error rates, latency p50/p99 per method, every second"
    ))]
    Watch(watch::WatchArgs),
    /// Lists the servers on the bus, grouped by service (discovery).
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --bus redis://127.0.0.1:6379 list\n",
        "  psrpc list --passive 10      # also peers that do not answer discovery (Go servers)"
    ))]
    List(discovery::ListArgs),
    /// Prints a service's methods and messages as proto text.
    #[command(after_help = concat!(
        "Examples:\n",
        "  psrpc --bus redis://127.0.0.1:6379 describe Bench\n",
        "  psrpc --proto bench.proto describe Bench"
    ))]
    Describe(discovery::DescribeArgs),
}

/// Parses `1.5s`, `200ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 3s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "us" => n / 1e6,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(async move {
        match cli.command {
            Command::Call(a) => commands::call(&cli.global, a).await,
            Command::Subscribe(a) => commands::subscribe(&cli.global, a).await,
            Command::Publish(a) => commands::publish(&cli.global, a).await,
            Command::Stream(a) => commands::stream(&cli.global, a).await,
            Command::Watch(a) => watch::run(&cli.global, a).await,
            Command::List(a) => discovery::list(&cli.global, a).await,
            Command::Describe(a) => discovery::describe(&cli.global, a).await,
        }
    });
    // Do not wait for the bus connections' tasks.
    rt.shutdown_background();
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints a failure on stderr.
pub fn report(e: &CliError) {
    eprintln!("{e}");
}
