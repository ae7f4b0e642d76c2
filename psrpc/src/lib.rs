#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod bus;
mod call;
pub mod client;
pub mod codec;
pub mod discovery;
pub mod drops;
pub mod error;
pub mod info;
pub mod interceptor;
mod method;
pub mod middleware;
mod outcome;
pub mod protocol;
pub(crate) use protocol::{channels, id, wire};
mod raw;
pub mod select;
pub mod server;
pub mod service;
pub mod stream;
// Also in the crate's own unit tests, which use its test buses.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod topic;

pub use bus::{Channel, LocalBus, MessageBus};
pub use client::{
    CallOptions, ClientOptions, MultiCall, MultiResponses, RpcClient, StreamCall, Subscription,
    UnaryCall,
};
pub use codec::CompressionOptions;
pub use error::{Error, ErrorCode, GrpcCode, Result};
pub use info::{Context, IncomingHeader, Metadata, RpcInfo};
pub use interceptor::{ClientInterceptor, ServerInterceptor};
pub use method::{Method, Routing};
pub use select::{Claim, SelectionOptions};
pub use server::{ClaimOutcome, Route, RpcServer, ServerOptions, StreamOpen, StreamRoute};
pub use stream::{
    ClientStream, CloseReason, ServerStream, StreamLiveness, StreamReceiver, StreamSender,
};
pub use topic::Topic;

pub use async_trait::async_trait;
pub use prost;
pub use tokio_util::sync::CancellationToken;

/// Brings in the code `psrpc-build` generated for a proto package (its
/// messages and its services, in `OUT_DIR/<package>.rs`), as
/// `tonic::include_proto!` does:
///
/// ```ignore
/// pub mod hello {
///     psrpc::include_proto!("hello");
/// }
/// ```
#[macro_export]
macro_rules! include_proto {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}
