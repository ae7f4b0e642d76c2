//! Test helpers: real `redis-server` and `nats-server` processes on free
//! loopback ports (psrpc-tests' launchers), the example binaries as child processes, and headless Chromium
//! driven over the DevTools protocol.

#![allow(dead_code, unreachable_pub)]

pub mod chromium;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use psrpc_tests::servers::{NatsServer, RedisServer, free_port};

/// A `redis-server` on a free port.
pub fn redis() -> RedisServer {
    RedisServer::start()
}

/// A `nats-server` on a free port.
pub fn nats() -> NatsServer {
    NatsServer::start(&[])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    /// How many of the two readers (stdout, stderr) reached the end.
    done: usize,
}

/// One of the example binaries, run as a child process; its output
/// (stdout and stderr) is collected line by line. Killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
}

impl Proc {
    /// Starts `bin` with `args`.
    pub fn spawn(bin: &str, args: &[&str]) -> Proc {
        let name = format!(
            "{} {}",
            std::path::Path::new(bin)
                .file_name()
                .unwrap()
                .to_string_lossy(),
            args.join(" ")
        );
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out: Arc<(Mutex<Output>, Condvar)> = Arc::default();
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ];
        for r in readers {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    lock(&out.0).lines.push(line);
                    out.1.notify_all();
                }
                lock(&out.0).done += 1;
                out.1.notify_all();
            });
        }
        Proc { name, child, out }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        lock(&self.out.0).lines.join("\n")
    }

    /// Waits for a line containing `needle`; panics with the output after
    /// `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.out.0);
        loop {
            if let Some(l) = g.lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: no line with `{needle}` within {timeout:?}; output:\n{}",
                self.name,
                g.lines.join("\n")
            );
            g = self
                .out
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything it printed, once both of its pipes reached their end
    /// (call after it exited).
    fn drained_output(&self) -> String {
        let (lock, cv) = &*self.out;
        let mut g = self::lock(lock);
        while g.done < 2 {
            g = cv
                .wait_timeout(g, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        g.lines.join("\n")
    }

    /// Waits for the process to exit with success (panics with its output
    /// otherwise) and returns its output.
    pub fn success(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = self.drained_output();
                assert!(status.success(), "{} failed ({status}):\n{out}", self.name);
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and returns its exit code and output.
    pub fn exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.drained_output());
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
