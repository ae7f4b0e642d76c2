//! Discovery: `psrpc list` and `psrpc describe`.

use std::time::Duration;

use clap::Args;
use psrpc::bus::DynBus;

use crate::Global;
use crate::error::{CliError, CliResult};
use crate::schema::Schema;

/// Arguments of `psrpc list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also watch traffic this many seconds for peers that do not answer
    /// discovery (Go servers and clients).
    #[arg(long)]
    pub passive: Option<f64>,
}

/// Arguments of `psrpc describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The service (wire or proto name).
    pub service: String,
}

/// The services described by the servers on the bus.
pub async fn schema(_bus: &DynBus, _wait: Duration) -> CliResult<Schema> {
    Err(CliError::input(
        "give --proto FILE (discovery is not available yet)",
    ))
}

/// `psrpc list`.
pub async fn list(_g: &Global, _a: ListArgs) -> CliResult<u8> {
    Err(CliError::input("list is not available yet"))
}

/// `psrpc describe`.
pub async fn describe(_g: &Global, _a: DescribeArgs) -> CliResult<u8> {
    Err(CliError::input("describe is not available yet"))
}
