//! How things ended, as interceptors and metrics see them: a stream
//! ([`CloseReason`]) and a server's claim for a request ([`ClaimOutcome`]).
//! A leaf module: the stream and server runtimes report these, and the
//! interceptors receive them, without either importing the other.

/// What ended a stream, as an interceptor's `stream_close` and the metrics
/// middleware see it (once per stream end whose open they saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// This end closed it: `close()`, `close_with(..)`, or on the server the
    /// handler returned (the stream is closed with its result).
    Closed,
    /// Every handle of this end was dropped without closing it.
    Dropped,
    /// The peer closed it (cleanly, or with an error).
    Peer,
    /// The caller's context ended: its deadline passed or it was canceled
    /// (client side).
    Context,
    /// A message from the peer could not be decoded as the stream's
    /// message type.
    Malformed,
    /// The peer was gone for the liveness timeout (see
    /// [Dead peers](crate::stream#dead-peers)).
    PeerGone,
    /// The server was shut down ([`RpcServer::shutdown`](crate::RpcServer::shutdown)).
    Shutdown,
    /// The server was killed ([`RpcServer::kill`](crate::RpcServer::kill),
    /// or dropped).
    Kill,
    /// The stream's method was deregistered on the server.
    Deregistered,
    /// The client was closed ([`RpcClient::close`](crate::RpcClient::close),
    /// or dropped).
    ClientClosed,
}

impl CloseReason {
    /// A short lowercase name (`"closed"`, `"dropped"`, `"peer"`, ...), as the
    /// metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Dropped => "dropped",
            CloseReason::Peer => "peer",
            CloseReason::Context => "context",
            CloseReason::Malformed => "malformed",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Kill => "kill",
            CloseReason::Deregistered => "deregistered",
            CloseReason::ClientClosed => "client_closed",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a server's claim for a request settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The caller chose this server.
    Granted,
    /// The caller chose another server.
    LostToPeer,
    /// No decision arrived before the request expired (or the server was
    /// killed while waiting).
    TimedOut,
    /// The server announced and ran the request without a grant (claim skip).
    Skipped,
}

impl ClaimOutcome {
    /// A short stable name: `granted`, `lost_to_peer`, `timed_out`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOutcome::Granted => "granted",
            ClaimOutcome::LostToPeer => "lost_to_peer",
            ClaimOutcome::TimedOut => "timed_out",
            ClaimOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for ClaimOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
