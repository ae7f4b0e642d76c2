//! The psrpc conformance suite on a real nats-server.

mod common;

use common::NatsFactory;

psrpc_tests::conformance!(NatsFactory::new());
