//! Picking a bus by URL: `local`, `redis://host:port` or `nats://host:port`.

use std::sync::Arc;

use psrpc::bus::DynBus;
use psrpc::{Error, ErrorCode, LocalBus};

/// Connects to the bus at `url`:
///
/// * `local`: a new in-process [`LocalBus`] (servers and clients must share
///   it, so it only works within one process);
/// * `redis://[:password@]host:port[/db]`: a [`psrpc_redis::RedisBus`];
/// * `nats://host:port`: a [`psrpc_nats::NatsBus`].
///
/// Fails with `invalid_argument` for any other URL and with `unavailable`
/// when the server cannot be reached.
pub async fn connect(url: &str) -> psrpc::Result<DynBus> {
    if url == "local" {
        Ok(Arc::new(LocalBus::new()))
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(psrpc_redis::RedisBus::connect(url).await?))
    } else if url.starts_with("nats://") {
        Ok(Arc::new(psrpc_nats::NatsBus::connect(url).await?))
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("unknown bus `{url}`: use local, redis://host:port or nats://host:port"),
        ))
    }
}

/// Whether `url` names the in-process bus (servers and clients must then
/// run in one process).
pub fn is_local(url: &str) -> bool {
    url == "local"
}
