//! The errors of the NATS bus, keeping async-nats' error as their source.

use std::time::Duration;

use psrpc::ErrorCode;

/// What went wrong in the NATS bus. Each error keeps the async-nats error
/// that caused it as its [source](std::error::Error::source); its text
/// includes that source's, because a [`psrpc::Error`] made from it (with
/// `From`, which keeps the whole chain) shows only the outermost text.
/// [`code`](Error::code) is the psrpc error code it becomes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server URL that async-nats' parser refuses. The URL itself is not
    /// repeated (it may hold a password); `index` is its position (from 0)
    /// in the list given.
    #[error("nats: invalid server URL (number {index} of the list): {source}")]
    InvalidUrl {
        /// The position of the URL in the list given, from 0.
        index: usize,
        /// async-nats' (or the URL parser's) complaint.
        #[source]
        source: std::io::Error,
    },
    /// No server URL was given.
    #[error("nats: no server URL given")]
    NoServer,
    /// No server could be reached, or the server refused the credentials.
    #[error("nats: cannot connect to {servers}: {source}")]
    Connect {
        /// The servers tried, without credentials.
        servers: String,
        /// async-nats' error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// async-nats refused a subscription.
    #[error("nats: subscribe {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// async-nats' error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The server did not confirm a subscription (see the
    /// [crate docs](crate#deliberate-choices), "in effect when `subscribe`
    /// returns").
    #[error("nats: subscribe {subject}: {source}")]
    Unconfirmed {
        /// The subject.
        subject: String,
        /// Why the confirmation did not come.
        #[source]
        source: BarrierError,
    },
    /// A publish that async-nats refused.
    #[error("nats: publish: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// async-nats' queue of outgoing commands stayed full (it is not drained
    /// while reconnecting).
    #[error("nats: publish queue full for {0:?} (is NATS reachable?)")]
    PublishQueueFull(Duration),
    /// The connection to NATS is down (async-nats is reconnecting).
    #[error(
        "nats: bus disconnected (the connection to NATS is down, reconnecting): message not sent"
    )]
    Disconnected,
    /// The bus was closed with [`NatsBus::close`](crate::NatsBus::close).
    #[error("nats: bus closed (NatsBus::close was called)")]
    Closed,
    /// Writing out what was published failed.
    #[error("nats: flush: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    /// The presence probe of [`psrpc::MessageBus::listeners`] failed.
    #[error("nats: presence probe failed: {0}")]
    Presence(#[source] async_nats::RequestError),
    /// A subject nats-server would not take from this bus (see the
    /// [crate docs](crate#limits)).
    #[error("nats: subject {why}: {subject}")]
    InvalidSubject {
        /// The subject, shortened if long.
        subject: String,
        /// What is wrong with it.
        why: String,
    },
    /// A message larger than the bus's maximum.
    #[error(
        "nats: message of {size} bytes is larger than the bus's maximum of {max} bytes (max_payload)"
    )]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The bus's maximum ([`NatsBus::max_message_size`](crate::NatsBus::max_message_size)).
        max: usize,
    },
}

/// Why the server did not confirm that it has a subscription.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// The private inbox the confirmation comes back on could not be
    /// subscribed.
    #[error("cannot subscribe the confirmation inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The confirmation could not be published.
    #[error("cannot publish the confirmation: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// The connection was closed meanwhile.
    #[error("connection closed")]
    Closed,
    /// No confirmation within this time.
    #[error("not confirmed by the server within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The psrpc error code this error becomes: `unavailable` for a
    /// connection that is down, lost or closed (and for refused
    /// credentials), `invalid_argument` for bad URLs and subjects,
    /// `resource_exhausted` for messages too large.
    pub fn code(&self) -> ErrorCode {
        use async_nats::PublishErrorKind as P;
        use async_nats::SubscribeErrorKind as S;
        match self {
            Error::InvalidUrl { .. } | Error::NoServer | Error::InvalidSubject { .. } => {
                ErrorCode::InvalidArgument
            }
            Error::TooLarge { .. } => ErrorCode::ResourceExhausted,
            Error::Subscribe { source, .. } => match source.kind() {
                S::InvalidSubject | S::InvalidQueueName => ErrorCode::InvalidArgument,
                _ => ErrorCode::Unavailable,
            },
            Error::Publish(e) => match e.kind() {
                P::MaxPayloadExceeded => ErrorCode::ResourceExhausted,
                P::InvalidSubject => ErrorCode::InvalidArgument,
                P::Send => ErrorCode::Unavailable,
            },
            Error::Connect { .. }
            | Error::Unconfirmed { .. }
            | Error::PublishQueueFull(_)
            | Error::Disconnected
            | Error::Closed
            | Error::Flush(_)
            | Error::Presence(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<Error> for psrpc::Error {
    /// A psrpc error with [`Error::code`], this error as its source.
    fn from(e: Error) -> psrpc::Error {
        psrpc::Error::wrap(e.code(), e)
    }
}

/// The result type of the bus's own operations.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
