//! The handles an application holds: [`ClientStream`], [`ServerStream`], and
//! the halves they split into, [`StreamSender`] and [`StreamReceiver`].

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;

use super::end::is_clean;
use super::{CloseReason, Shared};
use crate::error::{Error, Result};
use crate::info::Context;
use crate::interceptor::streams::{SendTerminal, StreamSendChain};

/// What every handle of one stream end shares: when the last one goes, the
/// stream is closed ([`CloseReason::Dropped`]). A server stream whose
/// handler has not hijacked it is left to the runtime, which closes it with
/// the handler's result.
struct Owner<R: Message + Default + Clone + 'static> {
    shared: Arc<Shared<R>>,
    /// Server side: whether the handler hijacked the stream.
    hijacked: Option<Arc<AtomicBool>>,
}

impl<R: Message + Default + Clone + 'static> Drop for Owner<R> {
    fn drop(&mut self) {
        if self
            .hijacked
            .as_ref()
            .is_none_or(|h| h.load(Ordering::Acquire))
        {
            self.shared
                .close_detached(Error::stream_closed(), CloseReason::Dropped);
        }
    }
}

/// The sending half of a stream: sends `S` (and can close the stream) while
/// another task receives. Get one with `sender()` or
/// [`split`](ClientStream::split). Cheap to clone; the stream is closed
/// once every handle of it (the stream, its halves, every clone) is
/// dropped.
#[must_use = "a stream closes when every handle of it is dropped"]
pub struct StreamSender<S, R: Message + Default + Clone + 'static> {
    shared: Arc<Shared<R>>,
    chain: Option<StreamSendChain>,
    owner: Arc<Owner<R>>,
    _s: PhantomData<fn(S)>,
}

impl<S, R: Message + Default + Clone + 'static> Clone for StreamSender<S, R> {
    fn clone(&self) -> Self {
        StreamSender {
            shared: self.shared.clone(),
            chain: self.chain.clone(),
            owner: self.owner.clone(),
            _s: PhantomData,
        }
    }
}

impl<S, R: Message + Default + Clone + 'static> std::fmt::Debug for StreamSender<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("stream_id", &self.shared.stream_id)
            .finish()
    }
}

impl<S, R> StreamSender<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    fn new(owner: Arc<Owner<R>>) -> Self {
        let shared = owner.shared.clone();
        let chain = (!shared.interceptors.is_empty())
            .then(|| {
                // The chain holds the stream weakly: a sender is not what
                // keeps it.
                let s = Arc::downgrade(&shared);
                let send: SendTerminal = Arc::new(move |msg: Bytes, t| {
                    let s = s.clone();
                    Box::pin(async move {
                        match s.upgrade() {
                            Some(s) => s.send_raw(msg, t).await,
                            None => Err(Error::stream_closed()),
                        }
                    })
                });
                shared.interceptors.send_chain(send)
            })
            .flatten();
        StreamSender {
            shared,
            chain,
            owner,
            _s: PhantomData,
        }
    }

    async fn send_opt(&self, msg: S, timeout: Option<Duration>) -> Result<()> {
        match &self.chain {
            None => {
                self.shared
                    .send_raw(Bytes::from(msg.encode_to_vec()), timeout)
                    .await
            }
            Some(chain) => {
                let msg = Bytes::from(msg.encode_to_vec());
                chain.run(&self.shared.info, msg, timeout).await
            }
        }
    }

    /// Sends `msg` and waits until the peer has accepted it, at most the
    /// stream's timeout. Fails at once with the close cause on a closed
    /// stream; `deadline_exceeded` "request timed out" when the peer does
    /// not acknowledge in time (it is gone, or its buffer is full).
    pub async fn send(&self, msg: S) -> Result<()> {
        self.send_opt(msg, None).await
    }

    /// [`send`](Self::send) with its own timeout.
    pub async fn send_timeout(&self, msg: S, timeout: Duration) -> Result<()> {
        self.send_opt(msg, Some(timeout)).await
    }

    /// Closes the stream cleanly: the peer's `recv` returns `Ok(None)`. On
    /// a stream that has ended already, sends nothing and returns why it
    /// ended as the error.
    pub async fn close(&self) -> Result<()> {
        self.close_with(Error::stream_closed()).await
    }

    /// Closes the stream with `cause`: the peer's `recv` (and this end's)
    /// returns it as the error. On a stream that has ended already, sends
    /// nothing and returns why it ended as the error.
    pub async fn close_with(&self, cause: Error) -> Result<()> {
        self.shared.close(cause, CloseReason::Closed).await
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.is_ended()
    }

    /// Resolves when the stream ends.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await
    }

    /// The stream id (`STR_...`).
    pub fn stream_id(&self) -> &str {
        &self.shared.stream_id
    }
}

