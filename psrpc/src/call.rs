//! [`CallOptions`]: the options of one call.

use std::time::Duration;

use crate::info::{Context, Metadata};
use crate::select::SelectionOptions;

/// Options of one call, set through the call builders.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Overrides the request timeout (may exceed the context's deadline;
    /// the request's expiry is still clamped to it).
    pub timeout: Option<Duration>,
    /// Replaces the default selection options as a whole.
    pub selection: Option<SelectionOptions>,
    /// The caller's context: deadline and cancellation.
    pub context: Context,
    /// Metadata sent with the request.
    pub metadata: Metadata,
}

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("timeout", &self.timeout)
            .field("selection", &self.selection)
            .field("context", &self.context)
            .field("metadata", &self.metadata)
            .finish()
    }
}
