//! A real `redis-server` on a free loopback port, for tests.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub use psrpc_tests::servers::{RedisServer, check_redis_installed as check_installed, free_port};

/// A Redis Cluster of `n` masters (no replicas) on loopback, each node in a
/// scratch directory of its own; ready (all slots covered) when returned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dirs: Vec<std::path::PathBuf>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        check_installed();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = std::env::temp_dir().join(format!(
                "psrpc-redis-cluster-{}-{}-{i}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).expect("scratch directory");
            let bus_port = free_port().to_string();
            let node = RedisServer::start_in(
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port,
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    dir.to_str().unwrap(),
                ],
                // Removed by the shell once the node is gone (also when the
                // cluster, kept in a static, is never dropped).
                Some(dir.clone()),
            );
            nodes.push(node);
            dirs.push(dir);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli not found: install it with `apt-get install redis-tools`");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the redis cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes, dirs }
    }

    /// The node URLs, starting with node `first` (the one a bus made with
    /// them publishes and subscribes on).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n).map(|i| self.nodes[(first + i) % n].url()).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A Sentinel (`redis-server <conf> --sentinel`) watching the master at
/// `master_port` under the name `mymaster`, quorum 1, down after 1 s.
pub struct Sentinel {
    pub port: u16,
    child: Option<(Child, ChildStdin)>,
    dir: std::path::PathBuf,
}

impl Sentinel {
    pub fn start(master_port: u16) -> Sentinel {
        check_installed();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "psrpc-redis-sentinel-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$1" --sentinel >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid; wait $pid"#)
            .arg("sh")
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().unwrap();
        let s = Sentinel {
            port,
            child: Some((child, stdin)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis sentinel did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against the sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli not found: install it with `apt-get install redis-tools`");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p <port> <args>`.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli not found: install it with `apt-get install redis-tools`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