/// The receiving half of a stream: receives `R`. Get it with
/// [`split`](ClientStream::split). Also a [`futures::Stream`] of
/// `Result<R>`, which ends after a clean close and yields the error once
/// before ending otherwise.
#[must_use = "a stream closes when every handle of it is dropped"]
pub struct StreamReceiver<R: Message + Default + Clone + 'static> {
    shared: Arc<Shared<R>>,
    rx: mpsc::Receiver<R>,
    /// The `futures::Stream` has yielded its end.
    ended: bool,
    _owner: Arc<Owner<R>>,
}

impl<R: Message + Default + Clone + 'static> StreamReceiver<R> {
    /// The next message from the peer. `Ok(None)` once the stream was closed
    /// cleanly (by either end's `close()`, or a Go peer closing without an
    /// error) and every message received before was read; `Err(cause)`
    /// when it ended otherwise (the peer's error, `close_with`, a
    /// shutdown, a dead peer, ...), also after every message was read.
    pub async fn recv(&mut self) -> Result<Option<R>> {
        match self.rx.recv().await {
            Some(m) => Ok(Some(m)),
            None => self.end(),
        }
    }

    /// How a drained receive buffer ends.
    fn end(&self) -> Result<Option<R>> {
        match self.shared.cause() {
            Some(cause) if !is_clean(&cause) => Err(cause),
            _ => Ok(None),
        }
    }

    /// Whether the stream has ended (messages may still be buffered).
    pub fn is_closed(&self) -> bool {
        self.shared.is_ended()
    }

    /// Resolves when the stream ends.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await
    }

    /// The stream id (`STR_...`).
    pub fn stream_id(&self) -> &str {
        &self.shared.stream_id
    }
}

impl<R: Message + Default + Clone + 'static> futures::Stream for StreamReceiver<R> {
    type Item = Result<R>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<R>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(m))),
            Poll::Ready(None) if std::mem::replace(&mut this.ended, true) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(this.end().err().map(Err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R: Message + Default + Clone + 'static> std::fmt::Debug for StreamReceiver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReceiver")
            .field("stream_id", &self.shared.stream_id)
            .finish()
    }
}

/// One end of a stream, typed: sends `S`, receives `R`.
fn halves<S, R>(
    shared: Arc<Shared<R>>,
    rx: mpsc::Receiver<R>,
    hijacked: Option<Arc<AtomicBool>>,
) -> (StreamSender<S, R>, StreamReceiver<R>)
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    let owner = Arc::new(Owner {
        shared: shared.clone(),
        hijacked,
    });
    let rx = StreamReceiver {
        shared,
        rx,
        ended: false,
        _owner: owner.clone(),
    };
    (StreamSender::new(owner), rx)
}

