//! The wire as this library writes and reads it, for bus implementers and
//! tools (the `psrpc` command line, conformance tests): the envelope
//! messages and their exact encoding ([`wire`]), the names of every channel
//! in their three forms ([`channels`]), and identifiers ([`id`]).
//!
//! Applications need none of it: clients, servers and their typed API hide
//! the wire. `docs/PROTOCOL.md` describes it.

#[path = "channels.rs"]
pub mod channels;
#[path = "id.rs"]
pub mod id;
#[path = "wire.rs"]
pub mod wire;
