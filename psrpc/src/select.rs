//! Server selection: the client's side of the claim handshake (docs/PROTOCOL.md,
//! "Unary calls and the claim handshake").

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::wire::{ClaimRequest, Response};

/// A claim a server made for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The claiming server.
    pub server_id: String,
    /// Its affinity score.
    pub affinity: f32,
}

/// Picks the server among the collected claims when selection ends.
pub type SelectionFn = Arc<dyn Fn(&[Claim]) -> Result<String> + Send + Sync>;

/// How the client picks a server from the claims (Go `SelectionOpts`).
///
/// Setting these per call replaces the defaults as a whole, as in Go: the
/// defaults are [`SelectionOptions::affinity_defaults`] for affinity methods
/// and [`SelectionOptions::queue_defaults`] for every other claimed method.
#[derive(Clone, Default)]
pub struct SelectionOptions {
    /// If > 0, claims below this affinity are ignored (but counted).
    pub minimum_affinity: f32,
    /// If > 0, the first acceptable claim at or above this wins at once.
    pub maximum_affinity: f32,
    /// The first acceptable claim wins at once.
    pub accept_first_available: bool,
    /// Selection ends this long after it starts; zero: only the call deadline.
    pub affinity_timeout: Duration,
    /// Selection ends this long after the first acceptable claim; zero: never.
    pub short_circuit_timeout: Duration,
    /// Chooses among the acceptable claims when selection ends.
    pub selection_fn: Option<SelectionFn>,
}

impl fmt::Debug for SelectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectionOptions")
            .field("minimum_affinity", &self.minimum_affinity)
            .field("maximum_affinity", &self.maximum_affinity)
            .field("accept_first_available", &self.accept_first_available)
            .field("affinity_timeout", &self.affinity_timeout)
            .field("short_circuit_timeout", &self.short_circuit_timeout)
            .field("selection_fn", &self.selection_fn.is_some())
            .finish()
    }
}

/// Default affinity-selection timeout (Go client option `SelectionTimeout`).
pub const DEFAULT_SELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Default affinity short-circuit window.
pub const DEFAULT_SHORT_CIRCUIT: Duration = Duration::from_millis(200);

impl SelectionOptions {
    /// The Go defaults for affinity methods: end `selection_timeout` after
    /// the start, or 200 ms after the first claim, and take the best.
    pub fn affinity_defaults(selection_timeout: Duration) -> Self {
        SelectionOptions {
            affinity_timeout: selection_timeout,
            short_circuit_timeout: DEFAULT_SHORT_CIRCUIT,
            ..Default::default()
        }
    }

    /// The Go defaults for every other claimed method: the first claim wins.
    pub fn queue_defaults(selection_timeout: Duration) -> Self {
        SelectionOptions {
            affinity_timeout: selection_timeout,
            accept_first_available: true,
            ..Default::default()
        }
    }
}

/// What arrives for one pending call.
#[derive(Debug)]
pub(crate) enum Incoming {
    // Boxed: a call's buffer is allocated per call, and small slots keep it small.
    Claim(Box<ClaimRequest>),
    Response(Box<Response>),
}

impl From<ClaimRequest> for Incoming {
    fn from(c: ClaimRequest) -> Self {
        Incoming::Claim(Box::new(c))
    }
}

impl From<Response> for Incoming {
    fn from(r: Response) -> Self {
        Incoming::Response(Box::new(r))
    }
}

impl Incoming {
    /// The request this answers.
    pub(crate) fn request_id(&self) -> &str {
        match self {
            Incoming::Claim(c) => &c.request_id,
            Incoming::Response(r) => &r.request_id,
        }
    }
}

/// The outcome of selection.
#[derive(Debug)]
pub(crate) enum Selected {
    /// This server won: the caller grants it with a claim response.
    Server(String),
    /// A server announced that it handles the request (claim skip): no
    /// claim response is sent; its response follows.
    Announced(String),
    /// The response itself arrived while selecting: it is the call's result.
    Response(Box<Response>),
}

impl Selected {
    /// The chosen server, for callers that only grant (stream opens).
    pub(crate) fn server_id(self) -> Option<String> {
        match self {
            Selected::Server(id) => Some(id),
            _ => None,
        }
    }
}

