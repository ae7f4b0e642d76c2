//! The handler table: registering, installing and deregistering handlers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RpcServer;
use crate::bus::{Handler, HandlerSubscription, MessageBus};
use crate::channels::{self, Channel};
use crate::error::{Error, ErrorCode, Result};
use crate::info::{MethodInfo, RpcInfo};
use crate::method::Method;
use crate::stream::{self, CloseReason, StreamTable};
use crate::topic::Topic;

pub(super) struct HandlerEntry {
    pub(super) stop: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) requests: HandlerSubscription,
    pub(super) claims: Option<HandlerSubscription>,
    /// A stream handler's open streams.
    pub(super) streams: Option<Arc<StreamTable>>,
}

/// A handler being registered, before its subscriptions exist.
pub(super) struct HandlerParts {
    pub(super) key: String,
    pub(super) stop: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) streams: Option<Arc<StreamTable>>,
}

impl HandlerEntry {
    /// Stops taking requests and closes every open stream with `unavailable`
    /// "EOF" (for `reason`); returns the publishes of the close messages.
    pub(super) fn stop(
        &self,
        reason: CloseReason,
    ) -> Vec<futures::future::BoxFuture<'static, Result<()>>> {
        self.stop.cancel();
        match &self.streams {
            Some(t) => stream::close_all(t, &Error::stream_eof(), reason),
            None => Vec::new(),
        }
    }
}

impl RpcServer {
    /// Tells discovery of a registration.
    pub(super) fn discovered(&self, method: &MethodInfo, topic: &[String], stream: bool) {
        if let Some(d) = &self.inner.discovery {
            d.registered(&self.inner.core.bus, method, topic, stream);
        }
    }

    pub(super) fn rpc_info(&self, method: &MethodInfo, topic: &[String]) -> Arc<RpcInfo> {
        Arc::new(RpcInfo {
            service: self.inner.core.service.clone(),
            method: method.name.to_string(),
            topic: topic.to_vec(),
            multi: method.multi,
        })
    }

    /// Subscribes a reserved handler's channel (and its claim-response
    /// channel for claimed methods) and installs it.
    pub(super) async fn subscribe_method(
        &self,
        method: &MethodInfo,
        topic: &[String],
        ch: &Channel,
        queue: bool,
        on_message: Handler,
        parts: HandlerParts,
    ) -> Result<()> {
        let core = &self.inner.core;
        let size = self.inner.opts.channel_size;
        let subscribed = async {
            let requests = core
                .bus
                .subscribe_handler(ch, size, queue, on_message)
                .await?;
            let claims = if method.require_claim {
                let ch = channels::claim_response_channel(&core.service, &method.name, topic);
                // Only servers that hear every request can be too late for
                // the decision; a queue member hears only its own requests.
                let remember = !queue;
                let (core, name) = (core.clone(), ch.legacy.clone());
                let on_claim: Handler =
                    Arc::new(move |bytes| core.on_claim_response(|| name.clone(), bytes, remember));
                // Inline: a claim response is looked up and handed on (a
                // won claim starts its request's task), and every server
                // of the method hears every one.
                Some(
                    self.inner
                        .core
                        .bus
                        .subscribe_inline(&ch, size, on_claim)
                        .await?,
                )
            } else {
                None
            };
            Ok::<_, Error>((requests, claims))
        }
        .await;
        let (requests, claims) = match subscribed {
            Ok(s) => s,
            Err(e) => {
                self.unreserve(&parts.key);
                return Err(e);
            }
        };
        let entry = HandlerEntry {
            stop: parts.stop,
            tracker: parts.tracker,
            requests,
            claims,
            streams: parts.streams,
        };
        self.install(&parts.key, entry);
        Ok(())
    }

    /// Stops serving `method` on `topic`, without waiting for its in-flight
    /// requests (like [`kill`](Self::kill), for one handler). Unknown
    /// handlers are ignored.
    pub fn deregister<Req, Res>(&self, method: &Method<Req, Res>, topic: impl Into<Topic>) {
        self.deregister_name(method.name(), topic.into().parts());
    }

    /// [`deregister`](Self::deregister) by wire name.
    pub(crate) fn deregister_name(&self, method: &str, topic: &[String]) {
        if let Some(d) = &self.inner.discovery {
            d.deregistered(method, topic);
        }
        let key = channels::handler_key(method, topic);
        let entry = {
            let mut hs = self
                .inner
                .handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match hs.get(&key) {
                Some(Some(_)) => hs.remove(&key).flatten(),
                _ => None,
            }
        };
        if let Some(e) = entry {
            for f in e.stop(CloseReason::Deregistered) {
                stream::spawn_publish(f);
            }
        }
    }

    pub(super) fn close_all(&self) -> Vec<HandlerEntry> {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(d) = &self.inner.discovery {
            d.stop();
        }
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hs.drain().filter_map(|(_, e)| e).collect()
    }

    /// Claims `(method, topic)` in the handler table before subscribing, so
    /// two registrations cannot race.
    pub(super) fn reserve(&self, method: &str, topic: &[String]) -> Result<String> {
        let key = channels::handler_key(method, topic);
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(Error::server_closed());
        }
        if hs.contains_key(&key) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                "handler already exists",
            ));
        }
        hs.insert(key.clone(), None);
        Ok(key)
    }

    pub(super) fn unreserve(&self, key: &str) {
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if matches!(hs.get(key), Some(None)) {
            hs.remove(key);
        }
    }

    pub(super) fn install(&self, key: &str, entry: HandlerEntry) {
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Shut down (or deregistered) while subscribing: stop at once.
        if self.is_closed() || !matches!(hs.get(key), Some(None)) {
            drop(hs);
            entry.stop.cancel();
            return;
        }
        hs.insert(key.to_owned(), Some(entry));
    }
}
