//! The command line of the binaries, with `clap`: the options every binary
//! shares ([`Common`]: `--bus`, `--role`), flattened into each binary's own
//! parser, and [`run`], which parses, sets up logging and a runtime, and
//! runs the binary.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Arg, ValueEnum};

use crate::BoxError;

/// Which side of a service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The servers only; they serve until Ctrl-C.
    Server,
    /// The clients only: they run the client side of the scenario against
    /// servers running elsewhere, and exit.
    Client,
    /// Servers and clients in this process (the default).
    Both,
    /// The websocket gateway only (websocket example).
    Gateway,
}

impl Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => Ok(()),
        }
    }
}

/// The roles every service has: `server`, `client` and `both`.
pub const SERVICE_ROLES: &[Role] = &[Role::Server, Role::Client, Role::Both];

/// A value parser for `--role` that accepts only `roles`.
pub fn roles(roles: &'static [Role]) -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(roles.iter().filter_map(Role::to_possible_value))
        .try_map(|name| Role::from_str(&name, false).map_err(|e| format!("--role {name}: {e}")))
}

/// Narrows `--role` to the `roles` a binary has and gives it the binary's
/// `help`, which says what each role does there:
/// `#[command(mut_arg("role", |a| cli::role_arg(a, cli::SERVICE_ROLES, HELP)))]`.
pub fn role_arg(arg: Arg, roles: &'static [Role], help: &'static str) -> Arg {
    arg.value_parser(self::roles(roles))
        .help(help)
        .hide_possible_values(true)
}

/// `--bus`: the bus every binary runs on.
#[derive(Debug, Clone, clap::Args)]
pub struct Bus {
    /// local (in-process; --role both only), redis://host:port or nats://host:port
    #[arg(id = "bus", long = "bus", value_name = "URL", default_value = "local")]
    pub url: String,
}

/// The options every service binary shares: `--bus` and `--role`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// `--bus`.
    #[command(flatten)]
    pub bus: Bus,
    /// Which side of the service this process runs.
    #[arg(long, value_enum, value_name = "ROLE", default_value_t = Role::Both)]
    pub role: Role,
}

impl Common {
    /// The bus URL.
    pub fn bus(&self) -> &str {
        &self.bus.url
    }
}

/// Parses a duration: a whole number with the unit `ms`, `s` or `m`
/// (`250ms`, `2s`, `1m`); the value parser of every duration option.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a number with a unit: 250ms, 2s, 1m".to_owned())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| "too long".to_owned()),
        _ => Err("expected a unit: ms, s or m".to_owned()),
    }
}

/// Runs a binary: parses its arguments `A` (`--help` prints the help and
/// exits 0; a usage error prints it with a hint and exits 2), sets up
/// logging (`RUST_LOG`, default `warn`) and a tokio runtime, and runs
/// `main`: exit code 0 when it succeeds, 1 when it fails.
pub fn run<A, F, Fut>(main: F) -> ExitCode
where
    A: clap::Parser,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0, mistakes to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fails when the role needs a bus shared between processes but `bus` is
/// the in-process one.
pub fn check_role_bus(role: Role, bus: &str) -> Result<(), BoxError> {
    if role != Role::Both && crate::bus::is_local(bus) {
        return Err(format!(
            "the local bus lives inside one process: use --role both, or a shared bus \
             (--bus redis://127.0.0.1:6379 or --bus nats://127.0.0.1:4222) for --role {role}"
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// A binary's parser as the binaries write theirs.
    #[derive(Debug, Parser)]
    #[command(name = "t", mut_arg("role", |a| role_arg(a, SERVICE_ROLES, "what runs")))]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// Between rounds.
        #[arg(long, value_parser = parse_duration, default_value = "200ms")]
        interval: Duration,
        /// A flag.
        #[arg(long)]
        hold: bool,
    }

    fn parse(a: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("t").chain(a.iter().copied()))
    }

    #[test]
    fn options_and_flags() {
        Args::command().debug_assert();
        let a = parse(&[
            "--bus",
            "nats://x:1",
            "--role=server",
            "--interval",
            "5ms",
            "--hold",
        ])
        .unwrap();
        assert_eq!(a.common.bus(), "nats://x:1");
        assert_eq!(a.common.role, Role::Server);
        assert_eq!(a.interval, Duration::from_millis(5));
        assert!(a.hold);
        let d = parse(&[]).unwrap();
        assert_eq!(
            (d.common.bus(), d.common.role, d.interval, d.hold),
            ("local", Role::Both, Duration::from_millis(200), false)
        );
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            &["--nope", "1"][..],
            &["--interval"],
            &["--interval", "5"],
            &["--role", "king"],
            // Narrowed away: only the websocket binary has a gateway.
            &["--role", "gateway"],
            &["--hold=yes"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let e = parse(&["--role", "gateway"]).unwrap_err().to_string();
        assert!(e.contains("[possible values: server, client, both]"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["5", "ms", "2h", "-1s", "1.5s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_print_as_typed() {
        assert_eq!(Role::Gateway.to_string(), "gateway");
        assert_eq!(
            roles(SERVICE_ROLES)
                .parse_ref(&Args::command(), None, "both".as_ref())
                .unwrap(),
            Role::Both
        );
    }
}
