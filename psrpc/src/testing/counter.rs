//! [`CallCounter`]: counts what a client sends and receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;

use crate::error::Result;
use crate::interceptor::{ClientCall, ClientInterceptor, Multi, Next, Replies, Unary};

/// A client interceptor that counts requests (one per unary or multi call)
/// and responses (one per unary outcome and per multi result), what Go's
/// request and response hooks are used for in tests. Install a clone: the
/// clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    requests: Arc<AtomicUsize>,
    responses: Arc<AtomicUsize>,
}

impl CallCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls sent so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Outcomes received so far: unary results and multi results, errors
    /// included.
    pub fn responses(&self) -> usize {
        self.responses.load(Ordering::SeqCst)
    }
}

impl ClientInterceptor for CallCounter {
    fn unary<'a>(&'a self, call: ClientCall, next: Next<Unary>) -> BoxFuture<'a, Result<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let res = next.run(call).await;
            self.responses.fetch_add(1, Ordering::SeqCst);
            res
        })
    }

    fn multi<'a>(&'a self, call: ClientCall, next: Next<Multi>) -> BoxFuture<'a, Result<Replies>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let responses = self.responses.clone();
        Box::pin(async move {
            let replies = next.run(call).await.inspect_err(|_| {
                responses.fetch_add(1, Ordering::SeqCst);
            })?;
            Ok(Replies::new(replies.inspect(move |_| {
                responses.fetch_add(1, Ordering::SeqCst);
            })))
        })
    }
}
