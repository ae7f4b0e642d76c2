//! The interceptors of one stream end, client or server side: the stream
//! runtime calls them without knowing which side it runs on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::call::StreamMessage;
use super::chain::{Chain, ClientSend, Next, ServerSend, Terminal};
use super::{ClientInterceptor, ServerInterceptor};
use crate::error::{Error, Result};
use crate::info::RpcInfo;
use crate::outcome::CloseReason;

/// The interceptors a stream end reports to.
#[derive(Clone)]
pub(crate) enum StreamInterceptors {
    /// A client's stream.
    Client(Chain<dyn ClientInterceptor>),
    /// A server's stream.
    Server(Chain<dyn ServerInterceptor>),
}

/// The send chain of a stream end, ending in the send itself.
#[derive(Clone)]
pub(crate) enum StreamSendChain {
    Client(Next<ClientSend>),
    Server(Next<ServerSend>),
}

/// What sends one encoded message with its timeout.
pub(crate) type SendTerminal =
    Arc<dyn Fn(Bytes, Option<Duration>) -> BoxFuture<'static, Result<()>> + Send + Sync>;

macro_rules! each {
    ($self:ident, $i:ident => $body:expr) => {
        match $self {
            StreamInterceptors::Client(chain) => {
                for $i in chain.iter() {
                    $body;
                }
            }
            StreamInterceptors::Server(chain) => {
                for $i in chain.iter() {
                    $body;
                }
            }
        }
    };
}

impl StreamInterceptors {
    /// No interceptors (a stream end made without any).
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        StreamInterceptors::Client(Arc::new([]))
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            StreamInterceptors::Client(c) => c.is_empty(),
            StreamInterceptors::Server(c) => c.is_empty(),
        }
    }

    pub(crate) fn open(&self, info: &RpcInfo) {
        each!(self, i => i.stream_open(info));
    }

    /// The first rejection of `msg` by an interceptor, if any.
    pub(crate) fn recv(&self, info: &RpcInfo, msg: &Bytes) -> Result<()> {
        each!(self, i => i.stream_recv(info, msg)?);
        Ok(())
    }

    pub(crate) fn close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
        each!(self, i => i.stream_close(info, reason, cause));
    }

    /// The send chain ending in `send`; `None` without interceptors.
    pub(crate) fn send_chain(&self, send: SendTerminal) -> Option<StreamSendChain> {
        if self.is_empty() {
            return None;
        }
        Some(match self {
            StreamInterceptors::Client(chain) => {
                StreamSendChain::Client(Next::new(chain.clone(), terminal::<ClientSend>(send)))
            }
            StreamInterceptors::Server(chain) => {
                StreamSendChain::Server(Next::new(chain.clone(), terminal::<ServerSend>(send)))
            }
        })
    }
}

/// `send` as the end of a chain of stream messages.
fn terminal<H>(send: SendTerminal) -> Terminal<H>
where
    H: super::Hop<Input = StreamMessage, Output = Result<()>>,
{
    Arc::new(move |msg: StreamMessage| {
        let (bytes, timeout) = msg.into_parts();
        send(bytes, timeout)
    })
}

impl StreamSendChain {
    /// Sends `msg` through the chain.
    pub(crate) fn run(
        &self,
        info: &Arc<RpcInfo>,
        msg: Bytes,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<()>> {
        let msg = StreamMessage::new(info.clone(), msg, timeout);
        match self {
            StreamSendChain::Client(next) => next.clone().run(msg),
            StreamSendChain::Server(next) => next.clone().run(msg),
        }
    }
}
