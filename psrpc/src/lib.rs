#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod bus;
pub mod channels;
pub mod client;
pub mod error;
pub mod id;
pub mod info;
pub mod select;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use bus::{Channel, LocalBus, MessageBus};
pub use client::{CallOptions, ClientOptions, MultiResponses, RpcClient, Subscription, UnaryCall};
pub use error::{Error, ErrorCode, GrpcCode, Result};
pub use info::{Context, DynMessage, IncomingHeader, Metadata, MethodInfo, RpcInfo};
pub use select::{Claim, SelectionOptions};
pub use server::{AffinityFn, RpcServer, ServerOptions};

pub use async_trait::async_trait;
pub use prost;
pub use tokio_util::sync::CancellationToken;
