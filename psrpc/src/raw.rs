//! Calls on raw bytes, for tools that encode and decode messages themselves
//! (with descriptors read at run time): [`RpcClient::unary_raw`] and
//! [`RpcClient::multi_raw`]. No hooks or interceptors run.

use bytes::Bytes;

use crate::client::{CallOptions, RawMultiResponses, RpcClient};
use crate::error::Result;
use crate::method::Method;
use crate::topic::Topic;

impl RpcClient {
    /// One unary call of `method` on `topic` with the encoded request
    /// `raw_request`; returns the encoded response. The method's types are
    /// not used (a [`Method::dynamic`] of any types will do).
    pub async fn unary_raw<Req, Res>(
        &self,
        method: &Method<Req, Res>,
        topic: impl Into<Topic>,
        raw_request: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes> {
        let topic = topic.into();
        self.call_unary_raw(&method.info, topic.parts(), raw_request, opts)
            .await
    }

    /// Sends one multi request of `method` on `topic` with the encoded
    /// request `raw_request`; the stream yields each server's encoded
    /// response or error.
    pub async fn multi_raw<Req, Res>(
        &self,
        method: &Method<Req, Res>,
        topic: impl Into<Topic>,
        raw_request: Bytes,
        opts: &CallOptions,
    ) -> Result<RawMultiResponses> {
        let topic = topic.into();
        self.call_multi_raw(&method.info, topic.parts(), raw_request, opts)
            .await
    }
}