/// What a call accepts during selection besides bids.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SelectFlags {
    /// Announcements (`handling`) end selection (unary calls of queue
    /// methods; elsewhere an announcement counts as an ordinary bid).
    pub(crate) announcements: bool,
    /// A successful response ends selection as the call's result (unary calls).
    pub(crate) responses: bool,
    /// An error response ends selection at once too (unary queue calls:
    /// the one server that heard the request has answered).
    pub(crate) errors_final: bool,
}

/// What a pending call receives (claims and responses, in arrival order):
/// a bounded queue with one writer (the client's router) and one reader
/// (the call). A call makes one each time, which costs one small
/// allocation here against two for a tokio channel, one of them aligned
/// to a cache line (an expensive path of the allocator).
struct CallQueue {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
}

struct QueueState {
    items: VecDeque<Incoming>,
    cap: usize,
    /// The writer is gone: once `items` is drained, the reader gets `None`.
    writer_gone: bool,
    /// The reader is gone: what is sent is dropped.
    reader_gone: bool,
}

impl CallQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pending call's queue of at most `cap` (at least 1) undelivered items:
/// its writing and reading ends.
pub(crate) fn call_queue(cap: usize) -> (CallSender, CallReceiver) {
    let q = Arc::new(CallQueue {
        state: Mutex::new(QueueState {
            items: VecDeque::new(),
            cap: cap.max(1),
            writer_gone: false,
            reader_gone: false,
        }),
        waker: AtomicWaker::new(),
    });
    (CallSender(q.clone()), CallReceiver(q))
}

/// The writing end of a [`call_queue`]; dropping it ends the queue.
pub(crate) struct CallSender(Arc<CallQueue>);

