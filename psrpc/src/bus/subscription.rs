//! What a subscriber holds: a [`RawSubscription`] (a buffer it reads), or a
//! [`Handler`] kept alive by a [`HandlerSubscription`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Result;

/// Receives the messages of a handler subscription.
pub type Handler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Keeps a handler subscription alive; dropping it unsubscribes.
#[must_use = "dropping a handler subscription unsubscribes"]
pub struct HandlerSubscription {
    _guard: Box<dyn Send + Sync>,
}

impl HandlerSubscription {
    /// A subscription that ends when `guard` is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        HandlerSubscription {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for HandlerSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerSubscription")
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Closer = Box<dyn FnOnce() + Send + Sync>;

/// The receiving end of a bus subscription: raw `Msg` bytes, in the order
/// the bus delivered them. Dropping it (or [`RawSubscription::close`])
/// unsubscribes.
#[must_use = "dropping a subscription unsubscribes"]
pub struct RawSubscription {
    rx: mpsc::Receiver<Bytes>,
    closer: Option<Closer>,
    closed: bool,
}

impl RawSubscription {
    /// A subscription reading from `rx`; `on_close` runs once when it is
    /// closed or dropped (a bus unsubscribes there).
    pub fn new(rx: mpsc::Receiver<Bytes>, on_close: impl FnOnce() + Send + Sync + 'static) -> Self {
        RawSubscription {
            rx,
            closer: Some(Box::new(on_close)),
            closed: false,
        }
    }

    /// The next message; `None` once the subscription is closed.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if self.closed {
            return None;
        }
        self.rx.recv().await
    }

    /// The next message if one is buffered. `Err(Disconnected)` once closed.
    pub fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        if self.closed {
            return Err(mpsc::error::TryRecvError::Disconnected);
        }
        self.rx.try_recv()
    }

    /// Unsubscribes. Messages still buffered are discarded; reads return `None`.
    pub fn close(&mut self) {
        self.closed = true;
        self.rx.close();
        if let Some(c) = self.closer.take() {
            c();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many messages are buffered, waiting to be read.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is buffered.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The most messages this subscription ever buffers: what arrives while
    /// it holds that many is dropped for it.
    pub fn capacity(&self) -> usize {
        self.rx.max_capacity()
    }
}

impl Drop for RawSubscription {
    fn drop(&mut self) {
        if let Some(c) = self.closer.take() {
            c();
        }
    }
}

impl futures::Stream for RawSubscription {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Bytes>> {
        if self.closed {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for RawSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSubscription")
            .field("closed", &self.closed)
            .finish()
    }
}
