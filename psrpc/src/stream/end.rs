//! How a stream ended: every end of a stream, whatever caused it, goes
//! through one close path that reports it once, with its
//! [`CloseReason`](crate::CloseReason); a clean end is told apart here.

/// Whether `cause` is a clean close: `canceled` "stream closed", what an
/// end that closes without an error sends (Go's and this crate's alike).
pub(crate) fn is_clean(cause: &crate::Error) -> bool {
    cause.code() == crate::ErrorCode::Canceled && cause.message() == "stream closed"
}