impl CallSender {
    /// Queues `ev` without waiting; gives it back when the queue is full.
    /// Once the reader is gone, `ev` is dropped.
    pub(crate) fn try_send(&self, ev: Incoming) -> std::result::Result<(), Incoming> {
        {
            let mut st = self.0.lock();
            if st.reader_gone {
                return Ok(());
            }
            if st.items.len() >= st.cap {
                return Err(ev);
            }
            st.items.push_back(ev);
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl Drop for CallSender {
    fn drop(&mut self) {
        self.0.lock().writer_gone = true;
        self.0.waker.wake();
    }
}

/// The reading end of a [`call_queue`].
pub(crate) struct CallReceiver(Arc<CallQueue>);

impl CallReceiver {
    /// The next item if there is one (`Some(None)`: the writer is gone and
    /// everything was read).
    fn try_next(&self) -> Option<Option<Incoming>> {
        let mut st = self.0.lock();
        match st.items.pop_front() {
            Some(ev) => Some(Some(ev)),
            None if st.writer_gone => Some(None),
            None => None,
        }
    }

    /// Polls for the next item; `None` once the writer is gone and
    /// everything was read.
    pub(crate) fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Incoming>> {
        if let Some(r) = self.try_next() {
            return Poll::Ready(r);
        }
        self.0.waker.register(cx.waker());
        match self.try_next() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// The next item; `None` once the writer is gone and everything was read.
    pub(crate) async fn recv(&mut self) -> Option<Incoming> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for CallReceiver {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.reader_gone = true;
        st.items.clear();
    }
}

/// Runs selection over the claims arriving on `rx` (the rules of Go's selection), ending at
/// the affinity timeout, the short-circuit timeout, `deadline` or `cancel`.
/// `Ok(None)` from `rx` (all senders gone) means the client closed.
pub(crate) async fn select_server(
    rx: &mut CallReceiver,
    opts: &SelectionOptions,
    deadline: Option<Instant>,
    cancel: Option<&tokio_util::sync::CancellationToken>,
    flags: SelectFlags,
) -> Result<Selected> {
    let start = Instant::now();
    let mut end = deadline;
    if !opts.affinity_timeout.is_zero() {
        let t = start + opts.affinity_timeout;
        end = Some(end.map_or(t, |e| e.min(t)));
    }
    let mut short_circuit_started = false;
    let mut count = 0usize;
    let mut best: Option<String> = None;
    let mut best_affinity = 0f32;
    let mut collected: Vec<Claim> = Vec::new();
    let mut remembered: Option<Error> = None;

    loop {
        let ev = tokio::select! {
            biased;
            ev = rx.recv() => ev,
            _ = sleep_until_opt(end) => break,
            _ = cancelled_opt(cancel) => break,
        };
        let claim = match ev {
            None => return Err(Error::client_closed()),
            Some(Incoming::Response(r)) => {
                // An announcement and the response travel on different
                // channels: the response may come first.
                if r.error.is_empty() {
                    if flags.responses {
                        return Ok(Selected::Response(r));
                    }
                } else if flags.errors_final {
                    return Ok(Selected::Response(r));
                } else {
                    // Expected here: malformed_request, sent before any claim.
                    remembered = Some(r.into_error());
                }
                continue;
            }
            Some(Incoming::Claim(c)) => *c,
        };
        if claim.handling && flags.announcements {
            // Not counted, and no option is consulted: the server has begun.
            return Ok(Selected::Announced(claim.server_id));
        }
        count += 1;
        let acceptable = opts.minimum_affinity <= 0.0 || claim.affinity >= opts.minimum_affinity;
        if !acceptable {
            continue;
        }
        if opts.accept_first_available
            || (opts.maximum_affinity > 0.0 && claim.affinity >= opts.maximum_affinity)
        {
            return Ok(Selected::Server(claim.server_id));
        }
        if opts.selection_fn.is_some() {
            collected.push(Claim {
                server_id: claim.server_id,
                affinity: claim.affinity,
            });
        } else if claim.affinity > best_affinity {
            // Strict '>' against an initial 0: ties keep the earliest claim,
            // and an affinity of 0 never wins (as in Go, kept: a Go client
            // decides the same way, so a score means the same to both).
            best_affinity = claim.affinity;
            best = Some(claim.server_id);
        }
        if !opts.short_circuit_timeout.is_zero() && !short_circuit_started {
            short_circuit_started = true;
            let t = Instant::now() + opts.short_circuit_timeout;
            end = Some(end.map_or(t, |e| e.min(t)));
        }
    }

    if let Some(f) = &opts.selection_fn {
        return f(&collected).map(Selected::Server);
    }
    if let Some(server_id) = best {
        return Ok(Selected::Server(server_id));
    }
    if let Some(e) = remembered {
        return Err(e);
    }
    if count > 0 {
        return Err(Error::no_servers_available(count));
    }
    // As in Go: unavailable even when the call deadline is what ended
    // selection; kept so that callers see the same code from Rust and Go.
    Err(Error::no_response())
}

pub(crate) async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn cancelled_opt(c: Option<&tokio_util::sync::CancellationToken>) {
    match c {
        Some(c) => c.cancelled().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, affinity: f32) -> Incoming {
        Incoming::Claim(Box::new(ClaimRequest {
            request_id: "1".into(),
            server_id: id.into(),
            affinity,
            handling: false,
        }))
    }

    /// Go's selection test: t=0 "1" 0.1; t=100 "2" 0.5; t=300 "3" 0.7 and "4" 0.1; t=500 "5" 0.9.
    /// The call queue: in order, bounded, the rest read after the writer
    /// left and then the end; a waiting reader is woken.
    #[tokio::test]
    async fn call_queue_order_bound_end() {
        let id = |ev: Option<Incoming>| match ev {
            Some(Incoming::Claim(c)) => c.server_id,
            other => panic!("{other:?}"),
        };
        let (tx, mut rx) = call_queue(2);
        assert!(tx.try_send(claim("a", 1.0)).is_ok());
        assert!(tx.try_send(claim("b", 1.0)).is_ok());
        assert!(tx.try_send(claim("c", 1.0)).is_err(), "over the bound");
        assert_eq!(id(rx.recv().await), "a");
        assert!(tx.try_send(claim("c", 1.0)).is_ok());
        drop(tx);
        assert_eq!(id(rx.recv().await), "b");
        assert_eq!(id(rx.recv().await), "c");
        assert!(rx.recv().await.is_none());

        let (tx, mut rx) = call_queue(1);
        let reader = tokio::spawn(async move { rx.recv().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(tx.try_send(claim("d", 1.0)).is_ok());
        assert_eq!(reader.await.unwrap(), Some(()));
        // The reader is gone: sends are dropped, never "full".
        assert!(tx.try_send(claim("e", 1.0)).is_ok());
        assert!(tx.try_send(claim("f", 1.0)).is_ok());
    }

    async fn run(opts: SelectionOptions) -> Result<String> {
        let (tx, mut rx) = call_queue(100);
        let feeder = tokio::spawn(async move {
            let _ = tx.try_send(claim("1", 0.1));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.try_send(claim("2", 0.5));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx.try_send(claim("3", 0.7));
            let _ = tx.try_send(claim("4", 0.1));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx.try_send(claim("5", 0.9));
            // keep the channel open past every selection window
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let r = select_server(&mut rx, &opts, None, None, SelectFlags::default())
            .await
            .map(|s| s.server_id().expect("a server"));
        feeder.abort();
        r
    }

    #[tokio::test(start_paused = true)]
    async fn affinity_timeline() {
        let ms = Duration::from_millis;
        let cases: Vec<(SelectionOptions, &str)> = vec![
            (
                SelectionOptions {
                    accept_first_available: true,
                    ..Default::default()
                },
                "1",
            ),
            (
                SelectionOptions {
                    accept_first_available: true,
                    minimum_affinity: 0.5,
                    ..Default::default()
                },
                "2",
            ),
            (
                SelectionOptions {
                    short_circuit_timeout: ms(150),
                    ..Default::default()
                },
                "2",
            ),
            (
                SelectionOptions {
                    minimum_affinity: 0.4,
                    short_circuit_timeout: ms(250),
                    ..Default::default()
                },
                "3",
            ),
            (
                SelectionOptions {
                    minimum_affinity: 0.3,
                    affinity_timeout: ms(250),
                    short_circuit_timeout: ms(200),
                    ..Default::default()
                },
                "2",
            ),
            (
                SelectionOptions {
                    affinity_timeout: ms(600),
                    ..Default::default()
                },
                "5",
            ),
            (
                SelectionOptions {
                    maximum_affinity: 0.6,
                    ..Default::default()
                },
                "3",
            ),
        ];
        for (opts, want) in cases {
            let dbg = format!("{opts:?}");
            assert_eq!(run(opts).await.unwrap(), want, "{dbg}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn selection_fn_and_failures() {
        let f: SelectionFn = Arc::new(|claims: &[Claim]| {
            // pick the lowest acceptable affinity
            claims
                .iter()
                .min_by(|a, b| a.affinity.total_cmp(&b.affinity))
                .map(|c| c.server_id.clone())
                .ok_or_else(Error::no_response)
        });
        let opts = SelectionOptions {
            minimum_affinity: 0.2,
            affinity_timeout: Duration::from_millis(600),
            selection_fn: Some(f),
            ..Default::default()
        };
        assert_eq!(run(opts).await.unwrap(), "2");

        // minimum not met by anyone: counted claims are reported
        let opts = SelectionOptions {
            minimum_affinity: 0.95,
            affinity_timeout: Duration::from_millis(600),
            ..Default::default()
        };
        let e = run(opts).await.unwrap_err();
        assert_eq!(e, Error::no_servers_available(5));

        // no claims at all
        let (_tx, mut rx) = call_queue(1);
        let opts = SelectionOptions::queue_defaults(DEFAULT_SELECTION_TIMEOUT);
        let e = select_server(&mut rx, &opts, None, None, SelectFlags::default())
            .await
            .err()
            .unwrap();
        assert_eq!(e, Error::no_response());

        // affinity 0 never wins with the default selector (as in Go)
        let (tx, mut rx) = call_queue(4);
        assert!(tx.try_send(claim("z", 0.0)).is_ok());
        let opts = SelectionOptions::affinity_defaults(DEFAULT_SELECTION_TIMEOUT);
        let e = select_server(&mut rx, &opts, None, None, SelectFlags::default())
            .await
            .err()
            .unwrap();
        assert_eq!(e, Error::no_servers_available(1));
    }
}
