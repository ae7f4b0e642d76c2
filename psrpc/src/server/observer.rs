//! [`RequestObserver`]: what a server tells of the requests it reads.

use std::time::Duration;

use super::{ClaimOutcome, Core};
use crate::info::RpcInfo;

/// Sees the requests (and stream opens) a server reads off the bus. Every
/// method is called on the bus's delivery path or a request's task: it must
/// return quickly and never block. A server without observers pays one
/// emptiness check per event.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request was read off the bus (before the expiry check).
    fn on_request_received(&self, _info: &RpcInfo) {}
    /// A request arrived after its expiry, `late_by` late; it is dropped.
    fn on_request_expired(&self, _info: &RpcInfo, _late_by: Duration) {}
    /// This server's claim for a request settled, `wait` after the bid was
    /// sent (zero for [`ClaimOutcome::Skipped`]). Not called when the
    /// server did not bid (negative affinity) or the bid was not sent.
    fn on_claim(&self, _info: &RpcInfo, _outcome: ClaimOutcome, _wait: Duration) {}
}

impl Core {
    pub(super) fn observe(&self, f: impl Fn(&dyn RequestObserver)) {
        for o in self.observers.iter() {
            f(&**o);
        }
    }
}
