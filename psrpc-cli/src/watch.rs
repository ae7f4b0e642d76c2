//! `psrpc watch`: a live tap of all psrpc traffic.

use clap::Args;

use crate::Global;
use crate::error::{CliError, CliResult};

/// Arguments of `psrpc watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only traffic of this service.
    #[arg(long)]
    pub service: Option<String>,
}

/// `psrpc watch`.
pub async fn run(_g: &Global, _a: WatchArgs) -> CliResult<u8> {
    Err(CliError::input("watch is not available yet"))
}
