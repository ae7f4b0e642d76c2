//! The psrpc conformance suite on a real nats-server.

mod common;

use common::NatsFactory;

psrpc_tests::conformance!(NatsFactory::new());

/// The whole suite again with every message compressed.
mod compressed {
    psrpc_tests::conformance!(psrpc_tests::compression::Compressed::every_message(
        super::NatsFactory::new()
    ));
}

/// The same suite with every server opted in to claim skip.
mod skip_claim {
    #[allow(unused_imports)]
    use super::*;

    psrpc_tests::conformance!(psrpc_tests::SkipClaim(NatsFactory::new()));
}
