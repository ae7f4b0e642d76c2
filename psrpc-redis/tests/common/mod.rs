//! A real `redis-server` on a free loopback port, for tests.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop (and when the test process
/// exits, even if this is never dropped: the shell wrapping it kills it once
/// our end of its stdin closes).
pub struct RedisServer {
    pub port: u16,
    extra: Vec<String>,
    child: Option<(Child, ChildStdin)>,
}

fn check_installed() {
    if let Err(e) = Command::new("redis-server").arg("--version").output()
        && e.kind() == std::io::ErrorKind::NotFound
    {
        panic!(
            "redis-server not found: install it with `apt-get install redis-server` or run scripts/test"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A server with default options.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra command-line options (e.g. `--requirepass pw`).
    pub fn start_with(extra: &[&str]) -> Self {
        check_installed();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                extra: extra.clone(),
                child: None,
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
            .arg(r#"redis-server "$@" >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid; wait $pid"#)
            .arg("sh")
            .args(&args)
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