macro_rules! stream_methods {
    () => {
        /// Sends `msg` and waits until the peer has accepted it, at most the
        /// stream's timeout. Fails at once with the close cause on a closed
        /// stream; `deadline_exceeded` "request timed out" when the peer does
        /// not acknowledge in time (it is gone, or its buffer is full).
        pub async fn send(&self, msg: S) -> Result<()> {
            self.tx.send(msg).await
        }

        /// [`send`](Self::send) with its own timeout.
        pub async fn send_timeout(&self, msg: S, timeout: Duration) -> Result<()> {
            self.tx.send_timeout(msg, timeout).await
        }

        /// A handle to send on (and close) this stream from another task.
        pub fn sender(&self) -> StreamSender<S, R> {
            self.tx.clone()
        }

        /// Splits the stream into its sending and receiving halves, to be
        /// used from different tasks. The stream is closed once both
        /// halves (and every clone of the sender) are dropped.
        pub fn split(self) -> (StreamSender<S, R>, StreamReceiver<R>) {
            (self.tx, self.rx)
        }

        /// The next message from the peer. `Ok(None)` once the stream was
        /// closed cleanly (by either end's `close()`, or a Go peer closing
        /// without an error) and every message received before was read;
        /// `Err(cause)` when it ended otherwise (the peer's error,
        /// `close_with`, a shutdown, a dead peer, ...).
        pub async fn recv(&mut self) -> Result<Option<R>> {
            self.rx.recv().await
        }

        /// Closes the stream cleanly: the peer's `recv` returns `Ok(None)`.
        /// On a stream that has ended already, sends nothing and returns
        /// why it ended as the error.
        pub async fn close(&self) -> Result<()> {
            self.tx.close().await
        }

        /// Closes the stream with `cause`: the peer's `recv` returns it as
        /// the error. On a stream that has ended already, sends nothing and
        /// returns why it ended as the error.
        pub async fn close_with(&self, cause: Error) -> Result<()> {
            self.tx.close_with(cause).await
        }

        /// Whether the stream has ended (messages may still be buffered).
        pub fn is_closed(&self) -> bool {
            self.tx.is_closed()
        }

        /// Resolves when the stream ends.
        pub async fn closed(&self) {
            self.tx.closed().await
        }

        /// The stream's context: on the server, the incoming header and the
        /// call info; canceled when the stream ends.
        pub fn context(&self) -> &Context {
            &self.ctx
        }

        /// The stream id (`STR_...`).
        pub fn stream_id(&self) -> &str {
            self.tx.stream_id()
        }
    };
}

/// The client end of a stream: sends `S`, receives `R`. Dropping it (and
/// every handle taken from it) closes the stream.
#[must_use = "a stream closes when every handle of it is dropped"]
pub struct ClientStream<S, R: Message + Default + Clone + 'static> {
    tx: StreamSender<S, R>,
    rx: StreamReceiver<R>,
    ctx: Context,
}

impl<S, R> ClientStream<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    pub(crate) fn new(shared: Arc<Shared<R>>, rx: mpsc::Receiver<R>, ctx: Context) -> Self {
        let (tx, rx) = halves(shared, rx, None);
        ClientStream { tx, rx, ctx }
    }

    stream_methods!();
}

/// The server end of a stream: sends `S`, receives `R`. The handler owns it;
/// see the [module docs](super) for what happens when the handler returns.
pub struct ServerStream<S, R: Message + Default + Clone + 'static> {
    tx: StreamSender<S, R>,
    rx: StreamReceiver<R>,
    ctx: Context,
    hijacked: Arc<AtomicBool>,
}

impl<S, R> ServerStream<S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared<R>>,
        rx: mpsc::Receiver<R>,
        ctx: Context,
        hijacked: Arc<AtomicBool>,
    ) -> Self {
        let (tx, rx) = halves(shared, rx, Some(hijacked.clone()));
        ServerStream {
            tx,
            rx,
            ctx,
            hijacked,
        }
    }

    stream_methods!();

    /// Keeps the stream open after the handler returns: the application
    /// owns it from now on and closes it (dropping every handle of it
    /// closes it too).
    pub fn hijack(&self) {
        self.hijacked.store(true, Ordering::Release);
    }

    /// Whether [`hijack`](Self::hijack) was called.
    pub fn is_hijacked(&self) -> bool {
        self.hijacked.load(Ordering::Acquire)
    }
}

macro_rules! stream_impls {
    ($t:ident) => {
        impl<S, R> futures::Stream for $t<S, R>
        where
            S: Message + Clone + 'static,
            R: Message + Default + Clone + 'static,
        {
            type Item = Result<R>;
            fn poll_next(
                self: Pin<&mut Self>,
                cx: &mut TaskContext<'_>,
            ) -> Poll<Option<Result<R>>> {
                // Only `rx` is touched; it is `Unpin`.
                futures::Stream::poll_next(Pin::new(&mut self.get_mut().rx), cx)
            }
        }

        impl<S, R: Message + Default + Clone + 'static> std::fmt::Debug for $t<S, R> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("stream_id", &self.tx.shared.stream_id)
                    .field("info", &self.tx.shared.info)
                    .field("cause", &self.tx.shared.cause())
                    .finish()
            }
        }
    };
}

stream_impls!(ClientStream);
stream_impls!(ServerStream);
