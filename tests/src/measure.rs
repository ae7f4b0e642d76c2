//! Helpers of the measurements run as examples of the bus crates (the cost
//! of a stuck subscriber): the resident set and calls made meanwhile.

use std::time::Duration;

use psrpc::{Channel, RpcClient};

use crate::Num;
use crate::my_service::NORMAL_RPC;

/// A field of `/proc/self/status`, in kB.
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Calls `MyService.NormalRPC` until `done`, sampling the resident set: (ok, failed, peak kB).
pub async fn call_while(c: &RpcClient, mut done: impl FnMut() -> bool) -> (u64, u64, u64) {
    let (mut ok, mut failed, mut peak) = (0, 0, status_kb("VmRSS:"));
    while !done() {
        let r = c
            .unary(
                &NORMAL_RPC,
                (),
                Num {
                    n: 1,
                    text: String::new(),
                },
            )
            .timeout(Duration::from_secs(2))
            .await;
        match r {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                eprintln!("call failed: {e}");
            }
        }
        peak = peak.max(status_kb("VmRSS:"));
    }
    (ok, failed, peak)
}

/// The channel the stuck-subscriber measurements flood.
pub fn flood_channel() -> Channel {
    Channel {
        legacy: "flood".into(),
        server: "flood".into(),
        local: String::new(),
    }
}
