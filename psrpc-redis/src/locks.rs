//! The Go-compatible queue lock: a queue message is taken by the bus that
//! wins `SET <base64(sha256(payload))> <random> EX 5 NX`; the locks of the
//! messages read together go as one pipeline.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use sha2::{Digest, Sha256};

use crate::error::is_connection_error;
use crate::topology::{BACKOFF_MIN, Managed};

/// Most queue locks in one pipeline.
pub(crate) const LOCK_BATCH: usize = 256;
/// Queue-lock pipelines in flight per bus; the reader stops reading beyond.
pub(crate) const LOCK_BATCHES_IN_FLIGHT: usize = 64;
const LOCK_RETRIES: u32 = 3;

/// The Go queue lock key of a payload: base64 (standard, padded) of its SHA-256.
pub fn queue_lock_key(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(payload))
}

/// Writes the arguments of `SET` for the queue lock of `payload` into
/// `cmd`: the key (written from a buffer on the stack), a random value, `EX
/// 5 NX`.
fn lock_command(cmd: &mut redis::Cmd, payload: &[u8]) {
    let mut key = [0u8; 44];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(Sha256::digest(payload), &mut key)
        .expect("base64 of 32 bytes is 44 bytes");
    cmd.arg(&key[..n])
        .arg(random_int())
        .arg("EX")
        .arg(5)
        .arg("NX");
}

fn random_int() -> i64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (std::collections::hash_map::RandomState::new().hash_one(n) >> 1) as i64
}

/// The connection the queue locks are taken on.
#[derive(Clone)]
pub(crate) enum Locks {
    Managed(Arc<Managed>),
    Cluster(ClusterConnection),
}

impl Locks {
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Locks::Managed(m) => m.query(cmd).await,
            Locks::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// Takes the Go queue locks of `payloads`: for each, true if this bus
    /// won it. One pipeline on a single connection; in a cluster, where the
    /// keys live on different masters, one command each, all at once.
    pub(crate) async fn take(&self, payloads: &[Bytes], drops: &psrpc::drops::Drops) -> Vec<bool> {
        // The commands are written once, straight into the pipeline (in a
        // cluster, one command each), and sent again as they are on a retry.
        let mut pipe = redis::pipe();
        let mut cmds: Vec<redis::Cmd> = Vec::new();
        for p in payloads {
            let mut cmd = redis::cmd("SET");
            lock_command(&mut cmd, p);
            match self {
                Locks::Managed(_) => {
                    pipe.add_command(cmd);
                }
                Locks::Cluster(_) => cmds.push(cmd),
            }
        }
        let mut attempt = 0;
        loop {
            let r: redis::RedisResult<Vec<Option<String>>> = match self {
                Locks::Managed(m) => m.query(&pipe).await,
                Locks::Cluster(c) => futures::future::join_all(cmds.iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Option<String>>(&mut c).await }
                }))
                .await
                .into_iter()
                .collect(),
            };
            match r {
                Ok(won) => return won.iter().map(Option::is_some).collect(),
                // Locks are safe to ask again after a connection error.
                Err(e) if attempt < LOCK_RETRIES && is_connection_error(&e) => {
                    attempt += 1;
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
                Err(e) => {
                    drops.add(
                        psrpc::drops::DropReason::Broker,
                        payloads.len() as u64,
                        "(queue locks)",
                        &format_args!("queue lock failed: {e}"),
                    );
                    return vec![false; payloads.len()];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command written for a lock is Go's: `SET <queue_lock_key> <int> EX 5 NX`.
    #[test]
    fn lock_command_is_gos() {
        let payload = b"some request envelope";
        let mut cmd = redis::cmd("SET");
        lock_command(&mut cmd, payload);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(args.len(), 6, "{args:?}");
        assert_eq!(args[0], b"SET");
        assert_eq!(args[1], queue_lock_key(payload).into_bytes());
        assert!(
            std::str::from_utf8(&args[2])
                .unwrap()
                .parse::<i64>()
                .unwrap()
                >= 0
        );
        assert_eq!(args[3..], [b"EX".to_vec(), b"5".to_vec(), b"NX".to_vec()]);
    }
}
