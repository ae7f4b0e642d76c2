//! The errors of the Redis bus, each keeping the `redis` error it comes from.

use redis::RedisError;

/// What went wrong in the Redis bus: building it (URL, connection,
/// authentication) or using it (a lost connection, a closed bus).
///
/// Every variant caused by Redis keeps the [`RedisError`] as its
/// [`source`](std::error::Error::source). Converted into a
/// [`psrpc::Error`] (with `?` or [`From`]) it becomes that error's source in
/// turn, so the whole chain survives; [`Error::code`] is the psrpc code it
/// gets.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// redis' URL parser refused the URL (`invalid_argument`).
    #[error("redis: invalid URL: {source}")]
    InvalidUrl {
        /// The parser's error.
        #[source]
        source: RedisError,
    },
    /// A cluster bus was asked for with no node (`invalid_argument`).
    #[error("redis: no cluster node given")]
    NoClusterNode,
    /// The server could not be reached, refused the credentials or did not
    /// answer `PING` (`unavailable`).
    #[error("redis: cannot connect: {source}")]
    Connect {
        /// The connection's error.
        #[source]
        source: RedisError,
    },
    /// The pub/sub connection could not be opened or checked
    /// (`unavailable`).
    #[error("redis: cannot open the pub/sub connection: {source}")]
    PubSub {
        /// The connection's error.
        #[source]
        source: RedisError,
    },
    /// Redis answered `SUBSCRIBE` or `UNSUBSCRIBE` with an error, or the
    /// connection failed meanwhile (`unavailable`).
    #[error("redis: {command} {channel} failed: {source}")]
    Subscribe {
        /// `SUBSCRIBE` or `UNSUBSCRIBE`.
        command: &'static str,
        /// The Redis channel.
        channel: String,
        /// Redis' error.
        #[source]
        source: RedisError,
    },
    /// Redis did not acknowledge a `SUBSCRIBE` in time (`unavailable`).
    #[error("redis: SUBSCRIBE {channel} not acknowledged in time")]
    SubscribeTimeout {
        /// The Redis channel.
        channel: String,
    },
    /// A command failed (`unavailable`).
    #[error("redis: {command} failed: {source}")]
    Command {
        /// The command.
        command: &'static str,
        /// Redis' error.
        #[source]
        source: RedisError,
    },
    /// The pub/sub connection ended (`unavailable`).
    #[error("redis: pub/sub connection lost")]
    ConnectionLost,
    /// The pub/sub connection is down and the bus is reconnecting: nothing
    /// is sent meanwhile (`unavailable`).
    #[error("redis: bus disconnected (reconnecting): message not sent: {cause}")]
    Disconnected {
        /// Why the connection is down (the last error seen, an [`Error`]).
        #[source]
        cause: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The publish queue stayed full: Redis does not take the messages
    /// (`unavailable`).
    #[error("redis: publish queue full (is Redis reachable?)")]
    QueueFull,
    /// The bus was closed ([`RedisBus::close`](crate::RedisBus::close)) or
    /// its tasks are gone (`unavailable`, as psrpc's own closed bus).
    #[error("redis: bus closed")]
    Closed,
}

impl Error {
    /// The psrpc code this error gets as a [`psrpc::Error`]: `invalid_argument`
    /// for bad input, `unavailable` for everything else (reaching Redis, a
    /// closed bus).
    pub fn code(&self) -> psrpc::ErrorCode {
        match self {
            Error::InvalidUrl { .. } | Error::NoClusterNode => psrpc::ErrorCode::InvalidArgument,
            _ => psrpc::ErrorCode::Unavailable,
        }
    }

    /// The Redis error at the root of this one, if any.
    pub fn redis_error(&self) -> Option<&RedisError> {
        match self {
            Error::InvalidUrl { source }
            | Error::Connect { source }
            | Error::PubSub { source }
            | Error::Subscribe { source, .. }
            | Error::Command { source, .. } => Some(source),
            Error::Disconnected { cause } => {
                cause.downcast_ref::<Error>().and_then(Error::redis_error)
            }
            _ => None,
        }
    }
}

impl From<Error> for psrpc::Error {
    fn from(e: Error) -> Self {
        psrpc::Error::wrap(e.code(), e)
    }
}

/// Whether `e` means the connection it came from is unusable.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
}
