//! How a server tells its interceptors of the requests it reads off the
//! bus (`ServerInterceptor::request_received` and the like).

use super::Core;
use crate::interceptor::ServerInterceptor;

impl Core {
    /// Tells the interceptors of a bus event. A server without
    /// interceptors pays one emptiness check per event.
    pub(super) fn observe(&self, f: impl Fn(&dyn ServerInterceptor)) {
        for i in self.interceptors.iter() {
            f(&**i);
        }
    }
}
