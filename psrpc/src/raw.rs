//! Calls on raw bytes, for tools that encode and decode messages themselves
//! (with descriptors read at run time): [`RpcClient::unary_raw`] and
//! [`RpcClient::multi_raw`]. They go through the client's interceptors like
//! typed calls: interceptors see bytes anyway.

use bytes::Bytes;

use crate::client::{CallOptions, RpcClient};
use crate::error::Result;
use crate::interceptor::Replies;
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
        self.unary_bytes(
            &method.info,
            topic.into().into_parts(),
            raw_request,
            opts.clone(),
            Vec::new(),
        )
        .await
    }

    /// Sends one multi request of `method` on `topic` with the encoded
    /// request `raw_request`; the stream yields each server's encoded
    /// response or error, until the call's timeout.
    pub async fn multi_raw<Req, Res>(
        &self,
        method: &Method<Req, Res>,
        topic: impl Into<Topic>,
        raw_request: Bytes,
        opts: &CallOptions,
    ) -> Result<Replies> {
        let replies = self.multi_bytes(
            &method.info,
            topic.into().into_parts(),
            raw_request,
            opts.clone(),
            Vec::new(),
        );
        Ok(replies.await?.into_replies())
    }
}
