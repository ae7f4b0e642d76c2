//! The command line, parsed by clap, and the bus it names.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Every benchmark group `--tests` can select.
pub(crate) const TESTS: [&str; 5] = ["unary", "affinity", "multi", "stream", "sub"];

/// Measures every psrpc RPC kind on a bus beside the raw floor of that bus
/// (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Parser)]
#[command(name = "psrpc-bench", version)]
pub(crate) struct Args {
    /// The bus: `local`, `redis://HOST:PORT` or `nats://HOST:PORT`.
    #[arg(long, default_value = "local")]
    pub(crate) bus: String,
    /// `all`: servers and client in one process; `server` / `client`: one
    /// side only, to run them as separate processes on a network bus.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    pub(crate) mode: Mode,
    /// Servers started.
    #[arg(long, default_value_t = 3)]
    pub(crate) servers: usize,
    /// How many servers answer a `Multi` call [default: --servers].
    #[arg(long)]
    expect: Option<usize>,
    /// Length of each row, e.g. 5s, 500ms, 1.5s, 2m (a bare number is seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Calls or streams in flight in the concurrent rows.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    conc: u32,
    /// Request payload bytes (text-like, so it compresses as real payloads do).
    #[arg(long, default_value_t = 16)]
    pub(crate) payload: usize,
    /// gzip level 1..9 of every connection's publishes (bus option,
    /// threshold 1024 B); 0 = off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub(crate) compress: u32,
    /// Comma-separated groups of rows to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "unary,affinity,multi,stream,sub",
        value_parser = TESTS
    )]
    pub(crate) tests: Vec<String>,
    /// Topic of `TopicUnary` and `Broadcast`.
    #[arg(long, default_value = "t1")]
    pub(crate) topic: String,
    /// Events per subscription burst.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    burst: u32,
    /// Server number i gets the id `PREFIX<i>`.
    #[arg(long, value_name = "PREFIX", default_value = "bench-server-")]
    pub(crate) server_id: String,
    /// The client's id.
    #[arg(long, value_name = "ID", default_value = "bench-client")]
    pub(crate) client_id: String,
    /// Also write the rows as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<String>,
    /// Install the shipped middleware on client and servers (tracing,
    /// metrics through the `metrics` facade, and recovery on servers), to
    /// compare with a run without.
    #[arg(long)]
    pub(crate) middleware: bool,
    /// Servers opt in to claim skip: queue calls take an announcement
    /// instead of the claim round trip.
    #[arg(long)]
    pub(crate) skip_claim: bool,
}

impl Args {
    /// How many servers answer a multi call.
    pub(crate) fn expect(&self) -> usize {
        self.expect.unwrap_or(self.servers)
    }

    /// Calls or streams in flight in the concurrent rows.
    pub(crate) fn conc(&self) -> usize {
        self.conc as usize
    }

    /// Events per subscription burst.
    pub(crate) fn burst(&self) -> usize {
        self.burst as usize
    }

    /// Whether the group `t` of rows runs.
    pub(crate) fn runs(&self, t: &str) -> bool {
        self.tests.iter().any(|x| x == t)
    }

    /// The checks that involve more than one option; what is wrong.
    pub(crate) fn check(&self, spec: &BusSpec) -> Result<(), String> {
        if *spec == BusSpec::Local && self.mode != Mode::All {
            return Err(format!(
                "--mode {} makes no sense with --bus local (the local bus lives in one process); use --mode all",
                if self.mode == Mode::Server {
                    "server"
                } else {
                    "client"
                }
            ));
        }
        if self.mode == Mode::All && self.expect() > self.servers {
            return Err(format!(
                "--expect {} exceeds --servers {} in all mode",
                self.expect(),
                self.servers
            ));
        }
        if self.mode != Mode::Client && self.servers == 0 {
            return Err("--servers must be at least 1 in all and server modes".into());
        }
        if self.mode == Mode::Client && self.expect() == 0 && self.runs("multi") {
            return Err("--expect must be at least 1 for the multi rows".into());
        }
        Ok(())
    }
}

/// Which sides of the benchmark the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Servers and client in one process.
    All,
    /// Servers only, until SIGTERM or SIGINT.
    Server,
    /// The client only: the rows, against servers elsewhere.
    Client,
}

/// Parses `5s`, `500ms`, `100us`, `2m`, `1.5s` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ns, us, ms, s, m, h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The bus named by `--bus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BusSpec {
    /// The in-process [`psrpc::LocalBus`].
    Local,
    /// A Redis URL.
    Redis(String),
    /// A NATS URL.
    Nats(String),
}

impl BusSpec {
    /// Reads `--bus`.
    pub(crate) fn parse(s: &str) -> Result<BusSpec, String> {
        let kind = s.split("://").next().unwrap_or_default();
        match kind {
            "local" if s == "local" => Ok(BusSpec::Local),
            "redis" | "rediss" if s.contains("://") => Ok(BusSpec::Redis(s.to_owned())),
            "nats" | "tls" if s.contains("://") => Ok(BusSpec::Nats(s.to_owned())),
            _ => Err(format!(
                "unknown bus {s:?} (local, redis://HOST:PORT, nats://HOST:PORT)"
            )),
        }
    }

    /// `local`, `redis` or `nats`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            BusSpec::Local => "local",
            BusSpec::Redis(_) => "redis",
            BusSpec::Nats(_) => "nats",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_flags() {
        let a = Args::parse_from(["psrpc-bench"]);
        assert_eq!(a.bus, "local");
        assert_eq!(a.mode, Mode::All);
        assert_eq!(
            (a.servers, a.expect(), a.conc(), a.burst()),
            (3, 3, 64, 2000)
        );
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(a.tests, TESTS.map(String::from).to_vec());
        let a = Args::parse_from([
            "psrpc-bench",
            "--bus=nats://127.0.0.1:4222",
            "--mode",
            "client",
            "--servers",
            "2",
            "--duration",
            "500ms",
            "--tests",
            "unary,sub",
            "--compress",
            "6",
            "--json",
            "out.json",
            "--middleware",
            "--skip-claim",
        ]);
        assert_eq!(a.mode, Mode::Client);
        assert_eq!(a.expect(), 2, "--expect follows --servers");
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.tests, ["unary", "sub"]);
        assert_eq!(a.compress, 6);
        assert_eq!(a.json.as_deref(), Some("out.json"));
        assert!(a.middleware && a.skip_claim);
        assert!(Args::try_parse_from(["psrpc-bench", "--tests", "unary,nope"]).is_err());
        assert!(Args::try_parse_from(["psrpc-bench", "--conc", "0"]).is_err());
        assert!(Args::try_parse_from(["psrpc-bench", "--duration", "5 parsecs"]).is_err());
    }
}
