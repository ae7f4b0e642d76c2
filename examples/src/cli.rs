//! The command line of the binaries: `--bus URL --role ROLE` and
//! service-specific `--key value` options.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use crate::BoxError;

/// Which side of a service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        f.write_str(match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Both => "both",
            Role::Gateway => "gateway",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            "both" => Ok(Role::Both),
            "gateway" => Ok(Role::Gateway),
            _ => Err(format!(
                "unknown role `{s}`: use server, client or both (or gateway for websocket)"
            )),
        }
    }
}

/// Parsed `--key value` options.
#[derive(Debug, Clone, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
    help: bool,
}

impl Args {
    /// Parses `args` (without the program name): `--key value`,
    /// `--key=value`, and the value-less `flags`. Keys must be `--bus`,
    /// `--role` or one of `options`; `--help`/`-h` asks for the usage.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        options: &[&str],
        flags: &[&str],
    ) -> Result<Args, String> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                out.help = true;
                continue;
            }
            let Some(key) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument `{arg}`"));
            };
            let (key, inline) = match key.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (key.to_owned(), None),
            };
            if flags.contains(&key.as_str()) {
                if inline.is_some() {
                    return Err(format!("--{key} takes no value"));
                }
                out.values.insert(key, String::new());
            } else if key == "bus" || key == "role" || options.contains(&key.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("--{key} needs a value"))?,
                };
                out.values.insert(key, value);
            } else {
                return Err(format!("unknown option `--{key}`"));
            }
        }
        Ok(out)
    }

    /// Whether `--help` was given.
    pub fn help(&self) -> bool {
        self.help
    }

    /// The bus URL (`--bus`, default `local`).
    pub fn bus(&self) -> &str {
        self.get("bus").unwrap_or("local")
    }

    /// The role (`--role`, default `both`).
    pub fn role(&self) -> Result<Role, String> {
        self.get("role").unwrap_or("both").parse()
    }

    /// The raw value of `--key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether the flag `--key` was given.
    pub fn flag(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The value of `--key` parsed as `T`, or `default`.
    pub fn value<T: FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{key} {v}: {e}")),
        }
    }

    /// The value of `--key` as a duration (`250ms`, `2s`, `1m`), or `default`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| format!("--{key} {v}: {e}")),
        }
    }
}

/// Parses `250ms`, `2s` or `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a number with a unit: 250ms, 2s, 1m".to_owned())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(60 * n)),
        _ => Err("expected a unit: ms, s or m".to_owned()),
    }
}

/// Runs a binary: parses the arguments (printing `usage` on `--help` or a
/// mistake), sets up logging (`RUST_LOG`, default `warn`) and a tokio
/// runtime, and runs `main`. Exit codes: 0 on success, 1 when `main` fails,
/// 2 for a usage error.
pub fn run<F, Fut>(usage: &str, options: &[&str], flags: &[&str], main: F) -> ExitCode
where
    F: FnOnce(Args) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let args = match Args::parse(std::env::args().skip(1), options, flags) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    if args.help() {
        println!("{usage}");
        return ExitCode::SUCCESS;
    }
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
    use super::*;

    fn parse(a: &[&str]) -> Result<Args, String> {
        Args::parse(a.iter().map(|s| s.to_string()), &["interval"], &["hold"])
    }

    #[test]
    fn options_and_flags() {
        let a = parse(&[
            "--bus",
            "nats://x:1",
            "--role=server",
            "--interval",
            "5ms",
            "--hold",
        ])
        .unwrap();
        assert_eq!(a.bus(), "nats://x:1");
        assert_eq!(a.role().unwrap(), Role::Server);
        assert_eq!(
            a.duration("interval", Duration::ZERO).unwrap(),
            Duration::from_millis(5)
        );
        assert!(a.flag("hold"));
        assert_eq!(parse(&[]).unwrap().bus(), "local");
        assert!(parse(&["--nope", "1"]).is_err());
        assert!(parse(&["--interval"]).is_err());
        assert!(parse(&["--role", "king"]).unwrap().role().is_err());
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    }
}
