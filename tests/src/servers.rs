//! Real `redis-server` and `nats-server` processes on free loopback ports,
//! for the tests of every crate (the buses' own tests and the examples').
//!
//! Each runs under a small shell that kills it when its stdin closes, so a
//! server is gone when it is dropped and when the test process exits, even
//! if it was kept in a static. A missing binary fails the test with how to
//! install it; nothing is ever skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child process, killed on drop (and when the test process
/// exits, even if this is never dropped: the shell wrapping it kills it once
/// our end of its stdin closes).
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    extra: Vec<String>,
    child: Option<(Child, ChildStdin)>,
    /// A scratch directory the wrapping shell removes once the server is
    /// gone (servers kept in statics are never dropped).
    scratch: Option<std::path::PathBuf>,
}

/// Panics with how to install `redis-server` when it is missing.
pub fn check_redis_installed() {
    if let Err(e) = Command::new("redis-server").arg("--version").output()
        && e.kind() == std::io::ErrorKind::NotFound
    {
        panic!(
            "redis-server not found: install it with `apt-get install redis-server` or run scripts/test"
        );
    }
}

impl RedisServer {
    /// A server with default options.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra command-line options (e.g. `--requirepass pw`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(extra, None)
    }

    /// A server with extra options whose scratch directory `scratch` is
    /// removed once it is gone.
    pub fn start_in(extra: &[&str], scratch: Option<std::path::PathBuf>) -> Self {
        check_redis_installed();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                extra: extra.clone(),
                child: None,
                scratch: scratch.clone(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid; wait $pid; [ -z "$PSRPC_SCRATCH" ] || rm -rf "$PSRPC_SCRATCH""#)
            .arg("sh")
            .args(&args)
            .env("PSRPC_SCRATCH", self.scratch.as_deref().unwrap_or("".as_ref()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().unwrap();
        self.child = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 64];
                if c.write_all(b"PING\r\n").is_ok() && matches!(c.read(&mut buf), Ok(n) if n > 0) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same options.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not restart");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const MISSING: &str =
    "nats-server not found: install it with `apt-get install nats-server` or run scripts/test";

/// The `nats-server` binary (Debian installs it in /usr/sbin).
pub fn nats_binary() -> &'static str {
    static BIN: OnceLock<&'static str> = OnceLock::new();
    BIN.get_or_init(|| {
        for b in [
            "nats-server",
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
        ] {
            if Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
            {
                return b;
            }
        }
        panic!("{MISSING}");
    })
}

/// A `nats-server` child process, killed on drop.
///
/// It runs under a small shell that kills it when its stdin closes, so a
/// server kept in a static (never dropped) still goes when the test process
/// exits.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// The monitoring (HTTP) port.
    pub monitor: u16,
    extra: Vec<String>,
}

impl NatsServer {
    /// A server on a free loopback port with extra arguments.
    pub fn start(extra: &[&str]) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            monitor: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = nats_binary();
        let port = self.port.to_string();
        let monitor = self.monitor.to_string();
        let child = Command::new("sh")
            .arg("-c")
            .arg("\"$@\" & p=$!; read x; kill $p; wait $p")
            .arg("sh")
            .arg(bin)
            .args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor])
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nats-server exited at start: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }

    /// Stops and starts the server again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// GET of a monitoring endpoint (`/subsz?subs=1`), body only.
    pub fn monitor_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server that can be taken away and brought back on the same port.
pub trait Restart {
    /// Kills the server and waits until it is gone.
    fn stop(&mut self);
    /// Starts it again on the same port with the same options.
    fn restart(&mut self);
}

impl Restart for RedisServer {
    fn stop(&mut self) {
        RedisServer::stop(self)
    }
    fn restart(&mut self) {
        RedisServer::restart(self)
    }
}

impl Restart for NatsServer {
    fn stop(&mut self) {
        NatsServer::stop(self)
    }
    fn restart(&mut self) {
        NatsServer::restart(self)
    }
}
